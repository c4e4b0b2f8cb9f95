"""Shopping sessions and their events, vectorised across shoppers, sessions and views.

1. **Sessions.** Each shopper has ``Poisson(sessions_per_week · weeks)`` sessions. A session's day is
   drawn with the weekly rhythm (``profiles.WEEKDAY_WEIGHTS``), its start hour from a lunch/evening
   mixture; it holds ``1 + NegBin`` views a few seconds to minutes apart and ends on its day.
2. **Views.** The first view of a session is drawn from ``softmax(utility[u, :])`` over all items, which
   also picks the session's focus category. Each later view is drawn, with probability
   ``category_focus``, from the same softmax restricted to that category, otherwise from the full
   softmax. Because the focus category is chosen with probability ∝ its softmax mass, every view slot's
   marginal distribution is exactly ``softmax(utility[u, :])`` (see :mod:`features.synth.truth`).
   Sampling uses per-row cumulative sums over category-ordered columns, a chunk of shoppers at a time.
3. **Funnel.** A view carts its item with ``P(cart)`` unless the item is already in the session's
   cart; a carted item is bought at checkout (end of the session) with ``P(purchase)``; carts go right
   after their view. Items out of stock at checkout are never carted or bought. A durable the same
   shopper bought before is not bought again (the cart is abandoned).
4. **Repeats.** From a shopper's first purchase of a consumable, the item is bought again after
   ``cycle_days · Gamma(6, 1/6)`` days with probability ``repeat_probability``, and again, until the
   chain stops, the history ends or the item goes out of stock (then the session has the view only).
   Each repeat is its own short session: view → cart → purchase.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from features.synth.config import SynthConfig
from features.synth.profiles import DAYTIME_HOURS, EVENING_PEAK, LUNCH_PEAK, WEEKDAY_WEIGHTS
from features.synth.truth import GroundTruth

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

US = 1_000_000
DAY_US = 86_400 * US
VIEW, CART, PURCHASE = 0, 1, 2
_MAX_VIEWS = 40
_GAP_S = (45.0, 3.0, 240.0)  # mean, min, max seconds between consecutive events of a session
_CHUNK_CELLS = 2_000_000  # shoppers × items held in memory at once while sampling views


@dataclass(frozen=True)
class EventArrays:
    """All events as parallel arrays (unsorted). ``session`` numbers sessions in start-time order."""

    user: IntArray
    item: IntArray
    kind: npt.NDArray[np.int8]
    time_us: IntArray
    quantity: FloatArray
    session: IntArray
    seq: IntArray  # order of the event within its session
    n_sessions: int


@dataclass(frozen=True)
class _Sessions:
    user: IntArray
    start_us: IntArray
    n_views: IntArray
    view_gap_us: IntArray  # one per view: time from that view to the next event


@dataclass(frozen=True)
class _Views:
    session: IntArray
    position: IntArray
    user: IntArray
    time_us: IntArray
    item: IntArray
    fit: FloatArray


@dataclass(frozen=True)
class _Chain:
    user: IntArray
    item: IntArray
    time_us: IntArray


def count_events(config: SynthConfig) -> int:
    """Number of events the store of ``config`` has (used to size stores for a target count)."""
    from features.synth.store import simulate_store

    return len(simulate_store(config)[2].user)


def simulate_events(
    config: SynthConfig, truth: GroundTruth, category: IntArray, out_of_stock_at_us: IntArray, start_us: int
) -> EventArrays:
    """Simulate every session of every shopper; see the module docstring for the steps."""
    rng = np.random.default_rng([config.seed, 1])  # a stream of its own: catalogue draws never shift it
    sessions = _schedule(config, truth.sessions_per_week, rng, start_us)
    views = _draw_views(config, truth, category, sessions, rng)
    checkout_us = sessions.start_us + np.add.reduceat(sessions.view_gap_us, _offsets(sessions.n_views))
    carted, bought, quantity = _funnel(truth, views, checkout_us[views.session], out_of_stock_at_us, rng)
    chains = _repeat_chains(config, truth, views, bought, checkout_us, out_of_stock_at_us, start_us, rng)
    return _assemble(views, sessions, carted, bought, quantity, checkout_us, chains, rng)


# ---- sessions ----


def _schedule(config: SynthConfig, rate_per_week: FloatArray, rng: np.random.Generator, start_us: int) -> _Sessions:
    counts = rng.poisson(rate_per_week * config.days / 7.0)
    user = np.repeat(np.arange(config.users, dtype=np.int64), counts)
    n = len(user)
    mean_extra = config.views_per_session - 1.0
    extra = rng.negative_binomial(1.2, 1.2 / (1.2 + mean_extra), n) if mean_extra > 0 else np.zeros(n, np.int64)
    n_views = np.minimum(1 + extra, _MAX_VIEWS).astype(np.int64)
    gap_s = np.clip(rng.exponential(_GAP_S[0], int(n_views.sum())), _GAP_S[1], _GAP_S[2])
    view_gap_us = (gap_s * US).astype(np.int64)
    duration_us = np.add.reduceat(view_gap_us, _offsets(n_views))
    day = rng.choice(config.days, size=n, p=_day_weights(config))
    time_of_day_us = (_start_hours(n, rng) * 3600 * US).astype(np.int64)
    # A session that would run past midnight ends at its drawn time instead, so it stays on its day.
    time_of_day_us = np.where(time_of_day_us + duration_us < DAY_US, time_of_day_us, time_of_day_us - duration_us)
    return _Sessions(user, start_us + day * DAY_US + time_of_day_us, n_views, view_gap_us)


def _day_weights(config: SynthConfig) -> FloatArray:
    weekday = (config.start.weekday() + np.arange(config.days)) % 7
    weights = np.asarray(WEEKDAY_WEIGHTS)[weekday]
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def _start_hours(n: int, rng: np.random.Generator) -> FloatArray:
    lunch = rng.normal(LUNCH_PEAK[1], LUNCH_PEAK[2], n)
    evening = rng.normal(EVENING_PEAK[1], EVENING_PEAK[2], n)
    daytime = rng.uniform(DAYTIME_HOURS[0], DAYTIME_HOURS[1], n)
    pick = rng.choice(3, size=n, p=[LUNCH_PEAK[0], EVENING_PEAK[0], 1.0 - LUNCH_PEAK[0] - EVENING_PEAK[0]])
    hours = np.choose(pick, [lunch, evening, daytime])
    return np.asarray(np.mod(hours, 24.0), dtype=np.float64)  # late evening sessions wrap past midnight


def _offsets(counts: IntArray) -> IntArray:
    """Start index of each group of ``counts`` (all ≥ 1) consecutive rows."""
    return np.asarray(np.cumsum(counts) - counts, dtype=np.int64)


# ---- views ----


def _draw_views(
    config: SynthConfig, truth: GroundTruth, category: IntArray, sessions: _Sessions, rng: np.random.Generator
) -> _Views:
    n_views = sessions.n_views
    session = np.repeat(np.arange(len(n_views), dtype=np.int64), n_views)
    first = _offsets(n_views)
    position = np.arange(len(session), dtype=np.int64) - first[session]
    elapsed = np.cumsum(sessions.view_gap_us) - sessions.view_gap_us  # time from the first view overall
    time_us = sessions.start_us[session] + elapsed - elapsed[first[session]]
    user = sessions.user[session]
    uniform = rng.random(len(session))
    wander = (position == 0) | (rng.random(len(session)) >= config.category_focus)
    item, fit = _ViewSampler(truth, category, user, first[session], wander).sample(uniform)
    return _Views(session, position, user, time_us, item, fit)


class _ViewSampler:
    """Draws items from each shopper's softmax, globally or within a category, a chunk of shoppers at a time.

    For a chunk, every shopper's softmax is turned into a cumulative distribution over the columns
    ordered by category, shifted by +row so all rows form one increasing array; one ``searchsorted``
    then draws every view of the chunk (a category draw searches between the category's bounds).
    """

    def __init__(
        self, truth: GroundTruth, category: IntArray, user: IntArray, first_view: IntArray, wander: BoolArray
    ) -> None:
        """``user``, ``first_view`` (index of the first view of the session) and ``wander`` (draw over all
        items) describe every view; views are grouped by user in increasing order."""
        self.truth = truth
        self.category = category
        self.order = np.argsort(category, kind="stable")  # column j of the cdf is item order[j]
        self.bounds = np.searchsorted(category[self.order], np.arange(category.max() + 2))
        self.user, self.first_view, self.wander = user, first_view, wander
        self.item = np.zeros(len(user), dtype=np.int64)
        self.fit = np.zeros(len(user), dtype=np.float64)

    def sample(self, uniform: FloatArray) -> tuple[IntArray, FloatArray]:
        """Item and fit of every view, with ``uniform`` one U(0, 1) draw per view."""
        n_users = len(self.truth.taste)
        step = max(1, _CHUNK_CELLS // len(self.order))
        for u0 in range(0, n_users, step):
            v0, v1 = np.searchsorted(self.user, [u0, u0 + step])
            if v1 > v0:
                self._sample_chunk(np.arange(u0, min(u0 + step, n_users)), np.arange(v0, v1), uniform)
        return self.item, self.fit

    def _sample_chunk(self, rows: IntArray, views: IntArray, uniform: FloatArray) -> None:
        utility = self.truth.utility(rows, self.order)
        cdf = self._row_cdf(utility.copy())
        row, draw = self.user[views] - rows[0], uniform[views]
        col = np.zeros(len(views), dtype=np.int64)
        free, focused = self.wander[views], ~self.wander[views]
        col[free] = self._search(cdf, row[free], 0, len(self.order) - 1, draw[free])
        self.item[views[free]] = self.order[col[free]]
        # A focused view stays in the category of its session's first view, which is a free draw above.
        focus = self.category[self.item[self.first_view[views[focused]]]]
        lo, hi = self.bounds[focus], self.bounds[focus + 1] - 1
        col[focused] = self._search(cdf, row[focused], lo, hi, draw[focused])
        self.item[views] = self.order[col]
        self.fit[views] = utility[row, col] - self.truth.popularity[self.item[views]]

    @staticmethod
    def _row_cdf(utility: FloatArray) -> FloatArray:
        """Normalised cumulative softmax of each row (in place), row r shifted by +r, flattened."""
        utility -= utility.max(axis=1, keepdims=True)
        np.exp(utility, out=utility)
        np.cumsum(utility, axis=1, out=utility)
        utility /= utility[:, -1:]
        utility += np.arange(len(utility), dtype=np.float64)[:, None]
        return utility.reshape(-1)

    def _search(
        self, cdf: FloatArray, row: IntArray, lo: IntArray | int, hi: IntArray | int, uniform: FloatArray
    ) -> IntArray:
        """Columns in [lo, hi] of each row, drawn with probability ∝ the row's softmax restricted there."""
        base = row * len(self.order)
        below = np.where(lo > 0, cdf[base + np.maximum(lo - 1, 0)] - row, 0.0)
        top = cdf[base + hi] - row
        cols = np.searchsorted(cdf, row + below + uniform * (top - below), side="right") - base
        return np.asarray(np.clip(cols, lo, hi), dtype=np.int64)


# ---- funnel ----


def _funnel(
    truth: GroundTruth, views: _Views, checkout_us: IntArray, out_of_stock_at_us: IntArray, rng: np.random.Generator
) -> tuple[BoolArray, BoolArray, FloatArray]:
    """Which views are carted and bought, and the quantity of each cart/purchase."""
    n = len(views.item)
    in_stock = checkout_us < out_of_stock_at_us[views.item]
    p_cart, p_buy = truth.funnel(views.user, views.fit)
    wants = np.flatnonzero(in_stock & (rng.random(n) < p_cart))
    # Every view may cart its item, but an item already in the session's cart is not carted again.
    first = np.unique(views.session[wants] * len(truth.popularity) + views.item[wants], return_index=True)[1]
    carted = np.zeros(n, dtype=np.bool_)
    carted[wants[first]] = True
    bought = carted & (rng.random(n) < p_buy)
    bought &= ~_durable_rebuys(truth, views, bought, checkout_us)
    consumable = truth.consumable[views.item]
    quantity = np.where(consumable, 1 + rng.poisson(0.4, n), 1 + (rng.random(n) < 0.05)).astype(np.float64)
    return carted, bought, quantity


def _first_per_pair(user: IntArray, item: IntArray, time_us: IntArray, n_items: int) -> tuple[IntArray, BoolArray]:
    """Order by (user, item, time) and a mask (in that order) of the first row of each (user, item)."""
    key = user * n_items + item
    order = np.lexsort((time_us, key))
    first = np.ones(len(order), dtype=np.bool_)
    first[1:] = key[order][1:] != key[order][:-1]
    return np.asarray(order, dtype=np.int64), first


def _durable_rebuys(truth: GroundTruth, views: _Views, bought: BoolArray, time_us: IntArray) -> BoolArray:
    """Purchases of a durable the same shopper bought earlier (these are dropped)."""
    idx = np.flatnonzero(bought & ~truth.consumable[views.item])
    order, first = _first_per_pair(views.user[idx], views.item[idx], time_us[idx], len(truth.popularity))
    again = np.zeros(len(bought), dtype=np.bool_)
    again[idx[order[~first]]] = True
    return again


# ---- repeat purchases of consumables ----


@dataclass(frozen=True)
class _Repeats:
    user: IntArray
    item: IntArray
    time_us: IntArray
    bought: BoolArray  # False: the item was out of stock, the session is a view only


def _repeat_chains(
    config: SynthConfig,
    truth: GroundTruth,
    views: _Views,
    bought: BoolArray,
    checkout_us: IntArray,
    out_of_stock_at_us: IntArray,
    start_us: int,
    rng: np.random.Generator,
) -> _Repeats:
    idx = np.flatnonzero(bought & truth.consumable[views.item])
    bought_at = checkout_us[views.session[idx]]
    order, first = _first_per_pair(views.user[idx], views.item[idx], bought_at, len(truth.popularity))
    start = idx[order[first]]
    user, item, time_us = views.user[start], views.item[start], checkout_us[views.session[start]]
    end_us = start_us + config.days * DAY_US - 15 * 60 * US  # room for the repeat session itself
    parts: list[_Repeats] = []
    while len(user):  # one step per repurchase cycle, vectorised over all live chains
        interval = truth.cycle_days[item] * rng.gamma(6.0, 1.0 / 6.0, len(user))
        time_us = time_us + (interval * DAY_US).astype(np.int64)
        live = (rng.random(len(user)) < truth.repeat_probability) & (time_us < end_us)
        user, item, time_us = user[live], item[live], time_us[live]
        in_stock = time_us + 10 * 60 * US < out_of_stock_at_us[item]
        parts.append(_Repeats(user, item, time_us, in_stock))
        user, item, time_us = user[in_stock], item[in_stock], time_us[in_stock]
    if not parts:
        return _Repeats(user, item, time_us, np.zeros(0, dtype=np.bool_))
    return _Repeats(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("user", "item", "time_us", "bought")))


# ---- assembly ----


def _assemble(
    views: _Views,
    sessions: _Sessions,
    carted: BoolArray,
    bought: BoolArray,
    quantity: FloatArray,
    checkout_us: IntArray,
    repeats: _Repeats,
    rng: np.random.Generator,
) -> EventArrays:
    n_organic = len(sessions.user)
    cart_time = views.time_us + sessions.view_gap_us // 2  # halfway to the next view, before checkout
    organic = [
        _block(views, slice(None), VIEW, views.time_us, np.ones(len(views.item)), 2 * views.position),
        _block(views, carted, CART, cart_time, quantity, 2 * views.position + 1),
        _block(views, bought, PURCHASE, checkout_us[views.session], quantity, 2 * _MAX_VIEWS + views.position),
    ]
    repeat_blocks = _repeat_blocks(repeats, n_organic, rng)
    parts = organic + repeat_blocks
    starts = np.concatenate([sessions.start_us, repeats.time_us])
    renumber = np.empty(len(starts), dtype=np.int64)
    renumber[np.lexsort((np.arange(len(starts)), starts))] = np.arange(len(starts))  # ids follow start time
    cols = [np.concatenate([p[i] for p in parts]) for i in range(6)]
    return EventArrays(
        user=cols[0],
        item=cols[1],
        kind=cols[2].astype(np.int8),
        time_us=cols[3],
        quantity=cols[4].astype(np.float64),
        session=renumber[cols[5]],
        seq=np.concatenate([p[6] for p in parts]),
        n_sessions=len(starts),
    )


_Block = tuple[IntArray, IntArray, IntArray, IntArray, FloatArray, IntArray, IntArray]


def _block(
    views: _Views, mask: BoolArray | slice, kind: int, time_us: IntArray, quantity: FloatArray, seq: IntArray
) -> _Block:
    n = len(views.item[mask])
    return (
        views.user[mask],
        views.item[mask],
        np.full(n, kind, dtype=np.int64),
        time_us[mask],
        quantity[mask],
        views.session[mask],
        seq[mask],
    )


def _repeat_blocks(repeats: _Repeats, first_session: int, rng: np.random.Generator) -> list[_Block]:
    n = len(repeats.user)
    session = first_session + np.arange(n, dtype=np.int64)
    cart_time = repeats.time_us + (rng.uniform(20, 120, n) * US).astype(np.int64)
    buy_time = cart_time + (rng.uniform(30, 240, n) * US).astype(np.int64)
    quantity = (1 + rng.poisson(0.4, n)).astype(np.float64)
    b = repeats.bought
    ones = np.ones(n)

    def block(mask: BoolArray | slice, kind: int, time_us: IntArray, qty: FloatArray, seq: int) -> _Block:
        m = len(repeats.user[mask])
        kinds, seqs = np.full(m, kind, dtype=np.int64), np.full(m, seq, dtype=np.int64)
        return (repeats.user[mask], repeats.item[mask], kinds, time_us[mask], qty[mask], session[mask], seqs)

    return [
        block(slice(None), VIEW, repeats.time_us, ones, 0),
        block(b, CART, cart_time, quantity, 1),
        block(b, PURCHASE, buy_time, quantity, 2),
    ]
