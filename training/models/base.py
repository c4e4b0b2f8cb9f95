"""The one protocol every Tailor model follows, and the registry that finds models by name.

A model is fitted on :class:`TrainData` (a weighted interaction matrix with its id maps, optional
feature matrices and purchase counts), recommends for external user ids, returns similar items, and
saves/loads itself *with* its id maps into a folder of plain files (``config.json`` + ``.npy``/``.npz``).

    Recommender                       abstract base; subclasses set ``name`` and ``Config``
    ├── register(cls)                 class decorator adding a model to REGISTRY by its name
    └── get_model_class(name)         registry lookup with a clear error listing known names

Errors: :class:`ModelError` (a ``RuntimeError``) when a model cannot be fitted or used (empty matrix,
NaN factors, catalogue too large, not fitted, unknown model name). Bad *arguments* (``k < 1``, an
``exclude`` matrix of the wrong shape) raise ``ValueError``; an invalid config raises pydantic's
``ValidationError`` (a ``ValueError``) naming the offending key.

Semantics every model keeps, whether it scores densely through :meth:`Recommender.score` or overrides
:meth:`Recommender.recommend` with a faster library path (implicit's batched top-k):

* results have ``min(k, n_items)`` columns; missing entries are ``""`` with score ``-inf``;
* ``filter_seen`` removes the user's training items, ``exclude`` (one row per query) and
  ``exclude_items`` (for everyone) remove more;
* users unknown to the model get :meth:`Recommender._score_unknown` (padding unless the model can
  serve cold users, see :attr:`Recommender.handles_unknown_users`);
* ``similar_items`` never returns the query item itself.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import numpy as np
import numpy.typing as npt
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict

from features.columns import Columns
from features.ids import IdMap
from features.matrix import FeatureMatrix, InteractionMatrix

_SCORE_BUDGET = 1 << 24  # at most ~16M float32 scores (64 MB) in memory per scoring block


class ModelError(RuntimeError):
    """A model cannot be fitted or used: empty data, NaN factors, catalogue too large, not fitted."""


class ModelConfig(BaseModel):
    """Base of every model config: frozen, rejects unknown keys, round-trips through a dict."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class TrainData:
    """Everything a model may fit on. Feature and purchase matrices share the interaction id maps.

    ``purchases`` holds purchase counts per (user, item) (rows/cols aligned with ``interactions``),
    used by repeat-purchase ("buy it again") scoring.
    """

    interactions: InteractionMatrix
    item_features: FeatureMatrix | None = None
    user_features: FeatureMatrix | None = None
    purchases: sp.csr_matrix | None = None


@dataclass(frozen=True)
class Recommendations:
    """Top-k lists for a batch of queries (users, or items for similar-items).

    ``item_ids[i, j]`` is the j-th item for ``query_ids[i]``; rows shorter than k are padded with
    ``""`` and score ``-inf``.
    """

    query_ids: npt.NDArray[np.str_]
    item_ids: npt.NDArray[np.str_]
    scores: npt.NDArray[np.float32]

    def to_frame(self, query_column: str = Columns.USER) -> pl.DataFrame:
        """Long format: ``query_column, rank (1-based), item_id, score``; padding dropped."""
        n, k = self.item_ids.shape
        frame = pl.DataFrame(
            {
                query_column: np.repeat(self.query_ids, k),
                Columns.RANK: np.tile(np.arange(1, k + 1, dtype=np.int32), n),
                Columns.ITEM: self.item_ids.reshape(-1),
                Columns.SCORE: self.scores.reshape(-1).astype(np.float32),
            }
        )
        return frame.filter(pl.col(Columns.ITEM) != "")


def pack_topk(
    query_ids: npt.NDArray[np.str_], items: IdMap, indices: npt.NDArray[np.int64], scores: npt.NDArray[np.floating[Any]]
) -> Recommendations:
    """Turn internal top-k indices (``-1`` = padding) into a :class:`Recommendations`."""
    valid = (indices >= 0) & np.isfinite(scores)
    safe = np.where(valid, indices, 0)
    item_ids = np.where(valid, items.to_external(safe), "")
    return Recommendations(
        np.asarray(query_ids, dtype=np.str_),
        item_ids.astype(np.str_),
        np.where(valid, scores, -np.inf).astype(np.float32),
    )


def topk_from_scores(
    scores: npt.NDArray[np.floating[Any]], k: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Row-wise top-k of a dense score matrix (``-inf`` = excluded), best first, ``-1`` padding."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.argsort(-scores, axis=1)
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top = np.take_along_axis(part_scores, order, axis=1).astype(np.float32)
    idx[~np.isfinite(top)] = -1
    return idx, top


class Recommender(ABC):
    """Base class of all models. Subclasses set ``name`` and ``Config`` and implement the hooks.

    Shared behaviour lives here: config validation, external↔internal ids, exclusions, save/load.
    Subclasses implement ``_fit``, ``_score_users`` (dense scores for internal user rows),
    ``_similar_scores`` and the ``_save_state``/``_load_state`` pair.
    """

    name: ClassVar[str]
    Config: ClassVar[type[ModelConfig]]

    @property
    def handles_unknown_users(self) -> bool:
        """True if users unknown to the model get real recommendations (popularity, cold start)."""
        return False

    @property
    def recommends_seen_items(self) -> bool:
        """True if the model's point is re-recommending seen items ("buy it again").

        Callers (evaluation, publishing) should then pass ``filter_seen=False``; with the default
        ``filter_seen=True`` such a model has nothing left to recommend.
        """
        return False

    def __init__(self, config: ModelConfig | dict[str, Any] | None = None) -> None:
        if config is None:
            config = self.Config()
        elif isinstance(config, dict):
            config = self.Config.model_validate(config)
        self.config = config
        self._data: TrainData | None = None

    # --- public API --------------------------------------------------------------------------
    def fit(self, data: TrainData) -> Self:
        """Fit on ``data``; raises :class:`ModelError` on an empty matrix.

        If fitting fails, a previously fitted model keeps its training data (subclasses assign their
        fitted state only once it is complete).
        """
        if data.interactions.nnz == 0:
            raise ModelError(f"{self.name}: cannot fit on an empty interaction matrix")
        previous, self._data = self._data, data
        try:
            self._fit(data)
        except BaseException:
            self._data = previous
            raise
        return self

    @property
    def data(self) -> TrainData:
        if self._data is None:
            raise ModelError(f"{self.name}: model is not fitted")
        return self._data

    @property
    def users(self) -> IdMap:
        return self.data.interactions.users

    @property
    def items(self) -> IdMap:
        return self.data.interactions.items

    def recommend(
        self,
        user_ids: Sequence[str] | npt.NDArray[np.str_],
        k: int,
        *,
        filter_seen: bool = True,
        exclude: sp.csr_matrix | None = None,
        exclude_items: Sequence[str] = (),
    ) -> Recommendations:
        """Top-k items for each external user id.

        ``filter_seen`` drops items in the user's training row. ``exclude`` is an extra
        ``len(user_ids) × n_items`` matrix whose non-zeros are excluded (e.g. test-time purchases);
        ``exclude_items`` are dropped for everyone. Users unknown to the model get what
        ``_score_unknown`` gives (by default an empty, padded row).
        """
        users = np.asarray(user_ids, dtype=np.str_)
        rows = self.users.to_internal(users, strict=False)
        exclude = self._check_query(users, k, exclude)

        def block(sl: slice) -> npt.NDArray[np.float32]:
            scores = self.score(rows[sl])
            self._mask(scores, rows[sl], filter_seen, exclude[sl] if exclude is not None else None, exclude_items)
            return scores

        return pack_topk(users, self.items, *self._topk_in_blocks(len(rows), k, block))

    def score(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Dense scores ``len(rows) × n_items``; rows ``-1`` (unknown users) use ``_score_unknown``."""
        out = np.full((len(rows), len(self.items)), -np.inf, dtype=np.float32)
        known = rows >= 0
        if known.any():
            out[known] = self._score_users(rows[known])
        if (~known).any():
            out[~known] = self._score_unknown(int((~known).sum()))
        if np.isnan(out).any():
            raise ModelError(f"{self.name}: scores contain NaN")
        return out

    def similar_items(self, item_ids: Sequence[str] | npt.NDArray[np.str_], k: int) -> Recommendations:
        """Top-k most similar items for each external item id (the item itself excluded)."""
        items = np.asarray(item_ids, dtype=np.str_)
        rows = self.items.to_internal(items, strict=False)
        _check_k(k)

        def block(sl: slice) -> npt.NDArray[np.float32]:
            part = rows[sl]
            scores = np.full((len(part), len(self.items)), -np.inf, dtype=np.float32)
            known = np.flatnonzero(part >= 0)
            if len(known):
                scores[known] = self._similar_scores(part[known])
                scores[known, part[known]] = -np.inf
            return scores

        return pack_topk(items, self.items, *self._topk_in_blocks(len(rows), k, block))

    def _topk_in_blocks(
        self, n: int, k: int, block: Callable[[slice], npt.NDArray[np.float32]]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top-k of ``n`` dense score rows produced ``block(slice)`` by slice, bounding memory."""
        chunk = max(1, _SCORE_BUDGET // max(1, len(self.items)))
        parts = [topk_from_scores(block(slice(start, start + chunk)), k) for start in range(0, max(1, n), chunk)]
        return np.concatenate([idx for idx, _ in parts]), np.concatenate([top for _, top in parts])

    def get_config(self) -> dict[str, Any]:
        """The config as a plain dict; ``type(self)(model.get_config())`` rebuilds it."""
        return self.config.model_dump(mode="json")

    def save(self, folder: str | Path) -> None:
        """Save config, id maps, training data and fitted state as plain files (no pickle)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.json").write_text(json.dumps({"name": self.name, "config": self.get_config()}, indent=2))
        self.data.interactions.save(folder / "interactions")
        for prefix, fm in (("item", self.data.item_features), ("user", self.data.user_features)):
            if fm is not None:
                fm.save(folder / "features", prefix)
        if self.data.purchases is not None:
            sp.save_npz(folder / "purchases.npz", self.data.purchases)
        self._save_state(folder)

    @classmethod
    def load(cls, folder: str | Path) -> Recommender:
        """Load any registered model saved by :meth:`save` (dispatches on the saved name)."""
        folder = Path(folder)
        meta = json.loads((folder / "model.json").read_text())
        model_cls = get_model_class(meta["name"])
        model = model_cls(meta["config"])
        features = folder / "features"
        item_f = FeatureMatrix.load(features, "item") if (features / "item_features.npz").exists() else None
        user_f = FeatureMatrix.load(features, "user") if (features / "user_features.npz").exists() else None
        purchases = sp.load_npz(folder / "purchases.npz").tocsr() if (folder / "purchases.npz").exists() else None
        model._restore(TrainData(InteractionMatrix.load(folder / "interactions"), item_f, user_f, purchases), folder)
        return model

    def _restore(self, data: TrainData, folder: Path) -> None:
        """Attach saved training data and read the fitted state (used by :meth:`load` and wrappers)."""
        self._data = data
        self._load_state(folder)

    # --- hooks ---------------------------------------------------------------------------------
    @abstractmethod
    def _fit(self, data: TrainData) -> None: ...

    @abstractmethod
    def _score_users(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Dense scores for known internal user rows."""

    def _score_unknown(self, n: int) -> npt.NDArray[np.float32]:
        """Scores for ``n`` users unknown to the model; default: nothing to recommend."""
        return np.full((n, len(self.items)), -np.inf, dtype=np.float32)

    @abstractmethod
    def _similar_scores(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Dense item-item similarity rows for known internal item rows."""

    def _save_state(self, folder: Path) -> None:  # noqa: B027 - optional hook
        """Write fitted arrays (``np.save``, no pickle)."""

    def _load_state(self, folder: Path) -> None:  # noqa: B027 - optional hook
        """Read what ``_save_state`` wrote."""

    def _check_query(self, users: npt.NDArray[np.str_], k: int, exclude: sp.csr_matrix | None) -> sp.csr_matrix | None:
        """Validate ``k`` and the shape of ``exclude``; returns ``exclude`` as CSR."""
        _check_k(k)
        if exclude is None:
            return None
        exclude = sp.csr_matrix(exclude)
        expected = (len(users), len(self.items))
        if exclude.shape != expected:
            raise ValueError(
                f"exclude has shape {exclude.shape}; expected {expected} (one row per user id, one column per item)"
            )
        return exclude

    def _exclusion_pattern(
        self, rows: npt.NDArray[np.int64], filter_seen: bool, exclude: sp.csr_matrix | None
    ) -> sp.csr_matrix | None:
        """0/1 CSR ``len(rows) × n_items`` of per-query exclusions (seen items and ``exclude``).

        ``rows`` are known internal user rows; ``exclude`` must already be restricted to them.
        Used by models that hand exclusions to a library top-k instead of masking dense scores.
        """
        parts = []
        if filter_seen:
            parts.append(self.data.interactions.matrix[rows])
        if exclude is not None:
            parts.append(sp.csr_matrix(exclude))
        if not parts:
            return None
        pattern = sp.csr_matrix((len(rows), len(self.items)), dtype=np.float32)
        for part in parts:
            ones = sp.csr_matrix(part, dtype=np.float32, copy=True)
            ones.data[:] = 1.0  # explicit zeros count as excluded, as in _mask
            pattern = pattern + ones
        pattern.data[:] = 1.0
        return sp.csr_matrix(pattern)

    def _mask(
        self,
        scores: npt.NDArray[np.float32],
        rows: npt.NDArray[np.int64],
        filter_seen: bool,
        exclude: sp.csr_matrix | None,
        exclude_items: Sequence[str],
    ) -> None:
        if filter_seen:
            known = np.flatnonzero(rows >= 0)
            seen = self.data.interactions.matrix[rows[known]].tocoo()
            scores[known[seen.row], seen.col] = -np.inf
        if exclude is not None:
            ex = sp.csr_matrix(exclude).tocoo()
            scores[ex.row, ex.col] = -np.inf
        if len(exclude_items):
            cols = self.items.to_internal(list(exclude_items), strict=False)
            scores[:, cols[cols >= 0]] = -np.inf


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


REGISTRY: dict[str, type[Recommender]] = {}
R = TypeVar("R", bound=type[Recommender])


def register(cls: R) -> R:
    """Class decorator: make a model findable by its ``name`` (two classes may not share a name)."""
    existing = REGISTRY.get(cls.name)
    if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ModelError(
            f"model name {cls.name!r} is already registered by {existing.__module__}.{existing.__qualname__}"
        )
    REGISTRY[cls.name] = cls
    return cls


def get_model_class(name: str) -> type[Recommender]:
    """The model class registered under ``name``; the error lists the known names."""
    _load_builtin_models()
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}") from None


def _load_builtin_models() -> None:
    """Import the built-in model modules so their ``@register`` decorators run."""
    import training.models  # noqa: F401  (registers built-ins on import)


ModelFactory = Callable[[dict[str, Any] | None], Recommender]
