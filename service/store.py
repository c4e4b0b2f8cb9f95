"""The service's Redis access: every read and write the API does, in as few round trips as possible.

Connection failures and timeouts become :class:`~service.errors.StoreUnavailableError`; callers decide
whether to degrade (reads) or refuse (event writes). Payloads are decoded with the shared contract.

The recommendation hot path is one Lua script call (:data:`USER_STATE_LUA`): it reads the active
record and, in the version the caller expects, the users' published payloads, their real-time state
and the similar-items lists of their recent items, atomically. Requests that ask in the same
event-loop tick share one call (:meth:`Store.user_state`): a round trip costs far more CPU than the
script's work for one more user. A call goes out only while fewer than :data:`MAX_IN_FLIGHT` are under
way; requests that ask meanwhile wait and go together in the next one. The calls go on a lean
connection of their own (:mod:`service.resp`) and are answered by a callback, without a task; every
other read and write uses redis-py.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from features.columns import Columns, EventType
from service.contract import (
    EVENT_STREAM_MAXLEN,
    REALTIME_TTL_S,
    RECENT_MAX,
    SCHEMA_VERSION,
    ActiveVersion,
    ContractError,
    ItemMeta,
    Keys,
    RecList,
    UserRecs,
    decode,
)
from service.errors import StoreUnavailableError, UnavailableError
from service.resp import Pipe, Reply, bulk_strings, open_pipe
from service.schemas import EventIn

MAX_SEEDS: Final = 5
"""Recent items whose similar-items lists are read for "because you viewed"."""
MAX_BATCH: Final = 128
"""Users per script call at most (Redis runs nothing else meanwhile; ~10 µs per user)."""
MAX_IN_FLIGHT: Final = 2
"""Script calls under way at once. One more than one: while Redis runs a call, the next batch is already
sent, so the service does not sit idle waiting for a reply. More would only make batches smaller."""
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_RECENT_TYPES = frozenset({EventType.VIEW, EventType.ADD_TO_CART})

USER_STATE_LUA: Final = r"""
-- ARGV: active key; user, similar, recent, bought key prefixes; recent max; seeds; then user ids.
-- Keys are derived here (standalone Redis allows it) so the version read and the payloads are one snapshot.
-- The reply is ONE msgpack document (payloads embedded as they are): [active, [[user, recent, bought, similar]...]],
-- decoded in one typed msgspec call instead of a nested Redis reply parsed element by element.
local function head(n, fix, b16, b32)
  if n < 16 and fix then return string.char(fix + n) end
  if n < 65536 then return string.char(b16, math.floor(n / 256), n % 256) end
  return string.char(b32, math.floor(n / 16777216), math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
end
local function strs(list, out)
  out[#out + 1] = head(#list, 0x90, 0xdc, 0xdd)
  for _, s in ipairs(list) do
    out[#out + 1] = (#s < 32 and string.char(0xa0 + #s) or head(#s, nil, 0xda, 0xdb)) .. s
  end
end
local nil_ = string.char(0xc0)
local out = {string.char(0x92), redis.call('GET', ARGV[1]) or nil_, head(#ARGV - 7, 0x90, 0xdc, 0xdd)}
local last, seeds = tonumber(ARGV[6]) - 1, tonumber(ARGV[7])
for i = 8, #ARGV do
  local id = ARGV[i]
  local recent = redis.call('LRANGE', ARGV[4] .. id, 0, last)
  out[#out + 1] = string.char(0x94)
  out[#out + 1] = redis.call('GET', ARGV[2] .. id) or nil_
  strs(recent, out)
  strs(redis.call('SMEMBERS', ARGV[5] .. id), out)
  local n = math.min(#recent, seeds)
  out[#out + 1] = head(n, 0x90, 0xdc, 0xdd)
  for j = 1, n do
    out[#out + 1] = redis.call('GET', ARGV[3] .. recent[j]) or nil_
  end
end
return table.concat(out)
"""
"""One read for a batch of users, as one msgpack document ``[active, [UserState, ...]]``."""
_USER_STATE_SHA: Final = hashlib.sha1(USER_STATE_LUA.encode(), usedforsecurity=False).hexdigest()


@functools.lru_cache(maxsize=8)
def _script_prefix(fixed: tuple[str | int, ...]) -> bytes:
    """EVALSHA, the script's sha, 0 keys and the arguments of one version, encoded once per version."""
    return bulk_strings(("EVALSHA", _USER_STATE_SHA, 0, *fixed))


def _script_command(version: int, user_ids: Sequence[str]) -> bytes:
    """The encoded EVALSHA of :data:`USER_STATE_LUA` for ``user_ids`` in ``version`` (see the script's ARGV)."""
    fixed = (
        Keys.ACTIVE, Keys.user(version, ""), Keys.similar(version, ""), Keys.recent(""), Keys.bought(""),
        RECENT_MAX, MAX_SEEDS,
    )  # fmt: skip
    return b"*%d\r\n" % (3 + len(fixed) + len(user_ids)) + _script_prefix(fixed) + bulk_strings(user_ids)


class UserState(msgspec.Struct, frozen=True, array_like=True):
    """What one recommendation needs from Redis besides the per-version cached lists, all of one version.

    ``user``: the published payload (None: not published); ``recent``: recently viewed/carted items,
    newest first; ``bought``: items bought since publish; ``similar``: the similar-items lists of the
    first :data:`MAX_SEEDS` recent items (None where absent).
    """

    user: UserRecs | None
    recent: list[str]
    bought: list[str]
    similar: list[RecList | None]


_READ: Final = msgspec.msgpack.Decoder(tuple[ActiveVersion | None, list[UserState]])
_Batch = list[tuple[str, "asyncio.Future[tuple[ActiveVersion | None, UserState]]"]]
_Pending = dict[int, _Batch]


@contextmanager
def unreachable_as_unavailable() -> Iterator[None]:
    """Turn "cannot talk to Redis" into StoreUnavailableError (other Redis errors are bugs and propagate)."""
    try:
        yield
    except _UNREACHABLE as exc:
        raise _unavailable(exc) from exc


class Store:
    """Async reads/writes of the Redis layout in :mod:`service.contract`."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._pipe: Pipe | None = None  # the user-state script's own connection (see script_call)
        self._connecting = asyncio.Lock()
        self._closed = False
        self._pending: _Pending = {}
        self._in_flight = 0  # script calls under way (batches sent and not yet handed out)
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()  # slow-path reads under way (their strong references)

    async def ping(self) -> None:
        with unreachable_as_unavailable():
            await self.client.ping()

    async def active(self) -> ActiveVersion | None:
        with unreachable_as_unavailable():
            raw = await self.client.get(Keys.ACTIVE)
        return _active(raw)

    def user_state(self, user_id: str, version: int) -> asyncio.Future[tuple[ActiveVersion | None, UserState]]:
        """The active version and ``user_id``'s state read in ``version`` (valid only if that is the active one),
        to await. A plain method returning the future: one coroutine less per request.

        Requests share script calls: the requests of one event-loop tick go together in one call, sent on
        the next tick; while :data:`MAX_IN_FLIGHT` calls are under way, the requests that ask wait for one
        to end and then go together in the next. Under load batches grow by themselves; an idle service
        adds no wait.
        """
        future: asyncio.Future[tuple[ActiveVersion | None, UserState]] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(version, []).append((user_id, future))
        self._schedule_flush()
        return future

    def _schedule_flush(self) -> None:
        if self._pending and not self._flush_scheduled and self._in_flight < MAX_IN_FLIGHT:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for version, waiting in pending.items():
            for start in range(0, len(waiting), MAX_BATCH):  # a script call blocks Redis: keep each one short
                self._send(version, waiting[start : start + MAX_BATCH])

    def _send(self, version: int, batch: _Batch) -> None:
        """Start one batch's script call; :meth:`_reply` hands out the answer.

        The steady state needs no task: the call's future calls back when the reply is read. A missing
        connection, a broken one and an unloaded script go the slow way, :meth:`read_users` in a task.
        """
        self._in_flight += 1
        pipe = self._pipe
        if pipe is None or pipe.closed:
            self._spawn(self._answer(version, batch))
            return
        user_ids = [user_id for user_id, _ in batch]
        try:
            call = self.script_call(pipe, version, user_ids)
        except Exception as exc:  # e.g. an id that cannot be encoded: fail this batch, never leave it waiting
            self._hand_out(batch, exc)
            return
        call.add_done_callback(functools.partial(self._reply, version, batch, user_ids, pipe))

    def _reply(self, version: int, batch: _Batch, user_ids: list[str], pipe: Pipe, call: asyncio.Future[Reply]) -> None:
        """A fast-path call ended: hand out its answer, or retry it the slow way after a Redis restart.

        Runs as a callback: whatever happens, the batch is handed out (or passed to a task that will),
        else its requests would wait forever and the call would count as under way for good.
        """
        if call.cancelled():
            self._hand_out(batch, asyncio.CancelledError())
            return
        exc = call.exception()
        retry = isinstance(exc, NoScriptError) or (isinstance(exc, RedisConnectionError | OSError) and pipe.closed)
        if retry and not self._closed:
            # Redis restarted (the connection broke) or flushed its scripts: reconnect or load the script, call
            # again. An error reply on a live connection (LOADING, authentication) is no reason to reconnect.
            self._spawn(self._answer(version, batch, load_script=isinstance(exc, NoScriptError)))
            return
        if exc is not None:
            self._hand_out(batch, _unavailable(exc))
            return
        try:
            read = self._decode(call.result(), version, user_ids)
        except ContractError as error:
            self._split(version, batch, error)
        except Exception as error:  # e.g. a version written with a payload schema this service cannot read
            self._hand_out(batch, error)
        else:
            self._hand_out(batch, read)

    async def _answer(self, version: int, batch: _Batch, *, load_script: bool = False) -> None:
        """The slow path of one batch: :meth:`read_users` (connect, load the script, retry once)."""
        try:
            if load_script:
                with unreachable_as_unavailable():
                    await self.client.script_load(USER_STATE_LUA)
            read = await self.read_users(version, [user_id for user_id, _ in batch])
        except ContractError as error:
            self._split(version, batch, error)
        except BaseException as exc:
            self._hand_out(batch, exc)
            if not isinstance(exc, Exception):
                raise  # cancelled: end the task; errors went to the requests (no "never retrieved" noise)
        else:
            self._hand_out(batch, read)

    def _split(self, version: int, batch: _Batch, error: ContractError) -> None:
        """One unreadable payload must not fail its neighbours: read each user of the batch on its own."""
        if len(batch) == 1:
            self._hand_out(batch, error)
            return
        self._in_flight += len(batch) - 1  # the batch's call becomes one call per user
        for one in batch:
            self._spawn(self._answer(version, [one]))

    def _hand_out(self, batch: _Batch, read: tuple[ActiveVersion | None, list[UserState]] | BaseException) -> None:
        """Give each waiting request its part of ``read`` (or the error); the call is no longer under way."""
        self._in_flight -= 1
        for i, (_, future) in enumerate(batch):
            if future.done():  # the request was cancelled meanwhile
                continue
            if isinstance(read, asyncio.CancelledError):
                future.cancel()
            elif isinstance(read, BaseException):
                future.set_exception(read)
            else:
                future.set_result((read[0], read[1][i]))
        self._schedule_flush()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def script_call(self, pipe: Pipe, version: int, user_ids: Sequence[str]) -> asyncio.Future[Reply]:
        """Send one EVALSHA of :data:`USER_STATE_LUA` for ``user_ids`` in ``version`` on ``pipe``.

        Every script call goes through here (the tests wrap it to watch or hold calls).
        """
        return pipe.call(_script_command(version, user_ids))

    async def read_users(self, version: int, user_ids: Sequence[str]) -> tuple[ActiveVersion | None, list[UserState]]:
        """One script call: the active record and each user's :class:`UserState` in ``version``.

        Connects the script's connection if needed; after a Redis restart (a broken connection, the script
        no longer loaded) it reconnects and loads the script once each, so the first request after Redis is
        back is answered from it.
        """
        with unreachable_as_unavailable():
            pipe = self._pipe if self._pipe is not None and not self._pipe.closed else await self._reconnect(None)
            reconnected = loaded = False
            while True:
                try:
                    raw = await self.script_call(pipe, version, user_ids)
                    break
                except NoScriptError:
                    if loaded:
                        raise
                    loaded = True
                    await self.client.script_load(USER_STATE_LUA)
                except (RedisConnectionError, OSError):
                    if reconnected or not pipe.closed:  # an error reply (LOADING, authentication): no reconnect
                        raise
                    reconnected = True
                    pipe = await self._reconnect(pipe)
        return self._decode(raw, version, user_ids)

    @staticmethod
    def _decode(raw: Reply, version: int, user_ids: Sequence[str]) -> tuple[ActiveVersion | None, list[UserState]]:
        try:
            active, states = _READ.decode(raw)  # type: ignore[arg-type]  # None or an int is a DecodeError
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
            raise ContractError(f"cannot decode {_read_of(version, user_ids)}: {exc}") from exc
        if len(states) != len(user_ids):
            answered = f"the user-state script answered {len(states)} users for {len(user_ids)}"
            raise ContractError(f"{answered}: {_read_of(version, user_ids)}")
        return _readable(active), states

    async def _reconnect(self, broken: Pipe | None) -> Pipe:
        """A connected Pipe in place of ``broken`` (one connect, even when several calls ask at once)."""
        async with self._connecting:
            if self._closed:
                raise RedisConnectionError("the store is closed")
            if self._pipe is None or self._pipe.closed or self._pipe is broken:
                if self._pipe is not None:
                    self._pipe.close()
                pipe = await open_pipe(self.client.connection_pool)
                if self._closed:  # closed while connecting: keep nothing open
                    pipe.close()
                    raise RedisConnectionError("the store is closed")
                self._pipe = pipe
            return self._pipe

    async def close(self) -> None:
        """Close the script connection (the pool is closed with the client); calls under way fail."""
        self._closed = True
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    async def rec_lists(self, keys: Sequence[str]) -> list[RecList | None]:
        """Several ranked lists (fallback or similar-items lists) by key; None where absent."""
        if not keys:
            return []
        with unreachable_as_unavailable():
            raws = await self.client.mget(list(keys))
        return [_rec_list(raw, key) for raw, key in zip(raws, keys, strict=True)]

    async def similar_list(self, item_id: str, version: int) -> tuple[ActiveVersion | None, RecList | None]:
        """The active record and ``item_id``'s similar-items list in ``version``, in one MGET.

        The list is valid only if ``version`` is the active one (the caller guesses the version it saw
        last, as for recommendations, and asks again with the active one if the guess was wrong).
        """
        key = Keys.similar(version, item_id)
        with unreachable_as_unavailable():
            raw_active, raw_list = await self.client.mget([Keys.ACTIVE, key])
        active = _active(raw_active)
        if active is None or active.version != version:
            return active, None  # a stale guess: the caller reads again, so the list is not even decoded
        return active, _rec_list(raw_list, key)

    async def item_meta(self, version: int, item_ids: Sequence[str]) -> dict[str, ItemMeta | None]:
        """Metadata of ``item_ids`` in ``version``; None for items not in its catalogue."""
        if not item_ids:
            return {}
        name = Keys.items(version)
        with unreachable_as_unavailable():
            raws = await self.client.hmget(name, list(item_ids))
        return {
            item: decode(raw, ItemMeta, where=f"{name}[{item}]") if raw is not None else None
            for item, raw in zip(item_ids, raws, strict=True)
        }

    async def add_events(self, events: Sequence[EventIn], now: datetime) -> list[str]:
        """Append events to the stream and update real-time state, all or nothing (MULTI/EXEC).

        Returns the stream ids. Purchases join the user's bought set; views and add-to-carts move
        the item to the front of the user's recent list (capped at ``RECENT_MAX``).
        """
        with unreachable_as_unavailable():
            pipe = self.client.pipeline(transaction=True)
            positions = [self._queue_event(pipe, event, now) for event in events]
            results = await pipe.execute()
        return [results[p].decode() for p in positions]

    def _queue_event(self, pipe: Any, event: EventIn, now: datetime) -> int:
        """Queue one event's commands; return the position of its XADD in the pipeline's results."""
        position = len(pipe.command_stack)
        pipe.xadd(Keys.EVENTS, stream_fields(event, now), maxlen=EVENT_STREAM_MAXLEN, approximate=True)
        if event.event_type == EventType.PURCHASE:
            pipe.sadd(Keys.bought(event.user_id), event.item_id)
            pipe.expire(Keys.bought(event.user_id), REALTIME_TTL_S)
        elif event.event_type in _RECENT_TYPES:
            recent = Keys.recent(event.user_id)
            pipe.lrem(recent, 0, event.item_id)
            pipe.lpush(recent, event.item_id)
            pipe.ltrim(recent, 0, RECENT_MAX - 1)
            pipe.expire(recent, REALTIME_TTL_S)
        return position


def stream_fields(event: EventIn, now: datetime) -> dict[str, str]:
    """The flat string map stored in the event stream (absent optional fields left out)."""
    timestamp = event.timestamp or now
    timestamp = timestamp.replace(tzinfo=UTC) if timestamp.tzinfo is None else timestamp.astimezone(UTC)
    fields = {
        Columns.USER: event.user_id,
        Columns.ITEM: event.item_id,
        Columns.EVENT: event.event_type,
        Columns.TIMESTAMP: timestamp.isoformat(),
        Columns.QUANTITY: event.quantity,
        Columns.PRICE: event.price,
        Columns.SESSION: event.session_id,
        "recommendation_id": event.recommendation_id,
    }
    return {name: str(value) for name, value in fields.items() if value is not None}


def _read_of(version: int, user_ids: Sequence[str]) -> str:
    """What a failed user-state read was reading, for its error (formatted only when one is raised)."""
    return f"{Keys.ACTIVE} or a payload of version {version} for users {list(user_ids)[:5]}"


def _unavailable(exc: BaseException) -> BaseException:
    """A failed call's error as the requests get it (Redis unreachable or too slow: StoreUnavailableError)."""
    if isinstance(exc, _UNREACHABLE):
        error = StoreUnavailableError(f"Redis is unreachable: {exc}")
        error.__cause__ = exc
        return error
    return exc


def _active(raw: bytes | str | None) -> ActiveVersion | None:
    """The active record, refusing versions written with a payload schema this service cannot read."""
    return _readable(decode(raw, ActiveVersion, where=Keys.ACTIVE) if raw is not None else None)


def _readable(active: ActiveVersion | None) -> ActiveVersion | None:
    """``active``, unless it was written with a payload schema this service cannot read (UnavailableError)."""
    if active is None:
        return None
    if active.schema != SCHEMA_VERSION:
        raise UnavailableError(
            f"version {active.version} was published with payload schema {active.schema}; "
            f"this service reads schema {SCHEMA_VERSION}: upgrade the service or republish"
        )
    return active


def _rec_list(raw: bytes | str | None, key: str) -> RecList | None:
    return decode(raw, RecList, where=key) if raw is not None else None
