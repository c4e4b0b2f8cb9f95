"""Configuration of the synthetic store generator.

Sizes (``users``, ``items``, ``days``) and the seed are required; every realism knob has a default
that gives the documented behaviour (funnel view→cart ≈ 10–20 %, cart→purchase ≈ 30–60 %, a long
popularity tail, ~5 % of items going out of stock). :meth:`SynthConfig.for_events` picks sizes for a
target event count.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from features.synth.profiles import CATEGORIES, REGIONS, SEGMENTS

# Events per user in a pilot store are measured on this many users to size a store for a target count.
_PILOT_USERS = 2000


class SynthConfig(BaseModel):
    """Everything that determines a synthetic store. The same config always gives the same store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: int = Field(ge=1, le=20_000_000, description="number of shoppers")
    items: int = Field(ge=2, le=2_000_000, description="number of catalogue items (≥ n_categories)")
    days: int = Field(ge=1, le=3660, description="length of the event history in days")
    seed: int = Field(0, ge=0, description="seed of numpy's default_rng")
    start: date = Field(date(2024, 1, 1), description="first day of the history (UTC midnight)")

    n_categories: int = Field(12, ge=1, le=len(CATEGORIES), description="categories, first N of profiles.CATEGORIES")
    brands_per_category: int = Field(5, ge=1, le=100, description="brands nested in each category")
    n_segments: int = Field(len(SEGMENTS), ge=1, le=len(SEGMENTS), description="shopper segments used")
    n_regions: int = Field(len(REGIONS), ge=1, le=len(REGIONS), description="shopper regions used")
    taste_dim: int = Field(8, ge=1, le=128, description="dimension of taste and item factor vectors")
    taste_strength: float = Field(1.0, ge=0.0, le=5.0, description="sd of personal taste around the segment mean")

    sessions_per_user_week: float = Field(2.5, gt=0.0, le=50.0, description="mean sessions per shopper per week")
    activity_sigma: float = Field(1.0, ge=0.0, le=3.0, description="log-normal sd of per-shopper activity")
    views_per_session: float = Field(6.0, ge=1.0, le=40.0, description="mean item views per session")
    category_focus: float = Field(0.8, ge=0.0, le=1.0, description="share of later views in the first view's category")
    popularity_exponent: float = Field(0.8, ge=0.0, le=3.0, description="Zipf exponent of item popularity")

    cart_logit_offset: float = Field(0.0, ge=-10.0, le=10.0, description="shifts view→cart probability (logit)")
    purchase_logit_offset: float = Field(0.0, ge=-10.0, le=10.0, description="shifts cart→purchase probability (logit)")
    repeat_probability: float = Field(0.5, ge=0.0, le=0.95, description="chance a consumable is re-bought each cycle")
    out_of_stock_share: float = Field(0.05, ge=0.0, le=0.5, description="share of items that go out of stock")

    @model_validator(mode="after")
    def _items_cover_categories(self) -> SynthConfig:
        if self.items < self.n_categories:
            raise ValueError(
                f"items ({self.items}) must be at least n_categories ({self.n_categories}) so every category "
                "has an item; lower n_categories or raise items"
            )
        return self

    @classmethod
    def for_events(cls, n_events: int, *, seed: int = 0, days: int = 91, **overrides: Any) -> SynthConfig:
        """A config whose store has about ``n_events`` events (typically within ±10 %).

        Items grow with the square root of the event count (1.5·√n, at least 40) and shoppers have one
        session a week on average (so shoppers outnumber items about 7:1 at 1M events, 20:1 at 10M);
        the number of users is set from the events per user measured on a pilot store of 2000 users
        with the same settings. ``overrides`` are any other :class:`SynthConfig` fields.
        """
        if n_events < 100:
            raise ValueError(f"n_events must be at least 100, got {n_events}")
        if "users" in overrides:
            raise ValueError("for_events picks the number of users; to fix it, build SynthConfig(users=...) directly")
        overrides.setdefault("sessions_per_user_week", 1.0)
        items = overrides.pop("items", max(40, round(1.5 * math.sqrt(n_events))))
        pilot = cls(users=_PILOT_USERS, items=items, days=days, seed=seed, **overrides)
        from features.synth.simulate import count_events  # the simulator imports this module

        per_user = count_events(pilot) / _PILOT_USERS
        users = max(1, round(n_events / max(per_user, 1e-9)))
        return cls(**{**pilot.model_dump(), "users": users})
