"""The service's Redis access: every read and write the API does, in as few round trips as possible.

Connection failures and timeouts become :class:`~service.errors.StoreUnavailableError`; callers decide
whether to degrade (reads) or refuse (event writes). Payloads are decoded with the shared contract.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from features.columns import Columns, EventType
from service.contract import (
    EVENT_STREAM_MAXLEN,
    REALTIME_TTL_S,
    RECENT_MAX,
    SCHEMA_VERSION,
    ActiveVersion,
    ItemMeta,
    Keys,
    RecList,
    UserRecs,
    decode,
)
from service.errors import StoreUnavailableError, UnavailableError
from service.schemas import EventIn

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_RECENT_TYPES = frozenset({EventType.VIEW, EventType.ADD_TO_CART})


@dataclass(frozen=True)
class UserContext:
    """First round trip of a recommendation: active version and the user's real-time state."""

    active: ActiveVersion | None
    recent: list[str]
    bought: set[str]


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

    async def ping(self) -> None:
        with unreachable_as_unavailable():
            await self.client.ping()

    async def active(self) -> ActiveVersion | None:
        with unreachable_as_unavailable():
            raw = await self.client.get(Keys.ACTIVE)
        return _active(raw)

    async def user_context(self, user_id: str) -> UserContext:
        """Active version, recently viewed/carted items (newest first), items bought since publish."""
        with unreachable_as_unavailable():
            pipe = self.client.pipeline(transaction=False)
            pipe.get(Keys.ACTIVE)
            pipe.lrange(Keys.recent(user_id), 0, RECENT_MAX - 1)
            pipe.smembers(Keys.bought(user_id))
            raw_active, recent, bought = await pipe.execute()
        return UserContext(_active(raw_active), [r.decode() for r in recent], {b.decode() for b in bought})

    async def user_lists(
        self, version: int, user_id: str, seeds: Sequence[str]
    ) -> tuple[UserRecs | None, list[RecList | None]]:
        """The user's published payload and the similar-items lists of ``seeds``, in one round trip."""
        keys = [Keys.user(version, user_id), *(Keys.similar(version, s) for s in seeds)]
        with unreachable_as_unavailable():
            raws = await self.client.mget(keys)
        user = decode(raws[0], UserRecs, where=keys[0]) if raws[0] is not None else None
        return user, [_rec_list(raw, key) for raw, key in zip(raws[1:], keys[1:], strict=True)]

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


def _active(raw: bytes | str | None) -> ActiveVersion | None:
    """The active record, refusing versions written with a payload schema this service cannot read."""
    if raw is None:
        return None
    active = decode(raw, ActiveVersion, where=Keys.ACTIVE)
    if active.schema != SCHEMA_VERSION:
        raise UnavailableError(
            f"version {active.version} was published with payload schema {active.schema}; "
            f"this service reads schema {SCHEMA_VERSION}: upgrade the service or republish"
        )
    return active


def _rec_list(raw: bytes | str | None, key: str) -> RecList | None:
    return decode(raw, RecList, where=key) if raw is not None else None
