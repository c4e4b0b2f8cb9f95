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

Old versions: once the switch is done, every key of the version it retired is set to expire
``grace_s`` seconds later (readers in flight finish on it), so Redis drops it even if no other publish
follows. The *next* publish also deletes any version retired more than ``grace_s`` ago (should a
publish have stopped before setting the expiry), and versions left half-written by an interrupted
publish (exception, kill). A lock (``tailor:publish_lock``, with a TTL refreshed
every batch) keeps two publishes from running at once; a lock left by a killed publish on this host
is taken over at once, any other expires after :data:`LOCK_TTL_S`.

Errors: :class:`PublishError` when publishing cannot start or be completed (lock held, nothing in
the catalogue, verification failed); Redis errors propagate as ``redis.RedisError``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
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
    HEAD_SIZE,
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
from service.resp import pack
from training.models.base import Recommendations, Recommender

if TYPE_CHECKING:
    from features.mapping import EventMapping

COMMANDS_PER_PIPELINE: Final = 1000
KEYS_PER_COMMAND: Final = 1000
ROWS_PER_SEND: Final = 512  # user lists encoded between two sends: the next chunk is encoded while one is sent
BYTES_PER_PIPELINE: Final = 8 << 20  # bounds client memory and the size of one Redis reply batch
_PUBLISH_SOCKET_TIMEOUT_S: Final = 60.0  # a pipeline of 1000 large SETs can take far longer than a serving timeout
LOCK_TTL_S: Final = 120
_SCORE_BUDGET: Final = 1 << 24  # similar-items scoring block: at most ~16M floats
log = logging.getLogger(__name__)
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
    """What a publish wrote.

    ``write_seconds``: time pipelines took to execute in Redis (sent in the background, overlapping
    encoding and scoring). ``user_write_seconds``: time the publish spent encoding user lists or
    waiting for their sends, i.e. what writing the ``users`` lists added to the run beyond scoring.
    """

    version: int
    users: int
    items: int
    keys: int
    bytes: int
    seconds: float
    write_seconds: float
    user_write_seconds: float
    aof_rewrite: str = ""  # what :func:`rewrite_aof` did after the switch ("" when not asked)

    @property
    def users_per_s(self) -> float:
        """Users published per second of the whole run."""
        return self.users / self.seconds if self.seconds > 0 else float("inf")

    @property
    def users_written_per_s(self) -> float:
        """Users written per second of :attr:`user_write_seconds` (scoring excluded)."""
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
    compact_aof: bool = False,
) -> PublishSummary:
    """Write ``model``'s lists to a new version namespace and make it the active version.

    ``exclude_event_types`` are the event types whose items are not recommended back to the user
    (ignored for models that recommend seen items on purpose). ``callback`` runs after every batch;
    an exception it raises aborts the publish like any other (the previous version stays active).
    ``now`` (UTC) stamps the version and decides which old versions are past their grace period.
    ``compact_aof``: once the new version is active, start a rewrite of Redis' append-only file (see
    :func:`rewrite_aof`); for a server Tailor runs itself, not one an operator configured.
    """
    if top_n < 1 or batch_users < 1:
        raise ValueError(f"top_n and batch_users must be >= 1 (got {top_n}, {batch_users})")
    now = now or datetime.now(UTC)
    started = time.perf_counter()
    lock = _PublishLock.acquire(redis_client)
    try:
        cleanup_versions(redis_client, grace_s=grace_s, now=now)
        job = _Job(model, redis_client, info, top_n, batch_users, progress, callback, lock, now, clock=started)
        summary = job.run(events, catalogue, users, tuple(exclude_event_types), fallback_days, fallback_size)
        if job.retired is not None:
            _retire(redis_client, job.retired, grace_s)
    finally:
        lock.release()
    seconds = time.perf_counter() - started  # the publish itself; the rewrite below runs in Redis' background
    return replace(summary, seconds=seconds, aof_rewrite=rewrite_aof(redis_client) if compact_aof else "")


def publish_from_registry(
    model_uri: str,
    data: Path | None,
    settings: Settings,
    *,
    mapping: EventMapping | None = None,
    catalogue_path: Path | None = None,
    users_path: Path | None = None,
    top_n: int | None = None,
    fallback_days: float = 30,
    batch_users: int = 2048,
    progress: bool = True,
    exclude_event_types: tuple[str, ...] = ("purchase",),
) -> PublishSummary:
    """``tailor publish``: load the model behind ``model_uri`` and the store's data, then :func:`publish`.

    ``data`` is an events file or a store folder; None means the data the model was trained on (its
    run's ``data.source``, read with the column mapping the run logged unless ``mapping`` is given). The
    catalogue and users default to the folder's ``catalogue.parquet`` and ``users.parquet``. Without any
    catalogue, one is derived from the events (every item available, no category). Starts the embedded
    Redis if it is the one in use, and then compacts its append-only file after the switch
    (:func:`rewrite_aof`); a server at ``REDIS_URL`` is left to its operator's persistence settings.
    """
    from features.loaders import load_events
    from service.redis_server import ensure_redis, sync_client
    from training.tracking import load_recommender, training_data

    model, model_info = load_recommender(model_uri, settings)
    if data is None:  # the data the model was trained on, read as it was then (unless a mapping is given)
        data, trained_mapping = training_data(model_info.run_id, settings)
        if data is None:
            raise PublishError(f"{model_uri}: its run {model_info.run_id} records no training data; give --data")
        if not data.exists():
            raise PublishError(f"{model_uri} was trained on {data}, which no longer exists; give --data")
        mapping = mapping or trained_mapping
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
            grace_s=settings.publish_grace_s, progress=progress, exclude_event_types=exclude_event_types,
            compact_aof=settings.redis_url is None,
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


def rewrite_aof(client: redis.Redis) -> str:
    """Start a background rewrite of Redis' append-only file (AOF); say what happened.

    A publish appends a whole version to the AOF, so the file grows by about the size of the data set
    each time. Redis rewrites it by itself once it has doubled, whenever that happens, which is often
    in the middle of the next publish: the forked child then competes for CPU with the writes, and
    every page the publish writes meanwhile is copied (copy-on-write), up to twice the memory. Rewriting
    right after the switch, when the writes are over, keeps the file compact (the new version and the
    retired one, until its keys expire) so the next publish's growth stays under the threshold.

    Returns ``"started"``, ``"AOF off"`` (nothing to rewrite), ``"already running"`` (Redis rewrites
    it already), or ``"refused: ..."`` with Redis' error (a server that forbids BGREWRITEAOF); the
    published version is active in every case.
    """
    info = client.info("persistence")
    if not int(info.get("aof_enabled", 0)):
        return "AOF off"
    if int(info.get("aof_rewrite_in_progress", 0)):
        return "already running"
    try:
        client.bgrewriteaof()
    except redis.ResponseError as exc:
        return f"refused: {exc}"
    return "started"


def active_version(client: redis.Redis) -> ActiveVersion | None:
    """The active version record, or None before the first publish."""
    raw = client.get(Keys.ACTIVE)
    return decode(raw, ActiveVersion, where=Keys.ACTIVE) if raw is not None else None


def _retire(client: redis.Redis, version: int, grace_s: int) -> None:
    """After the switch: let the retired ``version`` go once its grace period is over (at once without one).

    The new version is live by now, so a failure here only warns: the next publish deletes what is past
    its grace period anyway.
    """
    try:
        if grace_s > 0:
            expire_namespace(client, version, grace_s)
        else:  # UNLINK frees the values off Redis' main thread; an EXPIRE 0 would delete them on it
            delete_namespace(client, version)
    except redis.RedisError as exc:
        log.warning("version %d could not be set to expire (%s); the next publish deletes it", version, exc)


def expire_namespace(client: redis.Redis, version: int, seconds: int) -> int:
    """Set every key of ``version`` to expire in ``seconds``, a pipeline per batch; return how many.

    Relative to the server's clock, so it holds whatever time the publish was stamped with.
    """
    expired = 0
    for batch in _namespace_batches(client, version):
        pipe = client.pipeline(transaction=False)
        for name in batch:
            pipe.expire(name, seconds)
        expired += sum(1 for ok in pipe.execute() if ok)
    return expired


def delete_namespace(client: redis.Redis, version: int) -> int:
    """UNLINK every key of ``version``, a batch at a time (never blocks Redis on one huge command)."""
    return sum(int(client.unlink(*batch)) for batch in _namespace_batches(client, version))


def _namespace_batches(client: redis.Redis, version: int) -> Iterator[list[bytes]]:
    """The keys of ``version`` in lists of up to :data:`_SCAN_COUNT` (SCAN: Redis is never blocked)."""
    batch: list[bytes] = []
    for name in client.scan_iter(match=Keys.namespace(version) + "*", count=_SCAN_COUNT):
        batch.append(name)
        if len(batch) >= _SCAN_COUNT:
            yield batch
            batch = []
    if batch:
        yield batch


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
    return {str(name): RecList.of(items, scores) for name, items, scores in zip(*columns, strict=True)}


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
    return RecList.of(ranked[Columns.ITEM].to_list(), ranked["recent"].to_list())


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
    """Buffers writes and sends them in pipelines, one pipeline at a time in the background.

    String keys are grouped into ``MSET`` commands of ``KEYS_PER_COMMAND`` keys (one command instead
    of a thousand SETs: far less client-side packing and reply parsing); hashes into ``HSET``s of as
    many fields. Commands are framed in RESP here (with :func:`service.resp.pack`, the service's
    framing), as each key arrives, and each pipeline goes out in one system call per command, on a
    connection of the client's pool. redis-py's pipelines re-copy every value while packing and send
    pieces of ~6 KB, one system call each (~130 per MSET of 512 user lists): framing here halved the
    publishing process's CPU per user list.

    :meth:`send` hands the buffered pipeline to a thread and returns, so the caller encodes (or
    scores) the next batch while this one travels (the socket I/O releases the GIL); at most one
    pipeline is in flight, so client memory stays bounded. :meth:`flush` sends and waits. A pipeline
    is also sent once it holds ``COMMANDS_PER_PIPELINE`` commands or ``BYTES_PER_PIPELINE`` bytes.
    ``keys``/``bytes`` count what was written, ``seconds`` the time pipelines took to execute
    (in the background, so it may overlap the caller's work).

    A pipeline that loses its connection is sent again whole under the client's retry policy (every
    command here is idempotent); an error reply fails the pipeline with the first error, once every
    reply is read.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._pairs: list[bytes] = []  # framed key/value pairs of the MSET being built
        self._commands: list[bytes] = []  # framed commands of the pipeline being built
        self._buffered = 0
        self._sending: threading.Thread | None = None
        self._error: Exception | None = None
        self.keys = 0
        self.bytes = 0
        self.seconds = 0.0

    def set(self, name: str, value: bytes) -> None:
        key = name.encode()  # framed as service.resp.bulk_strings would, in one step: the publish's hot path
        self._pairs.append(b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(key), key, len(value), value))
        self.keys += 1
        self._buffered += len(key) + len(value)
        if len(self._pairs) >= KEYS_PER_COMMAND:
            self._queue_mset()

    def hset(self, name: str, mapping: dict[str, bytes]) -> None:
        """HSET in chunks of ``KEYS_PER_COMMAND`` fields."""
        fields = list(mapping.items())
        for start in range(0, len(fields), KEYS_PER_COMMAND):
            chunk = fields[start : start + KEYS_PER_COMMAND]
            self._queue(pack("HSET", name, *(part for pair in chunk for part in pair)),
                        sum(len(field) + len(value) for field, value in chunk))  # fmt: skip
        self.keys += 1

    def send(self) -> None:
        """Start sending everything buffered in the background (after the previous send completed).

        An error of the previous send is raised here (or by :meth:`wait`/:meth:`flush`).
        """
        self._queue_mset()
        if not self._commands:
            return
        self.wait()
        commands, size = self._commands, self._buffered
        self._commands, self._buffered = [], 0
        self._sending = threading.Thread(target=self._execute, args=(commands, size), name="tailor-publish-send")
        self._sending.start()

    def wait(self) -> None:
        """Wait for the send in flight; raise its error, if any (nothing is silently dropped)."""
        if self._sending is not None:
            self._sending.join()
            self._sending = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def flush(self) -> None:
        """Send everything buffered and wait until Redis has acknowledged it; any failed command raises."""
        self.send()
        self.wait()

    def close(self) -> None:
        """Wait for a send still in flight, discarding its error: for exits on another exception."""
        with contextlib.suppress(Exception):
            self.wait()

    def _execute(self, commands: list[bytes], size: int) -> None:
        """Runs in the sending thread; the error is kept for :meth:`wait` to raise in the caller's thread."""
        started = time.perf_counter()
        pool = self._client.connection_pool
        try:
            connection: Any = pool.get_connection()  # connects: may fail too (redis-py's connections are untyped)
            try:
                connection.retry.call_with_retry(
                    lambda: _pipeline(connection, commands), lambda _: connection.disconnect()
                )
            finally:
                pool.release(connection)
        except Exception as exc:  # re-raised by wait(), with its traceback
            self._error = exc
            return
        self.seconds += time.perf_counter() - started
        self.bytes += size

    def _queue_mset(self) -> None:
        if self._pairs:
            pairs, self._pairs = self._pairs, []
            self._queue(b"*%d\r\n$4\r\nMSET\r\n%b" % (1 + 2 * len(pairs), b"".join(pairs)))

    def _queue(self, command: bytes, size: int = 0) -> None:
        self._commands.append(command)
        self._buffered += size
        if len(self._commands) >= COMMANDS_PER_PIPELINE or self._buffered >= BYTES_PER_PIPELINE:
            self.send()


def _pipeline(connection: Any, commands: list[bytes]) -> None:
    """Send ``commands`` on ``connection`` and read every reply; raise the first error reply after that."""
    connection.send_packed_command(commands)
    first: redis.ResponseError | None = None
    for _ in commands:
        try:
            connection.read_response()
        except redis.ResponseError as exc:  # the reply is read whole: the connection stays in step
            first = first or exc
    if first is not None:
        raise first


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
    clock: float = field(default_factory=time.perf_counter)  # when ``now`` was, on the monotonic clock
    writer: BatchWriter = field(init=False)
    progress: Progress = field(init=False)
    user_write_seconds: float = 0.0
    retired: int | None = None  # the version this publish's switch retired

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
        try:
            with self.progress:
                self._write_meta(meta)
                self._write_fallbacks(fallback_lists(events, catalogue, users, days=fallback_days, size=fallback_size))
                n_users = self._write_users(events, users, exclude_types, in_catalogue)
                n_items = self._write_similar(in_catalogue)
                self._switch(n_users, len(meta))
        finally:
            self.writer.close()  # no send outlives the publish (and its lock), even on an error
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
        """After each batch: send it (in the background), refresh the lock, show progress, run the callback."""
        self.writer.send()
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
        aligned, others = (
            (None, {}) if exclude is None else _split_bought(bought_lists(events, exclude_types), model_users)
        )
        missing = self.model.items.external[~in_catalogue].tolist()
        task = self.progress.add_task("user recommendations", total=len(model_users))
        for start in range(0, len(model_users), self.batch_users):
            stop = min(start + self.batch_users, len(model_users))
            batch_exclude = exclude[start:stop] if exclude is not None else None
            recs = self.model.recommend(
                model_users[start:stop], self.top_n, filter_seen=False, exclude=batch_exclude, exclude_items=missing
            )
            batch_bought = None if aligned is None else [b or [] for b in aligned[start:stop].to_list()]
            self.write_user_batch(recs, segments, batch_bought)
            self._batch_done("users", task, stop, len(model_users))
        return len(model_users) + self._write_other_users(segments, others)

    def write_user_batch(
        self, recs: Recommendations, segments: dict[str, str], bought: Sequence[list[str]] | None = None
    ) -> None:
        """Encode and write one batch of user lists, timing it apart from scoring.

        The batch's last chunk is sent while the next batch is scored; waiting for a send counts as
        writing time (in the next batch, or in :meth:`_write_segment_only_users`).
        """
        started = time.perf_counter()
        write_user_lists(self.writer, self.version, recs, segments, bought, wait=False)
        self.user_write_seconds += time.perf_counter() - started

    def _write_other_users(self, segments: dict[str, str], bought: dict[str, list[str]]) -> int:
        """Users the model does not know but whose segment or purchases are known get an empty list with
        them: the service then serves their segment's list, without what they bought.

        Timed with the user lists (and ends the user phase by waiting for every user key to be stored).
        """
        started = time.perf_counter()
        extra = [u for u in {**segments, **bought} if self.model.users.index_of(u) is None]
        by_segment: dict[str | None, bytes] = {}  # one payload per segment for the many who bought nothing
        prefix = Keys.user(self.version, "")  # prefix + id == Keys.user(version, id), as in write_user_lists
        for user in extra:
            segment, past = segments.get(user), bought.get(user)
            if past:
                payload = encode(UserRecs(items=[], scores=[], segment=segment, bought=past))
            elif segment in by_segment:
                payload = by_segment[segment]
            else:
                payload = by_segment[segment] = encode(UserRecs(items=[], scores=[], segment=segment))
            self.writer.set(prefix + user, payload)
        self.writer.flush()
        self.user_write_seconds += time.perf_counter() - started
        return len(extra)

    def _write_similar(self, in_catalogue: npt.NDArray[np.bool_]) -> int:
        items = self.model.items.external[in_catalogue]
        extra = min(int((~in_catalogue).sum()), self.top_n)  # room for results dropped as not in the catalogue
        batch = max(1, min(self.batch_users, _SCORE_BUDGET // max(1, len(self.model.items))))
        task = self.progress.add_task("similar items", total=len(items))
        for start in range(0, len(items), batch):
            recs = self.model.similar_items(items[start : start + batch], self.top_n + extra)
            self._write_similar_batch(recs, items)
            self._batch_done("similar", task, min(start + batch, len(items)), len(items))
        return len(items)

    def _write_similar_batch(self, recs: Recommendations, catalogue_items: npt.NDArray[np.str_]) -> None:
        """Each item's top-N similar items that are in the catalogue (others dropped, padding too)."""
        valid = (recs.item_ids != "") & np.isin(recs.item_ids, catalogue_items)
        valid &= np.cumsum(valid, axis=1) <= self.top_n
        prefix = Keys.similar(self.version, "")  # the item id is the key's last part
        for item, encoded in zip(recs.query_ids.tolist(), encode_lists(recs.item_ids, recs.scores, valid), strict=True):
            self.writer.set(prefix + item, list_payload(encoded))

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
        switched_at = self.now + timedelta(seconds=time.perf_counter() - self.clock)
        self.retired = switch_active(self.client, active, switched_at)

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
    *,
    wait: bool = True,
) -> None:
    """Encode one :class:`UserRecs` per row of ``recs`` and write them under ``version``.

    Rows are encoded ``ROWS_PER_SEND`` at a time, each chunk sent in the background while the next
    is encoded. With ``wait`` (the default) everything is acknowledged by Redis on return; without,
    the last chunk may still be in flight (:meth:`BatchWriter.flush` waits for it).

    Public so a benchmark can time writing alone: build ``recs`` with numpy, pass a fresh
    :class:`BatchWriter`, read its ``keys``/``bytes``/``seconds``.
    """
    segments = segments or {}
    prefix = Keys.user(version, "")  # the user id is the key's last part: prefix + id == Keys.user(version, id)
    for start in range(0, len(recs.query_ids), ROWS_PER_SEND):
        rows = slice(start, start + ROWS_PER_SEND)
        lists = encode_lists(recs.item_ids[rows], recs.scores[rows], recs.item_ids[rows] != "")
        for row, (user, encoded) in enumerate(zip(recs.query_ids[rows].tolist(), lists, strict=True)):
            past = bought[start + row] if bought else []
            writer.set(prefix + user, _user_payload(encoded, segments.get(user), past))
        writer.send()
    if wait:
        writer.flush()


def _user_payload(encoded: EncodedList, segment: str | None, bought: list[str]) -> bytes:
    """A :class:`UserRecs` payload around a row of :func:`encode_lists` (fields in the Struct's order,
    defaults left out, as msgspec writes it: tests compare the bytes)."""
    fields, body = encoded
    parts = [b"", body]
    if segment is not None:
        fields += 1
        parts += (_KEY_SEGMENT, encode_value(segment))
    if bought:
        fields += 1
        parts += (_KEY_BOUGHT, encode_value(bought))
    parts[0] = _map_header(fields)
    return b"".join(parts)


def list_payload(encoded: EncodedList) -> bytes:
    """A :class:`RecList` payload from a row of :func:`encode_lists`."""
    fields, body = encoded
    return _map_header(fields) + body


# --- list encoding ----------------------------------------------------------------------------------------
# Every user and item gets a list of ~100 ids and scores. Turning each into Python str/float objects
# for msgspec costs ~10 us per list; instead the msgpack bytes of a whole batch are built with numpy
# (the ids straight from the code points of the fixed-width unicode array) and handed to msgspec as
# ``msgspec.Raw``. The bytes are exactly what msgspec writes for the same lists (tests compare them).
_FLOAT64: Final = np.dtype([("tag", "u1"), ("value", ">f8")])  # msgpack float 64: 0xcb + big-endian double
_FLOAT64_TAG: Final = 0xCB
_STR_TAGS: Final = np.array([0, 0xD9, 0xDA, 0xDB], dtype=np.uint32)  # str 8/16/32 (fixstr is 0xa0 | size)
_MASK_TABLE_MAX: Final = 256  # widest ids (code points) served from a cached (width+1)×width mask table
_STR_HEADER_SIZES: Final = np.array([1, 2, 3, 5], dtype=np.int64)
_UTF8_LEAD: Final = np.array([0, 0, 0xC0, 0xE0, 0xF0], dtype=np.uint32)  # by number of bytes per code point


EncodedList = tuple[int, bytes]
"""A row's :class:`RecList` fields as msgpack map entries, ready to be framed: (how many, the bytes)."""
_KEY_ITEMS: Final = b"\xa5items"  # msgpack fixstr keys: the contract's field names
_KEY_SCORES: Final = b"\xa6scores"
_KEY_REST: Final = b"\xa4rest"
_KEY_SEGMENT: Final = b"\xa7segment"
_KEY_BOUGHT: Final = b"\xa6bought"
encode_value: Final = msgspec.msgpack.Encoder().encode


def encode_lists(
    item_ids: npt.NDArray[np.str_], scores: npt.NDArray[np.floating[Any]], valid: npt.NDArray[np.bool_]
) -> list[EncodedList]:
    """Per row, its ``valid`` item ids and :func:`significant` scores, in column order, as the fields of a
    :class:`RecList`: ``items``/``scores`` with the first :data:`HEAD_SIZE`, ``rest`` with the others.

    Framed by :func:`list_payload` (or :func:`_user_payload`), byte for byte what msgspec writes for
    ``RecList.of(items, scores)`` of the same row's ``str``/``float`` values. One ``join`` per row: the
    whole publish builds ~100k of these.
    """
    counts = valid.sum(axis=1)
    heads = np.minimum(counts, HEAD_SIZE)
    full = bool(valid.all())  # the usual case: a flat view instead of a copy through the mask

    def kept(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return values.reshape(-1) if full else values[valid]

    item_blob, item_sizes = msgpack_strings(kept(item_ids))
    item_ends = np.concatenate([[0], np.cumsum(item_sizes, dtype=np.int64)])  # byte offset after each id
    first = np.cumsum(counts) - counts  # index of each row's first id among the valid ones
    i_start, i_mid, i_end = (item_ends[first + n].tolist() for n in (0, heads, counts))
    score_blob = _msgpack_floats(significant(kept(scores)))
    s_start, s_mid, s_end = (((first + n) * _FLOAT64.itemsize).tolist() for n in (0, heads, counts))
    out: list[EncodedList] = []
    for row, (count, head) in enumerate(zip(counts.tolist(), heads.tolist(), strict=True)):
        h = _array_header(head)
        items, scores_ = item_blob[i_start[row] : i_mid[row]], score_blob[s_start[row] : s_mid[row]]
        if count == head:
            out.append((2, b"".join((_KEY_ITEMS, h, items, _KEY_SCORES, h, scores_))))
            continue
        t = _array_header(count - head)  # the rest: a 2-entry map {"items": [...], "scores": [...]}
        rest_items, rest_scores = item_blob[i_mid[row] : i_end[row]], score_blob[s_mid[row] : s_end[row]]
        out.append(
            (3, b"".join((_KEY_ITEMS, h, items, _KEY_SCORES, h, scores_, _KEY_REST, b"\x82", _KEY_ITEMS, t,
                          rest_items, _KEY_SCORES, t, rest_scores)))
        )  # fmt: skip
    return out


def _map_header(fields: int) -> bytes:
    return bytes([0x80 | fields])  # fixmap: a contract Struct has fewer than 16 fields


def msgpack_strings(ids: npt.NDArray[np.str_]) -> tuple[bytes, npt.NDArray[np.int64]]:
    """The msgpack encodings of the 1-D ``ids``, concatenated, and the byte size of each.

    Raises ValueError for lone surrogates (not valid UTF-8; msgspec refuses them too).
    """
    fixed = np.ascontiguousarray(ids, dtype=np.str_)
    if fixed.dtype.itemsize == 0:  # "<U0": only empty strings
        fixed = fixed.astype("<U1")
    codes = fixed.view(np.uint32).reshape(len(fixed), fixed.dtype.itemsize // 4)
    chars = np.strings.str_len(fixed).astype(np.int64)  # numpy pads with NULs; str_len knows the real length
    width = codes.shape[1]
    if width < 32 and int(chars.min(initial=width)) == width and int(codes.max(initial=0)) < 0x80:
        return _fixed_width_ascii(codes), np.full(len(codes), 1 + width, dtype=np.int64)
    inside = _inside(chars, width)  # N×W: the code points that belong to each id
    utf8, keep = _utf8(codes, inside)
    sizes = chars if utf8.shape[1] == codes.shape[1] else np.count_nonzero(keep, axis=1)  # ASCII: 1 byte/char
    header, header_keep, header_sizes = _str_headers(sizes)
    data = np.concatenate([header, utf8], axis=1)
    mask = np.concatenate([header_keep, keep], axis=1)
    blob = data.tobytes() if mask.all() else data.ravel().take(np.flatnonzero(mask)).tobytes()
    return blob, header_sizes + sizes


def _fixed_width_ascii(codes: npt.NDArray[np.uint32]) -> bytes:
    """:func:`msgpack_strings` when every id is ``width`` < 32 ASCII characters (fixed-width SKUs, the usual
    case): one fixstr tag and one byte per character, written column by column into one buffer (~7× faster
    than the general path's masks and concatenations)."""
    width = codes.shape[1]
    out = np.empty(len(codes) * (1 + width), dtype=np.uint8)
    out[:: 1 + width] = 0xA0 | width
    for column in range(width):
        out[1 + column :: 1 + width] = codes[:, column]
    return out.tobytes()


def _inside(chars: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.bool_]:
    """N×``width`` mask: the first ``chars[i]`` positions of row i."""
    if width > _MASK_TABLE_MAX:
        return np.arange(width) < chars[:, None]
    return np.take(_prefix_masks(width), chars, axis=0)  # for narrow rows, far faster than broadcasting


@functools.cache
def _prefix_masks(width: int) -> npt.NDArray[np.bool_]:
    """Row ``n``: the first ``n`` of ``width`` positions set."""
    return np.arange(width + 1)[:, None] > np.arange(width)


def _utf8(
    codes: npt.NDArray[np.uint32], keep: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """UTF-8 of an N×W code point matrix as N×(W·B) bytes (B bytes per code point) and the mask of real bytes."""
    top = int(codes.max(initial=0))
    if top >= 0xD800 and bool((((codes >= 0xD800) & (codes < 0xE000)) | (codes > 0x10FFFF)).any()):
        raise ValueError("item id holds a lone surrogate or an invalid code point: it has no UTF-8 encoding")
    if top < 0x80:  # ASCII, the common case: one byte per code point
        return codes.astype(np.uint8), keep
    width = 1 + (codes >= 0x80).astype(np.int64) + (codes >= 0x800) + (codes >= 0x10000)
    slot = np.arange(int(width.max()))  # byte position within a code point
    shift = np.maximum(6 * (width[..., None] - 1 - slot), 0)
    lead = _UTF8_LEAD[width] | (codes >> (6 * (width - 1)).astype(np.uint32))
    tail = 0x80 | ((codes[..., None] >> shift.astype(np.uint32)) & 0x3F)
    data = np.where(slot == 0, lead[..., None], tail).astype(np.uint8)
    mask = keep[..., None] & (slot < width[..., None])
    return data.reshape(len(codes), -1), mask.reshape(len(codes), -1)


def _str_headers(
    sizes: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """msgpack str headers for UTF-8 ``sizes``: N×5 bytes (tag, 4-byte big-endian size), mask, header sizes.

    Only the tag column when every id is shorter than 32 bytes (fixstr), the usual case.
    """
    if int(sizes.max(initial=0)) < 32:
        return (0xA0 | sizes).astype(np.uint8)[:, None], np.ones((len(sizes), 1), dtype=bool), np.ones_like(sizes)
    kind = (sizes >= 32).astype(np.int64) + (sizes >= 256) + (sizes >= 1 << 16)  # fixstr, str8, str16, str32
    tag = np.where(kind == 0, 0xA0 | sizes, _STR_TAGS[kind])
    big_endian = sizes.astype(">u4").view(np.uint8).reshape(-1, 4)
    header = np.concatenate([tag.astype(np.uint8)[:, None], big_endian], axis=1)
    keep = np.stack([kind >= 0, kind >= 3, kind >= 3, kind >= 2, kind >= 1], axis=1)
    return header, keep, _STR_HEADER_SIZES[kind]


def _msgpack_floats(values: npt.NDArray[np.float64]) -> bytes:
    """msgpack float 64 encodings of ``values``, concatenated (msgspec writes every float this way)."""
    packed = np.empty(len(values), dtype=_FLOAT64)
    packed["tag"] = _FLOAT64_TAG
    packed["value"] = values
    return packed.tobytes()


@functools.cache
def _array_header(count: int) -> bytes:
    """msgpack array header for ``count`` elements."""
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def switch_active(client: redis.Redis, active: ActiveVersion, now: datetime) -> int | None:
    """Atomically make ``active`` the served version and retire the previous one (Lua compare-and-set);
    return the retired version, if there was one.

    ``now`` is the switch: the previous version's grace period counts from it, since readers that saw the
    old active record can only be in flight from then on. Each version keeps the ``started_at`` of its
    publish (``active.generated_at``).
    """
    raw_current = client.get(Keys.ACTIVE)
    previous = decode(raw_current, ActiveVersion, where=Keys.ACTIVE) if raw_current else None
    live = VersionState(status=VersionStatus.LIVE, started_at=active.generated_at)
    retired = VersionState(
        status=VersionStatus.RETIRED, started_at=previous.generated_at if previous else now, retired_at=now
    )
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
    return previous.version if previous else None


def bought_lists(events: pl.DataFrame, types: tuple[str, ...], limit: int = BOUGHT_MAX) -> pl.DataFrame:
    """Per user (``user_id``), the items (``item_id``, a list) of their events of ``types`` (e.g. purchases),
    last bought first, at most ``limit``; ties in time go by item id.

    Any item, not only the model's: the service keeps these out of every step of a response (fallback lists
    come from recent events, so they hold items newer than the model).
    """
    return (
        events.lazy()
        .filter(pl.col(Columns.EVENT).is_in(list(types)))
        .group_by(Columns.USER, Columns.ITEM)
        .agg(pl.col(Columns.TIMESTAMP).max())
        .sort([Columns.USER, Columns.TIMESTAMP, Columns.ITEM], descending=[False, True, False])
        .group_by(Columns.USER, maintain_order=True)
        .agg(pl.col(Columns.ITEM).head(limit))
        .collect()
    )


def _split_bought(bought: pl.DataFrame, users: npt.NDArray[np.str_]) -> tuple[pl.Series, dict[str, list[str]]]:
    """The :func:`bought_lists` of ``users`` in that order (null for those who bought nothing; kept in
    polars, so a batch of users turns only its own lists into Python objects), and those of other users."""
    order = pl.DataFrame({Columns.USER: users}, schema={Columns.USER: pl.String})
    aligned = order.join(bought, on=Columns.USER, how="left", maintain_order="left")[Columns.ITEM]
    others = bought.join(order, on=Columns.USER, how="anti")
    return aligned, dict(zip(others[Columns.USER].to_list(), others[Columns.ITEM].to_list(), strict=True))


def significant(scores: npt.NDArray[np.floating[Any]], digits: int = 7) -> npt.NDArray[np.float64]:
    """Scores rounded to ``digits`` significant digits, so float32 noise (0.8999999761) shows as 0.9."""
    values = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(values) & (values != 0)
    with np.errstate(divide="ignore", invalid="ignore"):  # log10 of 0, inf and nan: masked out below
        magnitude = np.floor(np.log10(np.abs(values)))
    exponent = np.clip(np.where(finite, digits - 1 - magnitude, 0), -_POW10_SPAN, _POW10_SPAN).astype(np.int64)
    scale = _POW10[exponent + _POW10_SPAN]  # a table instead of 10.0 ** exponent: a third of the time
    return np.where(finite, np.round(values * scale) / scale, values)


_POW10_SPAN: Final = 400  # beyond ±400 the powers are 0 and inf, as ±330 already are in float64
with np.errstate(over="ignore"):
    _POW10: Final = 10.0 ** np.arange(-_POW10_SPAN, _POW10_SPAN + 1, dtype=np.float64)


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
