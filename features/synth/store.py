"""The synthetic store: generate it, summarise it, write it to a folder and read it back.

Folder layout written by :func:`write_store`::

    events.parquet  catalogue.parquet  users.parquet  config.json
    truth/          users.npy items.npy <one .npy per array> meta.json   (see GroundTruth.save)
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl

from features.columns import CATALOGUE_REQUIRED, Columns, EventType
from features.errors import TailorDataError
from features.ids import IdMap
from features.synth.config import SynthConfig
from features.synth.population import (
    BUY_SLOPE,
    CART_SLOPE,
    NEVER,
    Catalogue,
    Shoppers,
    build_catalogue,
    build_shoppers,
)
from features.synth.profiles import REGIONS, SEGMENTS
from features.synth.simulate import DAY_US, EventArrays, simulate_events
from features.synth.truth import GroundTruth

_EVENT_NAMES = (EventType.VIEW.value, EventType.ADD_TO_CART.value, EventType.PURCHASE.value)
_FILES = {"events": "events.parquet", "catalogue": "catalogue.parquet", "users": "users.parquet"}


@dataclass(frozen=True, eq=False)
class SyntheticStore:
    """Events, catalogue and shoppers of a synthetic store, with the ground truth that generated them."""

    events: pl.DataFrame
    catalogue: pl.DataFrame
    users: pl.DataFrame
    truth: GroundTruth
    config: SynthConfig

    def summary(self) -> dict[str, object]:
        """Headline figures: sizes, counts per event type, time span, funnel, repeats and the popularity tail."""
        return _summary(self)


def generate_store(config: SynthConfig) -> SyntheticStore:
    """Generate the store described by ``config`` (deterministic: same config, same frames)."""
    catalogue, shoppers, events, truth = simulate_store(config)
    return SyntheticStore(
        events=_events_frame(events, truth, catalogue),
        catalogue=_catalogue_frame(catalogue, truth.items),
        users=_users_frame(shoppers, truth.users),
        truth=truth,
        config=config,
    )


def simulate_store(config: SynthConfig) -> tuple[Catalogue, Shoppers, EventArrays, GroundTruth]:
    """The store as arrays, before any frame is built (also used to size stores by event count)."""
    rng = np.random.default_rng([config.seed, 0])
    start_us = _epoch_us(config.start)
    catalogue = build_catalogue(config, rng, start_us, config.days * DAY_US)
    shoppers = build_shoppers(config, rng, catalogue.category_vectors)
    truth = _ground_truth(config, catalogue, shoppers)
    events = simulate_events(config, truth, catalogue.category, catalogue.out_of_stock_at_us, start_us)
    return catalogue, shoppers, events, truth


def _epoch_us(day: date) -> int:
    return (day - date(1970, 1, 1)).days * DAY_US


def _id_strings(prefix: str, n: int) -> npt.NDArray[np.str_]:
    """``prefix`` + zero-padded numbers 0..n-1, padded to the width of ``n`` so they sort numerically."""
    width = len(str(n))
    return np.asarray(_id_series(prefix, n, width).to_numpy(), dtype=np.str_)


def _id_series(prefix: str, n: int, width: int) -> pl.Series:
    digits = pl.int_range(n, dtype=pl.Int64, eager=True).cast(pl.Utf8).str.zfill(width)
    return (prefix + digits).alias("id")


def _ground_truth(config: SynthConfig, catalogue: Catalogue, shoppers: Shoppers) -> GroundTruth:
    out_of_stock_at = catalogue.out_of_stock_at_us.astype("datetime64[us]")
    out_of_stock_at[catalogue.out_of_stock_at_us == NEVER] = np.datetime64("NaT")
    return GroundTruth(
        users=IdMap(_id_strings("u", config.users)),
        items=IdMap(_id_strings("i", config.items)),
        taste=shoppers.taste,
        price_sensitivity=shoppers.price_sensitivity,
        cart_bias=shoppers.cart_bias,
        buy_bias=shoppers.buy_bias,
        sessions_per_week=shoppers.sessions_per_week,
        item_factors=catalogue.factors,
        popularity=catalogue.popularity,
        relative_price=catalogue.relative_price,
        consumable=catalogue.consumable,
        cycle_days=catalogue.cycle_days,
        out_of_stock_at=out_of_stock_at,
        views_per_session=config.views_per_session,
        cart_slope=CART_SLOPE,
        buy_slope=BUY_SLOPE,
        repeat_probability=config.repeat_probability,
    )


# ---- frames ----


def _events_frame(events: EventArrays, truth: GroundTruth, catalogue: Catalogue) -> pl.DataFrame:
    """Contract columns, sorted by time (ties: session, then order within the session)."""
    order = (
        pl.DataFrame({"t": events.time_us, "s": events.session, "q": events.seq})
        .with_row_index("row")
        .sort(["t", "s", "q"])["row"]
        .to_numpy()
    )
    user, item, session = events.user[order], events.item[order], events.session[order]
    return pl.DataFrame(
        [
            pl.Series(Columns.USER, truth.users.external).gather(user),
            pl.Series(Columns.ITEM, truth.items.external).gather(item),
            pl.Series(Columns.EVENT, _EVENT_NAMES).gather(events.kind[order].astype(np.int64)),
            pl.Series(Columns.TIMESTAMP, events.time_us[order]).cast(pl.Datetime("us")),
            pl.Series(Columns.QUANTITY, events.quantity[order], dtype=pl.Float64),
            pl.Series(Columns.PRICE, catalogue.price[item], dtype=pl.Float64),
            _id_series("s", events.n_sessions, len(str(events.n_sessions))).gather(session).alias(Columns.SESSION),
        ]
    )


def _catalogue_frame(catalogue: Catalogue, items: IdMap) -> pl.DataFrame:
    names = np.array([spec.name for spec in catalogue.specs])
    nouns = np.array([noun for spec in catalogue.specs for noun in spec.nouns])
    noun_start = np.cumsum([0] + [len(spec.nouns) for spec in catalogue.specs])[:-1]
    frame = pl.DataFrame(
        {
            Columns.ITEM: items.external,
            Columns.CATEGORY: names[catalogue.category],
            Columns.BRAND: catalogue.brand_names[catalogue.brand],
            Columns.PRICE: catalogue.price,
            Columns.AVAILABLE: catalogue.out_of_stock_at_us == NEVER,
            "_noun": nouns[noun_start[catalogue.category] + catalogue.noun],
            "_model": 100 + np.arange(len(catalogue.price)) % 900,  # a model number, so names rarely repeat
            "consumable": catalogue.consumable,
        },
        schema_overrides={Columns.PRICE: pl.Float64, Columns.AVAILABLE: pl.Boolean, "consumable": pl.Boolean},
    )
    name = pl.concat_str(pl.col(Columns.BRAND), pl.col("_noun"), pl.col("_model"), separator=" ").alias("name")
    return frame.with_columns(name).select(*CATALOGUE_REQUIRED, "name", "consumable")


def _users_frame(shoppers: Shoppers, users: IdMap) -> pl.DataFrame:
    segments = np.array([s.name for s in SEGMENTS])
    regions = np.array(REGIONS)
    return pl.DataFrame(
        {
            Columns.USER: users.external,
            Columns.SEGMENT: segments[shoppers.segment],
            Columns.REGION: regions[shoppers.region],
        }
    )


# ---- summary ----


def _summary(store: SyntheticStore) -> dict[str, object]:
    ev = store.events
    counts = dict(ev[Columns.EVENT].value_counts().iter_rows())
    views, carts, buys = (int(counts.get(name, 0)) for name in _EVENT_NAMES)
    per_item = ev[Columns.ITEM].value_counts()["count"].sort(descending=True).to_numpy()
    return {
        "events": ev.height,
        "users": store.users.height,
        "active_users": ev[Columns.USER].n_unique(),
        "items": store.catalogue.height,
        "sessions": ev[Columns.SESSION].n_unique(),
        "counts": {name: int(counts.get(name, 0)) for name in _EVENT_NAMES},
        **_time_span(ev[Columns.TIMESTAMP]),
        "cart_per_view": carts / views if views else 0.0,
        "purchase_per_cart": buys / carts if carts else 0.0,
        "repeat_purchase_share": repeat_purchase_share(ev),
        "top1pct_item_share": _top_share(per_item, 0.01, store.catalogue.height),
        "top10pct_item_share": _top_share(per_item, 0.10, store.catalogue.height),
        "median_events_per_item": float(np.median(np.pad(per_item, (0, store.catalogue.height - len(per_item))))),
        "out_of_stock_items": int((~store.catalogue[Columns.AVAILABLE]).sum()),
    }


def _time_span(timestamps: pl.Series) -> dict[str, object]:
    first, last = timestamps.min(), timestamps.max()
    if not (isinstance(first, datetime) and isinstance(last, datetime)):
        return {"first_event": None, "last_event": None, "span_days": 0.0}
    return {
        "first_event": first.isoformat(),
        "last_event": last.isoformat(),
        "span_days": (last - first).total_seconds() / 86_400,
    }


def _top_share(per_item: npt.NDArray[np.int64], fraction: float, n_items: int) -> float:
    """Share of all events that go to the top ``fraction`` of the catalogue (at least one item)."""
    total = per_item.sum()
    return float(per_item[: max(1, math.ceil(fraction * n_items))].sum() / total) if total else 0.0


def repeat_purchase_share(events: pl.DataFrame) -> float:
    """Share of purchases of an item the same user had already bought earlier."""
    buys = events.filter(pl.col(Columns.EVENT) == EventType.PURCHASE).sort(Columns.TIMESTAMP)
    if buys.height == 0:
        return 0.0
    repeat = buys.select(pl.int_range(pl.len()).over(Columns.USER, Columns.ITEM) > 0).to_series()
    return float(repeat.mean())  # type: ignore[arg-type]


# ---- persistence ----


def write_store(store: SyntheticStore, out_dir: Path) -> dict[str, Path]:
    """Write the store to ``out_dir`` (see module docstring); returns the path of each part.

    Everything is written to a staging folder first and then moved into place, so a failure leaves
    any store already in ``out_dir`` intact.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".synth-", dir=out_dir))
    try:
        store.events.write_parquet(staging / _FILES["events"])
        store.catalogue.write_parquet(staging / _FILES["catalogue"])
        store.users.write_parquet(staging / _FILES["users"])
        (staging / "config.json").write_text(store.config.model_dump_json(indent=2))
        store.truth.save(staging / "truth")
        return _move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, out_dir: Path) -> dict[str, Path]:
    truth = out_dir / "truth"
    if truth.exists():  # set aside inside staging (deleted with it), then swap the new folder in
        os.replace(truth, staging / "truth.old")
    os.replace(staging / "truth", truth)
    paths = {"truth": truth}
    for key, name in [*_FILES.items(), ("config", "config.json")]:
        os.replace(staging / name, out_dir / name)
        paths[key] = out_dir / name
    return paths


def read_store(folder: Path) -> SyntheticStore:
    """Read a store written by :func:`write_store`; a missing part raises naming it."""
    folder = Path(folder)
    missing = [name for name in [*_FILES.values(), "config.json", "truth"] if not (folder / name).exists()]
    if missing:
        raise TailorDataError(f"synthetic store folder {folder} is missing: {', '.join(missing)}")
    return SyntheticStore(
        events=pl.read_parquet(folder / _FILES["events"]),
        catalogue=pl.read_parquet(folder / _FILES["catalogue"]),
        users=pl.read_parquet(folder / _FILES["users"]),
        truth=GroundTruth.load(folder / "truth"),
        config=SynthConfig.model_validate_json((folder / "config.json").read_text()),
    )
