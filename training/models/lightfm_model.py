"""LightFM hybrid (Kula 2015): users and items are sums of identity and feature embeddings.

Feature matrices are ``[identity | features]`` with each row scaled to sum to 1 (as LightFM's own
``Dataset`` does); feature columns come from ``TrainData.item_features`` / ``user_features`` when
present and enabled, otherwise the model is identity-only (plain matrix factorisation). An identity
block already present in those matrices (``item_id=…``/``user_id=…`` columns, as
``features.feature_matrices`` builds by default) is dropped and rebuilt over the interaction ids.
The model fits on the binary interaction pattern.

Cold start: a user unknown to the model gets the mean of the training users' *feature-only*
representations (or of their full representations when no user features are used);
:meth:`LightFM.recommend_cold` scores users given only their feature rows (e.g. ``segment=...``) and
:meth:`LightFM.score_new_items` scores items given only their feature rows.

Saved as ``np.save`` arrays (embeddings, biases, feature names); a ``lightfm.LightFM`` object is
rebuilt from them on load.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from lightfm import LightFM as _LightFM
from pydantic import Field

from features.columns import Columns
from features.feature_matrices import normalize_rows
from features.ids import IdMap
from features.matrix import FeatureMatrix
from training.models._features import align_rows
from training.models.base import (
    ModelConfig,
    ModelError,
    Recommendations,
    Recommender,
    TrainData,
    pack_topk,
    register,
    topk_from_scores,
)

_ARRAYS = ("item_embeddings", "item_biases", "user_embeddings", "user_biases")


class _Side(NamedTuple):
    """The feature columns used on one side (users or items)."""

    rows: sp.csr_matrix | None  # feature rows aligned with the interaction ids; None = identity only
    names: npt.NDArray[np.str_]  # the model's feature names (identity columns of the source dropped)
    keep: npt.NDArray[np.int64]  # their positions among the source FeatureMatrix's columns
    source_width: int  # number of columns of the source FeatureMatrix


class _Inputs(NamedTuple):
    """What LightFM is fitted on, derived deterministically from :class:`TrainData`."""

    user_x: sp.csr_matrix  # [identity | user features], rows sum to 1
    item_x: sp.csr_matrix
    user: _Side
    item: _Side


_NO_SIDE = _Side(None, np.empty(0, dtype=np.str_), np.empty(0, dtype=np.int64), 0)


class LightFMConfig(ModelConfig):
    """LightFM hyper-parameters and which side information to use."""

    no_components: int = Field(32, ge=1, le=1024, description="embedding dimensions")
    learning_rate: float = Field(0.05, gt=0.0, le=1.0, description="adagrad step")
    epochs: int = Field(20, ge=1, le=10_000, description="passes over the interactions")
    item_alpha: float = Field(0.0, ge=0.0, description="L2 penalty on item feature embeddings")
    user_alpha: float = Field(0.0, ge=0.0, description="L2 penalty on user feature embeddings")
    loss: Literal["warp", "bpr", "warp-kos"] = Field("warp", description="ranking loss")
    max_sampled: int = Field(10, ge=1, description="WARP: negatives sampled per positive at most")
    use_item_features: bool = Field(True, description="use TrainData.item_features when present")
    use_user_features: bool = Field(True, description="use TrainData.user_features when present")
    random_state: int = Field(42, ge=0, description="seed (deterministic with num_threads=1)")
    num_threads: int = Field(1, ge=1, description="fit threads (>1 is lock-free and not reproducible)")


def _with_identity(features: sp.csr_matrix | None, n: int) -> sp.csr_matrix:
    """``[I_n | features]`` with rows scaled to sum to 1."""
    blocks = [sp.identity(n, dtype=np.float32, format="csr")]
    if features is not None:
        blocks.append(sp.csr_matrix(features, dtype=np.float32))
    return normalize_rows(sp.hstack(blocks, format="csr"))


def _side(fm: FeatureMatrix | None, ids: IdMap, enabled: bool) -> _Side:
    """Feature rows aligned with ``ids``, without any identity columns the source already has.

    ``features.feature_matrices`` may put an ``item_id=…``/``user_id=…`` identity block first; the
    model builds its own identity block over the interaction ids, so those columns are dropped.
    """
    if fm is None or not enabled:
        return _NO_SIDE
    names = np.asarray(fm.names, dtype=np.str_)
    identity = np.char.startswith(names, f"{Columns.ITEM}=") | np.char.startswith(names, f"{Columns.USER}=")
    keep = np.flatnonzero(~identity).astype(np.int64)
    if not len(keep):
        return _NO_SIDE._replace(source_width=len(names))
    return _Side(sp.csr_matrix(align_rows(fm, ids)[:, keep]), names[keep], keep, len(names))


@register
class LightFM(Recommender):
    """LightFM WARP/BPR hybrid with cold-start users and items."""

    name: ClassVar[str] = "lightfm"
    Config: ClassVar[type[ModelConfig]] = LightFMConfig
    config: LightFMConfig

    @property
    def handles_unknown_users(self) -> bool:
        return True

    @property
    def user_feature_names(self) -> npt.NDArray[np.str_]:
        """Column names ``recommend_cold`` rows refer to (empty if user features are unused)."""
        return self._names("user")

    @property
    def item_feature_names(self) -> npt.NDArray[np.str_]:
        """Column names ``score_new_items`` rows refer to (empty if item features are unused)."""
        return self._names("item")

    # --- fitting ---------------------------------------------------------------------------------
    def _fit(self, data: TrainData) -> None:
        inputs = self._inputs(data)
        interactions = sp.coo_matrix(data.interactions.matrix, dtype=np.float32, copy=True)
        interactions.data[:] = 1.0  # binary pattern; the copy keeps the caller's weights intact
        model = self._new_lightfm()
        try:
            model.fit(
                interactions,
                user_features=inputs.user_x,
                item_features=inputs.item_x,
                epochs=self.config.epochs,
                num_threads=self.config.num_threads,
            )
        except ValueError as exc:  # LightFM raises ValueError on non-finite parameters
            raise ModelError(f"lightfm: fitting failed: {exc} (lower learning_rate?)") from exc
        self._install(model, inputs)

    def _new_lightfm(self) -> Any:
        c = self.config
        return _LightFM(
            no_components=c.no_components,
            learning_rate=c.learning_rate,
            loss=c.loss,
            item_alpha=c.item_alpha,
            user_alpha=c.user_alpha,
            max_sampled=c.max_sampled,
            random_state=c.random_state,
        )

    def _inputs(self, data: TrainData) -> _Inputs:
        """LightFM's feature matrices (identity + features) and the feature columns behind them."""
        users, items = data.interactions.users, data.interactions.items
        user = _side(data.user_features, users, self.config.use_user_features)
        item = _side(data.item_features, items, self.config.use_item_features)
        return _Inputs(_with_identity(user.rows, len(users)), _with_identity(item.rows, len(items)), user, item)

    def _install(self, model: Any, inputs: _Inputs) -> None:
        """Adopt a fitted (or rebuilt) LightFM object and cache the representations it gives."""
        item_bias, item_emb = model.get_item_representations(inputs.item_x)
        user_bias, user_emb = model.get_user_representations(inputs.user_x)
        for label, arr in (("item", item_emb), ("user", user_emb)):
            if not np.isfinite(arr).all():
                raise ModelError(f"lightfm: {label} embeddings contain NaN/inf (lower learning_rate?)")
        self._model, self._sides = model, {"user": inputs.user, "item": inputs.item}
        self._item_bias, self._item_emb = np.asarray(item_bias, np.float32), np.asarray(item_emb, np.float32)
        self._user_bias, self._user_emb = np.asarray(user_bias, np.float32), np.asarray(user_emb, np.float32)
        self._unknown = self._unknown_representation()

    def _unknown_representation(self) -> tuple[float, npt.NDArray[np.float32]]:
        """Mean feature-only representation of training users (mean full one without features)."""
        rows = self._sides["user"].rows
        if rows is not None:
            rows = rows[np.diff(rows.indptr) > 0]  # users that have any feature
        if rows is None or rows.shape[0] == 0:
            return float(self._user_bias.mean()), self._user_emb.mean(axis=0)
        bias, emb = self._feature_only(rows)
        return float(bias.mean()), emb.mean(axis=0)

    def _feature_only(self, rows: sp.csr_matrix) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """User representations from feature rows alone (identity block left empty)."""
        full = sp.hstack([sp.csr_matrix((rows.shape[0], len(self.users)), dtype=np.float32), rows], format="csr")
        bias, emb = self._model.get_user_representations(normalize_rows(full))
        return np.asarray(bias, np.float32), np.asarray(emb, np.float32)

    # --- scoring ---------------------------------------------------------------------------------
    def _scores_for(self, bias: npt.NDArray[np.float32], emb: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.asarray(emb @ self._item_emb.T + self._item_bias[None, :] + bias[:, None], dtype=np.float32)

    def _score_users(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return self._scores_for(self._user_bias[rows], self._user_emb[rows])

    def _score_unknown(self, n: int) -> npt.NDArray[np.float32]:
        bias, emb = self._unknown
        return self._scores_for(np.full(n, bias, dtype=np.float32), np.tile(emb, (n, 1)))

    def _similar_scores(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Cosine similarity of item representations."""
        norms = np.linalg.norm(self._item_emb, axis=1)
        norms[norms == 0] = 1e-10
        sims = (self._item_emb[rows] @ self._item_emb.T) / (norms[rows, None] * norms[None, :])
        return np.asarray(sims, dtype=np.float32)

    def _cold_representation(self, rows: sp.csr_matrix) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Feature-only representations; rows without any feature get the unknown-user mean."""
        rows = self._check_feature_rows(rows, "user")
        bias, emb = self._feature_only(rows)
        empty = np.diff(rows.indptr) == 0
        bias[empty], emb[empty] = self._unknown[0], self._unknown[1]
        return bias, emb

    def recommend_cold(
        self,
        user_feature_rows: sp.csr_matrix,
        k: int,
        *,
        exclude_items: Sequence[str] = (),
        query_ids: Sequence[str] | None = None,
    ) -> Recommendations:
        """Top-k for new users described only by feature rows.

        Rows are over :attr:`user_feature_names` (build them with :meth:`user_feature_rows`) or over
        all columns of the training user ``FeatureMatrix`` (``features.feature_matrices.feature_rows``).
        Rows without any feature get the unknown-user mean. ``query_ids`` label the rows
        (default ``"0"``, ``"1"``, ...).
        """
        n = user_feature_rows.shape[0]
        labels = np.asarray(query_ids if query_ids is not None else np.arange(n).astype(str), dtype=np.str_)
        self._check_query(labels, k, None)
        scores = self._scores_for(*self._cold_representation(user_feature_rows))
        self._mask(scores, np.full(n, -1, dtype=np.int64), False, None, exclude_items)
        idx, top = topk_from_scores(scores, k)
        return pack_topk(labels, self.items, idx, top)

    def score_new_items(
        self, item_feature_rows: sp.csr_matrix, user_ids: Sequence[str] | npt.NDArray[np.str_]
    ) -> npt.NDArray[np.float32]:
        """Scores ``len(user_ids) × n_new`` of new items described by rows over :attr:`item_feature_names`.

        Unknown user ids get the unknown-user representation. Scores are comparable with
        :meth:`score` for the same users.
        """
        rows = self._check_feature_rows(item_feature_rows, "item")
        full = sp.hstack([sp.csr_matrix((rows.shape[0], len(self.items)), dtype=np.float32), rows], format="csr")
        item_bias, item_emb = self._model.get_item_representations(normalize_rows(full))
        users = self.users.to_internal(np.asarray(user_ids, dtype=np.str_), strict=False)
        bias = np.where(users >= 0, self._user_bias[np.maximum(users, 0)], self._unknown[0])
        emb = np.where((users >= 0)[:, None], self._user_emb[np.maximum(users, 0)], self._unknown[1][None, :])
        return np.asarray(emb @ np.asarray(item_emb).T + np.asarray(item_bias)[None, :] + bias[:, None], np.float32)

    def user_feature_rows(self, features: Sequence[Sequence[str]]) -> sp.csr_matrix:
        """0/1 rows over :attr:`user_feature_names`, e.g. ``[["segment=bargain"], []]``; unknown names raise."""
        return _encode(features, self.user_feature_names, "user")

    def item_feature_rows(self, features: Sequence[Sequence[str]]) -> sp.csr_matrix:
        """0/1 rows over :attr:`item_feature_names`, e.g. ``[["category=shoes", "brand=acme"]]``."""
        return _encode(features, self.item_feature_names, "item")

    def _check_feature_rows(self, rows: sp.csr_matrix, side: str) -> sp.csr_matrix:
        """Rows over the model's feature names, or over the training FeatureMatrix's full columns
        (as ``features.feature_matrices.feature_rows`` builds them; identity columns are dropped)."""
        info = self._fitted_sides()[side]
        rows = sp.csr_matrix(rows, dtype=np.float32)
        if not len(info.names):
            raise ModelError(f"lightfm: the model was fitted without {side} features; cold {side}s need them")
        if rows.shape[1] == info.source_width and info.source_width != len(info.names):
            rows = sp.csr_matrix(rows[:, info.keep])
        if rows.shape[1] != len(info.names):
            raise ValueError(
                f"{side} feature rows have {rows.shape[1]} columns; the model has {len(info.names)} {side} features "
                f"({info.source_width} columns in the training feature matrix)"
            )
        return rows

    # --- persistence -----------------------------------------------------------------------------
    def _fitted_sides(self) -> dict[str, _Side]:
        if getattr(self, "_model", None) is None:
            raise ModelError("lightfm: model is not fitted")
        return self._sides

    def _names(self, side: str) -> npt.NDArray[np.str_]:
        return self._fitted_sides()[side].names

    def _save_state(self, folder: Path) -> None:
        for attr in _ARRAYS:
            np.save(folder / f"lightfm_{attr}.npy", getattr(self._model, attr), allow_pickle=False)
        np.save(folder / "lightfm_user_feature_names.npy", self.user_feature_names, allow_pickle=False)
        np.save(folder / "lightfm_item_feature_names.npy", self.item_feature_names, allow_pickle=False)

    def _load_state(self, folder: Path) -> None:
        inputs = self._inputs(self.data)
        for side, names in (("user", inputs.user.names), ("item", inputs.item.names)):
            saved = np.load(folder / f"lightfm_{side}_feature_names.npy", allow_pickle=False)
            if not np.array_equal(saved, names):
                raise ModelError(
                    f"lightfm: saved {side} feature names do not match the saved {side} features in {folder}"
                )
        model = self._new_lightfm()
        for attr in _ARRAYS:
            value = np.load(folder / f"lightfm_{attr}.npy", allow_pickle=False)
            setattr(model, attr, value)
            # LightFM checks its optimiser arrays before predicting; scoring never reads them.
            stem = attr.replace("embeddings", "embedding").replace("biases", "bias")
            for suffix in ("_gradients", "_momentum"):
                setattr(model, stem + suffix, np.zeros_like(value))
        self._install(model, inputs)


def _encode(features: Sequence[Sequence[str]], names: npt.NDArray[np.str_], side: str) -> sp.csr_matrix:
    index = {str(n): i for i, n in enumerate(names.tolist())}
    rows, cols = [], []
    for r, row in enumerate(features):
        for name in row:
            if name not in index:
                raise ValueError(f"unknown {side} feature {name!r} in row {r}; known: {sorted(index)[:10]}")
            rows.append(r)
            cols.append(index[name])
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(features), len(names)))
