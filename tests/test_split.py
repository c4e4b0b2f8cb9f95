"""Temporal split: hand-checked train/test contents on a 12-event store."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from features.columns import Columns
from features.errors import SchemaError, TailorDataError
from features.split import temporal_split, validation_split


def day(d: int) -> datetime:
    return datetime(2024, 1, d)


CUT = day(4)

# (user, item, event, day). Cutoff day 4: rows before it are train, purchases from day 4 are targets.
ROWS = [
    ("u1", "i1", "view", 1),
    ("u1", "i1", "purchase", 2),
    ("u1", "i4", "view", 3),
    ("u1", "i2", "purchase", 5),
    ("u1", "i2", "purchase", 6),  # duplicate target: kept once (the day-5 one)
    ("u2", "i3", "view", 1),
    ("u2", "i3", "purchase", 5),  # u2 already saw i3 in train
    ("u2", "i1", "add_to_cart", 5),  # not a target by default
    ("u3", "i1", "purchase", 6),  # u3 has no history: cold
    ("u4", "i2", "purchase", 2),  # train only
]


@pytest.fixture
def events() -> pl.DataFrame:
    users, items, kinds, days = zip(*ROWS, strict=True)
    return pl.DataFrame(
        {
            Columns.USER: users,
            Columns.ITEM: items,
            Columns.EVENT: kinds,
            Columns.TIMESTAMP: [day(d) for d in days],
        },
        schema_overrides={Columns.TIMESTAMP: pl.Datetime("us")},
    )


def pairs(frame: pl.DataFrame) -> list[tuple[str, str]]:
    return sorted(frame.select(Columns.USER, Columns.ITEM).iter_rows())


def test_train_and_test_contents(events: pl.DataFrame) -> None:
    split = temporal_split(events, cutoff=CUT)
    assert pairs(split.train) == [("u1", "i1"), ("u1", "i1"), ("u1", "i4"), ("u2", "i3"), ("u4", "i2")]
    assert pairs(split.test) == [("u1", "i2"), ("u2", "i3"), ("u3", "i1")]
    assert split.test.filter(pl.col(Columns.USER) == "u1")[Columns.TIMESTAMP].to_list() == [day(5)]
    assert split.test_users.tolist() == ["u1", "u2", "u3"]
    assert split.targets() == {"u1": {"i2"}, "u2": {"i3"}, "u3": {"i1"}}


def test_no_test_event_leaks_into_train(events: pl.DataFrame) -> None:
    split = temporal_split(events, cutoff=CUT)
    assert split.train[Columns.TIMESTAMP].max() < split.cutoff <= split.test[Columns.TIMESTAMP].min()  # type: ignore[operator]


def test_target_event_filter(events: pl.DataFrame) -> None:
    split = temporal_split(events, cutoff=CUT, target_events=("purchase", "add_to_cart"))
    assert pairs(split.test) == [("u1", "i2"), ("u2", "i1"), ("u2", "i3"), ("u3", "i1")]
    assert split.target_lists().rows() == [("u1", ["i2"]), ("u2", ["i1", "i3"]), ("u3", ["i1"])]


def test_exclude_train_items(events: pl.DataFrame) -> None:
    split = temporal_split(events, cutoff=CUT, exclude_train_items=True)
    assert pairs(split.test) == [("u1", "i2"), ("u3", "i1")]
    assert split.test_users.tolist() == ["u1", "u3"]


def test_warm_and_cold_users(events: pl.DataFrame) -> None:
    split = temporal_split(events, cutoff=CUT)
    assert split.warm_users.tolist() == ["u1", "u2"]
    assert split.cold_users.tolist() == ["u3"]


def test_min_train_interactions_counts_distinct_items(events: pl.DataFrame) -> None:
    assert temporal_split(events, cutoff=CUT, min_train_interactions=1).test_users.tolist() == ["u1", "u2"]
    # u1 has 2 distinct train items (i1 twice, i4); u2 only 1.
    assert temporal_split(events, cutoff=CUT, min_train_interactions=2).test_users.tolist() == ["u1"]


def test_test_days_counts_back_from_last_event(events: pl.DataFrame) -> None:
    split = temporal_split(events, test_days=2)  # last event day 6 → cutoff day 4
    assert split.cutoff == CUT
    assert pairs(split.test) == pairs(temporal_split(events, cutoff=CUT).test)
    assert split.params()["split.test_days"] == 2.0


def test_aware_cutoff_is_converted_to_utc(events: pl.DataFrame) -> None:
    assert temporal_split(events, cutoff=datetime(2024, 1, 4, tzinfo=UTC)).cutoff == CUT


def test_params(events: pl.DataFrame) -> None:
    params = temporal_split(events, cutoff=CUT).params()
    assert params["split.cutoff"] == "2024-01-04T00:00:00"
    assert params["split.target_events"] == "purchase"
    assert (params["split.train_events"], params["split.test_pairs"]) == (5.0, 3.0)
    assert (params["split.warm_users"], params["split.cold_users"]) == (2.0, 1.0)


def test_validation_split_uses_training_period_only(events: pl.DataFrame) -> None:
    outer = temporal_split(events, cutoff=CUT, exclude_train_items=True)
    inner = validation_split(outer, test_days=1)  # train ends day 3 → cutoff day 2
    assert inner.cutoff == day(2)
    assert pairs(inner.train) == [("u1", "i1"), ("u2", "i3")]
    # Purchases on days 2-3 are u1/i1 and u4/i2; u1 viewed i1 on day 1, and the outer split's
    # exclude_train_items=True carries over, so only u4/i2 remains.
    assert pairs(inner.test) == [("u4", "i2")]
    assert pairs(validation_split(outer, test_days=1, exclude_train_items=False).test) == [("u1", "i1"), ("u4", "i2")]
    assert inner.test[Columns.TIMESTAMP].max() < CUT  # type: ignore[operator]


@pytest.mark.parametrize("cutoff", [day(1), datetime(2023, 12, 1), datetime(2024, 1, 6, 0, 1)])
def test_cutoff_outside_data_span(events: pl.DataFrame, cutoff: datetime) -> None:
    with pytest.raises(TailorDataError, match=r"outside the data span 2024-01-01T00:00:00 … 2024-01-06T00:00:00"):
        temporal_split(events, cutoff=cutoff)


def test_empty_test_names_cutoff(events: pl.DataFrame) -> None:
    with pytest.raises(TailorDataError, match=r"test is empty: no wishlist event at or after cutoff 2024-01-04"):
        temporal_split(events, cutoff=CUT, target_events=("wishlist",))


def test_exactly_one_of_cutoff_and_test_days(events: pl.DataFrame) -> None:
    with pytest.raises(TailorDataError, match="exactly one"):
        temporal_split(events)
    with pytest.raises(TailorDataError, match="exactly one"):
        temporal_split(events, cutoff=CUT, test_days=1)
    with pytest.raises(TailorDataError, match="positive"):
        temporal_split(events, test_days=0)


def test_empty_events_and_missing_column(events: pl.DataFrame) -> None:
    with pytest.raises(TailorDataError, match="empty"):
        temporal_split(events.clear(), cutoff=CUT)
    with pytest.raises(SchemaError, match=Columns.TIMESTAMP):
        temporal_split(events.drop(Columns.TIMESTAMP), cutoff=CUT)


def test_test_users_are_strings(events: pl.DataFrame) -> None:
    assert temporal_split(events, cutoff=CUT).test_users.dtype.kind == np.dtype(np.str_).kind


def test_validation_split_of_plain_events(events: pl.DataFrame) -> None:
    assert pairs(validation_split(events, test_days=2).test) == pairs(temporal_split(events, test_days=2).test)
