"""The synthetic store generator: determinism, contract, realism figures and the ground truth."""

from __future__ import annotations

import math
from datetime import date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from features.columns import Columns, EventType
from features.errors import TailorDataError
from features.ids import IdMap, UnknownIdError
from features.synth import GroundTruth, SynthConfig, SyntheticStore, generate_store, read_store, write_store

TINY = SynthConfig(users=50, items=40, days=14, seed=0)
# Big enough for stable ratios and counts, still generated in a fraction of a second.
SMALL = SynthConfig(users=300, items=120, days=28, seed=7)


@pytest.fixture(scope="module")
def tiny() -> SyntheticStore:
    return generate_store(TINY)


@pytest.fixture(scope="module")
def small() -> SyntheticStore:
    return generate_store(SMALL)


def _of_type(events: pl.DataFrame, kind: EventType) -> pl.DataFrame:
    return events.filter(pl.col(Columns.EVENT) == kind.value)


# ---- determinism, ids and the column contract ----


def test_same_config_gives_identical_store(tiny: SyntheticStore) -> None:
    again = generate_store(TINY)
    assert again.events.equals(tiny.events)
    assert again.catalogue.equals(tiny.catalogue)
    assert again.users.equals(tiny.users)
    assert again.truth.equals(tiny.truth)


def test_different_seed_gives_different_store(tiny: SyntheticStore) -> None:
    other = generate_store(TINY.model_copy(update={"seed": 1}))
    assert not other.events.equals(tiny.events)
    assert not other.catalogue.equals(tiny.catalogue)
    assert not np.array_equal(other.truth.taste, tiny.truth.taste)


def test_ids_are_zero_padded_to_the_count_and_sorted(tiny: SyntheticStore) -> None:
    assert tiny.users[Columns.USER].to_list() == [f"u{i:02d}" for i in range(50)]
    assert tiny.catalogue[Columns.ITEM].to_list() == [f"i{i:02d}" for i in range(40)]
    assert tiny.truth.users.external.tolist() == tiny.users[Columns.USER].to_list()
    assert tiny.truth.items.external.tolist() == tiny.catalogue[Columns.ITEM].to_list()
    sessions = tiny.events[Columns.SESSION].unique()
    width = len(str(sessions.len()))
    assert sessions.str.len_chars().to_list() == [width + 1] * sessions.len()


def test_frames_follow_the_column_contract(tiny: SyntheticStore) -> None:
    assert dict(tiny.events.schema) == {
        Columns.USER: pl.Utf8,
        Columns.ITEM: pl.Utf8,
        Columns.EVENT: pl.Utf8,
        Columns.TIMESTAMP: pl.Datetime("us"),
        Columns.QUANTITY: pl.Float64,
        Columns.PRICE: pl.Float64,
        Columns.SESSION: pl.Utf8,
    }
    cat = tiny.catalogue.schema
    assert [cat[Columns.AVAILABLE], cat[Columns.PRICE], cat["consumable"]] == [pl.Boolean, pl.Float64, pl.Boolean]
    assert tiny.users.columns == [Columns.USER, Columns.SEGMENT, Columns.REGION]
    assert tiny.events.null_count().sum_horizontal().item() == 0
    assert set(tiny.events[Columns.EVENT].unique()) == {e.value for e in EventType}
    # Event prices are the catalogue prices.
    joined = tiny.events.join(tiny.catalogue, on=Columns.ITEM, suffix="_cat")
    assert (joined[Columns.PRICE] == joined[f"{Columns.PRICE}_cat"]).all()


def test_tiny_store_has_the_documented_size(tiny: SyntheticStore) -> None:
    summary = tiny.summary()
    assert 1000 <= _number(summary, "events") <= 5000
    counts = summary["counts"]
    assert isinstance(counts, dict)
    assert sum(counts.values()) == summary["events"] == tiny.events.height


def _number(summary: dict[str, object], key: str) -> float:
    value = summary[key]
    assert isinstance(value, int | float)
    return float(value)


# ---- catalogue ----


def test_catalogue_categories_brands_and_prices(small: SyntheticStore) -> None:
    cat = small.catalogue
    assert cat[Columns.CATEGORY].n_unique() == SMALL.n_categories
    # Brands are nested: every brand belongs to exactly one category.
    assert cat.group_by(Columns.BRAND).agg(pl.col(Columns.CATEGORY).n_unique())[Columns.CATEGORY].max() == 1
    medians = cat.group_by(Columns.CATEGORY).agg(pl.col(Columns.PRICE).median())[Columns.PRICE].to_numpy()
    assert medians.max() / medians.min() > 5  # e.g. grocery vs electronics
    assert cat[Columns.PRICE].to_numpy().min() >= 0.49
    consumable = cat.group_by(Columns.CATEGORY).agg(pl.col("consumable").first()).filter("consumable")
    assert set(consumable[Columns.CATEGORY]) == {"coffee", "pet_food", "beauty", "grocery"}


# ---- sessions and the funnel ----


def test_every_cart_follows_a_view_and_every_purchase_a_cart_in_the_same_session(small: SyntheticStore) -> None:
    ev = small.events
    keys = [Columns.SESSION, Columns.ITEM]
    first = {
        kind: _of_type(ev, kind).group_by(keys).agg(pl.col(Columns.TIMESTAMP).min().alias(kind.value))
        for kind in EventType
    }
    carts = first[EventType.ADD_TO_CART].join(first[EventType.VIEW], on=keys, how="left")
    assert carts.height > 100
    assert (carts[EventType.VIEW.value] < carts[EventType.ADD_TO_CART.value]).all()
    buys = first[EventType.PURCHASE].join(first[EventType.ADD_TO_CART], on=keys, how="left")
    assert buys.height > 50
    assert (buys[EventType.ADD_TO_CART.value] < buys[EventType.PURCHASE.value]).all()
    assert ev.group_by(Columns.SESSION).agg(pl.col(Columns.USER).n_unique())[Columns.USER].max() == 1


def test_within_session_timestamps_increase_by_seconds_to_minutes(small: SyntheticStore) -> None:
    views = _of_type(small.events, EventType.VIEW).sort(Columns.SESSION, Columns.TIMESTAMP)
    gaps = views.select(pl.col(Columns.TIMESTAMP).diff().over(Columns.SESSION).dt.total_seconds()).drop_nulls()
    seconds = gaps.to_series().to_numpy()
    assert seconds.min() >= 3
    assert seconds.max() <= 240
    assert 20 <= np.median(seconds) <= 90


def test_sessions_focus_on_the_category_of_their_first_view(small: SyntheticStore) -> None:
    views = _of_type(small.events, EventType.VIEW).join(
        small.catalogue.select(Columns.ITEM, Columns.CATEGORY), on=Columns.ITEM
    )
    later = (
        views.sort(Columns.TIMESTAMP)
        .with_columns(
            pl.col(Columns.CATEGORY).first().over(Columns.SESSION).alias("focus"),
            pl.int_range(pl.len()).over(Columns.SESSION).alias("position"),
        )
        .filter(pl.col("position") > 0)
    )
    same = (later[Columns.CATEGORY] == later["focus"]).mean()
    assert isinstance(same, float)
    assert same > 0.75  # category_focus = 0.8, plus wandering views that land in the category by chance


def test_segments_shift_prices_and_categories(small: SyntheticStore) -> None:
    relative = pl.col(Columns.PRICE) / pl.col(Columns.PRICE).median().over(Columns.CATEGORY)
    items = small.catalogue.select(Columns.ITEM, Columns.CATEGORY, relative.alias("relative_price"))
    family_likes = ["toys", "grocery", "pet_food", "garden"]
    per_segment = (
        _of_type(small.events, EventType.PURCHASE)
        .join(items, on=Columns.ITEM)
        .join(small.users, on=Columns.USER)
        .group_by(Columns.SEGMENT)
        .agg(pl.col("relative_price").mean(), pl.col(Columns.CATEGORY).is_in(family_likes).mean().alias("family"))
    )
    by = {row[Columns.SEGMENT]: row for row in per_segment.iter_rows(named=True)}
    assert by["premium"]["relative_price"] > 1.5 * by["bargain"]["relative_price"]
    assert by["family"]["family"] > by["premium"]["family"] + 0.15


def test_funnel_ratios_are_in_the_documented_ranges(small: SyntheticStore) -> None:
    summary = small.summary()
    assert 0.08 <= _number(summary, "cart_per_view") <= 0.22
    assert 0.30 <= _number(summary, "purchase_per_cart") <= 0.60


# ---- popularity and activity ----


def test_popularity_has_a_long_tail(small: SyntheticStore) -> None:
    counts = small.events[Columns.ITEM].value_counts()["count"].sort(descending=True).to_numpy()
    counts = np.pad(counts, (0, SMALL.items - len(counts)))
    top10 = counts[: SMALL.items // 10].sum() / counts.sum()
    assert top10 > 0.35  # 10 % of items take well over 10 % of events
    assert np.median(counts) < counts.mean() / 2
    assert _gini(counts) > 0.5
    assert _number(small.summary(), "top10pct_item_share") == pytest.approx(top10)


def test_activity_is_heavy_tailed(small: SyntheticStore) -> None:
    per_user = small.events.group_by(Columns.USER).len()["len"].sort(descending=True).to_numpy()
    top5 = per_user[: SMALL.users // 20].sum() / per_user.sum()
    assert top5 > 0.15  # the most active 5 % of shoppers make far more than 5 % of events


def _gini(values: np.ndarray) -> float:
    x = np.sort(values.astype(float))
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def test_gini_helper_is_right_on_known_inputs() -> None:
    assert _gini(np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    assert _gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)


# ---- repeats, stock-outs, time ----


def test_repeat_purchases_are_consumables_bought_again_days_later(small: SyntheticStore) -> None:
    buys = (
        _of_type(small.events, EventType.PURCHASE)
        .sort(Columns.TIMESTAMP)
        .join(small.catalogue.select(Columns.ITEM, "consumable"), on=Columns.ITEM)
        .with_columns(
            (pl.int_range(pl.len()).over(Columns.USER, Columns.ITEM) > 0).alias("repeat"),
            pl.col(Columns.TIMESTAMP).diff().over(Columns.USER, Columns.ITEM).dt.total_hours().alias("gap_h"),
        )
    )
    repeats = buys.filter("repeat")
    assert repeats.height >= 20
    assert repeats["consumable"].all()  # durables are never bought twice by the same shopper
    assert np.median(repeats["gap_h"].to_numpy()) >= 3 * 24
    assert _number(small.summary(), "repeat_purchase_share") == pytest.approx(repeats.height / buys.height)


def test_out_of_stock_items_get_views_but_no_carts_or_purchases_after_going_out(small: SyntheticStore) -> None:
    out = small.catalogue.filter(~pl.col(Columns.AVAILABLE))
    assert out.height == round(SMALL.out_of_stock_share * SMALL.items)
    truth = small.truth
    since = pl.DataFrame({Columns.ITEM: truth.items.external, "out_at": truth.out_of_stock_at})
    assert since.filter(pl.col("out_at").is_not_null())[Columns.ITEM].sort().equals(out[Columns.ITEM].sort())
    after = small.events.join(since, on=Columns.ITEM).filter(pl.col(Columns.TIMESTAMP) >= pl.col("out_at"))
    assert set(after[Columns.EVENT]) == {EventType.VIEW.value}


def test_events_span_the_configured_days(small: SyntheticStore) -> None:
    start = np.datetime64("2024-01-01T00:00:00", "us")
    ts = small.events[Columns.TIMESTAMP].to_numpy()
    assert ts.min() >= start
    assert ts.max() < start + np.timedelta64(SMALL.days, "D")
    assert ts.max() - ts.min() > np.timedelta64(SMALL.days - 2, "D")


def test_weekly_rhythm_is_not_uniform(small: SyntheticStore) -> None:
    starts = small.events.group_by(Columns.SESSION).agg(pl.col(Columns.TIMESTAMP).min())
    weekday = starts[Columns.TIMESTAMP].dt.weekday().to_numpy()  # 28 days: every weekday 4 times
    counts = np.bincount(weekday, minlength=8)[1:]
    expected = counts.sum() / 7
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 > 30  # uniform would exceed 22.5 with probability 0.001 (6 degrees of freedom)
    assert counts[5:].min() > counts[1:4].max()  # the weekend is busier than Tue–Thu


# ---- the ground truth ----


def test_truth_ranks_purchased_items_high(small: SyntheticStore) -> None:
    buys = _of_type(small.events, EventType.PURCHASE).unique([Columns.USER, Columns.ITEM])
    users = buys[Columns.USER].unique().sort().to_numpy().astype(str)
    scores = small.truth.scores(users)
    rank = scores.argsort(axis=1).argsort(axis=1) / (scores.shape[1] - 1)  # percentile within the user's row
    rows = np.searchsorted(users, buys[Columns.USER].to_numpy().astype(str))
    cols = small.truth.items.to_internal(buys[Columns.ITEM].to_numpy().astype(str))
    own = rank[rows, cols].mean()
    assert own > 0.7
    # Personal tastes matter: another shopper's scores rank these purchases clearly lower.
    shifted = rank[(rows + len(users) // 2) % len(users), cols].mean()
    assert own - shifted > 0.05


def test_view_slots_follow_the_truth_softmax_exactly() -> None:
    store = generate_store(
        SynthConfig(users=1, items=30, days=700, seed=3, sessions_per_user_week=30, activity_sigma=0.0)
    )
    views = _of_type(store.events, EventType.VIEW)
    counts = np.bincount(store.truth.items.to_internal(views[Columns.ITEM].to_numpy().astype(str)), minlength=30)
    utility = store.truth.utility(np.array([0]))[0]
    softmax = np.exp(utility - utility.max()) / np.exp(utility - utility.max()).sum()
    assert views.height > 10_000
    assert 0.5 * np.abs(counts / counts.sum() - softmax).sum() < 0.03  # total variation distance


def _hand_truth() -> GroundTruth:
    """Two shoppers, three items, 1-d tastes: every score can be worked out by hand."""
    return GroundTruth(
        users=IdMap(np.array(["u0", "u1"])),
        items=IdMap(np.array(["a", "b", "c"])),
        taste=np.array([[1.0], [-1.0]]),
        price_sensitivity=np.array([0.0, 1.0]),
        cart_bias=np.array([0.0, 0.0]),
        buy_bias=np.array([0.0, 0.0]),
        sessions_per_week=np.array([1.0, 2.0]),
        item_factors=np.array([[1.0], [0.0], [-1.0]]),
        popularity=np.array([0.0, math.log(2.0), 0.0]),
        relative_price=np.array([0.0, 1.0, 0.0]),
        consumable=np.array([False, True, False]),
        cycle_days=np.array([0.0, 14.0, 0.0]),
        out_of_stock_at=np.array(["NaT", "NaT", "2024-01-10"], dtype="datetime64[us]"),
        views_per_session=5.0,
        cart_slope=0.0,
        buy_slope=0.0,
        repeat_probability=0.5,
    )


def test_scores_match_the_formula_worked_by_hand() -> None:
    truth = _hand_truth()
    # u0: fit = (1, 0, -1), utility = (1, ln 2, -1); both funnel steps are sigmoid(0) = 1/2.
    weights = np.array([math.e, 2.0, 1 / math.e])
    expected_u0 = 1.0 * 5.0 * weights / weights.sum() * 0.25
    # u1: fit = (-1, -1, 1) (price sensitivity 1 × relative price 1 on b), utility = (-1, ln2 - 1, 1).
    weights = np.array([1 / math.e, 2 / math.e, math.e])
    expected_u1 = 2.0 * 5.0 * weights / weights.sum() * 0.25
    np.testing.assert_allclose(truth.scores(["u0", "u1"]), np.vstack([expected_u0, expected_u1]))
    np.testing.assert_allclose(truth.fit(np.array([1])), [[-1.0, -1.0, 1.0]])


def test_scores_apply_repeat_and_stock_rules() -> None:
    truth = _hand_truth()
    base = truth.scores(["u0"])[0]
    after = truth.scores(["u0"], purchased={"u0": {"a", "b"}}, at=datetime(2024, 1, 10))[0]
    assert after[0] == 0.0  # durable already bought: never bought again
    assert after[1] == pytest.approx(base[1] + 0.5 * 7 / 14)  # consumable: + repeat rate per week
    assert after[2] == 0.0  # out of stock since 2024-01-10
    assert truth.scores(["u0"], at=datetime(2024, 1, 9))[0][2] == base[2]


def test_oracle_topk_ranks_excludes_and_pads() -> None:
    truth = _hand_truth()
    ids, scores = truth.oracle_topk(["u0", "u1"], k=2)
    assert ids.tolist() == [["a", "b"], ["c", "b"]]
    np.testing.assert_allclose(scores, np.sort(truth.scores(["u0", "u1"]), axis=1)[:, ::-1][:, :2])
    ids, scores = truth.oracle_topk(["u0", "u1"], k=4, exclude={"u0": {"a"}})
    assert ids.tolist() == [["b", "c", "", ""], ["c", "b", "a", ""]]
    assert np.isneginf(scores[0, 2:]).all()
    assert np.isfinite(scores[1, :3]).all()


def test_unknown_ids_raise_clear_errors() -> None:
    truth = _hand_truth()
    with pytest.raises(UnknownIdError, match=r"no such shoppers.*'nobody'"):
        truth.scores(["u0", "nobody"])
    with pytest.raises(UnknownIdError, match=r"exclude\['u0'\].*'zzz'"):
        truth.oracle_topk(["u0"], k=1, exclude={"u0": {"zzz"}})
    with pytest.raises(ValueError, match="k must be at least 1"):
        truth.oracle_topk(["u0"], k=0)


# ---- persistence ----


def test_write_read_round_trip(tiny: SyntheticStore, tmp_path: Path) -> None:
    paths = write_store(tiny, tmp_path / "store")
    assert {p.name for p in paths.values()} == {
        "events.parquet",
        "catalogue.parquet",
        "users.parquet",
        "config.json",
        "truth",
    }
    back = read_store(tmp_path / "store")
    assert back.events.equals(tiny.events)
    assert back.catalogue.equals(tiny.catalogue)
    assert back.users.equals(tiny.users)
    assert back.truth.equals(tiny.truth)
    assert back.config == tiny.config
    assert not list((tmp_path / "store").glob(".synth-*"))  # no staging folder left behind
    assert not list((tmp_path / "store").rglob("*.pkl"))


def test_write_store_replaces_an_existing_store(tiny: SyntheticStore, small: SyntheticStore, tmp_path: Path) -> None:
    write_store(small, tmp_path)
    write_store(tiny, tmp_path)
    back = read_store(tmp_path)
    assert back.events.equals(tiny.events)
    assert back.truth.equals(tiny.truth)


def test_read_store_names_missing_parts(tiny: SyntheticStore, tmp_path: Path) -> None:
    write_store(tiny, tmp_path)
    (tmp_path / "users.parquet").unlink()
    with pytest.raises(TailorDataError, match=r"missing: users\.parquet"):
        read_store(tmp_path)
    with pytest.raises(TailorDataError, match="missing: users, items"):
        GroundTruth.load(tmp_path / "nowhere")


# ---- configuration ----


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="user_count"):
        SynthConfig(users=5, items=40, days=7, user_count=3)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"users": 0}, "users"),
        ({"days": 0}, "days"),
        ({"out_of_stock_share": 0.9}, "out_of_stock_share"),
        ({"category_focus": 1.5}, "category_focus"),
        ({"items": 5}, r"items \(5\) must be at least n_categories \(12\)"),
    ],
)
def test_config_rejects_bad_ranges_naming_the_field(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SynthConfig(**{"users": 5, "items": 40, "days": 7, **changes})  # type: ignore[arg-type]


def test_config_is_frozen_and_has_the_documented_defaults() -> None:
    config = SynthConfig(users=5, items=40, days=7)
    assert (config.seed, config.start, config.n_categories) == (0, date(2024, 1, 1), 12)
    with pytest.raises(ValidationError):
        config.users = 6  # type: ignore[misc]


def test_for_events_targets_the_event_count() -> None:
    config = SynthConfig.for_events(30_000, seed=2)
    assert config.items == round(1.5 * math.sqrt(30_000))
    events = generate_store(config).events.height
    assert 0.85 * 30_000 <= events <= 1.15 * 30_000
    with pytest.raises(ValueError, match="at least 100"):
        SynthConfig.for_events(10)
    with pytest.raises(ValueError, match="picks the number of users"):
        SynthConfig.for_events(1000, users=5)
