"""Publish a fitted model to Redis: precomputed lists the service reads (layout in :mod:`service.contract`).

What is written, under a fresh versioned namespace ``tailor:v{n}:`` (``n`` from ``INCR``):

* item metadata (availability, category) for every catalogue item;
* fallback lists from the last ``fallback_days`` of events: global, per category, per user segment
  (available items only; global and category lists are back-filled with the rest of the catalogue by
  all-time popularity, so the service can top up to ``k`` whenever the catalogue allows);
* top-N recommendations for every user the model knows (purchased items excluded, items missing
  from the catalogue dropped), plus an empty list carrying the segment of users only the users frame
  knows;
* top-N similar items for every model item that is in the catalogue;
* last, the manifest (the completeness marker).

Then ``tailor:active`` is switched with one Lua script that checks the manifest exists and that the
active version is still the one this publish started from, and records the previous version as
retired. Until that instant readers keep reading the previous version, untouched.

Old versions: deleted at the start of the *next* publish, once ``grace_s`` seconds have passed since
they were retired (readers in flight finish on them). Versions left half-written by an interrupted
publish (exception, kill) are deleted then too. A lock (``tailor:publish_lock``, with a TTL refreshed
every batch) keeps two publishes from running at once; a lock left by a killed publish on this host
is taken over at once, any other expires after :data:`LOCK_TTL_S`.

Errors: :class:`PublishError` when publishing cannot start or be completed (lock held, nothing in
the catalogue, verification failed); Redis errors propagate as ``redis.RedisError``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
import polars as pl
import redis
import scipy.sparse as sp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from features.columns import DEFAULT_EVENT_WEIGHTS, DEFAULT_OTHER_WEIGHT, Columns, EventType
from features.matrix import MatrixConfig, build_matrix
from features.settings import Settings
from service.contract import (
    BOUGHT_MAX,
    ActiveVersion,
    ItemMeta,
    Keys,
    RecList,
    UserRecs,
    VersionState,
    VersionStatus,
    decode,
    encode,
)
from training.models.base import Recommendations, Recommender

if TYPE_CHECKING:
    from features.mapping import EventMapping

COMMANDS_PER_PIPELINE: Final = 1000
KEYS_PER_COMMAND: Final = 1000
BYTES_PER_PIPELINE: Final = 8 << 20  # bounds client memory and the size of one Redis reply batch
_PUBLISH_SOCKET_TIMEOUT_S: Final = 60.0  # a pipeline of 1000 large SETs can take far longer than a serving timeout
LOCK_TTL_S: Final = 120
_SCORE_BUDGET: Final = 1 << 24  # similar-items scoring block: at most ~16M floats
_SCAN_COUNT: Final = 1000

_SWITCH = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return redis.error_reply('active version changed during publish') end
if redis.call('EXISTS', KEYS[3]) == 0 then return redis.error_reply('manifest missing') end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], ARGV[5], ARGV[6]) end
return 1
"""
_REFRESH_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return false
"""


class PublishError(RuntimeError):
    """Publishing cannot start or complete; the previously active version keeps serving."""


@dataclass(frozen=True)
class PublishInfo:
    """Where the published model comes from (shown by the service with every response)."""

    model_name: str
    model_version: str
    run_id: str | None = None


@dataclass(frozen=True)
class PublishProgress:
    """Passed to the ``callback`` of :func:`publish` after each written batch."""

    version: int
    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class PublishSummary:
    """What a publish wrote. ``write_seconds`` counts encoding + Redis I/O only (no scoring)."""

    version: int
    users: int
    items: int
    keys: int
    bytes: int
    seconds: float
    write_seconds: float
    user_write_seconds: float

    @property
    def users_per_s(self) -> float:
        """Users published per second of the whole run."""
        return self.users / self.seconds if self.seconds > 0 else float("inf")

    @property
    def users_written_per_s(self) -> float:
        """Users written per second of encoding + Redis I/O (scoring excluded)."""
        return self.users / self.user_write_seconds if self.user_write_seconds > 0 else float("inf")


ProgressCallback = Callable[[PublishProgress], None]


# --- public API -------------------------------------------------------------------------------------
def publish(
    model: Recommender,
    *,
    events: pl.DataFrame,
    catalogue: pl.DataFrame,
    users: pl.DataFrame | None,
    redis_client: redis.Redis,
    info: PublishInfo,
    top_n: int = 100,
    exclude_event_types: Sequence[str] = (EventType.PURCHASE,),
    fallback_days: float = 30,
    fallback_size: int = 500,
    batch_users: int = 2048,
    grace_s: int = 3600,
    progress: bool = True,
    callback: ProgressCallback | None = None,
    now: datetime | None = None,
) -> PublishSummary:
    """Write ``model``'s lists to a new version namespace and make it the active version.

    ``exclude_event_types`` are the event types whose items are not recommended back to the user
    (ignored for models that recommend seen items on purpose). ``callback`` runs after every batch;
    an exception it raises aborts the publish like any other (the previous version stays active).
    ``now`` (UTC) stamps the version and decides which old versions are past their grace period.
    """
    if top_n < 1 or batch_users < 1:
        raise ValueError(f"top_n and batch_users must be >= 1 (got {top_n}, {batch_users})")
    now = now or datetime.now(UTC)
    started = time.perf_counter()
    lock = _PublishLock.acquire(redis_client)
    try:
        cleanup_versions(redis_client, grace_s=grace_s, now=now)
        job = _Job(model, redis_client, info, top_n, batch_users, progress, callback, lock, now)
        summary = job.run(events, catalogue, users, tuple(exclude_event_types), fallback_days, fallback_size)
    finally:
        lock.release()
    return _with_seconds(summary, time.perf_counter() - started)


def publish_from_registry(
    model_uri: str,
    data: Path,
    settings: Settings,
    *,
    mapping: EventMapping | None = None,
    catalogue_path: Path | None = None,
    users_path: Path | None = None,
    top_n: int | None = None,
    fallback_days: float = 30,
    batch_users: int = 2048,
    progress: bool = True,
) -> PublishSummary:
    """``tailor publish``: load the model behind ``model_uri`` and the store's data, then :func:`publish`.

    ``data`` is an events file or a store folder; the catalogue and users default to the folder's
    ``catalogue.parquet``/``users.parquet``. Without any catalogue, one is derived from the events
    (every item available, no category). Starts the embedded Redis if it is the one in use.
    """
    from features.loaders import load_events
    from service.redis_server import ensure_redis, sync_client
    from training.tracking import load_recommender

    model, model_info = load_recommender(model_uri, settings)
    events = load_events(data, mapping).events
    catalogue, users = _reference_tables(data, catalogue_path, users_path, events)
    info = PublishInfo(
        model_name=model_info.model_name or settings.model_name,
        model_version=model_info.model_version or f"run-{model_info.run_id[:8]}",
        run_id=model_info.run_id,
    )
    client = sync_client(ensure_redis(settings), settings, socket_timeout=_PUBLISH_SOCKET_TIMEOUT_S)
    try:
        return publish(
            model, events=events, catalogue=catalogue, users=users, redis_client=client, info=info,
            top_n=top_n or settings.publish_top_n, fallback_days=fallback_days, batch_users=batch_users,
            grace_s=settings.publish_grace_s, progress=progress,
        )  # fmt: skip
    finally:
        client.close()


def _reference_tables(
    data: Path, catalogue_path: Path | None, users_path: Path | None, events: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """The catalogue (given, in the store folder, or derived from events) and the users table if any."""
    from features.loaders import CATALOGUE_FILE, USERS_FILE, load_catalogue, load_users

    folder = data if data.is_dir() else None
    catalogue_path = catalogue_path or (folder / CATALOGUE_FILE if folder else None)
    users_path = users_path or (folder / USERS_FILE if folder else None)
    if catalogue_path is not None and catalogue_path.exists():
        catalogue = load_catalogue(catalogue_path)
    else:
        catalogue = catalogue_from_events(events)
    users = load_users(users_path) if users_path is not None and users_path.exists() else None
    return catalogue, users


def catalogue_from_events(events: pl.DataFrame) -> pl.DataFrame:
    """A minimal catalogue for stores without one: every item seen in events, available, no category."""
    return events.select(pl.col(Columns.ITEM).unique().sort()).with_columns(
        pl.lit(None, pl.Utf8).alias(Columns.CATEGORY), pl.lit(True).alias(Columns.AVAILABLE)
    )


def cleanup_versions(client: redis.Redis, *, grace_s: int, now: datetime) -> list[int]:
    """Delete half-written versions and versions retired more than ``grace_s`` ago; return their ids.

    Only call while holding the publish lock (a running publish's version looks half-written).
    """
    active = active_version(client)
    deleted = []
    for raw_version, raw_state in client.hgetall(Keys.VERSIONS).items():
        version = int(raw_version)
        state = decode(raw_state, VersionState, where=f"{Keys.VERSIONS}[{version}]")
        if version != (active.version if active else None) and _expired(state, grace_s, now):
            delete_namespace(client, version)
            client.hdel(Keys.VERSIONS, str(version))
            deleted.append(version)
    return deleted


def active_version(client: redis.Redis) -> ActiveVersion | None:
    """The active version record, or None before the first publish."""
    raw = client.get(Keys.ACTIVE)
    return decode(raw, ActiveVersion, where=Keys.ACTIVE) if raw is not None else None


def delete_namespace(client: redis.Redis, version: int) -> int:
    """UNLINK every key of ``version`` (SCAN in batches; never blocks Redis on one huge command)."""
    deleted = 0
    batch: list[bytes] = []
    for name in client.scan_iter(match=Keys.namespace(version) + "*", count=_SCAN_COUNT):
        batch.append(name)
        if len(batch) >= _SCAN_COUNT:
            deleted += int(client.unlink(*batch))
            batch.clear()
    if batch:
        deleted += int(client.unlink(*batch))
    return deleted


# --- fallback lists -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FallbackLists:
    """Popularity lists of one publish: global, per category and per segment."""

    global_list: RecList
    categories: dict[str, RecList]
    segments: dict[str, RecList]


def fallback_lists(
    events: pl.DataFrame, catalogue: pl.DataFrame, users: pl.DataFrame | None, *, days: float, size: int
) -> FallbackLists:
    """Popular available items over the last ``days`` before the latest event (weighted by event type).

    Ties and items without recent events are ordered by all-time popularity, then item id. Global
    and category lists are back-filled from the catalogue; segment lists hold recent items only.
    Each grouping is one pass over the events (recent and all-time sums aggregated together).
    """
    latest = pl.col(Columns.TIMESTAMP).max()
    window = pl.duration(microseconds=int(days * 86_400e6))
    weighted = events.lazy().select(
        Columns.USER,
        Columns.ITEM,
        _event_weight().alias(Columns.WEIGHT),
        (pl.col(Columns.TIMESTAMP) > latest - window).alias("is_recent"),
    )
    available = _available_items(catalogue)
    ranked = _rank_items(available.lazy(), _item_scores(weighted)).collect()
    return FallbackLists(
        global_list=_rec_list(ranked.head(size)),
        categories=_grouped_lists(ranked.filter(pl.col(Columns.CATEGORY).is_not_null()), Columns.CATEGORY, size),
        segments=_segment_lists(weighted, users, available, size),
    )


def _event_weight() -> pl.Expr:
    return pl.col(Columns.EVENT).replace_strict(
        dict(DEFAULT_EVENT_WEIGHTS), default=DEFAULT_OTHER_WEIGHT, return_dtype=pl.Float64
    )


def _available_items(catalogue: pl.DataFrame) -> pl.DataFrame:
    available = pl.col(Columns.AVAILABLE).fill_null(True) if Columns.AVAILABLE in catalogue.columns else pl.lit(True)
    category = pl.col(Columns.CATEGORY) if Columns.CATEGORY in catalogue.columns else pl.lit(None, pl.Utf8)
    return catalogue.filter(available).select(Columns.ITEM, category.alias(Columns.CATEGORY))


def _item_scores(weighted: pl.LazyFrame, by: Sequence[str] = ()) -> pl.LazyFrame:
    """``recent`` (in the window) and ``total`` weight per item (per ``by`` group)."""
    weight = pl.col(Columns.WEIGHT)
    return weighted.group_by(*by, Columns.ITEM).agg(
        weight.filter(pl.col("is_recent")).sum().alias("recent"), weight.sum().alias("total")
    )


def _rank_items(items: pl.LazyFrame, scores: pl.LazyFrame, by: Sequence[str] = ()) -> pl.LazyFrame:
    """``items`` with recent/total scores (0 when absent), best first; ties broken by item id."""
    scored = items.join(scores, on=[*by, Columns.ITEM], how="left")
    scored = scored.with_columns(pl.col("recent", "total").fill_null(0.0))
    return scored.sort(["recent", "total", Columns.ITEM], descending=[True, True, False])


def _grouped_lists(ranked: pl.DataFrame, column: str, size: int) -> dict[str, RecList]:
    top = ranked.filter(pl.int_range(pl.len()).over(column) < size)
    grouped = top.group_by(column, maintain_order=True).agg(pl.col(Columns.ITEM), pl.col("recent"))
    columns = (grouped[column].to_list(), grouped[Columns.ITEM].to_list(), grouped["recent"].to_list())
    return {str(name): RecList(items=items, scores=scores) for name, items, scores in zip(*columns, strict=True)}


def _segment_lists(
    weighted: pl.LazyFrame, users: pl.DataFrame | None, available: pl.DataFrame, size: int
) -> dict[str, RecList]:
    if users is None or Columns.SEGMENT not in users.columns:
        return {}
    segments = users.lazy().select(Columns.USER, Columns.SEGMENT).filter(pl.col(Columns.SEGMENT).is_not_null())
    scores = _item_scores(weighted.join(segments, on=Columns.USER), (Columns.SEGMENT,))
    recent_items = (
        scores.filter(pl.col("recent") > 0)
        .select(Columns.SEGMENT, Columns.ITEM)
        .join(available.lazy().select(Columns.ITEM), on=Columns.ITEM)
    )
    ranked = _rank_items(recent_items, scores, (Columns.SEGMENT,)).collect()
    return _grouped_lists(ranked, Columns.SEGMENT, size)


def _rec_list(ranked: pl.DataFrame) -> RecList:
    return RecList(items=ranked[Columns.ITEM].to_list(), scores=ranked["recent"].to_list())


def item_metadata(catalogue: pl.DataFrame) -> dict[str, ItemMeta]:
    """ItemMeta of every catalogue item (missing availability counts as available)."""
    available = catalogue[Columns.AVAILABLE].fill_null(True) if Columns.AVAILABLE in catalogue.columns else None
    category = catalogue[Columns.CATEGORY] if Columns.CATEGORY in catalogue.columns else None
    ids = catalogue[Columns.ITEM].to_list()
    flags = available.to_list() if available is not None else [True] * len(ids)
    cats = category.to_list() if category is not None else [None] * len(ids)
    return {i: ItemMeta(available=bool(a), category=c) for i, a, c in zip(ids, flags, cats, strict=True)}


# --- writing ----------------------------------------------------------------------------------------------
class BatchWriter:
    """Buffers writes and sends them in non-transactional pipelines.

    String keys are grouped into ``MSET`` commands of ``KEYS_PER_COMMAND`` keys (one command instead
    of a thousand SETs: far less client-side packing and reply parsing); hashes into ``HSET``s of as
    many fields. A pipeline is sent once it holds ``COMMANDS_PER_PIPELINE`` commands or
    ``BYTES_PER_PIPELINE`` bytes. ``keys``/``bytes`` count what was written, ``seconds`` the time
    spent sending.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._pipe = client.pipeline(transaction=False)
        self._pairs: dict[str, bytes] = {}
        self._commands = 0
        self._buffered = 0
        self.keys = 0
        self.bytes = 0
        self.seconds = 0.0

    def set(self, name: str, value: bytes) -> None:
        self._pairs[name] = value
        self.keys += 1
        self._buffered += len(name) + len(value)
        if len(self._pairs) >= KEYS_PER_COMMAND:
            self._queue_mset()

    def hset(self, name: str, mapping: dict[str, bytes]) -> None:
        """HSET in chunks of ``KEYS_PER_COMMAND`` fields."""
        fields = list(mapping.items())
        for start in range(0, len(fields), KEYS_PER_COMMAND):
            chunk = dict(fields[start : start + KEYS_PER_COMMAND])
            self._pipe.hset(name, mapping=chunk)  # type: ignore[arg-type]
            self._queued(sum(len(k) + len(v) for k, v in chunk.items()))
        self.keys += 1

    def flush(self) -> None:
        """Send everything buffered; any failed command raises (nothing is silently dropped)."""
        self._queue_mset()
        if self._commands:
            started = time.perf_counter()
            self._pipe.execute(raise_on_error=True)
            self.seconds += time.perf_counter() - started
            self.bytes += self._buffered
            self._commands = self._buffered = 0

    def _queue_mset(self) -> None:
        if self._pairs:
            self._pipe.mset(self._pairs)  # type: ignore[arg-type]
            self._pairs = {}
            self._queued(0)

    def _queued(self, size: int) -> None:
        self._commands += 1
        self._buffered += size
        if self._commands >= COMMANDS_PER_PIPELINE or self._buffered >= BYTES_PER_PIPELINE:
            self.flush()


@dataclass
class _Job:
    """One publish run: owns the version id, the writer and the progress display."""

    model: Recommender
    client: redis.Redis
    info: PublishInfo
    top_n: int
    batch_users: int
    show_progress: bool
    callback: ProgressCallback | None
    lock: _PublishLock
    now: datetime
    version: int = 0
    writer: BatchWriter = field(init=False)
    progress: Progress = field(init=False)
    user_write_seconds: float = 0.0

    def run(
        self,
        events: pl.DataFrame,
        catalogue: pl.DataFrame,
        users: pl.DataFrame | None,
        exclude_types: tuple[str, ...],
        fallback_days: float,
        fallback_size: int,
    ) -> PublishSummary:
        self.writer = BatchWriter(self.client)
        self.progress = _progress_bar(self.show_progress)
        meta = item_metadata(catalogue)
        in_catalogue = np.isin(self.model.items.external, np.asarray(list(meta), dtype=np.str_))
        if not in_catalogue.any():
            raise PublishError(f"none of the model's {len(self.model.items)} items is in the catalogue")
        self.version = self._start_version()
        with self.progress:
            self._write_meta(meta)
            self._write_fallbacks(fallback_lists(events, catalogue, users, days=fallback_days, size=fallback_size))
            n_users = self._write_users(events, users, exclude_types, in_catalogue)
            n_items = self._write_similar(in_catalogue)
            self._switch(n_users, len(meta))
        return PublishSummary(
            self.version, n_users, n_items, self.writer.keys, self.writer.bytes, 0.0, self.writer.seconds,
            self.user_write_seconds,
        )  # fmt: skip

    def _start_version(self) -> int:
        version = int(self.client.incr(Keys.VERSION_SEQ))
        state = VersionState(status=VersionStatus.WRITING, started_at=self.now)
        self.client.hset(Keys.VERSIONS, str(version), encode(state))
        return version

    def _batch_done(self, stage: str, task: Any, done: int, total: int) -> None:
        """After each batch: flush, refresh the lock, show progress, run the callback."""
        self.writer.flush()
        self.lock.refresh()
        self.progress.update(task, completed=done)
        if self.callback is not None:
            self.callback(PublishProgress(self.version, stage, done, total))

    def _write_meta(self, meta: dict[str, ItemMeta]) -> None:
        task = self.progress.add_task("item metadata", total=len(meta))
        self.writer.hset(Keys.items(self.version), {item: encode(m) for item, m in meta.items()})
        self._batch_done("items", task, len(meta), len(meta))

    def _write_fallbacks(self, lists: FallbackLists) -> None:
        total = 1 + len(lists.categories) + len(lists.segments)
        task = self.progress.add_task("fallback lists", total=total)
        self.writer.set(Keys.popular(self.version), encode(lists.global_list))
        for category, rec in lists.categories.items():
            self.writer.set(Keys.popular_category(self.version, category), encode(rec))
        for segment, rec in lists.segments.items():
            self.writer.set(Keys.popular_segment(self.version, segment), encode(rec))
        self._batch_done("fallback", task, total, total)

    def _write_users(
        self, events: pl.DataFrame, users: pl.DataFrame | None, exclude_types: tuple[str, ...], in_catalogue: Any
    ) -> int:
        model_users = self.model.users.external
        segments = _segments(users)
        exclude = _exclusions(self.model, events, exclude_types)
        missing = self.model.items.external[~in_catalogue].tolist()
        task = self.progress.add_task("user recommendations", total=len(model_users))
        for start in range(0, len(model_users), self.batch_users):
            stop = min(start + self.batch_users, len(model_users))
            batch_exclude = exclude[start:stop] if exclude is not None else None
            recs = self.model.recommend(
                model_users[start:stop], self.top_n, filter_seen=False, exclude=batch_exclude, exclude_items=missing
            )
            self.write_user_batch(recs, segments, _bought_lists(batch_exclude, self.model.items.external))
            self._batch_done("users", task, stop, len(model_users))
        return len(model_users) + self._write_segment_only_users(segments)

    def write_user_batch(
        self, recs: Recommendations, segments: dict[str, str], bought: Sequence[list[str]] | None = None
    ) -> None:
        """Encode and write one batch of user lists, timing it apart from scoring."""
        started = time.perf_counter()
        write_user_lists(self.writer, self.version, recs, segments, bought)
        self.user_write_seconds += time.perf_counter() - started

    def _write_segment_only_users(self, segments: dict[str, str]) -> int:
        """Users the model does not know but whose segment is known get an empty list with the segment."""
        extra = [u for u in segments if self.model.users.index_of(u) is None]
        for user in extra:
            self.writer.set(
                Keys.user(self.version, user), encode(UserRecs(items=[], scores=[], segment=segments[user]))
            )
        self.writer.flush()
        return len(extra)

    def _write_similar(self, in_catalogue: npt.NDArray[np.bool_]) -> int:
        items = self.model.items.external[in_catalogue]
        extra = min(int((~in_catalogue).sum()), self.top_n)  # room for results dropped as not in the catalogue
        batch = max(1, min(self.batch_users, _SCORE_BUDGET // max(1, len(self.model.items))))
        task = self.progress.add_task("similar items", total=len(items))
        for start in range(0, len(items), batch):
            recs = self.model.similar_items(items[start : start + batch], self.top_n + extra)
            for item, similar, scores in _rows(recs, keep=items, limit=self.top_n):
                self.writer.set(Keys.similar(self.version, item), encode(RecList(items=similar, scores=scores)))
            self._batch_done("similar", task, min(start + batch, len(items)), len(items))
        return len(items)

    def _switch(self, n_users: int, n_items: int) -> None:
        active = ActiveVersion(
            version=self.version,
            model_name=self.info.model_name,
            model_version=self.info.model_version,
            run_id=self.info.run_id,
            generated_at=self.now,
            users=n_users,
            items=n_items,
        )
        self.writer.set(Keys.manifest(self.version), encode(active))
        self.writer.flush()
        self._verify(active)
        switch_active(self.client, active, self.now)

    def _verify(self, active: ActiveVersion) -> None:
        """The completeness check before the switch: manifest readable and identical, metadata complete."""
        raw = self.client.get(Keys.manifest(self.version))
        if raw is None or decode(raw, ActiveVersion, where=Keys.manifest(self.version)) != active:
            raise PublishError(f"version {self.version}: manifest missing or different after writing")
        written = int(self.client.hlen(Keys.items(self.version)))
        if written != active.items:
            raise PublishError(
                f"version {self.version}: {written} item metadata entries written, {active.items} expected"
            )


def write_user_lists(
    writer: BatchWriter,
    version: int,
    recs: Recommendations,
    segments: dict[str, str] | None = None,
    bought: Sequence[list[str]] | None = None,
) -> None:
    """Encode one :class:`UserRecs` per row of ``recs`` and write them under ``version`` (then flush).

    Public so a benchmark can time writing alone: build ``recs`` with numpy, pass a fresh
    :class:`BatchWriter`, read its ``keys``/``bytes``/``seconds``.
    """
    segments = segments or {}
    for row, (user, items, scores) in enumerate(_rows(recs)):
        past = bought[row] if bought else []
        payload = UserRecs(items=items, scores=scores, segment=segments.get(user), bought=past)
        writer.set(Keys.user(version, user), encode(payload))
    writer.flush()


def switch_active(client: redis.Redis, active: ActiveVersion, now: datetime) -> None:
    """Atomically make ``active`` the served version and retire the previous one (Lua compare-and-set)."""
    raw_current = client.get(Keys.ACTIVE)
    previous = decode(raw_current, ActiveVersion, where=Keys.ACTIVE) if raw_current else None
    live = VersionState(status=VersionStatus.LIVE, started_at=now)
    retired = VersionState(status=VersionStatus.RETIRED, started_at=now, retired_at=now)
    try:
        client.eval(
            _SWITCH,
            3,
            Keys.ACTIVE,
            Keys.VERSIONS,
            Keys.manifest(active.version),
            raw_current or b"",
            encode(active),
            str(active.version),
            encode(live),
            str(previous.version) if previous else "",
            encode(retired),
        )
    except redis.ResponseError as exc:
        raise PublishError(f"cannot switch to version {active.version}: {exc}") from exc


def _rows(
    recs: Recommendations, *, keep: npt.NDArray[np.str_] | None = None, limit: int | None = None
) -> Iterator[tuple[str, list[str], list[float]]]:
    """(query id, item ids, scores) per row without padding; ``keep`` drops items not in it."""
    valid = recs.item_ids != ""
    if keep is not None:
        valid &= np.isin(recs.item_ids, keep)
    full = valid.all(axis=1).tolist()  # the common case, decided for the whole batch at once
    items, scores = recs.item_ids.tolist(), significant(recs.scores).tolist()
    for row, query in enumerate(recs.query_ids.tolist()):
        if full[row]:
            yield query, items[row][:limit], scores[row][:limit]
        else:
            cols = np.flatnonzero(valid[row])[:limit].tolist()
            yield query, [items[row][c] for c in cols], [scores[row][c] for c in cols]


def _bought_lists(exclude: sp.csr_matrix | None, items: npt.NDArray[np.str_]) -> list[list[str]] | None:
    """Per row of ``exclude``, the external ids of its non-zero columns (at most ``BOUGHT_MAX``)."""
    if exclude is None:
        return None
    ptr, cols = exclude.indptr, exclude.indices
    return [items[cols[ptr[r] : ptr[r + 1]][:BOUGHT_MAX]].tolist() for r in range(exclude.shape[0])]


def significant(scores: npt.NDArray[np.floating[Any]], digits: int = 7) -> npt.NDArray[np.float64]:
    """Scores rounded to ``digits`` significant digits, so float32 noise (0.8999999761) shows as 0.9."""
    values = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(values) & (values != 0)
    magnitude = np.zeros_like(values)
    magnitude[finite] = np.floor(np.log10(np.abs(values[finite])))
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.where(finite, np.round(values * scale) / scale, values)


def _segments(users: pl.DataFrame | None) -> dict[str, str]:
    if users is None or Columns.SEGMENT not in users.columns:
        return {}
    known = users.filter(pl.col(Columns.SEGMENT).is_not_null())
    return dict(zip(known[Columns.USER].to_list(), known[Columns.SEGMENT].to_list(), strict=True))


def _exclusions(model: Recommender, events: pl.DataFrame, types: tuple[str, ...]) -> sp.csr_matrix | None:
    """Users × items matrix (model order) of items to keep out of each user's list, e.g. purchases."""
    if not types or bool(getattr(model, "recommends_seen_items", False)):
        return None
    config = MatrixConfig(event_weights=dict.fromkeys(types, 1.0), other_weight=1.0)
    chosen = events.filter(pl.col(Columns.EVENT).is_in(list(types)))
    return build_matrix(chosen, config, users=model.users, items=model.items).matrix


def _expired(state: VersionState, grace_s: int, now: datetime) -> bool:
    if state.status is VersionStatus.WRITING:
        return True  # left by an interrupted publish (the lock guarantees no publish is running)
    retired_at = state.retired_at or state.started_at
    return state.status is VersionStatus.RETIRED and retired_at + timedelta(seconds=grace_s) <= now


def _with_seconds(summary: PublishSummary, seconds: float) -> PublishSummary:
    return PublishSummary(
        summary.version, summary.users, summary.items, summary.keys, summary.bytes, seconds,
        summary.write_seconds, summary.user_write_seconds,
    )  # fmt: skip


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


# --- lock -----------------------------------------------------------------------------------------------
@dataclass
class _PublishLock:
    """``SET NX EX`` lock whose value names its owner ``host:pid:token``."""

    client: redis.Redis
    value: str

    @classmethod
    def acquire(cls, client: redis.Redis) -> _PublishLock:
        value = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        if client.set(Keys.PUBLISH_LOCK, value, nx=True, ex=LOCK_TTL_S):
            return cls(client, value)
        holder = client.get(Keys.PUBLISH_LOCK)
        owner = holder.decode() if isinstance(holder, bytes) else holder
        if owner and _owner_is_dead(owner) and client.eval(_TAKE_OVER, 1, Keys.PUBLISH_LOCK, owner, value, LOCK_TTL_S):
            return cls(client, value)
        ttl = client.ttl(Keys.PUBLISH_LOCK)
        raise PublishError(
            f"another publish is running (lock {Keys.PUBLISH_LOCK} held by {owner!r}, expires in {ttl} s)"
        )

    def refresh(self) -> None:
        if not self.client.eval(_REFRESH_LOCK, 1, Keys.PUBLISH_LOCK, self.value, LOCK_TTL_S):
            raise PublishError(f"lost the publish lock {Keys.PUBLISH_LOCK} (expired or taken over)")

    def release(self) -> None:
        # On error the lock simply expires; never mask the exception that brought us here.
        with contextlib.suppress(redis.RedisError):
            self.client.eval(_RELEASE_LOCK, 1, Keys.PUBLISH_LOCK, self.value)


def _owner_is_dead(holder: str) -> bool:
    """True when the lock was left by a process of this host that no longer exists."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
