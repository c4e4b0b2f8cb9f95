"""``training.evaluation`` and ``training.plots`` on a tiny fixed split with hand-computed answers.

The model is the global ``popularity`` baseline. Training popularity (distinct users) is distinct
for every item, so its ranking has no ties: A=5 > B=4 > C=3 > D=2 > E=1; F is catalogue-only (0).

    train   u1: A B C D E   u2: A B C D   u3: A B C   u4: A B   u5: A (a *view*)
    test    u3: A (repeat)   u4: E, B (repeat)   u5: A (repeat of a viewed item), C   u9 (cold): B, F
    users   u3, u4 → "premium plus"; u5, u9 → "bargain"
    catalogue categories: A, B → x; C, D → y; E, F → z

new_items (train items excluded from lists and targets; u3 has no new target and is left out):
    u4  list [C, D, E]  targets {E}      hits [0, 0, 1]
    u5  list [B, C, D]  targets {C}      hits [0, 1, 0]
    u9  list [A, B, C]  targets {B, F}   hits [0, 1, 0]   (cold: global popularity)
all_items (nothing filtered, every list is [A, B, C]):
    u3 {A} [1, 0, 0]   u4 {B, E} [0, 1, 0]   u5 {A, C} [1, 0, 1]   u9 {B, F} [0, 1, 0]
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import polars as pl
import pytest

from features.columns import Columns, EventType
from features.errors import SchemaError
from features.matrix import build_matrix
from features.split import TemporalSplit
from training.evaluation import EvaluationError, EvaluationReport, evaluate
from training.models.base import TrainData
from training.models.popularity import Popularity
from training.plots import plot_metrics_vs_k, plot_popularity_bias, plot_segments

L3, L4 = math.log2(3), math.log2(4)
CUTOFF = datetime(2024, 2, 1)
KS = (1, 3)

TRAIN = {"u1": "ABCDE", "u2": "ABCD", "u3": "ABC", "u4": "AB", "u5": "A"}
TEST = [("u3", "A"), ("u4", "E"), ("u4", "B"), ("u5", "A"), ("u5", "C"), ("u9", "B"), ("u9", "F")]


def _events(pairs: list[tuple[str, str]], start: datetime, event: str = EventType.PURCHASE) -> pl.DataFrame:
    return pl.DataFrame(
        {
            Columns.USER: [u for u, _ in pairs],
            Columns.ITEM: [i for _, i in pairs],
            Columns.EVENT: [event] * len(pairs),
            Columns.TIMESTAMP: [start + timedelta(hours=h) for h in range(len(pairs))],
        },
        schema={
            Columns.USER: pl.Utf8,
            Columns.ITEM: pl.Utf8,
            Columns.EVENT: pl.Utf8,
            Columns.TIMESTAMP: pl.Datetime("us"),
        },
    )


def _split() -> TemporalSplit:
    bought = [(u, i) for u, items in TRAIN.items() for i in items if (u, i) != ("u5", "A")]
    train = pl.concat([_events(bought, datetime(2024, 1, 1)), _events([("u5", "A")], datetime(2024, 1, 20), "view")])
    test = _events(TEST, CUTOFF)
    return TemporalSplit(train, test, np.array(["u3", "u4", "u5", "u9"]), CUTOFF)


CATALOGUE = pl.DataFrame({Columns.ITEM: list("ABCDEF"), Columns.CATEGORY: ["x", "x", "y", "y", "z", "z"]})
USERS = pl.DataFrame(
    {Columns.USER: ["u3", "u4", "u5", "u9"], Columns.SEGMENT: ["premium plus", "premium plus", "bargain", "bargain"]}
)


class FixedOracle:
    """A ground truth with fixed rankings that honours ``exclude`` and records what it was given."""

    RANKING: ClassVar[dict[str, str]] = {"u3": "A", "u4": "BEA", "u5": "CED", "u9": "AFB"}

    def __init__(self) -> None:
        self.excludes: list[dict[str, set[str]] | None] = []
        self.purchased: list[dict[str, set[str]] | None] = []
        self.at: list[datetime | None] = []

    def oracle_topk(
        self,
        user_ids: npt.NDArray[np.str_],
        k: int,
        exclude: dict[str, set[str]] | None,
        *,
        purchased: dict[str, set[str]] | None = None,
        at: datetime | None = None,
    ) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.float64]]:
        self.excludes.append(exclude)
        self.purchased.append(purchased)
        self.at.append(at)
        rows = [[i for i in self.RANKING[u] if i not in (exclude or {}).get(u, set())][:k] for u in user_ids]
        ids = np.array([r + [""] * (k - len(r)) for r in rows], dtype=np.str_)
        return ids, np.where(ids == "", -np.inf, 1.0)


@pytest.fixture(scope="module")
def split() -> TemporalSplit:
    return _split()


@pytest.fixture(scope="module")
def model(split: TemporalSplit) -> Popularity:
    return Popularity().fit(TrainData(build_matrix(split.train)))


@pytest.fixture(scope="module")
def new_items(split: TemporalSplit, model: Popularity) -> EvaluationReport:
    return evaluate(model, split, protocol="new_items", ks=KS, catalogue=CATALOGUE, users=USERS, oracle=FixedOracle())


@pytest.fixture(scope="module")
def all_items(split: TemporalSplit, model: Popularity) -> EvaluationReport:
    return evaluate(model, split, protocol="all_items", ks=KS, catalogue=CATALOGUE, users=USERS, oracle=FixedOracle())


NDCG3_U4 = (1 / L4) / 1  # hit at rank 3, one target
NDCG3_U5 = (1 / L3) / 1  # hit at rank 2, one target
NDCG3_U9 = (1 / L3) / (1 + 1 / L3)  # hit at rank 2, two targets


def test_new_items_accuracy(new_items: EvaluationReport) -> None:
    m = new_items.metrics
    assert new_items.n_users["new_items"] == 3
    assert m["new_items.n_test_users_without_targets"] == 1  # u3 only re-bought A
    assert m["new_items.ndcg_at_3"] == pytest.approx((NDCG3_U4 + NDCG3_U5 + NDCG3_U9) / 3)
    assert m["new_items.recall_at_3"] == pytest.approx((1 + 1 + 1 / 2) / 3)
    assert m["new_items.precision_at_3"] == pytest.approx(1 / 3)  # one hit in three slots for everyone
    assert m["new_items.map_at_3"] == pytest.approx((1 / 3 + 1 / 2 + (1 / 2) / 2) / 3)
    assert m["new_items.hr_at_3"] == pytest.approx(1.0)
    assert m["new_items.mrr"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)  # over the whole list (k = 3)
    assert m["new_items.ndcg_at_1"] == 0.0  # first items C, B, A are no one's new target


def test_all_items_counts_repeat_purchases(all_items: EvaluationReport) -> None:
    m = all_items.metrics
    assert all_items.n_users["all_items"] == 4  # u3 is back: its repeat purchase is a target
    assert m["all_items.ndcg_at_1"] == pytest.approx(2 / 4)  # u3 and u5 re-buy A, ranked first
    expected = [1.0, (1 / L3) / (1 + 1 / L3), (1 + 1 / L4) / (1 + 1 / L3), (1 / L3) / (1 + 1 / L3)]
    assert m["all_items.ndcg_at_3"] == pytest.approx(sum(expected) / 4)
    assert m["all_items.recall_at_3"] == pytest.approx((1 + 1 / 2 + 1 + 1 / 2) / 4)
    assert m["all_items.n_test_users_without_targets"] == 0


def test_slices(new_items: EvaluationReport) -> None:
    m = new_items.metrics
    assert new_items.slices("new_items") == ["warm", "cold", "segment_bargain", "segment_premium_plus"]
    assert new_items.n_users == {
        "new_items": 3,
        "new_items.warm": 2,
        "new_items.cold": 1,
        "new_items.segment_bargain": 2,
        "new_items.segment_premium_plus": 1,
    }
    assert m["new_items.warm.ndcg_at_3"] == pytest.approx((NDCG3_U4 + NDCG3_U5) / 2)
    assert m["new_items.cold.ndcg_at_3"] == pytest.approx(NDCG3_U9)  # cold u9 got global popularity
    assert m["new_items.segment_bargain.ndcg_at_3"] == pytest.approx((NDCG3_U5 + NDCG3_U9) / 2)
    assert m["new_items.segment_premium_plus.recall_at_3"] == pytest.approx(1.0)
    assert m["new_items.cold.n_users"] == 1


def test_beyond_accuracy(new_items: EvaluationReport, all_items: EvaluationReport) -> None:
    m = new_items.metrics
    # catalogue A–F: lists cover {C,D,E} ∪ {B,C,D} ∪ {A,B,C} = 5 of 6; first items C, B, A = 3 of 6
    assert m["new_items.coverage_at_3"] == pytest.approx(5 / 6)
    assert m["new_items.coverage_at_1"] == pytest.approx(3 / 6)
    assert m["new_items.cold.coverage_at_3"] == pytest.approx(3 / 6)
    assert all_items.metrics["all_items.coverage_at_3"] == pytest.approx(3 / 6)  # everyone gets A, B, C
    # ARP: u4 (3+2+1)/3 = 2, u5 (4+3+2)/3 = 3, u9 (5+4+3)/3 = 4 → 3; catalogue mean (5+4+3+2+1+0)/6 = 2.5
    assert m["new_items.arp_at_3"] == pytest.approx(3.0)
    assert m["new_items.arp_ratio_at_3"] == pytest.approx(3.0 / 2.5)
    # head = ceil(0.2 · 6) = 2 items {A, B}: u4 3/3, u5 2/3, u9 1/3 in the tail
    assert m["new_items.long_tail_share_at_3"] == pytest.approx((1 + 2 / 3 + 1 / 3) / 3)
    # categories: [y,y,z], [x,y,y], [x,x,y] each have 1 same-category pair of 3
    assert m["new_items.ild_category_at_3"] == pytest.approx(2 / 3)
    # novelty: −log2(popularity / 5 train users), averaged over each list, then over users
    info = {i: -math.log2(p / 5) for i, p in zip("ABCDE", (5, 4, 3, 2, 1), strict=True)}
    per_user = [sum(info[i] for i in lst) / 3 for lst in ("CDE", "BCD", "ABC")]
    assert m["new_items.novelty_at_3"] == pytest.approx(sum(per_user) / 3)


def test_popularity_profile(new_items: EvaluationReport) -> None:
    profile = new_items.popularity["new_items"]
    assert profile.k == 1
    np.testing.assert_array_equal(profile.recommended, [3, 4, 5])  # u4 → C, u5 → B, u9 → A
    np.testing.assert_array_equal(profile.catalogue, [5, 4, 3, 2, 1, 0])  # A..F


def test_oracle_ratio_and_exclusions(split: TemporalSplit, model: Popularity) -> None:
    oracle = FixedOracle()
    report = evaluate(model, split, protocol="new_items", ks=KS, oracle=oracle)
    # the oracle is told the same training history the model's lists exclude (u5's view included)
    assert oracle.excludes == [{"u4": {"A", "B"}, "u5": {"A"}}]
    # ...and the training purchases (u5's A was only a view) and the cutoff, for its repeat/stock rules
    assert oracle.purchased == [{"u4": {"A", "B"}}]
    assert oracle.at == [CUTOFF]
    # oracle lists: u4 [E] (B, A excluded) hit@1; u5 [C, E, D] hit@1; u9 [A, F, B] hits at 2 and 3
    oracle_u9 = (1 / L3 + 1 / L4) / (1 + 1 / L3)
    m = report.metrics
    assert m["new_items.oracle_ndcg_at_3"] == pytest.approx((1 + 1 + oracle_u9) / 3)
    assert m["new_items.ndcg_at_3_vs_oracle"] == pytest.approx((NDCG3_U4 + NDCG3_U5 + NDCG3_U9) / (1 + 1 + oracle_u9))
    assert m["new_items.cold.ndcg_at_3_vs_oracle"] == pytest.approx(NDCG3_U9 / oracle_u9)
    assert m["new_items.ndcg_at_1_vs_oracle"] == 0.0  # oracle ndcg@1 = 2/3, model 0
    assert "new_items.cold.ndcg_at_1_vs_oracle" not in m  # the oracle scores 0 for u9 at k=1: no ratio


def test_oracle_gets_no_exclusions_under_all_items(split: TemporalSplit, model: Popularity) -> None:
    oracle = FixedOracle()
    evaluate(model, split, protocol="all_items", ks=KS, oracle=oracle, batch_size=3)
    assert oracle.excludes == [None, None]  # 4 users in batches of 3


def test_batches_and_lists_shorter_than_k(split: TemporalSplit, model: Popularity) -> None:
    report = evaluate(model, split, protocol="new_items", ks=(3, 10), batch_size=1)
    # the model knows 5 items; u5's list (A excluded) has 4: precision@10 still divides by 10
    assert report.metrics["new_items.precision_at_10"] == pytest.approx(1 / 10)
    assert report.metrics["new_items.ndcg_at_3"] == pytest.approx((NDCG3_U4 + NDCG3_U5 + NDCG3_U9) / 3)
    assert "new_items.ild_category_at_3" not in report.metrics  # no catalogue, no categories
    assert report.metrics["new_items.coverage_at_3"] == pytest.approx(5 / 5)  # catalogue = model's 5 items


@dataclass(frozen=True)
class PlainSplit:
    """Any object with train/test/test_users works; no dependency on the split module's internals."""

    train: pl.DataFrame
    test: pl.DataFrame
    test_users: npt.NDArray[np.str_]


def test_any_split_like_object(split: TemporalSplit, model: Popularity) -> None:
    plain = PlainSplit(split.train, split.test, split.test_users)
    report = evaluate(model, plain, protocol="all_items", ks=KS)
    assert report.metrics["all_items.ndcg_at_1"] == pytest.approx(2 / 4)


def test_metric_names_are_mlflow_safe_and_parse_back(new_items: EvaluationReport) -> None:
    assert all(re.fullmatch(r"[A-Za-z0-9_\-./ ]+", name) for name in new_items.metrics)
    frame = new_items.to_frame()
    assert frame.columns == ["protocol", "slice", "metric", "k", "value"]
    assert frame.height == len(new_items.metrics)
    row = frame.filter((pl.col("slice") == "cold") & (pl.col("metric") == "ndcg_vs_oracle") & (pl.col("k") == 3))
    assert row["value"].to_list() == [pytest.approx(NDCG3_U9 / ((1 / L3 + 1 / L4) / (1 + 1 / L3)))]
    mrr = frame.filter(pl.col("metric") == "mrr")
    assert mrr["slice"].to_list()[0] == "all"
    assert mrr["k"].to_list()[0] is None


def test_combine(new_items: EvaluationReport, all_items: EvaluationReport) -> None:
    both = EvaluationReport.combine([new_items, all_items])
    assert both.protocols == ("new_items", "all_items")
    assert both.value("all_items", "ndcg", 1) == pytest.approx(0.5)
    assert both.value("new_items", "ndcg", 3, "cold") == pytest.approx(NDCG3_U9)
    assert math.isnan(both.value("new_items", "ndcg", 99))
    with pytest.raises(EvaluationError, match="appear twice"):
        EvaluationReport.combine([new_items, new_items])


def test_bad_arguments(split: TemporalSplit, model: Popularity) -> None:
    with pytest.raises(EvaluationError, match="unknown protocol"):
        evaluate(model, split, protocol="everything")  # type: ignore[arg-type]
    with pytest.raises(EvaluationError, match="positive integers"):
        evaluate(model, split, protocol="all_items", ks=(0, 5))
    with pytest.raises(SchemaError, match="segment"):
        evaluate(model, split, protocol="all_items", users=USERS.drop(Columns.SEGMENT))
    with pytest.raises(SchemaError, match=r"split\.test"):
        evaluate(model, PlainSplit(split.train, split.test.drop(Columns.ITEM), split.test_users), protocol="all_items")


def test_only_repeat_purchases_leave_nothing_for_new_items(split: TemporalSplit, model: Popularity) -> None:
    repeats = PlainSplit(split.train, _events([("u3", "A")], CUTOFF), np.array(["u3"]))
    with pytest.raises(EvaluationError, match="already had in train"):
        evaluate(model, repeats, protocol="new_items")


# --- plots ------------------------------------------------------------------------------------------
def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_metrics_vs_k(new_items: EvaluationReport, all_items: EvaluationReport, tmp_path: Path) -> None:
    fig = plot_metrics_vs_k(EvaluationReport.combine([new_items, all_items]))
    assert len(fig.axes) == 4  # precision, recall, NDCG, hit rate
    assert all(len(ax.lines) == 2 for ax in fig.axes)  # one line per protocol
    ndcg_ax = fig.axes[2]
    expected = np.array([0.5, all_items.metrics["all_items.ndcg_at_3"]])
    np.testing.assert_allclose(np.asarray(ndcg_ax.lines[1].get_ydata(), dtype=np.float64), expected)
    fig.savefig(tmp_path / "k.png")
    assert _is_png(tmp_path / "k.png")


def test_plot_popularity_bias(new_items: EvaluationReport, tmp_path: Path) -> None:
    fig = plot_popularity_bias(new_items)
    (ax,) = fig.axes
    catalogue, recommended = ax.containers
    # bins 0 | 1 | 2–3 | 4–7: catalogue pops [5,4,3,2,1,0] → 1,1,2,2 of 6; recommended [3,4,5] → 0,0,1,2 of 3
    np.testing.assert_allclose([b.get_height() for b in catalogue], [1 / 6, 1 / 6, 2 / 6, 2 / 6])
    np.testing.assert_allclose([b.get_height() for b in recommended], [0, 0, 1 / 3, 2 / 3])
    assert "coverage@1: 50.0%" in ax.texts[0].get_text()
    fig.savefig(tmp_path / "pop.png")
    assert _is_png(tmp_path / "pop.png")


def test_plot_segments(new_items: EvaluationReport, all_items: EvaluationReport, tmp_path: Path) -> None:
    fig = plot_segments(EvaluationReport.combine([new_items, all_items]), k=3)
    assert len(fig.axes) == 2  # one panel per protocol
    ax = fig.axes[0]
    heights = [bar.get_height() for bar in ax.containers[0]]
    assert len(heights) == 5  # all, warm, cold, bargain, premium plus
    assert heights[2] == pytest.approx(NDCG3_U9)
    assert [t.get_text() for t in ax.texts] == ["n=3", "n=2", "n=1", "n=2", "n=1"]
    assert len(ax.lines) == 1  # the oracle markers
    fig.savefig(tmp_path / "seg.png")
    assert _is_png(tmp_path / "seg.png")
