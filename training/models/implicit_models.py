"""Models backed by the ``implicit`` library (CPU classes only): ALS, BPR and item-kNN.

BLAS is capped at one thread around fitting and scoring (``threadpoolctl``): implicit parallelises
itself and warns when OpenBLAS also spawns threads. Factor models answer ``recommend`` and
``similar_items`` with implicit's batched C++ top-k (what the publisher uses for 100k users), with
the same semantics as the dense path of :class:`~training.models.base.Recommender`.

Item-kNN scores densely through a sparse ``X[rows] @ S`` product instead: implicit 0.7's kNN
``recommend`` loops over users in Python and leaves already-liked items in its results (score 0)
when asked to filter them. Items no neighbour reaches score ``-inf`` (padding), as in implicit.

Fitted arrays are saved with ``np.save`` (no pickle) and put back into fresh implicit objects on load.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from implicit.cpu.topk import topk
from implicit.nearest_neighbours import ItemItemRecommender, bm25_weight, normalize, tfidf_weight
from implicit.recommender_base import ModelFitError
from pydantic import Field
from threadpoolctl import threadpool_limits

from training.models.base import (
    ModelConfig,
    ModelError,
    Recommendations,
    Recommender,
    TrainData,
    pack_topk,
    register,
)

_FILTERED = -np.finfo(np.float32).max  # what implicit's top-k reports for filtered entries


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Cap BLAS at one thread (implicit runs its own threads and warns otherwise)."""
    with threadpool_limits(1, "blas"):
        yield


def _as_padding(
    ids: npt.NDArray[Any], scores: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Implicit's filtered/missing entries (id -1 or score -FLT_MAX) become ``-1`` / ``-inf``."""
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    invalid = (ids < 0) | (scores <= _FILTERED) | ~np.isfinite(scores)
    return np.where(invalid, -1, ids), np.where(invalid, -np.inf, scores).astype(np.float32)


class _FactorModel(Recommender):
    """Shared machinery of implicit matrix-factorisation models (user × item factor dot products)."""

    _model: Any

    @abstractmethod
    def _make_model(self) -> Any:
        """A fresh, unfitted implicit CPU model built from the config."""

    @property
    def user_factors(self) -> npt.NDArray[np.float32]:
        """``n_users × d`` user factors (rows follow ``self.users``)."""
        return np.asarray(self._fitted().user_factors, dtype=np.float32)

    @property
    def item_factors(self) -> npt.NDArray[np.float32]:
        """``n_items × d`` item factors (rows follow ``self.items``)."""
        return np.asarray(self._fitted().item_factors, dtype=np.float32)

    def _fitted(self) -> Any:
        if getattr(self, "_model", None) is None:
            raise ModelError(f"{self.name}: model is not fitted")
        return self._model

    def _fit(self, data: TrainData) -> None:
        with one_blas_thread():
            model = self._make_model()
            try:
                model.fit(sp.csr_matrix(data.interactions.matrix, dtype=np.float32), show_progress=False)
            except ModelFitError as exc:
                raise ModelError(f"{self.name}: fitting failed: {exc}") from exc
        for label, factors in (("user", model.user_factors), ("item", model.item_factors)):
            if not np.isfinite(factors).all():
                raise ModelError(f"{self.name}: {label} factors contain NaN/inf after fit (lower learning rate?)")
        self._model = model

    # --- dense path (reference semantics, used by score()) -----------------------------------
    def _score_users(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        with one_blas_thread():
            return np.asarray(self.user_factors[rows] @ self.item_factors.T, dtype=np.float32)

    def _similar_scores(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Cosine similarity of item factors (zero norms replaced as implicit does)."""
        factors = self.item_factors
        norms = np.linalg.norm(factors, axis=1)
        norms[norms == 0] = 1e-10
        with one_blas_thread():
            sims = (factors[rows] @ factors.T) / (norms[rows, None] * norms[None, :])
        return np.asarray(sims, dtype=np.float32)

    # --- fast path: implicit's batched top-k ---------------------------------------------------
    def recommend(
        self,
        user_ids: Sequence[str] | npt.NDArray[np.str_],
        k: int,
        *,
        filter_seen: bool = True,
        exclude: sp.csr_matrix | None = None,
        exclude_items: Sequence[str] = (),
    ) -> Recommendations:
        """Same contract as :meth:`Recommender.recommend`, computed by implicit's batched top-k."""
        users = np.asarray(user_ids, dtype=np.str_)
        rows = self.users.to_internal(users, strict=False)
        exclude = self._check_query(users, k, exclude)
        k = min(k, len(self.items))
        idx = np.full((len(rows), k), -1, dtype=np.int64)
        top = np.full((len(rows), k), -np.inf, dtype=np.float32)
        known = np.flatnonzero(rows >= 0)
        if len(known):
            pattern = self._exclusion_pattern(rows[known], filter_seen, exclude[known] if exclude is not None else None)
            idx[known], top[known] = self._topk(self.user_factors[rows[known]], k, pattern, exclude_items)
        return pack_topk(users, self.items, idx, top)

    def _topk(
        self,
        vectors: npt.NDArray[np.float32],
        k: int,
        pattern: sp.csr_matrix | None,
        exclude_items: Sequence[str],
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top-k items for user ``vectors``; ``pattern`` rows and ``exclude_items`` are excluded."""
        internal = self.items.to_internal(list(exclude_items), strict=False)
        cols = internal[internal >= 0].astype(np.int32)
        with one_blas_thread():
            ids, scores = topk(
                self.item_factors,
                np.ascontiguousarray(vectors, dtype=np.float32),
                k,
                filter_query_items=pattern,
                filter_items=cols if len(cols) else None,
                num_threads=self._fitted().num_threads,
            )
        return _as_padding(ids, scores)

    def similar_items(self, item_ids: Sequence[str] | npt.NDArray[np.str_], k: int) -> Recommendations:
        """Same contract as :meth:`Recommender.similar_items` (cosine of item factors), via implicit."""
        items = np.asarray(item_ids, dtype=np.str_)
        rows = self.items.to_internal(items, strict=False)
        self._check_query(items, k, None)
        n_items = len(self.items)
        k = min(k, n_items)
        idx = np.full((len(rows), k), -1, dtype=np.int64)
        top = np.full((len(rows), k), -np.inf, dtype=np.float32)
        known = np.flatnonzero(rows >= 0)
        if len(known):
            with one_blas_thread():
                ids, scores = self._fitted().similar_items(rows[known].astype(np.int32), N=min(k + 1, n_items))
            idx[known], top[known] = _drop_self(rows[known], *_as_padding(ids, scores), k)
        return pack_topk(items, self.items, idx, top)

    # --- persistence ---------------------------------------------------------------------------
    def _save_state(self, folder: Path) -> None:
        np.save(folder / "user_factors.npy", self.user_factors, allow_pickle=False)
        np.save(folder / "item_factors.npy", self.item_factors, allow_pickle=False)

    def _load_state(self, folder: Path) -> None:
        with one_blas_thread():
            model = self._make_model()
        model.user_factors = np.load(folder / "user_factors.npy", allow_pickle=False)
        model.item_factors = np.load(folder / "item_factors.npy", allow_pickle=False)
        self._model = model


def _drop_self(
    queries: npt.NDArray[np.int64], ids: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], k: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Remove each query item from its own neighbour list, keeping the best ``k`` others."""
    is_self = ids == queries[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # non-self entries first, order kept
    ids, scores = np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)
    still_self = ids == queries[:, None]  # only when fewer than k others exist
    return np.where(still_self, -1, ids), np.where(still_self, -np.inf, scores).astype(np.float32)


class ALSConfig(ModelConfig):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) via ``implicit.cpu.als``."""

    factors: int = Field(64, ge=1, le=1024, description="latent dimensions")
    regularization: float = Field(0.01, ge=0.0, description="L2 penalty on factors")
    alpha: float = Field(
        1.0,
        gt=0.0,
        description="confidence scaling: an observed cell's confidence is alpha × its weight "
        "(implicit ≥ 0.7 applies the product itself in fit and fold-in; unobserved cells have confidence 1)",
    )
    iterations: int = Field(15, ge=1, le=1000, description="ALS sweeps")
    random_state: int = Field(42, ge=0, description="seed of the initial factors (seeded → deterministic)")
    num_threads: int = Field(0, ge=0, description="implicit threads for fit and top-k; 0 = all cores")


@register
class ALS(_FactorModel):
    """Implicit ALS. Adds :meth:`fold_in` and :meth:`recommend_from_history` for users unseen at fit."""

    name: ClassVar[str] = "als"
    Config: ClassVar[type[ModelConfig]] = ALSConfig
    config: ALSConfig

    def _make_model(self) -> AlternatingLeastSquares:
        c = self.config
        return AlternatingLeastSquares(
            factors=c.factors,
            regularization=c.regularization,
            alpha=c.alpha,
            iterations=c.iterations,
            random_state=c.random_state,
            num_threads=c.num_threads,
        )

    def fold_in(self, history: sp.csr_matrix) -> npt.NDArray[np.float32]:
        """User vectors for interaction rows over the model's items (``n × n_items`` weights).

        Solves each user's ALS least-squares step exactly against the fixed item factors (implicit's
        ``recalculate_user``), so a known user's own row gives (about) their fitted vector. Returns
        ``n × factors``; a 1-row input gives a ``1 × factors`` array.
        """
        history = self._check_history(history)
        with one_blas_thread():
            vectors = self._fitted().recalculate_user(np.arange(history.shape[0]), history)
        return np.atleast_2d(np.asarray(vectors, dtype=np.float32))

    def recommend_from_history(
        self,
        histories: sp.csr_matrix,
        k: int,
        exclude_items: Sequence[str] = (),
        *,
        filter_seen: bool = True,
        query_ids: Sequence[str] | None = None,
    ) -> Recommendations:
        """Top-k for users described only by recent interactions (``n × n_items``, model's item order).

        Items in the history are filtered when ``filter_seen``. ``query_ids`` label the rows
        (default ``"0"``, ``"1"``, ...). Empty histories give padded rows.
        """
        histories = self._check_history(histories)
        labels = np.asarray(
            query_ids if query_ids is not None else np.arange(histories.shape[0]).astype(str), dtype=np.str_
        )
        self._check_query(labels, k, None)
        pattern = self._exclusion_pattern_of(histories) if filter_seen else None
        idx, top = self._topk(self.fold_in(histories), min(k, len(self.items)), pattern, exclude_items)
        empty = np.diff(histories.indptr) == 0
        idx[empty], top[empty] = -1, -np.inf
        return pack_topk(labels, self.items, idx, top)

    def _check_history(self, history: sp.csr_matrix) -> sp.csr_matrix:
        history = sp.csr_matrix(history, dtype=np.float32)
        if history.shape[1] != len(self.items):
            raise ValueError(f"history has {history.shape[1]} columns; the model has {len(self.items)} items")
        return history

    @staticmethod
    def _exclusion_pattern_of(history: sp.csr_matrix) -> sp.csr_matrix:
        pattern = sp.csr_matrix(history, dtype=np.float32, copy=True)
        pattern.data[:] = 1.0
        return pattern


class BPRConfig(ModelConfig):
    """Bayesian Personalised Ranking (Rendle et al. 2009) via ``implicit.cpu.bpr``."""

    factors: int = Field(64, ge=1, le=1024, description="latent dimensions (implicit adds one bias column)")
    learning_rate: float = Field(0.01, gt=0.0, le=1.0, description="SGD step")
    regularization: float = Field(0.01, ge=0.0, description="L2 penalty on factors")
    iterations: int = Field(100, ge=1, le=10_000, description="passes over the interactions")
    verify_negative_samples: bool = Field(True, description="resample negatives that the user actually liked")
    random_state: int = Field(42, ge=0, description="seed (deterministic only with num_threads=1)")
    num_threads: int = Field(
        1, ge=0, description="SGD threads; >1 is lock-free (Hogwild) and not reproducible; 0 = all cores"
    )


@register
class BPR(_FactorModel):
    """Implicit BPR; weights only mark positives (their values are ignored by BPR)."""

    name: ClassVar[str] = "bpr"
    Config: ClassVar[type[ModelConfig]] = BPRConfig
    config: BPRConfig

    def _make_model(self) -> BayesianPersonalizedRanking:
        c = self.config
        return BayesianPersonalizedRanking(
            factors=c.factors,
            learning_rate=c.learning_rate,
            regularization=c.regularization,
            iterations=c.iterations,
            verify_negative_samples=c.verify_negative_samples,
            random_state=c.random_state,
            num_threads=c.num_threads,
        )


class ItemKNNConfig(ModelConfig):
    """Item-item nearest neighbours via implicit's ``all_pairs_knn``."""

    similarity: Literal["cosine", "bm25", "tfidf"] = Field("cosine", description="how rows are weighted first")
    neighbours: int = Field(50, ge=1, le=10_000, description="neighbours kept per item (implicit's K)")
    k1: float = Field(1.2, gt=0.0, description="BM25 K1 (term-frequency saturation); bm25 only")
    b: float = Field(0.75, ge=0.0, le=1.0, description="BM25 B (length normalisation); bm25 only")
    num_threads: int = Field(0, ge=0, description="threads for the similarity computation; 0 = all cores")


@register
class ItemKNN(Recommender):
    """Item-kNN: ``score(u, j) = Σ_i x_ui S_ij`` over the ``neighbours`` most similar items ``i``."""

    name: ClassVar[str] = "item_knn"
    Config: ClassVar[type[ModelConfig]] = ItemKNNConfig
    config: ItemKNNConfig

    def _fit(self, data: TrainData) -> None:
        X = sp.csr_matrix(data.interactions.matrix, dtype=np.float32)
        model = ItemItemRecommender(K=self.config.neighbours, num_threads=self.config.num_threads)
        with one_blas_thread():
            model.fit(self._weighted(X), show_progress=False)
        self._similarity = sp.csr_matrix(model.similarity, dtype=np.float32)

    def _weighted(self, X: sp.csr_matrix) -> sp.csr_matrix:
        """Implicit's row weighting for the chosen similarity (items are rows of ``X.T``)."""
        if self.config.similarity == "bm25":
            weighted = bm25_weight(X.T, self.config.k1, self.config.b).T
        elif self.config.similarity == "tfidf":
            weighted = normalize(tfidf_weight(X.T)).T
        else:
            weighted = normalize(X.T).T
        return sp.csr_matrix(weighted)

    def _score_users(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return _sparse_to_dense(self.data.interactions.matrix[rows] @ self._similarity)

    def _similar_scores(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return _sparse_to_dense(self._similarity[rows])

    def _save_state(self, folder: Path) -> None:
        sp.save_npz(folder / "similarity.npz", self._similarity)

    def _load_state(self, folder: Path) -> None:
        self._similarity = sp.load_npz(folder / "similarity.npz").tocsr()


def _sparse_to_dense(matrix: sp.spmatrix) -> npt.NDArray[np.float32]:
    """Dense copy with ``-inf`` where ``matrix`` stores nothing (item not reachable)."""
    coo = sp.coo_matrix(matrix)
    out = np.full(coo.shape, -np.inf, dtype=np.float32)
    out[coo.row, coo.col] = coo.data
    return out
