"""Built-in models. Importing this package registers each one in ``training.models.base.REGISTRY``."""
