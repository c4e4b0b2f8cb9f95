"""Global temporal train/test split for offline evaluation.

Everything that happened strictly before a cutoff time ``T`` is training data (all event types);
the *targets* are the target events (by default purchases) at or after ``T``, one row per
(user, item). A global cutoff — rather than a per-user leave-last-out — is what a deployed model
faces: it is trained on the past and judged on what shoppers do next, so no test event can leak into
training.

    temporal_split(events, cutoff=... | test_days=...)   → TemporalSplit
    validation_split(split_or_train_events, test_days)   → TemporalSplit cut from the end of training

Bad cutoffs (outside the data, leaving train or test empty) raise
:class:`~features.errors.TailorDataError` naming the cutoff and the data's time span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import polars as pl

from features.columns import Columns, EventType
from features.errors import SchemaError, TailorDataError

_DEFAULT_TARGETS: tuple[str, ...] = (EventType.PURCHASE.value,)
T = TypeVar("T")


@dataclass(frozen=True)
class TemporalSplit:
    """The result of :func:`temporal_split`.

    ``train`` holds every event strictly before ``cutoff``; ``test`` holds target events at or after
    it, de-duplicated to the first event per (user, item); ``test_users`` are the sorted users with at
    least one target.
    """

    train: pl.DataFrame
    test: pl.DataFrame
    test_users: npt.NDArray[np.str_]
    cutoff: datetime
    target_events: tuple[str, ...] = _DEFAULT_TARGETS
    exclude_train_items: bool = False
    min_train_interactions: int = 0
    test_days: float | None = None

    def targets(self) -> dict[str, set[str]]:
        """``{user: {items}}`` of the test targets. For large tests prefer :meth:`target_lists`."""
        frame = self.target_lists()
        return {u: set(items) for u, items in zip(frame[Columns.USER], frame[Columns.ITEM].to_list(), strict=True)}

    def target_lists(self) -> pl.DataFrame:
        """One row per test user (sorted like ``test_users``): ``user_id``, ``item_id`` (a sorted list)."""
        return self.test.group_by(Columns.USER).agg(pl.col(Columns.ITEM).sort()).sort(Columns.USER)

    @cached_property
    def warm_users(self) -> npt.NDArray[np.str_]:
        """Test users with at least one training event (sorted)."""
        return self.test_users[self._has_history]

    @cached_property
    def cold_users(self) -> npt.NDArray[np.str_]:
        """Test users with no training event at all (sorted); only feature-based models can serve them."""
        return self.test_users[~self._has_history]

    @cached_property
    def _has_history(self) -> npt.NDArray[np.bool_]:
        seen = self.train[Columns.USER].unique()
        return pl.Series(self.test_users, dtype=pl.Utf8).is_in(seen.implode()).to_numpy()

    def params(self) -> dict[str, str | float]:
        """Flat description for MLflow ``log_params`` (all keys prefixed ``split.``)."""
        params: dict[str, str | float] = {
            "split.cutoff": self.cutoff.isoformat(),
            "split.target_events": ",".join(self.target_events),
            "split.exclude_train_items": str(self.exclude_train_items).lower(),
            "split.min_train_interactions": float(self.min_train_interactions),
            "split.train_events": float(self.train.height),
            "split.test_pairs": float(self.test.height),
            "split.test_users": float(len(self.test_users)),
            "split.warm_users": float(len(self.warm_users)),
            "split.cold_users": float(len(self.cold_users)),
        }
        if self.test_days is not None:
            params["split.test_days"] = float(self.test_days)
        return params


def temporal_split(
    events: pl.DataFrame,
    *,
    cutoff: datetime | None = None,
    test_days: float | None = None,
    target_events: Sequence[str] = _DEFAULT_TARGETS,
    exclude_train_items: bool = False,
    min_train_interactions: int = 0,
) -> TemporalSplit:
    """Split ``events`` at a global time: train ``< cutoff`` ≤ test.

    Give exactly one of ``cutoff`` (naive UTC, or aware and converted to UTC) or ``test_days`` (the
    cutoff is that many days before the last event). ``exclude_train_items`` drops targets the user
    already interacted with in training (any event type), matching ``filter_seen`` at
    recommendation time. ``min_train_interactions`` keeps only targets of users with at least that
    many distinct training items (0 keeps cold users).
    """
    _check_columns(events)
    start, end = _time_span(events)
    cut = _resolve_cutoff(cutoff, test_days, start, end)
    train = events.filter(pl.col(Columns.TIMESTAMP) < cut)
    test = _targets(events, cut, tuple(target_events))
    if exclude_train_items or min_train_interactions > 0:
        history = _history_of(test, train)
        if exclude_train_items:
            test = test.join(history, on=[Columns.USER, Columns.ITEM], how="anti")
        if min_train_interactions > 0:
            test = test.join(_active_users(history, min_train_interactions), on=Columns.USER, how="semi")
    _check_not_empty(train, test, cut, start, end, tuple(target_events))
    test = test.sort(Columns.USER, Columns.TIMESTAMP, Columns.ITEM)
    users = test[Columns.USER].unique().sort().to_numpy().astype(np.str_)
    return TemporalSplit(
        train, test, users, cut, tuple(target_events), exclude_train_items, min_train_interactions, test_days
    )


def validation_split(
    split_or_train_events: TemporalSplit | pl.DataFrame,
    test_days: float,
    *,
    target_events: Sequence[str] | None = None,
    exclude_train_items: bool | None = None,
    min_train_interactions: int | None = None,
) -> TemporalSplit:
    """Cut the last ``test_days`` of *training* data off as a validation period (for tuning).

    Given a :class:`TemporalSplit`, its target events and filters are the defaults (arguments given
    here override them); the outer split's test period is never touched.
    """
    outer = split_or_train_events if isinstance(split_or_train_events, TemporalSplit) else None
    train = outer.train if outer is not None else split_or_train_events
    assert isinstance(train, pl.DataFrame)
    return temporal_split(
        train,
        test_days=test_days,
        target_events=_pick(target_events, outer.target_events if outer else _DEFAULT_TARGETS),
        exclude_train_items=_pick(exclude_train_items, outer.exclude_train_items if outer else False),
        min_train_interactions=_pick(min_train_interactions, outer.min_train_interactions if outer else 0),
    )


def _pick(value: T | None, default: T) -> T:
    return default if value is None else value


def _check_columns(events: pl.DataFrame) -> None:
    missing = [c for c in (Columns.USER, Columns.ITEM, Columns.EVENT, Columns.TIMESTAMP) if c not in events.columns]
    if missing:
        raise SchemaError(f"events are missing column(s) needed for the split: {missing}")
    dtype = events.schema[Columns.TIMESTAMP]
    if not isinstance(dtype, pl.Datetime):
        raise SchemaError(f"column {Columns.TIMESTAMP!r} must be a Datetime, got {dtype}")


def _time_span(events: pl.DataFrame) -> tuple[datetime, datetime]:
    span = events.select(pl.col(Columns.TIMESTAMP).min().alias("start"), pl.col(Columns.TIMESTAMP).max().alias("end"))
    start, end = span.row(0)
    if start is None or end is None:
        raise TailorDataError("cannot split: the events are empty (no timestamps)")
    return start, end


def _resolve_cutoff(cutoff: datetime | None, test_days: float | None, start: datetime, end: datetime) -> datetime:
    if (cutoff is None) == (test_days is None):
        raise TailorDataError("give exactly one of cutoff or test_days")
    if cutoff is not None:
        cut = cutoff.astimezone(UTC).replace(tzinfo=None) if cutoff.tzinfo else cutoff
    elif test_days is not None and test_days > 0:
        cut = end - timedelta(days=test_days)
    else:
        raise TailorDataError(f"test_days must be positive, got {test_days}")
    if not start < cut <= end:
        raise TailorDataError(
            f"cutoff {cut.isoformat()} is outside the data span {start.isoformat()} … {end.isoformat()}: "
            "train (before the cutoff) and test (at/after it) must both be non-empty"
        )
    return cut


def _targets(events: pl.DataFrame, cut: datetime, target_events: tuple[str, ...]) -> pl.DataFrame:
    """Target events at/after ``cut``, keeping the first event of each (user, item)."""
    after = events.filter((pl.col(Columns.TIMESTAMP) >= cut) & pl.col(Columns.EVENT).is_in(list(target_events)))
    return after.sort(Columns.TIMESTAMP).unique(subset=[Columns.USER, Columns.ITEM], keep="first", maintain_order=True)


def _history_of(test: pl.DataFrame, train: pl.DataFrame) -> pl.DataFrame:
    """Training ``(user, item)`` rows of the test users only: far fewer rows to hash than all of train."""
    users = test.select(Columns.USER).unique()
    return train.select(Columns.USER, Columns.ITEM).join(users, on=Columns.USER, how="semi")


def _active_users(history: pl.DataFrame, min_items: int) -> pl.DataFrame:
    counts = history.group_by(Columns.USER).agg(pl.col(Columns.ITEM).n_unique().alias("_n"))
    return counts.filter(pl.col("_n") >= min_items).select(Columns.USER)


def _check_not_empty(
    train: pl.DataFrame, test: pl.DataFrame, cut: datetime, start: datetime, end: datetime, targets: tuple[str, ...]
) -> None:
    span = f"data span {start.isoformat()} … {end.isoformat()}"
    if train.height == 0:
        raise TailorDataError(f"train is empty: no event before cutoff {cut.isoformat()} ({span})")
    if test.height == 0:
        raise TailorDataError(
            f"test is empty: no {'/'.join(targets)} event at or after cutoff {cut.isoformat()} "
            f"left after filtering ({span})"
        )
