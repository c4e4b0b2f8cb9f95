"""Built-in models. Importing this package registers each one in ``training.models.base.REGISTRY``.

    popularity   global / in-category / in-segment popularity (the baseline)   popularity.py
    als, bpr     implicit matrix factorisation (ALS adds fold-in)              implicit_models.py
    item_knn     implicit item-item neighbours (cosine, bm25, tfidf)           implicit_models.py
    ease         closed-form EASE                                             ease.py
    lightfm      LightFM hybrid with cold-start users and items               lightfm_model.py
    buy_again    repeat-purchase scores; blend = CF model + buy-again          repeat.py

Find a model by name with :func:`get_model_class`; never branch on names.
"""

from training.models import ease, implicit_models, lightfm_model, popularity, repeat
from training.models.base import (
    REGISTRY,
    ModelConfig,
    ModelError,
    Recommendations,
    Recommender,
    TrainData,
    get_model_class,
    register,
)

__all__ = [
    "REGISTRY",
    "ModelConfig",
    "ModelError",
    "Recommendations",
    "Recommender",
    "TrainData",
    "ease",
    "get_model_class",
    "implicit_models",
    "lightfm_model",
    "popularity",
    "register",
    "repeat",
]
