"""Honest offline evaluation of a :class:`~training.models.base.Recommender` on a temporal split.

Each test user gets a top-``max(ks)`` list ranked over the model's *whole* catalogue (never sampled
negatives), and the list is scored against the user's test purchases with ``training.metrics``.

Protocols (both run on the same split, so they are directly comparable)
    ``new_items``  targets are test purchases of items the user had *no* training interaction with
                   (any event type); those training items are excluded from the recommendations too
                   (``filter_seen=True`` plus an explicit ``exclude`` matrix of the same history, so
                   the two sides always agree whatever the model was fitted on).
    ``all_items``  every test purchase is a target and nothing is filtered: a repeat purchase counts.

Users: the split's test users with at least one target under the protocol (a user whose only test
purchases are repeats has nothing to find under ``new_items`` and is left out, counted in
``n_test_users_without_targets``). Users unknown to the model (cold) stay in: they get what the model
gives them (a fallback or an empty list, scoring 0).

Slices: ``all``, ``warm``/``cold`` (any / no training event) and ``segment_<name>`` (from the
``users`` frame's ``segment`` column). Every slice reports its user count.

Metric names are flat and MLflow-safe, ``<protocol>[.<slice>].<metric>[_at_<k>]``, e.g.
``new_items.ndcg_at_10``, ``new_items.cold.recall_at_20``, ``all_items.mrr``,
``new_items.ndcg_at_10_vs_oracle``. See :func:`evaluate` for the full list.

Errors
    EvaluationError (ValueError)   bad arguments (protocol, ks, batch size), nothing to evaluate, or a
                                   model/oracle returning lists of the wrong shape
    features.errors.SchemaError    the split, catalogue or users frame lacks a needed column
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt
import polars as pl
import scipy.sparse as sp

from features.columns import Columns, EventType
from features.errors import SchemaError
from training import metrics as m
from training.models.base import Recommender

EvalProtocol = Literal["new_items", "all_items"]
PROTOCOLS: tuple[EvalProtocol, ...] = get_args(EvalProtocol)
DEFAULT_KS: tuple[int, ...] = (10, 20, 50)

Floats = npt.NDArray[np.float64]
StrMatrix = npt.NDArray[np.str_]
_NAME = re.compile(  # <protocol>[.<slice>].<metric>[_at_<k>][_vs_oracle]
    r"^(?P<protocol>[^.]+)\.(?:(?P<slice>[^.]+)\.)?(?P<metric>.+?)(?:_at_(?P<k>\d+))?(?P<vs>_vs_oracle)?$"
)


class EvaluationError(ValueError):
    """Evaluation cannot run or its inputs are inconsistent; the message says which and why."""


class SplitLike(Protocol):
    """What evaluation needs from a split (``features.split.TemporalSplit`` fits)."""

    @property
    def train(self) -> pl.DataFrame: ...

    @property
    def test(self) -> pl.DataFrame: ...

    @property
    def test_users(self) -> npt.NDArray[np.str_]: ...


class OracleLike(Protocol):
    """A ground-truth ranker (the synthetic generator's ``GroundTruth``)."""

    def oracle_topk(
        self,
        user_ids: npt.NDArray[np.str_],
        k: int,
        exclude: dict[str, set[str]] | None,
        *,
        purchased: dict[str, set[str]] | None = None,
        at: datetime | None = None,
    ) -> tuple[npt.NDArray[np.str_], npt.NDArray[Any]]:
        """``purchased`` (train purchases per user) and ``at`` (the cutoff) let the oracle apply the
        same repeat-purchase and stock rules that generated the test period."""


@dataclass(frozen=True)
class PopularityProfile:
    """Inputs of the popularity-bias plot for one protocol, at cutoff ``k``.

    ``recommended`` holds the training popularity (distinct users) of every item slot in every
    evaluated user's top-k; ``catalogue`` the popularity of every catalogue item.
    """

    k: int
    recommended: Floats
    catalogue: Floats


@dataclass(frozen=True)
class EvaluationReport:
    """Metrics of one or more protocols. ``n_users`` is keyed ``<protocol>`` or ``<protocol>.<slice>``."""

    metrics: dict[str, float]
    n_users: dict[str, int]
    ks: tuple[int, ...]
    popularity: dict[str, PopularityProfile] = field(default_factory=dict)

    @property
    def protocols(self) -> tuple[str, ...]:
        """Protocols in this report, in evaluation order."""
        return tuple(key for key in self.n_users if "." not in key)

    def slices(self, protocol: str) -> list[str]:
        """Slice names of ``protocol`` other than ``all``, in report order (warm, cold, segments)."""
        return [key.split(".", 1)[1] for key in self.n_users if key.startswith(f"{protocol}.")]

    def value(self, protocol: str, metric: str, k: int | None = None, slice_: str = "all") -> float:
        """One metric, e.g. ``value("new_items", "ndcg", 10, "cold")``; NaN when not reported."""
        prefix = protocol if slice_ == "all" else f"{protocol}.{slice_}"
        name = f"{prefix}.{metric}" if k is None else f"{prefix}.{metric}_at_{k}"
        return self.metrics.get(name, float("nan"))

    def to_frame(self) -> pl.DataFrame:
        """Long format for tables and plots: ``protocol, slice, metric, k (null if none), value``."""
        rows = [(*_parse_name(name), value) for name, value in self.metrics.items()]
        schema = {"protocol": pl.Utf8, "slice": pl.Utf8, "metric": pl.Utf8, "k": pl.Int64, "value": pl.Float64}
        return pl.DataFrame(rows, schema=schema, orient="row")

    @classmethod
    def combine(cls, reports: Iterable[EvaluationReport]) -> EvaluationReport:
        """One report holding several protocols (e.g. both ``new_items`` and ``all_items``)."""
        metrics: dict[str, float] = {}
        n_users: dict[str, int] = {}
        popularity: dict[str, PopularityProfile] = {}
        ks: set[int] = set()
        for report in reports:
            if overlap := set(report.protocols) & set(popularity):
                raise EvaluationError(f"cannot combine reports: protocol(s) {sorted(overlap)} appear twice")
            metrics.update(report.metrics)
            n_users.update(report.n_users)
            popularity.update(report.popularity)
            ks.update(report.ks)
        return cls(metrics, n_users, tuple(sorted(ks)), popularity)


def _parse_name(name: str) -> tuple[str, str, str, int | None]:
    """``new_items.cold.ndcg_at_10_vs_oracle`` → ``("new_items", "cold", "ndcg_vs_oracle", 10)``."""
    match = _NAME.match(name)
    if match is None:
        raise EvaluationError(f"metric name {name!r} does not follow <protocol>[.<slice>].<metric>[_at_<k>]")
    k = match["k"]
    return match["protocol"], match["slice"] or "all", match["metric"] + (match["vs"] or ""), int(k) if k else None


@dataclass(frozen=True)
class _Items:
    """Every item id seen anywhere in the evaluation, sorted, with per-item arrays aligned to it."""

    ids: npt.NDArray[np.str_]
    in_catalogue: npt.NDArray[np.bool_]
    popularity: Floats  # distinct training users per item
    n_train_users: int
    categories: npt.NDArray[np.int64] | None  # category codes (one shared code for "unknown")

    @property
    def is_tail(self) -> npt.NDArray[np.bool_]:
        return m.long_tail_mask(self.popularity, self.in_catalogue)

    def encode(self, item_ids: StrMatrix) -> npt.NDArray[np.int64]:
        """Item id matrix → index matrix into :attr:`ids` (``-1`` for ``""`` padding)."""
        if len(self.ids) == 0:
            return np.full(item_ids.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, item_ids), len(self.ids) - 1)
        return np.where(self.ids[pos] == item_ids, pos, -1).astype(np.int64)


# --- public entry point -----------------------------------------------------------------------------
def evaluate(
    model: Recommender,
    split: SplitLike,
    *,
    protocol: EvalProtocol,
    ks: Sequence[int] = DEFAULT_KS,
    catalogue: pl.DataFrame | None = None,
    users: pl.DataFrame | None = None,
    oracle: OracleLike | None = None,
    batch_size: int = 2048,
) -> EvaluationReport:
    """Score ``model`` on ``split`` under one protocol; see the module docstring for the protocol.

    Reported for every slice (``all`` unprefixed, then ``warm``, ``cold``, ``segment_<name>``) and k:
    ``precision, recall, ndcg, map, hr, coverage, novelty, arp, arp_ratio, long_tail_share`` at k,
    ``ild_category`` at k when ``catalogue`` has a ``category`` column, ``mrr`` over the whole list,
    ``n_users``; with an ``oracle``, ``oracle_ndcg`` at k and ``ndcg_at_<k>_vs_oracle`` (model /
    oracle, omitted when the oracle scores 0). ``catalogue`` (``item_id`` [, ``category``]) defines
    the catalogue for coverage and the long tail; without it the model's items do.
    """
    ks = _check_args(protocol, ks, batch_size)
    _require(split.train, "split.train", (Columns.USER, Columns.ITEM))
    _require(split.test, "split.test", (Columns.USER, Columns.ITEM))
    pairs = _target_pairs(split, protocol)
    eval_users = _evaluated_users(pairs, protocol)
    history = _history(split.train, eval_users) if protocol == "new_items" else None
    recs = _recommend_model(model, eval_users, ks[-1], history, batch_size)
    oracle_recs = _recommend_oracle(oracle, eval_users, ks[-1], history, split, batch_size) if oracle else None
    items = _item_table(split.train, pairs, catalogue, model, [r for r in (recs, oracle_recs) if r is not None])
    targets = _target_matrix(pairs, eval_users, items.ids)
    reco = items.encode(recs)
    per_user = _accuracy(m.hit_matrix(reco, targets), m.n_targets_of(targets), ks)
    per_user |= _beyond_accuracy(reco, items, ks)
    if oracle_recs is not None:
        oracle_hits = m.hit_matrix(items.encode(oracle_recs), targets)
        per_user |= {f"oracle_ndcg_at_{k}": m.ndcg_at_k(oracle_hits, m.n_targets_of(targets), k) for k in ks}
    slices = _slices(eval_users, split.train, users)
    metrics, counts = _aggregate(protocol, per_user, reco, items, slices, ks)
    metrics[f"{protocol}.n_test_users_without_targets"] = float(_n_test_users(split) - len(eval_users))
    return EvaluationReport(metrics, counts, ks, {protocol: _popularity_profile(reco, items, ks[0])})


# --- checks -----------------------------------------------------------------------------------------
def _check_args(protocol: str, ks: Sequence[int], batch_size: int) -> tuple[int, ...]:
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {protocol!r}; use one of {list(PROTOCOLS)}")
    if not ks or any(not isinstance(k, int | np.integer) or k < 1 for k in ks):
        raise EvaluationError(f"ks must be a non-empty list of positive integers, got {list(ks)}")
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be positive, got {batch_size}")
    return tuple(sorted({int(k) for k in ks}))


def _require(frame: pl.DataFrame, what: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SchemaError(f"{what} is missing column(s) {missing}; it has {frame.columns}")


def _n_test_users(split: SplitLike) -> int:
    return len(np.unique(_as_str(split.test_users)))


def _as_str(values: npt.ArrayLike) -> npt.NDArray[np.str_]:
    return np.asarray(values).astype(np.str_)


# --- targets and history ----------------------------------------------------------------------------
def _pairs(frame: pl.DataFrame) -> pl.DataFrame:
    """Distinct (user_id, item_id) string pairs of an event frame."""
    return frame.select(pl.col(Columns.USER).cast(pl.Utf8), pl.col(Columns.ITEM).cast(pl.Utf8)).unique()


def _target_pairs(split: SplitLike, protocol: EvalProtocol) -> pl.DataFrame:
    """Test (user, item) targets of the split's test users; ``new_items`` drops items seen in train."""
    test_users = pl.DataFrame({Columns.USER: _as_str(split.test_users)}, schema={Columns.USER: pl.Utf8})
    pairs = _pairs(split.test).join(test_users, on=Columns.USER, how="semi")
    if protocol == "new_items":
        pairs = pairs.join(_pairs(split.train), on=[Columns.USER, Columns.ITEM], how="anti")
    return pairs


def _evaluated_users(pairs: pl.DataFrame, protocol: str) -> npt.NDArray[np.str_]:
    users = np.unique(pairs[Columns.USER].to_numpy().astype(np.str_))
    if len(users) == 0:
        raise EvaluationError(
            f"no test user has a target under protocol {protocol!r}"
            + (" (every test purchase is of an item the user already had in train)" if protocol == "new_items" else "")
        )
    return users


def _history(train: pl.DataFrame, eval_users: npt.NDArray[np.str_]) -> pl.DataFrame:
    """Training (user, item) pairs of the evaluated users: what ``new_items`` excludes."""
    return _pairs(train).join(pl.DataFrame({Columns.USER: eval_users}), on=Columns.USER, how="semi")


def _target_matrix(pairs: pl.DataFrame, users: npt.NDArray[np.str_], item_ids: npt.NDArray[np.str_]) -> sp.csr_matrix:
    rows = np.searchsorted(users, pairs[Columns.USER].to_numpy().astype(np.str_))
    cols = np.searchsorted(item_ids, pairs[Columns.ITEM].to_numpy().astype(np.str_))
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(users), len(item_ids)))


# --- recommendations --------------------------------------------------------------------------------
def _fit_width(item_ids: npt.NDArray[Any], n_rows: int, k: int, who: str) -> StrMatrix:
    """Exactly ``k`` columns: lists may be shorter (small catalogue) and are padded with ``""``."""
    ids = np.asarray(item_ids).astype(np.str_)
    if ids.ndim != 2 or ids.shape[0] != n_rows:
        raise EvaluationError(f"{who} returned item ids of shape {ids.shape}, expected ({n_rows}, ≤{k})")
    if ids.shape[1] >= k:
        return ids[:, :k]
    return np.concatenate([ids, np.full((n_rows, k - ids.shape[1]), "", dtype=np.str_)], axis=1)


def _recommend_model(
    model: Recommender, users: npt.NDArray[np.str_], k: int, history: pl.DataFrame | None, batch_size: int
) -> StrMatrix:
    """Top-k for every user in batches; with a history, its items are excluded as well as the model's seen items."""
    exclude = _history_matrix(history, users, model) if history is not None else None
    parts = []
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        ex = exclude[start : start + batch_size] if exclude is not None else None
        recs = model.recommend(batch, k, filter_seen=exclude is not None, exclude=ex)
        parts.append(_fit_width(recs.item_ids, len(batch), k, f"model {model.name!r}"))
    return np.concatenate(parts)


def _history_matrix(history: pl.DataFrame, users: npt.NDArray[np.str_], model: Recommender) -> sp.csr_matrix:
    """The history as a ``users × model items`` matrix, for ``recommend(exclude=...)``."""
    encoded = model.items.encode(history[Columns.ITEM])  # null = an item the model does not know
    known = encoded.is_not_null().to_numpy()
    cols = encoded.fill_null(0).to_numpy().astype(np.int64)[known]
    rows = np.searchsorted(users, history[Columns.USER].to_numpy().astype(np.str_))[known]
    data = np.ones(len(cols), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(users), len(model.items)))


def _recommend_oracle(
    oracle: OracleLike,
    users: npt.NDArray[np.str_],
    k: int,
    history: pl.DataFrame | None,
    split: SplitLike,
    batch_size: int,
) -> StrMatrix:
    """The oracle's top-k in batches, excluding the same history as the model under ``new_items``.

    The oracle also gets each user's training purchases and the cutoff, so its ranking follows the
    generator's repeat-purchase and stock rules (without them a buy-again model could beat it).
    """
    seen = _history_sets(history) if history is not None else None
    bought = _purchase_sets(split.train)
    cutoff = getattr(split, "cutoff", None)
    parts = []
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        exclude = {u: seen[u] for u in batch.tolist() if u in seen} if seen is not None else None
        purchased = {u: bought[u] for u in batch.tolist() if u in bought} if bought is not None else None
        item_ids, _ = oracle.oracle_topk(batch, k, exclude=exclude, purchased=purchased, at=cutoff)
        parts.append(_fit_width(item_ids, len(batch), k, "oracle"))
    return np.concatenate(parts)


def _purchase_sets(train: pl.DataFrame) -> dict[str, set[str]] | None:
    """Items each user purchased in training (None when events carry no type)."""
    if Columns.EVENT not in train.columns:
        return None
    return _history_sets(train.filter(pl.col(Columns.EVENT) == EventType.PURCHASE))


def _history_sets(history: pl.DataFrame) -> dict[str, set[str]]:
    grouped = history.group_by(Columns.USER).agg(pl.col(Columns.ITEM))
    return {u: set(items) for u, items in zip(grouped[Columns.USER], grouped[Columns.ITEM].to_list(), strict=True)}


# --- items ------------------------------------------------------------------------------------------
def _item_table(
    train: pl.DataFrame,
    pairs: pl.DataFrame,
    catalogue: pl.DataFrame | None,
    model: Recommender,
    recommended: Sequence[StrMatrix],
) -> _Items:
    """Align catalogue membership, popularity and categories on every item id in play."""
    catalogue_ids = _catalogue_ids(catalogue, model)
    train_ids = train[Columns.ITEM].cast(pl.Utf8).drop_nulls().unique().to_numpy().astype(np.str_)
    test_ids = pairs[Columns.ITEM].drop_nulls().unique().to_numpy().astype(np.str_)
    ids = np.unique(np.concatenate([catalogue_ids, train_ids, test_ids, *[r.ravel() for r in recommended]]))
    ids = ids[ids != ""]
    popularity = _popularity(train, ids)
    categories = _categories(catalogue, ids) if catalogue is not None and Columns.CATEGORY in catalogue else None
    n_train_users = int(train[Columns.USER].n_unique())
    return _Items(ids, np.isin(ids, catalogue_ids), popularity, n_train_users, categories)


def _catalogue_ids(catalogue: pl.DataFrame | None, model: Recommender) -> npt.NDArray[np.str_]:
    if catalogue is None:
        return np.asarray(model.items.external, dtype=np.str_)
    _require(catalogue, "catalogue", (Columns.ITEM,))
    return catalogue[Columns.ITEM].cast(pl.Utf8).drop_nulls().to_numpy().astype(np.str_)


def _aligned(ids: npt.NDArray[np.str_], frame: pl.DataFrame, column: str) -> pl.Series:
    """``frame[column]`` looked up for each id (``frame`` has one row per ``item_id``), null if absent."""
    keys = pl.DataFrame({Columns.ITEM: ids}, schema={Columns.ITEM: pl.Utf8})
    return keys.join(frame, on=Columns.ITEM, how="left", maintain_order="left")[column]


def _popularity(train: pl.DataFrame, ids: npt.NDArray[np.str_]) -> Floats:
    counts = _pairs(train).group_by(Columns.ITEM).agg(pl.len().alias("_users"))
    return _aligned(ids, counts, "_users").fill_null(0).to_numpy().astype(np.float64)


def _categories(catalogue: pl.DataFrame, ids: npt.NDArray[np.str_]) -> npt.NDArray[np.int64]:
    """Category codes per item; items without a category share one "unknown" code."""
    cats = catalogue.select(pl.col(Columns.ITEM).cast(pl.Utf8), pl.col(Columns.CATEGORY).cast(pl.Utf8))
    cats = cats.unique(subset=Columns.ITEM, keep="first")
    values = _aligned(ids, cats, Columns.CATEGORY).fill_null("\x00unknown").to_numpy().astype(np.str_)
    return np.asarray(np.unique(values, return_inverse=True)[1], dtype=np.int64)


# --- metrics ----------------------------------------------------------------------------------------
def _accuracy(hits: npt.NDArray[np.bool_], n_targets: Floats, ks: tuple[int, ...]) -> dict[str, Floats]:
    out: dict[str, Floats] = {}
    for k in ks:
        out[f"precision_at_{k}"] = m.precision_at_k(hits, k)
        out[f"recall_at_{k}"] = m.recall_at_k(hits, n_targets, k)
        out[f"ndcg_at_{k}"] = m.ndcg_at_k(hits, n_targets, k)
        out[f"map_at_{k}"] = m.average_precision_at_k(hits, n_targets, k)
        out[f"hr_at_{k}"] = m.hit_rate_at_k(hits, k)
    out["mrr"] = m.reciprocal_rank_at_k(hits, ks[-1])
    return out


def _beyond_accuracy(reco: npt.NDArray[np.int64], items: _Items, ks: tuple[int, ...]) -> dict[str, Floats]:
    catalogue_mean = float(items.popularity[items.in_catalogue].mean()) if items.in_catalogue.any() else 0.0
    is_tail = items.is_tail
    out: dict[str, Floats] = {}
    for k in ks:
        out[f"novelty_at_{k}"] = m.novelty_at_k(reco, items.popularity, items.n_train_users, k)
        out[f"arp_at_{k}"] = m.average_popularity_at_k(reco, items.popularity, k)
        if catalogue_mean > 0:  # ARP relative to a random catalogue item: 1 = no popularity bias
            out[f"arp_ratio_at_{k}"] = out[f"arp_at_{k}"] / catalogue_mean
        out[f"long_tail_share_at_{k}"] = m.long_tail_share_at_k(reco, is_tail, k)
        if items.categories is not None:
            out[f"ild_category_at_{k}"] = m.intra_list_diversity_at_k(reco, items.categories, k)
    return out


def _slices(
    eval_users: npt.NDArray[np.str_], train: pl.DataFrame, users: pl.DataFrame | None
) -> dict[str, npt.NDArray[np.bool_]]:
    """Boolean user masks per slice; empty slices are dropped (``all`` is never empty)."""
    warm = np.isin(eval_users, train[Columns.USER].cast(pl.Utf8).unique().to_numpy().astype(np.str_))
    masks = {"all": np.ones(len(eval_users), dtype=np.bool_), "warm": warm, "cold": ~warm}
    if users is not None:
        masks |= _segment_masks(eval_users, users)
    return {name: mask for name, mask in masks.items() if mask.any()}


def _segment_masks(eval_users: npt.NDArray[np.str_], users: pl.DataFrame) -> dict[str, npt.NDArray[np.bool_]]:
    """One mask per segment value; users without a segment are in none of them."""
    _require(users, "users", (Columns.USER, Columns.SEGMENT))
    frame = users.select(pl.col(Columns.USER).cast(pl.Utf8), pl.col(Columns.SEGMENT).cast(pl.Utf8))
    frame = frame.unique(subset=Columns.USER, keep="first").rename({Columns.USER: Columns.ITEM})
    segments = _aligned(eval_users, frame, Columns.SEGMENT).to_numpy()
    masks: dict[str, npt.NDArray[np.bool_]] = {}
    for value in sorted({s for s in segments if s is not None}):
        name = "segment_" + re.sub(r"[^A-Za-z0-9_-]", "_", value)  # MLflow-safe, and no "." in a slice
        masks[name] = masks.get(name, np.zeros(len(eval_users), dtype=np.bool_)) | (segments == value)
    return masks


def _aggregate(
    protocol: str,
    per_user: dict[str, Floats],
    reco: npt.NDArray[np.int64],
    items: _Items,
    slices: dict[str, npt.NDArray[np.bool_]],
    ks: tuple[int, ...],
) -> tuple[dict[str, float], dict[str, int]]:
    """Mean of each per-user metric over each slice, plus the slice-level ones (coverage, oracle ratio)."""
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name, mask in slices.items():
        prefix = protocol if name == "all" else f"{protocol}.{name}"
        values = {metric: float(v[mask].mean()) for metric, v in per_user.items()}
        values |= {f"coverage_at_{k}": m.coverage_at_k(reco[mask], items.in_catalogue, k) for k in ks}
        values |= _oracle_ratios(values, ks)
        values["n_users"] = float(mask.sum())
        metrics |= {f"{prefix}.{metric}": value for metric, value in values.items()}
        counts[prefix] = int(mask.sum())
    return metrics, counts


def _oracle_ratios(values: dict[str, float], ks: tuple[int, ...]) -> dict[str, float]:
    """``ndcg_at_k_vs_oracle``: the share of the achievable NDCG the model reaches."""
    return {
        f"ndcg_at_{k}_vs_oracle": values[f"ndcg_at_{k}"] / values[f"oracle_ndcg_at_{k}"]
        for k in ks
        if values.get(f"oracle_ndcg_at_{k}", 0.0) > 0
    }


def _popularity_profile(reco: npt.NDArray[np.int64], items: _Items, k: int) -> PopularityProfile:
    top = reco[:, :k]
    return PopularityProfile(k, items.popularity[top[top >= 0]], items.popularity[items.in_catalogue])
