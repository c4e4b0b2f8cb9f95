"""The service's Redis access: every read and write the API does, in as few round trips as possible.

Connection failures and timeouts become :class:`~service.errors.StoreUnavailableError`; callers decide
whether to degrade (reads) or refuse (event writes). Payloads are decoded with the shared contract.

The recommendation hot path is one Lua script call (:data:`USER_STATE_LUA`): it reads the active
record and, in the version the caller expects, the users' published payloads, their real-time state
and the similar-items lists of their recent items, atomically. Requests that ask in the same
event-loop tick share one call (:meth:`Store.user_state`): a redis-py round trip costs far more CPU
than the script's work for one more user. A call goes out only while fewer than
:data:`MAX_IN_FLIGHT` are under way; requests that ask meanwhile wait and go together in the next one.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
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
        raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc


class Store:
    """Async reads/writes of the Redis layout in :mod:`service.contract`."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._script_connections: list[Any] = []  # idle connections of the user-state script (redis-py's are untyped)
        self._connect: Callable[[], Any] = client.connection_pool.make_connection  # a new, unconnected one
        self._pending: _Pending = {}
        self._batches: set[asyncio.Task[None]] = set()  # script calls under way
        self._flush_scheduled = False

    async def ping(self) -> None:
        with unreachable_as_unavailable():
            await self.client.ping()

    async def active(self) -> ActiveVersion | None:
        with unreachable_as_unavailable():
            raw = await self.client.get(Keys.ACTIVE)
        return _active(raw)

    async def user_state(self, user_id: str, version: int) -> tuple[ActiveVersion | None, UserState]:
        """The active version and ``user_id``'s state read in ``version`` (valid only if that is the active one).

        Requests share script calls: the requests of one event-loop tick go together in one call, sent on
        the next tick; while :data:`MAX_IN_FLIGHT` calls are under way, the requests that ask wait for one
        to end and then go together in the next. Under load batches grow by themselves; an idle service
        adds no wait.
        """
        future: asyncio.Future[tuple[ActiveVersion | None, UserState]] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(version, []).append((user_id, future))
        self._schedule_flush()
        return await future

    def _schedule_flush(self) -> None:
        if self._pending and not self._flush_scheduled and len(self._batches) < MAX_IN_FLIGHT:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for version, waiting in pending.items():
            for start in range(0, len(waiting), MAX_BATCH):  # a script call blocks Redis: keep each one short
                task = asyncio.ensure_future(self._answer(version, waiting[start : start + MAX_BATCH]))
                self._batches.add(task)  # also the strong reference a running task needs

    async def _answer(self, version: int, batch: _Batch) -> None:
        """Run one batch and hand each waiting request its part (or the error)."""
        try:
            active, states = await self.read_users(version, [user_id for user_id, _ in batch])
        except ContractError as exc:
            if len(batch) == 1:
                _fail(batch[0][1], exc)
            else:  # one unreadable payload must not fail its neighbours: read each user on its own
                for one in batch:
                    self._batches.add(asyncio.ensure_future(self._answer(version, [one])))
        except BaseException as exc:
            for _, future in batch:
                _fail(future, exc)
            if not isinstance(exc, Exception):
                raise  # cancelled: end the task; errors went to the requests (no "never retrieved" noise)
        else:
            for (_, future), state in zip(batch, states, strict=True):
                if not future.done():  # the request may have been cancelled meanwhile
                    future.set_result((active, state))
        finally:
            self._batches.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._schedule_flush()

    async def read_users(self, version: int, user_ids: Sequence[str]) -> tuple[ActiveVersion | None, list[UserState]]:
        """One script call: the active record and each user's :class:`UserState` in ``version``."""
        args: tuple[str | int, ...] = (
            Keys.ACTIVE, Keys.user(version, ""), Keys.similar(version, ""), Keys.recent(""), Keys.bought(""),
            RECENT_MAX, MAX_SEEDS, *user_ids,
        )  # fmt: skip
        with unreachable_as_unavailable():
            try:  # NOSCRIPT (a restarted or flushed Redis): load the script, call again
                raw = await self._script_call(args)
            except NoScriptError:
                await self.client.script_load(USER_STATE_LUA)
                raw = await self._script_call(args)
        try:
            active, states = _READ.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            where = f"{Keys.ACTIVE} or a payload of version {version} for users {list(user_ids)[:5]}"
            raise ContractError(f"cannot decode {where}: {exc}") from exc
        return _readable(active), states

    async def _script_call(self, args: tuple[str | int, ...]) -> Any:
        """EVALSHA of the user-state script on a connection kept for it, not checked out of the pool.

        A pooled ``execute_command`` wraps each call in a pool checkout and a retry helper that cost the
        service more CPU than the call itself when batches are small (moderate load). Like the pool's
        one retry, a connection that a Redis restart broke is replaced once, so the first request after
        Redis is back is answered from it.
        """
        kept = self._script_connections.pop() if self._script_connections else self._connect()
        try:
            return await self._call_on(kept, args)
        except (RedisConnectionError, OSError):  # Redis restarted: every kept connection is stale
            stale, self._script_connections = self._script_connections, []
            for connection in stale:
                await connection.disconnect()
            return await self._call_on(self._connect(), args)

    async def _call_on(self, connection: Any, args: tuple[str | int, ...]) -> Any:
        try:
            await connection.send_command("EVALSHA", _USER_STATE_SHA, 0, *args)
            reply = await connection.read_response()
        except ResponseError:  # a whole reply was read: the connection is fine
            await self._idle(connection)
            raise
        except BaseException:  # broken, timed out or cancelled: half a reply may be unread, so drop it
            await connection.disconnect()
            raise
        await self._idle(connection)
        return reply

    async def _idle(self, connection: Any) -> None:
        if len(self._script_connections) < MAX_IN_FLIGHT:
            self._script_connections.append(connection)
        else:  # more calls than usual were under way (a flush split a very large batch): keep only a few
            await connection.disconnect()

    async def close(self) -> None:
        """Close the script connections (the pool is closed with the client)."""
        connections, self._script_connections = self._script_connections, []
        for connection in connections:
            await connection.disconnect()

    async def rec_lists(self, keys: Sequence[str]) -> list[RecList | None]:
        """Several ranked lists (fallback or similar-items lists) by key; None where absent."""
        if not keys:
            return []
        with unreachable_as_unavailable():
            raws = await self.client.mget(list(keys))
        return [_rec_list(raw, key) for raw, key in zip(raws, keys, strict=True)]

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


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    """Pass a batch's failure to one waiting request (a cancelled batch cancels it)."""
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)


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
