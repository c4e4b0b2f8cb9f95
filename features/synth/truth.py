"""The shoppers' true preferences: the exact quantities the generator used to pick views and purchases.

Generative model, per shopper ``u`` and item ``i``::

    fit[u, i]     = taste[u] · item_factors[i] − price_sensitivity[u] · relative_price[i]
    utility[u, i] = fit[u, i] + popularity[i]
    P(view i | one view slot of u) = softmax_i(utility[u, :])              (exact, see simulate.py)
    P(cart | view)     = sigmoid(cart_bias[u] + cart_slope · fit[u, i])
    P(purchase | cart) = sigmoid(buy_bias[u] + buy_slope · fit[u, i])

so one view slot of ``u`` ends in a purchase of ``i`` with probability ``softmax · P(cart) · P(purchase)``.
On top of that the generator applies three rules that :meth:`GroundTruth.scores` can apply too:
a durable (non-consumable) item is never bought twice by the same shopper; a consumable bought once is
bought again every ~``cycle_days[i]`` with probability ``repeat_probability``; an item that is out of
stock (``out_of_stock_at[i]`` ≤ t, NaT = never) gets views but no carts or purchases.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from features.errors import TailorDataError
from features.ids import IdMap, UnknownIdError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_ARRAYS = (
    "taste",
    "price_sensitivity",
    "cart_bias",
    "buy_bias",
    "sessions_per_week",
    "item_factors",
    "popularity",
    "relative_price",
    "consumable",
    "cycle_days",
    "out_of_stock_at",
)
_SCALARS = ("views_per_session", "cart_slope", "buy_slope", "repeat_probability")
_CHUNK_CELLS = 4_000_000  # users × items scored at once by oracle_topk


def sigmoid(x: FloatArray) -> FloatArray:
    """The logistic function, elementwise."""
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """True preferences of every shopper for every item; rows follow ``users``, columns ``items``."""

    users: IdMap
    items: IdMap
    taste: FloatArray  # (users, taste_dim)
    price_sensitivity: FloatArray  # (users,)
    cart_bias: FloatArray  # (users,) funnel logit offsets, segment + config offset
    buy_bias: FloatArray  # (users,)
    sessions_per_week: FloatArray  # (users,) mean session rate of each shopper
    item_factors: FloatArray  # (items, taste_dim)
    popularity: FloatArray  # (items,) log popularity/quality: Zipf rank term + brand quality
    relative_price: FloatArray  # (items,) log(price / category median price)
    consumable: npt.NDArray[np.bool_]  # (items,)
    cycle_days: FloatArray  # (items,) repurchase cycle of consumables, 0 for durables
    out_of_stock_at: npt.NDArray[np.datetime64]  # (items,) datetime64[us], NaT = stays in stock
    views_per_session: float
    cart_slope: float
    buy_slope: float
    repeat_probability: float

    # ---- the generative model (also used by the simulator, so both always agree) ----

    def fit(self, rows: IntArray, items: IntArray | None = None) -> FloatArray:
        """Personal fit of shoppers ``rows`` with ``items`` (default all, in id order): (rows, items)."""
        return self._user_side(rows) @ self._item_side(items).T

    def utility(self, rows: IntArray, items: IntArray | None = None) -> FloatArray:
        """View utility (fit + popularity) of shoppers ``rows`` for ``items``: views follow its softmax."""
        ones = np.ones((len(rows), 1))
        pop = self.popularity if items is None else self.popularity[items]
        return np.hstack([self._user_side(rows), ones]) @ np.hstack([self._item_side(items), pop[:, None]]).T

    def _user_side(self, rows: IntArray) -> FloatArray:
        # fit = [taste, -price_sensitivity] · [factors, relative_price]: one matrix product.
        return np.hstack([self.taste[rows], -self.price_sensitivity[rows, None]])

    def _item_side(self, items: IntArray | None) -> FloatArray:
        factors = self.item_factors if items is None else self.item_factors[items]
        price = self.relative_price if items is None else self.relative_price[items]
        return np.hstack([factors, price[:, None]])

    def funnel(self, rows: IntArray, fit: FloatArray) -> tuple[FloatArray, FloatArray]:
        """P(cart | view) and P(purchase | cart) for shopper rows and matching fit values (same shape)."""
        rows_b = rows.reshape(rows.shape + (1,) * (fit.ndim - rows.ndim))
        p_cart = sigmoid(self.cart_bias[rows_b] + self.cart_slope * fit)
        p_buy = sigmoid(self.buy_bias[rows_b] + self.buy_slope * fit)
        return p_cart, p_buy

    # ---- the oracle ----

    def rows_of(self, user_ids: Sequence[str] | npt.NDArray[np.str_]) -> IntArray:
        """Internal rows of external user ids; unknown ids raise :class:`UnknownIdError`."""
        try:
            return self.users.to_internal(user_ids)
        except UnknownIdError as exc:
            raise UnknownIdError(f"ground truth has no such shoppers: {exc}") from None

    def scores(
        self,
        user_ids: Sequence[str] | npt.NDArray[np.str_],
        *,
        purchased: Mapping[str, Collection[str]] | None = None,
        at: datetime | None = None,
    ) -> FloatArray:
        """True purchase propensity, (len(user_ids), items): expected purchases per week of each item.

        Organic part: ``sessions_per_week · views_per_session · softmax · P(cart) · P(purchase)`` (the
        per-view factor is exact; the per-week scale is approximate because re-views of an item in one
        session do not cart it twice). ``purchased`` (user id → items bought before) applies the repeat
        rules: durables already bought score 0, consumables already bought gain
        ``repeat_probability · 7 / cycle_days``. ``at`` zeroes items out of stock at that time.
        """
        rows = self.rows_of(user_ids)
        utility = self.utility(rows)
        fit = utility - self.popularity[None, :]
        p_cart, p_buy = self.funnel(rows, fit)
        out = _softmax(utility) * p_cart * p_buy
        out *= (self.sessions_per_week[rows] * self.views_per_session)[:, None]
        if purchased:
            self._apply_repeats(out, user_ids, purchased)
        if at is not None:
            out[:, self.out_of_stock_at <= np.datetime64(at, "us")] = 0.0
        return out

    def _apply_repeats(
        self, out: FloatArray, user_ids: Sequence[str] | npt.NDArray[np.str_], purchased: Mapping[str, Collection[str]]
    ) -> None:
        rebuy_rate = np.where(self.consumable, self.repeat_probability * 7.0 / np.maximum(self.cycle_days, 1e-9), 0.0)
        for row, user in enumerate(user_ids):
            bought = purchased.get(str(user))
            if not bought:
                continue
            cols = self._item_cols(bought, f"purchased[{user!r}]")
            out[row, cols] = np.where(self.consumable[cols], out[row, cols] + rebuy_rate[cols], 0.0)

    def _item_cols(self, item_ids: Collection[str], where: str) -> IntArray:
        try:
            return self.items.to_internal(np.asarray(list(item_ids), dtype=np.str_))
        except UnknownIdError as exc:
            raise UnknownIdError(f"{where}: ground truth has no such items: {exc}") from None

    def oracle_topk(
        self,
        user_ids: Sequence[str] | npt.NDArray[np.str_],
        k: int,
        exclude: Mapping[str, Collection[str]] | None = None,
        *,
        purchased: Mapping[str, Collection[str]] | None = None,
        at: datetime | None = None,
    ) -> tuple[npt.NDArray[np.str_], FloatArray]:
        """The best possible ranking: top-``k`` item ids and scores per user by :meth:`scores`.

        ``exclude`` (user id → item ids) removes items from a user's ranking (e.g. items seen in
        training). Rows with fewer than ``k`` candidates are padded with ``""`` and ``-inf``.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        user_ids = np.asarray(user_ids, dtype=np.str_)
        step = max(1, _CHUNK_CELLS // max(len(self.items), 1))
        parts = [
            self._topk_chunk(user_ids[i : i + step], k, exclude, purchased, at) for i in range(0, len(user_ids), step)
        ]
        if not parts:
            return np.empty((0, k), dtype=np.str_), np.empty((0, k), dtype=np.float64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _topk_chunk(
        self,
        user_ids: npt.NDArray[np.str_],
        k: int,
        exclude: Mapping[str, Collection[str]] | None,
        purchased: Mapping[str, Collection[str]] | None,
        at: datetime | None,
    ) -> tuple[npt.NDArray[np.str_], FloatArray]:
        scores = self.scores(user_ids, purchased=purchased, at=at)
        for row, user in enumerate(user_ids.tolist()):
            if exclude and exclude.get(user):
                scores[row, self._item_cols(exclude[user], f"exclude[{user!r}]")] = -np.inf
        cols = _topk_columns(scores, k)
        top = np.take_along_axis(scores, cols, axis=1)
        ids = self.items.to_external(cols)
        if cols.shape[1] < k:  # fewer items than k: pad like Recommendations do
            pad = k - cols.shape[1]
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values="")
            top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids[np.isneginf(top)] = ""
        return ids, top

    # ---- persistence ----

    def save(self, folder: str | Path) -> None:
        """Write one ``.npy`` per array plus ``users.npy``, ``items.npy`` and ``meta.json`` (no pickle)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.users.save(folder / "users.npy")
        self.items.save(folder / "items.npy")
        for name in _ARRAYS:
            np.save(folder / f"{name}.npy", getattr(self, name), allow_pickle=False)
        meta = {name: float(getattr(self, name)) for name in _SCALARS}
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> GroundTruth:
        """Read a folder written by :meth:`save`; a missing file raises naming it."""
        folder = Path(folder)
        names = ("users", "items", *_ARRAYS, "meta")
        missing = [n for n in names if not (folder / f"{n}.{'json' if n == 'meta' else 'npy'}").exists()]
        if missing:
            raise TailorDataError(f"ground truth folder {folder} is missing: {', '.join(missing)}")
        values: dict[str, Any] = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
        meta = json.loads((folder / "meta.json").read_text())
        values.update({name: float(meta[name]) for name in _SCALARS})
        return cls(IdMap.load(folder / "users.npy"), IdMap.load(folder / "items.npy"), **values)

    def equals(self, other: GroundTruth) -> bool:
        """True if every id, array and scalar is identical."""
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, IdMap):
                a, b = a.external, b.external
            if isinstance(a, np.ndarray) and a.dtype.kind == "M":  # NaT != NaT, so compare the raw integers
                a, b = a.view(np.int64), np.asarray(b).view(np.int64)
            if not np.array_equal(a, b):
                return False
        return True


def _softmax(x: FloatArray) -> FloatArray:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return np.asarray(z / z.sum(axis=1, keepdims=True), dtype=np.float64)


def _topk_columns(scores: FloatArray, k: int) -> IntArray:
    """Column indices of the k highest scores per row, best first; ties go to the lower column."""
    n = scores.shape[1]
    k = min(k, n)
    cand = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(scores), 1))
    vals = np.take_along_axis(scores, cand, axis=1)
    order = np.lexsort((cand, -vals), axis=-1)
    return np.asarray(np.take_along_axis(cand, order, axis=1), dtype=np.int64)
