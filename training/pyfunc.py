"""A Tailor :class:`~training.models.base.Recommender` as an MLflow pyfunc model.

The pyfunc is logged "from code": a three-line script (written by :func:`write_model_code`) that
builds :class:`RecommenderPyfunc`, so nothing is pickled. Its one artifact, ``recommender``, is the
folder written by ``Recommender.save`` (config, id maps, factors/weights as ``.npy``/``.npz``);
``load_context`` reads it back with ``Recommender.load``.

    model = mlflow.pyfunc.load_model("models:/tailor@champion")
    model.predict(pd.DataFrame({"user_id": ["u1", "u2"]}), params={"k": 10})
    # -> DataFrame user_id, rank, item_id, score (best first; unknown users get no rows)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc.model import PythonModel, PythonModelContext
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from features.columns import Columns
from training.models.base import Recommender

ARTIFACT_KEY = "recommender"
"""Name of the pyfunc artifact holding the ``Recommender.save`` folder."""

DEFAULT_K = 10

_MODEL_CODE = '''"""Builds Tailor's pyfunc wrapper (MLflow "model from code"; see training/pyfunc.py)."""
import mlflow.models

from training.pyfunc import RecommenderPyfunc

mlflow.models.set_model(RecommenderPyfunc())
'''


class RecommenderPyfunc(PythonModel):  # type: ignore[misc]  # mlflow's PythonModel is untyped
    """Serves ``Recommender.recommend`` through the pyfunc ``predict`` interface."""

    def __init__(self) -> None:
        self.recommender: Recommender | None = None

    def load_context(self, context: PythonModelContext) -> None:
        """Load the recommender from the ``recommender`` artifact folder."""
        self.recommender = Recommender.load(context.artifacts[ARTIFACT_KEY])

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Top-k items for each ``user_id`` of ``model_input``; ``params={"k": N}`` (default 10)."""
        if self.recommender is None:
            raise RuntimeError("RecommenderPyfunc.predict called before load_context")
        k = int((params or {}).get("k", DEFAULT_K))
        users = model_input[Columns.USER].astype(str).to_numpy()
        recs = self.recommender.recommend(users, k, filter_seen=not self.recommender.recommends_seen_items)
        return recs.to_frame().to_pandas()


def signature() -> ModelSignature:
    """Input ``user_id`` strings, output long-format recommendations, param ``k``."""
    return ModelSignature(
        inputs=Schema([ColSpec("string", Columns.USER)]),
        outputs=Schema(
            [
                ColSpec("string", Columns.USER),
                ColSpec("integer", Columns.RANK),
                ColSpec("string", Columns.ITEM),
                ColSpec("float", Columns.SCORE),
            ]
        ),
        params=ParamSchema([ParamSpec("k", "long", DEFAULT_K)]),
    )


def write_model_code(folder: Path) -> Path:
    """Write the model-from-code script into ``folder`` and return its path."""
    path = folder / "tailor_model.py"
    path.write_text(_MODEL_CODE)
    return path
