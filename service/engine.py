"""What the endpoints do: recommendations with the fallback chain, similar items, events, readiness.

Recommendations for a user take one Redis round trip in the steady state: one script call returns
the active version record and, in the version this process last saw, the user's published list,
real-time state (recent items, items bought since publish) and the similar-items lists of their
recent items (:meth:`Store.user_state`, shared by the requests of one event-loop tick). If the
active version is not the one guessed, the read is repeated for the active one, so a switch is seen
at once and a response never mixes two versions. Similar items work the same way: one MGET of the active
record and the item's list in the version guessed.

Everything else is immutable within a version and cached in memory per version: the fallback lists
(requested category, the user's segment, global) and item metadata (availability, category), each
read from Redis the first time it is needed. The latest global list is kept as the outage copy: when
Redis is unreachable, recommendations come from it with ``degraded: true``. The copy is loaded at
startup and refreshed whenever a request sees a new active version.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Final, TypeVar

import msgspec

from service import ranking
from service.contract import ActiveVersion, ContractError, ItemMeta, Keys, RecList
from service.errors import InvalidInputError, NotFoundError, NotPublishedError, StoreUnavailableError, UnavailableError
from service.metrics import Metrics
from service.ranking import Item
from service.schemas import (
    MAX_EXCLUDE,
    MAX_ID_LENGTH,
    EventIn,
    EventsAccepted,
    Ready,
    RecommendationParams,
    RecommendationsOut,
    RecommendedItem,
    SimilarItem,
    SimilarItemsOut,
    Source,
)
from service.store import MAX_SEEDS, Store

_META_CHUNK_MIN: Final = 32
_MAX_CHAINS: Final = 10_000
"""Fallback chains cached per version (one per requested category × user segment seen)."""
T = TypeVar("T")
_READ_ATTEMPTS: Final = 3
"""Reads of one request when the active version keeps changing under it (two are enough in practice)."""


class Query(msgspec.Struct, frozen=True):
    """A validated recommendation request (a Struct: built on every request, ~10× cheaper than a frozen dataclass)."""

    user_id: str
    k: int
    category: str | None = None
    exclude: tuple[str, ...] = ()

    @classmethod
    def parse(cls, params: RecommendationParams) -> Query:
        """Check what a Struct cannot (the items of the exclude list); raises :class:`InvalidInputError`."""
        if not params.exclude:  # the common case: nothing to split or check
            return cls(params.user_id, params.k, params.category or None)
        items = ranking.parse_exclude(params.exclude)
        if len(items) > MAX_EXCLUDE:
            raise InvalidInputError.at("exclude", f"{len(items)} item ids; at most {MAX_EXCLUDE} allowed")
        if any(len(i) > MAX_ID_LENGTH for i in items):
            raise InvalidInputError.at("exclude", f"an item id is longer than {MAX_ID_LENGTH} characters")
        return cls(params.user_id, params.k, params.category or None, tuple(items))


class VersionCache:
    """What never changes within the active version (fallback lists, their chains by (category, segment),
    item metadata), and the outage copy (last good active + global list)."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.lists: dict[str, RecList] = {}
        self.chains: dict[tuple[str | None, str | None], list[ranking.Stream]] = {}
        self.meta: dict[str, ItemMeta | None] = {}
        self.outage_copy: tuple[ActiveVersion, RecList] | None = None

    def observe(self, active: ActiveVersion) -> None:
        """Forget the lists of an older version once a newer one is active."""
        if active.version != self.version:
            self.version = active.version
            self.lists = {}
            self.chains = {}
            self.meta = {}

    def store(self, active: ActiveVersion, key: str, rec: RecList) -> None:
        if active.version == self.version:
            self.lists[key] = rec
        newest = self.outage_copy is None or active.version >= self.outage_copy[0].version
        if key == Keys.popular(active.version) and newest:
            self.outage_copy = (active, rec)


class Engine:
    """The service's behaviour on top of :class:`Store`; one per app."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self.cache = VersionCache()

    async def warm_up(self) -> None:
        """Load the outage copy (startup). Nothing here stops the service from starting: with Redis unreachable
        it starts cold; with an active version it cannot read it starts too, and each request and ``/ready``
        answer as they would after startup (503 naming a newer payload schema, 500 for a damaged record)."""
        try:
            active = await self.store.active()
            if active is not None:
                self.cache.observe(active)
                await self._lists(active, [Keys.popular(active.version)])
        except (StoreUnavailableError, UnavailableError, ContractError):
            return

    # --- recommendations --------------------------------------------------------------------------------
    async def recommend(self, query: Query) -> RecommendationsOut:
        """Recommendations for one user; from the outage copy (degraded) when Redis is unreachable."""
        try:
            out = await self._recommend(query)
        except StoreUnavailableError:
            out = self._degraded(query)
        self.metrics.count_recommendation(out.source, out.degraded)
        return out

    async def _recommend(self, query: Query) -> RecommendationsOut:
        active, state = await self._in_active_version(functools.partial(self.store.user_state, query.user_id))
        self.cache.observe(active)
        user = state.user
        streams = [
            ranking.from_list(user, ranking.PERSONALIZED, Source.PERSONALIZED),
            *await self._fallback_streams(active, query.category, user.segment if user else None),
        ]
        if state.recent:
            streams.insert(1, ranking.because_you_viewed(state.recent[:MAX_SEEDS], state.similar))
        blocked = {*query.exclude, *state.bought, *(user.bought if user else ())}
        items, source = await self._pick(active.version, streams, blocked, query.k, RecommendedItem)
        return _response(query, items, source, active, degraded=False)

    async def _in_active_version(
        self, read: Callable[[int], Awaitable[tuple[ActiveVersion | None, T]]]
    ) -> tuple[ActiveVersion, T]:
        """``read(version)`` in the active version, in one round trip in the steady state.

        ``read`` returns the active record with what it read in the version it was given: the version
        seen last is guessed, and the read repeated in the active one if the guess was wrong. A read that
        cannot be decoded is repeated too if the guess was stale (the old version's payloads no longer matter).
        """
        guess = self.cache.version or 0  # versions start at 1: 0 reads nothing, then the real one is read
        for _ in range(_READ_ATTEMPTS):
            try:
                active, value = await read(guess)
            except ContractError:
                # Unreadable: in the guessed version only (an old one, its payloads no longer served), or in the
                # active one too. Only the active version decides; an error there fails the request.
                active = await self.store.active()
                if active is None or active.version == guess:
                    raise
                guess = active.version
                continue
            if active is None:
                raise NotPublishedError("nothing has been published yet: run `tailor publish`")
            if active.version == guess:
                return active, value
            guess = active.version
        raise UnavailableError(f"the active version changed {_READ_ATTEMPTS} times during one request; retry")

    async def _fallback_streams(
        self, active: ActiveVersion, category: str | None, segment: str | None
    ) -> list[ranking.Stream]:
        """Requested category first (explicit context), then the user's segment, then global.

        Cached per version by (category, segment), absent lists included (a version never changes);
        at most :data:`_MAX_CHAINS` of them, as the category comes from the query string.
        """
        chains = self.cache.chains if active.version == self.cache.version else {}
        streams = chains.get((category, segment))
        if streams is None:
            streams = await self._fallback_chain(active, category, segment)
            if len(chains) < _MAX_CHAINS:
                chains[category, segment] = streams
        return streams

    async def _fallback_chain(
        self, active: ActiveVersion, category: str | None, segment: str | None
    ) -> list[ranking.Stream]:
        v = active.version
        chain: list[tuple[str, str, Source]] = []
        if category:
            chain.append((Keys.popular_category(v, category), f"popular_in_category:{category}", Source.CATEGORY))
        if segment:
            chain.append((Keys.popular_segment(v, segment), f"popular_in_segment:{segment}", Source.SEGMENT))
        chain.append((Keys.popular(v), ranking.POPULAR, Source.POPULAR))
        lists = await self._lists(active, [key for key, _, _ in chain])
        return [ranking.from_list(rec, reason, source) for rec, (_, reason, source) in zip(lists, chain, strict=True)]

    async def _lists(self, active: ActiveVersion, keys: Sequence[str]) -> list[RecList | None]:
        """Fallback lists from the memory cache, fetching (and caching) the missing ones."""
        found = {key: self.cache.lists[key] for key in keys if key in self.cache.lists}
        missing = [key for key in keys if key not in found]
        for key, rec in zip(missing, await self.store.rec_lists(missing), strict=True):
            if rec is not None:
                found[key] = rec  # kept here too: a newer version may have reset the cache meanwhile
                self.cache.store(active, key, rec)
        return [found.get(key) for key in keys]

    async def _pick(
        self, version: int, streams: list[ranking.Stream], blocked: set[str], k: int, item: type[Item]
    ) -> tuple[list[Item], Source]:
        """The first ``k`` available candidates of ``streams`` as ``item``s, and the step of the first one
        (:func:`ranking.pick`).

        Item metadata is immutable within a version, so it is cached per version: each item is read
        from Redis once (with the next unknown candidates, in one HMGET), then only looked up in memory.
        """
        meta = self.cache.meta if version == self.cache.version else {}  # {}: a request of an older version
        lookahead = max(2 * k, _META_CHUNK_MIN)
        while True:
            items, source, missing = ranking.pick(streams, blocked, meta, k, lookahead, item)
            if not missing:
                return items, source
            meta.update(await self.store.item_meta(version, missing))

    async def _item(self, version: int, item_id: str) -> ItemMeta | None:
        """One item's metadata; None if not in the catalogue. Cached per version like the candidates' when
        found only: the id comes from the path, and caching every unknown one would grow without bound."""
        meta = self.cache.meta if version == self.cache.version else {}
        found = meta.get(item_id)
        if found is None:
            found = (await self.store.item_meta(version, [item_id]))[item_id]
            if found is not None:
                meta[item_id] = found
        return found

    def _degraded(self, query: Query) -> RecommendationsOut:
        """Redis is unreachable: the in-memory global list minus the caller's exclusions."""
        if self.cache.outage_copy is None:
            raise StoreUnavailableError("Redis is unreachable and no popular list is cached in memory yet")
        active, rec = self.cache.outage_copy
        stream = ranking.from_list(rec, ranking.POPULAR, Source.POPULAR)
        items, source = ranking.first_allowed(stream, set(query.exclude), query.k, RecommendedItem)
        return _response(query, items, source, active, degraded=True)

    # --- similar items, readiness, events -----------------------------------------------------------------
    async def similar(self, item_id: str, k: int) -> SimilarItemsOut:
        """Available items similar to ``item_id``, from its published list.

        An item of the catalogue that the model does not know (new, or never bought) has no list: it gets
        the popular items of its category, then the global ones, each with that reason. NotFoundError when
        the active version's catalogue does not have the item either.
        """
        active, rec = await self._in_active_version(functools.partial(self.store.similar_list, item_id))
        self.cache.observe(active)
        if rec is not None:
            streams = [ranking.from_list(rec, ranking.SIMILAR, Source.PERSONALIZED)]
        else:
            meta = await self._item(active.version, item_id)
            if meta is None:
                raise NotFoundError(f"item {item_id!r} is not in published version {active.version}", field="item_id")
            streams = await self._fallback_streams(active, meta.category, None)
        items, _ = await self._pick(active.version, streams, {item_id}, k, SimilarItem)
        return SimilarItemsOut(
            item_id=item_id, items=items, model_version=active.model_version, publish_version=active.version,
            generated_at=active.generated_at,
        )  # fmt: skip

    async def ready(self) -> Ready:
        """Redis answers and a version is active; raises UnavailableError otherwise."""
        active = await self._active()
        return Ready(
            status="ready", publish_version=active.version, model_name=active.model_name,
            model_version=active.model_version, generated_at=active.generated_at,
        )  # fmt: skip

    async def record(self, events: Sequence[EventIn]) -> EventsAccepted:
        """Store events durably (stream + real-time state) before acknowledging them."""
        try:
            ids = await self.store.add_events(events, datetime.now(UTC))
        except StoreUnavailableError as exc:
            raise StoreUnavailableError(f"events cannot be stored right now; retry later ({exc.detail})") from exc
        for event in events:
            self.metrics.count_event(event.event_type)
        return EventsAccepted(accepted=len(ids), event_ids=ids)

    async def _active(self) -> ActiveVersion:
        active = await self.store.active()
        if active is None:
            raise NotPublishedError("nothing has been published yet: run `tailor publish`")
        return active


def _response(
    query: Query, items: list[RecommendedItem], source: Source, active: ActiveVersion, *, degraded: bool
) -> RecommendationsOut:
    """The answer around the picked ``items``; ``source``: the step of the best one."""
    return RecommendationsOut(
        user_id=query.user_id,
        items=items,
        source=source,
        degraded=degraded,
        recommendation_id=os.urandom(16).hex(),  # 32 random hex digits, without uuid4's UUID object
        model_name=active.model_name,
        model_version=active.model_version,
        publish_version=active.version,
        generated_at=active.generated_at,
    )
