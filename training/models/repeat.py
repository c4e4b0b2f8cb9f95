"""Repeat purchases: ``buy_again`` on its own, and ``blend`` adding it to a collaborative model.

``buy_again`` scores only items the user already bought::

    score(u, i) = c_ui × ((1 − w) + w × r_i)        (−inf when c_ui = 0)
    r_i = (#users with c_ui > repeat_threshold) / (#users with c_ui > 0 + smoothing)

``c_ui`` comes from ``TrainData.purchases`` (purchase counts; the interaction weights when absent)
and ``w`` is ``repeat_rate_weight``: 0 ranks by the user's own count only, 1 by count × the item's
repeat rate (consumables rank above one-off purchases). Recency: the model has no timestamps;
pass a recency-weighted ``purchases`` matrix (e.g. ``features.matrix.build_matrix`` over purchase
events with ``MatrixConfig(event_weights={"purchase": 1.0}, half_life_days=τ)``), so ``c_ui`` becomes
``Σ 0.5^(age/τ)``; set ``repeat_threshold`` accordingly (``> 1`` then means "more than one recent
purchase's worth").

Both models deliberately recommend seen items (``recommends_seen_items`` is True): call
``recommend(..., filter_seen=False)``. In evaluation, that is the "all items" protocol: the held-out
period's purchases are scored against a ranking that may contain items bought in training, and only
the cart/test exclusions (``exclude``) are removed. With ``filter_seen=True`` ``buy_again`` has nothing
left (all padding) and ``blend`` degrades to its base model.

``blend`` adds min-max-normalised base scores and ``repeat_weight`` × buy-again scores divided by
the user's best buy-again score (so both parts are in ``[0, 1]`` per user).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from training.models.base import ModelConfig, ModelError, Recommender, TrainData, get_model_class, register


class BuyAgainConfig(ModelConfig):
    """Weights of the repeat-purchase score."""

    repeat_rate_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="0 = user's own purchase count only; 1 = count × item repeat rate"
    )
    repeat_threshold: float = Field(
        1.0, ge=0.0, description="a user 'repeats' an item when c_ui exceeds this (1 = bought more than once)"
    )
    smoothing: float = Field(1.0, ge=0.0, description="added to the buyer count in the repeat rate's denominator")


@register
class BuyAgain(Recommender):
    """Buy it again: the user's past purchases by count and item repeat rate; -inf elsewhere."""

    name: ClassVar[str] = "buy_again"
    Config: ClassVar[type[ModelConfig]] = BuyAgainConfig
    config: BuyAgainConfig

    @property
    def recommends_seen_items(self) -> bool:
        return True

    def _fit(self, data: TrainData) -> None:
        counts = _purchase_counts(data)
        buyers = np.asarray((counts > 0).sum(axis=0), dtype=np.float64).ravel()
        repeaters = np.asarray((counts > self.config.repeat_threshold).sum(axis=0), dtype=np.float64).ravel()
        denominator = buyers + self.config.smoothing
        rate = np.divide(repeaters, denominator, out=np.zeros_like(repeaters), where=denominator > 0)
        w = self.config.repeat_rate_weight
        self._counts, self._item_factor = counts, ((1.0 - w) + w * rate).astype(np.float32)

    def _score_users(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        coo = sp.coo_matrix(self._counts[rows])
        keep = coo.data > 0
        out = np.full((len(rows), len(self.items)), -np.inf, dtype=np.float32)
        out[coo.row[keep], coo.col[keep]] = coo.data[keep] * self._item_factor[coo.col[keep]]
        return out

    def _similar_scores(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Co-purchase counts (users who bought both); -inf for items never bought together."""
        bought = sp.csr_matrix(self._counts > 0, dtype=np.float32)
        co = sp.coo_matrix(bought[:, rows].T @ bought)
        out = np.full((len(rows), len(self.items)), -np.inf, dtype=np.float32)
        out[co.row, co.col] = co.data
        return out

    def _load_state(self, folder: Path) -> None:
        self._fit(self.data)  # cheap and deterministic: recompute from the saved training data


def _purchase_counts(data: TrainData) -> sp.csr_matrix:
    """``TrainData.purchases`` (checked against the interaction shape), else the interactions."""
    counts = data.purchases if data.purchases is not None else data.interactions.matrix
    expected = data.interactions.matrix.shape
    if counts.shape != expected:
        raise ModelError(f"buy_again: purchases have shape {counts.shape}; the interactions have {expected}")
    counts = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    counts.eliminate_zeros()  # in place, hence the copy
    return counts


class BaseModelSpec(BaseModel):
    """A model chosen by registry name, with its config (validated by that model's ``Config``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("als", description="registered model name (not 'blend')")
    config: dict[str, Any] = Field(default_factory=dict, description="that model's config")


class BlendConfig(ModelConfig):
    """``blend``: a base model plus weighted buy-again scores."""

    base: BaseModelSpec = Field(default_factory=BaseModelSpec, description="the collaborative model")
    repeat_weight: float = Field(0.5, ge=0.0, description="weight of the normalised buy-again score")
    buy_again: BuyAgainConfig = Field(default_factory=BuyAgainConfig, description="buy-again settings")

    @field_validator("base")
    @classmethod
    def _known_base(cls, spec: BaseModelSpec) -> BaseModelSpec:
        """Resolve the name and normalise the config (errors name the bad key)."""
        if spec.name == Blend.name:
            raise ValueError("a blend cannot use another blend as its base")
        try:
            model_cls = get_model_class(spec.name)
        except ModelError as exc:
            raise ValueError(str(exc)) from None
        full = model_cls.Config.model_validate(spec.config).model_dump(mode="json")
        return BaseModelSpec(name=spec.name, config=full)


@register
class Blend(Recommender):
    """Base model scores + ``repeat_weight`` × buy-again scores, both normalised per user."""

    name: ClassVar[str] = "blend"
    Config: ClassVar[type[ModelConfig]] = BlendConfig
    config: BlendConfig

    @property
    def recommends_seen_items(self) -> bool:
        return True

    @property
    def handles_unknown_users(self) -> bool:
        return self._parts()[0].handles_unknown_users

    def _new_parts(self) -> tuple[Recommender, BuyAgain]:
        base = get_model_class(self.config.base.name)(self.config.base.config)
        return base, BuyAgain(self.config.buy_again)

    def _parts(self) -> tuple[Recommender, BuyAgain]:
        if getattr(self, "_base", None) is None:
            raise ModelError("blend: model is not fitted")
        return self._base, self._repeat

    def _fit(self, data: TrainData) -> None:
        base, repeat = self._new_parts()
        base.fit(data)
        repeat.fit(data)
        self._base, self._repeat = base, repeat

    def _score_users(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        base, repeat = self._parts()
        return blend_scores(base.score(rows), repeat.score(rows), self.config.repeat_weight)

    def _score_unknown(self, n: int) -> npt.NDArray[np.float32]:
        return self._parts()[0].score(np.full(n, -1, dtype=np.int64))  # nothing to repeat for them

    def _similar_scores(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return self._parts()[0]._similar_scores(rows)

    def _save_state(self, folder: Path) -> None:
        (folder / "base").mkdir(exist_ok=True)
        self._parts()[0]._save_state(folder / "base")

    def _load_state(self, folder: Path) -> None:
        base, repeat = self._new_parts()
        base._restore(self.data, folder / "base")
        repeat._restore(self.data, folder)
        self._base, self._repeat = base, repeat


def blend_scores(
    base: npt.NDArray[np.float32], repeat: npt.NDArray[np.float32], weight: float
) -> npt.NDArray[np.float32]:
    """Row-wise ``minmax(base) + weight × repeat / max(repeat)``; ``-inf`` only where both are absent.

    A row whose finite base scores are all equal normalises to 1. Missing base scores count as 0
    when the item has a repeat score.
    """
    finite = np.isfinite(base)
    lo = np.where(finite, base, np.inf).min(axis=1, keepdims=True)
    hi = np.where(finite, base, -np.inf).max(axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    base_n = np.where(finite, np.where(hi > lo, (base - lo) / span, 1.0), 0.0)
    has_rep = np.isfinite(repeat) & (repeat > 0)
    rep_max = np.where(has_rep, repeat, 0.0).max(axis=1, keepdims=True)
    rep_n = np.where(has_rep, repeat / np.where(rep_max > 0, rep_max, 1.0), 0.0)
    out = base_n + weight * rep_n
    return np.where(finite | has_rep, out, -np.inf).astype(np.float32)
