"""The HTTP service on a real redis-server, with lists published from the tiny store (known answers).

Published lists (see ``tiny_store``): u1 → G C B D (G unavailable, bought A, segment vip); u2 → C B
(vip); u3 → A (bought D, bargain); u4 → nothing; u9 → nothing, bargain. Global A D C B E F H;
toys A C B; books D E F; garden H; vip A C B; bargain D B. Similar: A → B C; B → A; D → G E; E → F D.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import httpx
import msgspec
import polars as pl
import pytest
import redis
import redis.asyncio as aioredis
import uvloop
from litestar.testing import TestClient

from features.columns import Columns
from features.settings import Settings
from service import examples
from service.app import GC_YOUNG_THRESHOLD, Services, create_app
from service.contract import HEAD_SIZE, ActiveVersion, ContractError, ItemMeta, Keys, RecList, UserRecs, decode, encode
from service.engine import Engine, Query, VersionCache
from service.errors import UnavailableError
from service.metrics import Metrics
from service.params import query_pairs
from service.ranking import because_you_viewed, candidates, from_list, pick
from service.redis_server import free_port
from service.resp import Pipe, Reply, pack
from service.schemas import (
    MAX_BATCH,
    EventsAccepted,
    Problem,
    RecommendationsOut,
    RecommendedItem,
    SimilarItem,
    SimilarItemsOut,
    Source,
)
from service.store import MAX_IN_FLIGHT, USER_STATE_LUA, Store
from tests.conftest import TINY_CATALOGUE, TINY_SCORES, StaticConfig, StaticModel, TinyStore, events_frame
from training.models.base import TrainData
from training.publish import PublishInfo, PublishProgress, PublishSummary, publish

KEY = "test-key"
RECS = "/v1/users/{}/recommendations"


@pytest.fixture
def settings(tmp_path: Any, redis_url: str) -> Settings:
    return Settings(home=tmp_path / ".tailor", redis_url=redis_url, api_keys=[KEY, "second-key"])


def run_publish(store: TinyStore, client: redis.Redis, model: Any = None, **kwargs: Any) -> PublishSummary:
    version = kwargs.pop("model_version", "1")
    return publish(
        model or store.model, events=store.events, catalogue=store.catalogue, users=store.users,
        redis_client=client, info=PublishInfo(model_name="tiny", model_version=version), progress=False,
        batch_users=2, **kwargs,
    )  # fmt: skip


@pytest.fixture
def published(tiny_store: TinyStore, redis_client: redis.Redis) -> PublishSummary:
    return run_publish(tiny_store, redis_client)


@pytest.fixture
def client(settings: Settings, published: PublishSummary) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(settings)) as test_client:
        test_client.headers["X-API-Key"] = KEY
        yield test_client


def recommend(client: TestClient[Any], user: str, **params: Any) -> dict[str, Any]:
    response = client.get(RECS.format(user), params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def items(body: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def reasons(body: dict[str, Any]) -> list[str]:
    return [item["reason"] for item in body["items"]]


def post_events(client: TestClient[Any], *events: dict[str, Any]) -> list[str]:
    response = client.post("/v1/events", json={"events": list(events)})
    assert response.status_code == 202, response.text
    ids: list[str] = response.json()["event_ids"]
    return ids


# --- publish → serve round trip -----------------------------------------------------------------------
def test_a_known_user_gets_their_list_without_unavailable_items(client: TestClient[Any]) -> None:
    body = recommend(client, "u1", k=3)
    assert items(body) == ["C", "B", "D"]  # G is unavailable
    assert reasons(body) == ["personalized"] * 3
    assert [i["rank"] for i in body["items"]] == [1, 2, 3]
    assert [i["score"] for i in body["items"]] == [6.0, 5.0, 4.0]
    assert [i["category"] for i in body["items"]] == ["toys", "toys", "books"]
    assert (body["source"], body["degraded"]) == ("personalized", False)
    assert (body["model_name"], body["model_version"], body["publish_version"]) == ("tiny", "1", 1)
    assert len(body["recommendation_id"]) == 32
    assert recommend(client, "u1", k=3)["recommendation_id"] != body["recommendation_id"]


def test_top_up_to_k_skips_past_purchases_and_duplicates(client: TestClient[Any]) -> None:
    body = recommend(client, "u1", k=6)  # vip adds nothing new (A bought, C B taken); global gives E F H
    assert items(body) == ["C", "B", "D", "E", "F", "H"]
    assert reasons(body) == ["personalized"] * 3 + ["popular"] * 3


def test_purchases_made_after_training_are_kept_out_of_the_top_up(
    settings: Settings, tiny_store: TinyStore, redis_client: redis.Redis
) -> None:
    """Publish with newer events than the model saw: u8 (unknown to the model) bought D and C, u1 bought H."""
    newer = events_frame([
        ("u1", "H", "purchase", "2024-01-20 09:00"),
        ("u8", "D", "purchase", "2024-01-19 12:00"),
        ("u8", "C", "purchase", "2024-01-19 13:00"),
    ])  # fmt: skip
    run_publish(dataclasses.replace(tiny_store, events=pl.concat([tiny_store.events, newer])), redis_client)
    with TestClient(create_app(settings)) as test_client:
        test_client.headers["X-API-Key"] = KEY
        everyone = items(recommend(test_client, "nobody", k=8))
        assert {"C", "D", "H"} <= set(everyone)
        assert items(recommend(test_client, "u8", k=8)) == [i for i in everyone if i not in {"C", "D"}]
        assert "H" not in items(recommend(test_client, "u1", k=8))


def test_the_segment_list_comes_before_the_global_one(client: TestClient[Any]) -> None:
    body = recommend(client, "u3", k=3)  # bargain: D (bought) B; global: A D C ...
    assert items(body) == ["A", "B", "C"]
    assert reasons(body) == ["personalized", "popular_in_segment:bargain", "popular"]


def test_a_user_known_only_by_segment_gets_the_segment_list(client: TestClient[Any]) -> None:
    body = recommend(client, "u9", k=2)
    assert (items(body), body["source"]) == (["D", "B"], "segment")
    assert reasons(body) == ["popular_in_segment:bargain"] * 2


def test_unknown_and_empty_users_get_the_global_list(client: TestClient[Any]) -> None:
    assert items(recommend(client, "stranger", k=3)) == ["A", "D", "C"]
    body = recommend(client, "u4", k=3)  # known, empty list, bought F
    assert (items(body), body["source"]) == (["A", "D", "C"], "popular")


def test_the_category_parameter_picks_the_first_fallback(client: TestClient[Any]) -> None:
    body = recommend(client, "stranger", k=2, category="books")
    assert (items(body), body["source"]) == (["D", "E"], "category")
    assert reasons(body) == ["popular_in_category:books"] * 2
    body = recommend(client, "stranger", k=5, category="garden")
    assert items(body) == ["H", "A", "D", "C", "B"]
    assert reasons(body) == ["popular_in_category:garden"] + ["popular"] * 4
    assert items(recommend(client, "stranger", k=2, category="no-such-category")) == ["A", "D"]


def test_excluded_items_are_left_out_and_topped_up(client: TestClient[Any]) -> None:
    body = recommend(client, "u1", k=3, exclude="C, ,X")
    assert items(body) == ["B", "D", "E"]


def test_k_is_met_whenever_the_catalogue_allows(client: TestClient[Any]) -> None:
    assert items(recommend(client, "stranger", k=100)) == list("ADCBEFH")  # every available item, once
    assert items(recommend(client, "u1", k=100)) == list("CBDEFH")  # minus A, bought


# --- similar items ----------------------------------------------------------------------------------------
def test_similar_items(client: TestClient[Any]) -> None:
    response = client.get("/v1/items/A/similar", params={"k": 2})
    assert response.status_code == 200
    body = response.json()
    assert [(i["item_id"], i["rank"], i["score"]) for i in body["items"]] == [("B", 1, 0.9), ("C", 2, 0.7)]
    assert (body["item_id"], body["model_version"], body["publish_version"]) == ("A", "1", 1)
    assert [i["item_id"] for i in client.get("/v1/items/D/similar").json()["items"]] == ["E"]  # G unavailable
    assert client.get("/v1/items/C/similar").json()["items"] == []


def test_similar_items_take_one_round_trip_and_follow_a_new_version(
    client: TestClient[Any], tiny_store: TinyStore, redis_client: redis.Redis
) -> None:
    def similar_a() -> tuple[int, str, list[str]]:
        body = client.get("/v1/items/A/similar", params={"k": 2}).json()
        return body["publish_version"], body["model_version"], [i["item_id"] for i in body["items"]]

    assert similar_a() == (1, "1", ["B", "C"])  # item metadata now cached
    redis_client.config_resetstat()
    assert [similar_a() for _ in range(3)] == [(1, "1", ["B", "C"])] * 3
    stats = redis_client.info("commandstats")
    calls = {name: stat["calls"] for name, stat in stats.items() if name != "cmdstat_config"}  # RESETSTAT itself
    assert calls == {"cmdstat_mget": 3}  # the active record and the list in one MGET, nothing else
    run_publish(tiny_store, redis_client, model=second_model(tiny_store), model_version="2")
    redis_client.set(Keys.similar(1, "A"), b"\xc1 not msgpack")  # the stale guess is read, and must not matter
    assert similar_a() == (2, "2", ["B", "C"])  # the guessed version 1 was stale: read again in version 2


def test_a_catalogue_item_the_model_does_not_know_gets_popular_items_of_its_category(
    settings: Settings, tiny_store: TinyStore, redis_client: redis.Redis
) -> None:
    """I (toys) and H (garden, alone in it) are in the catalogue, not in the model: no similar list."""
    new_item = pl.DataFrame({**{c: [v[0]] for c, v in TINY_CATALOGUE.items()}, Columns.ITEM: ["I"]})
    run_publish(dataclasses.replace(tiny_store, catalogue=pl.concat([tiny_store.catalogue, new_item])), redis_client)
    with TestClient(create_app(settings)) as test_client:
        test_client.headers["X-API-Key"] = KEY

        def similar(item: str, k: int) -> list[tuple[str, str]]:
            response = test_client.get(f"/v1/items/{item}/similar", params={"k": k})
            assert response.status_code == 200, response.text
            return [(i["item_id"], i["reason"]) for i in response.json()["items"]]

        toys = "popular_in_category:toys"
        assert similar("I", 4) == [("A", toys), ("C", toys), ("B", toys), ("D", "popular")]
        assert similar("H", 3) == [("A", "popular"), ("D", "popular"), ("C", "popular")]  # never H itself
        assert similar("A", 2) == [("B", "similar"), ("C", "similar")]
        assert test_client.get("/v1/items/nope/similar").status_code == 404


def test_an_unknown_item_is_a_404_problem(client: TestClient[Any]) -> None:
    response = client.get("/v1/items/nope/similar")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"] == "item 'nope' is not in published version 1"


# --- events -------------------------------------------------------------------------------------------------
def test_a_purchase_removes_the_item_from_the_next_response(client: TestClient[Any]) -> None:
    assert items(recommend(client, "u2", k=1)) == ["C"]
    response = client.post("/v1/events", json={"user_id": "u2", "item_id": "C", "event_type": "purchase"})
    assert response.status_code == 202
    assert response.json()["accepted"] == 1
    assert items(recommend(client, "u2", k=1)) == ["B"]


def test_views_make_an_unknown_shoppers_recommendations_personal(client: TestClient[Any]) -> None:
    post_events(
        client,
        {"user_id": "newbie", "item_id": "A", "event_type": "view"},
        {"user_id": "newbie", "item_id": "E", "event_type": "add_to_cart"},
    )
    body = recommend(client, "newbie", k=5)  # E is the most recent: F (E), B (A), D (E), C (A), then popular
    assert items(body) == ["F", "B", "D", "C", "A"]
    assert reasons(body) == [
        "because_you_viewed:E", "because_you_viewed:A", "because_you_viewed:E", "because_you_viewed:A", "popular",
    ]  # fmt: skip
    assert body["source"] == "recent_views"


def test_events_are_appended_to_the_stream(client: TestClient[Any], redis_client: redis.Redis) -> None:
    ids = post_events(
        client,
        {"user_id": "u1", "item_id": "B", "event_type": "view", "timestamp": "2024-05-01T10:00:00",
         "recommendation_id": "abc", "quantity": 2, "price": 1.5, "session_id": "s1"},
        {"user_id": "u1", "item_id": "B", "event_type": "wishlist"},
    )  # fmt: skip
    entries: Any = redis_client.xrange(Keys.EVENTS)  # [(id, {field: value})] as bytes
    assert [entry_id.decode() for entry_id, _ in entries] == ids
    first = {k.decode(): v.decode() for k, v in entries[0][1].items()}
    assert first == {
        "user_id": "u1", "item_id": "B", "event_type": "view", "timestamp": "2024-05-01T10:00:00+00:00",
        "quantity": "2.0", "price": "1.5", "session_id": "s1", "recommendation_id": "abc",
    }  # fmt: skip
    second = {k.decode() for k in entries[1][1]}
    assert second == {"user_id", "item_id", "event_type", "timestamp"}  # any event type, default timestamp


def test_recent_items_are_deduplicated_newest_first(client: TestClient[Any], redis_client: redis.Redis) -> None:
    post_events(client, *({"user_id": "x", "item_id": i, "event_type": "view"} for i in ["A", "B", "A"]))
    assert redis_client.lrange(Keys.recent("x"), 0, -1) == [b"A", b"B"]
    assert redis_client.ttl(Keys.recent("x")) > 0


# --- versions -------------------------------------------------------------------------------------------------
def second_model(store: TinyStore) -> StaticModel:
    config = StaticConfig(users={"u1": {"D": 9, "B": 8, "C": 7, "G": 6}}, similar=TINY_SCORES.similar)
    return StaticModel(config).fit(TrainData(build_matrix_for(store)))


def build_matrix_for(store: TinyStore) -> Any:
    from features.matrix import build_matrix

    return build_matrix(store.events)


def test_responses_during_a_publish_are_entirely_the_previous_version(
    client: TestClient[Any], tiny_store: TinyStore, redis_client: redis.Redis
) -> None:
    seen: list[tuple[int, str, list[str]]] = []

    def read(step: PublishProgress) -> None:
        body = recommend(client, "u1", k=4)
        seen.append((body["publish_version"], body["model_version"], items(body)))

    run_publish(tiny_store, redis_client, model=second_model(tiny_store), callback=read, model_version="2")
    assert len(seen) >= 4
    assert set(map(str, seen)) == {str((1, "1", ["C", "B", "D", "E"]))}
    body = recommend(client, "u1", k=4)
    assert (body["publish_version"], body["model_version"], items(body)) == (2, "2", ["D", "B", "C", "E"])


S = TypeVar("S", bound=Store)


@contextlib.asynccontextmanager
async def engine_on(
    redis_url: str, make_store: Callable[[aioredis.Redis], S], *, warm_up: bool = True
) -> AsyncIterator[tuple[Engine, S, aioredis.Redis]]:
    """An engine on a store of its own over ``redis_url`` (warmed up unless told); store and client closed after."""
    client = aioredis.Redis.from_url(redis_url)
    store = make_store(client)
    try:
        engine = Engine(store, Metrics())
        if warm_up:
            await engine.warm_up()
        yield engine, store, client
    finally:
        await store.close()
        await client.aclose()


class PublishBetweenReads(Store):
    """Runs a whole publish right after the active version and the user's state are read, before the
    request reads the rest (fallback lists, item metadata) of that version."""

    def __init__(self, client: aioredis.Redis, publish_now: Any) -> None:
        super().__init__(client)
        self.publish_now = publish_now

    def script_call(self, pipe: Pipe, version: int, user_ids: Sequence[str]) -> asyncio.Future[Reply]:
        call = super().script_call(pipe, version, user_ids)
        call.add_done_callback(lambda _: self.publish_now())  # runs before the store hands the reply out
        return call


def test_a_stale_version_guess_is_not_decoded(
    client: TestClient[Any], tiny_store: TinyStore, redis_client: redis.Redis
) -> None:
    assert items(recommend(client, "u1", k=2)) == ["C", "B"]  # version 1 is now the guess
    run_publish(tiny_store, redis_client, model=second_model(tiny_store), model_version="2")
    redis_client.set(Keys.user(1, "u1"), b"\xc1 not msgpack")  # read with the stale guess, and must not matter
    body = recommend(client, "u1", k=2)  # the guessed version 1 was stale: read again in version 2
    assert (body["publish_version"], body["model_version"], items(body)) == (2, "2", ["D", "B"])


def test_a_reader_that_read_the_old_active_version_still_gets_it_whole(
    published: PublishSummary, tiny_store: TinyStore, redis_client: redis.Redis, redis_url: str
) -> None:
    def publish_v2() -> None:
        run_publish(tiny_store, redis_client, model=second_model(tiny_store), model_version="2")

    async def read() -> Any:
        make = functools.partial(PublishBetweenReads, publish_now=publish_v2)
        async with engine_on(redis_url, make, warm_up=False) as (engine, _, client):
            engine.cache.observe(decode(await client.get(Keys.ACTIVE) or b"", ActiveVersion))  # v1 seen, no list cached
            return await engine.recommend(Query("u1", 4))

    out = asyncio.run(read())
    assert int(redis_client.get(Keys.VERSION_SEQ) or 0) == 2  # v2 was published and made active mid-request
    assert (out.publish_version, out.model_version) == (1, "1")
    assert [i.item_id for i in out.items] == ["C", "B", "D", "E"]


def test_the_user_state_script_carries_long_ids_and_long_lists(
    published: PublishSummary, redis_client: redis.Redis, redis_url: str
) -> None:
    """The script builds msgpack by hand: ids of 31/32/128 characters and lists past 15 and 255 entries."""
    recent = [f"r{i:02d}" + "x" * n for i, n in enumerate([0, 28, 29, 124, *range(16)])]  # 20 = RECENT_MAX
    bought = {f"b{i:03d}" for i in range(300)} | {"y" * 128}
    redis_client.rpush(Keys.recent("long"), *recent)
    redis_client.sadd(Keys.bought("long"), *bought)
    redis_client.rpush(Keys.recent("u1"), "A", "zz")

    async def read() -> Any:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await Store(client).read_users(1, ["long", "nobody", "u1"])
        finally:
            await client.aclose()

    active, (long, nobody, u1) = asyncio.run(read())
    assert active.version == 1
    assert (long.user, long.recent, set(long.bought), long.similar) == (None, recent, bought, [None] * 5)
    assert (nobody.user, nobody.recent, nobody.bought, nobody.similar) == (None, [], [], [])
    assert u1.user == decode(redis_client.get(Keys.user(1, "u1")) or b"", UserRecs)
    assert u1.similar == [decode(redis_client.get(Keys.similar(1, "A")) or b"", RecList), None]  # zz: no list


class RecordingStore(Store):
    """Records the users of each script call (the reads themselves go to the real Redis)."""

    def __init__(self, client: aioredis.Redis) -> None:
        super().__init__(client)
        self.calls: list[list[str]] = []

    def script_call(self, pipe: Pipe, version: int, user_ids: Sequence[str]) -> asyncio.Future[Reply]:
        self.calls.append(list(user_ids))
        return super().script_call(pipe, version, user_ids)


def test_concurrent_requests_share_one_script_call(published: PublishSummary, redis_url: str) -> None:
    async def read() -> tuple[list[list[str]], list[list[str]]]:
        async with engine_on(redis_url, RecordingStore) as (engine, store, _):
            outs = await asyncio.gather(*(engine.recommend(Query(u, 3)) for u in ["u1", "u3", "u9", "stranger"]))
            return [[i.item_id for i in out.items] for out in outs], store.calls

    answers, calls = asyncio.run(read())
    assert answers == [["C", "B", "D"], ["A", "B", "C"], ["D", "B", "A"], ["A", "D", "C"]]
    assert calls == [["u1", "u3", "u9", "stranger"]]


class GatedStore(RecordingStore):
    """Each script call waits until the test opens it; ``started`` tells the test a call has begun."""

    def __init__(self, client: aioredis.Redis) -> None:
        super().__init__(client)
        self.gates: list[asyncio.Event] = []
        self.started: asyncio.Queue[list[str]] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []

    def script_call(self, pipe: Pipe, version: int, user_ids: Sequence[str]) -> asyncio.Future[Reply]:
        gate = asyncio.Event()
        self.gates.append(gate)
        self.started.put_nowait(list(user_ids))
        held: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        async def after_the_gate() -> None:
            await gate.wait()
            call = super(GatedStore, self).script_call(pipe, version, user_ids)
            try:
                held.set_result(await call)
            except Exception as exc:
                held.set_exception(exc)

        self.tasks.append(asyncio.ensure_future(after_the_gate()))
        return held


def test_requests_wait_while_two_script_calls_are_under_way(published: PublishSummary, redis_url: str) -> None:
    """u1 and u3 each get a call of their own (two may be under way); u9 and the stranger ask while both
    are running, so they wait and then share the next call."""
    assert MAX_IN_FLIGHT == 2

    async def read() -> tuple[list[list[str]], list[list[str]]]:
        async with engine_on(redis_url, GatedStore, warm_up=False) as (engine, store, client):
            engine.cache.observe(decode(await client.get(Keys.ACTIVE) or b"", ActiveVersion))
            started = functools.partial(asyncio.wait_for, timeout=30)  # a hang is a failure, not a stuck suite
            first = asyncio.ensure_future(engine.recommend(Query("u1", 3)))
            assert await started(store.started.get()) == ["u1"]
            second = asyncio.ensure_future(engine.recommend(Query("u3", 3)))
            assert await started(store.started.get()) == ["u3"]
            rest = [asyncio.ensure_future(engine.recommend(Query(u, 3))) for u in ["u9", "stranger"]]
            store.gates[0].set()
            assert await started(store.started.get()) == ["u9", "stranger"]  # sent once the first call ended
            for gate in store.gates[1:]:
                gate.set()
            outs = await asyncio.gather(first, second, *rest)
            return [[i.item_id for i in out.items] for out in outs], store.calls

    answers, calls = asyncio.run(read())
    assert answers == [["C", "B", "D"], ["A", "B", "C"], ["D", "B", "A"], ["A", "D", "C"]]
    assert calls == [["u1"], ["u3"], ["u9", "stranger"]]


def test_script_calls_reuse_their_connections(
    published: PublishSummary, redis_url: str, redis_client: redis.Redis
) -> None:
    def connections_received() -> int:
        return int(redis_client.info("stats")["total_connections_received"])

    async def read() -> tuple[int, int]:
        async with engine_on(redis_url, Store) as (engine, _, _):
            opened = []
            for _ in range(20):  # waves of 4 concurrent requests: one or two script calls each
                await asyncio.gather(*(engine.recommend(Query(u, 3)) for u in ["u1", "u3", "u9", "stranger"]))
                opened.append(connections_received())
            return opened[0], opened[-1]

    after_first_wave, after_last_wave = asyncio.run(read())
    assert after_last_wave == after_first_wave  # later waves opened no connection


def test_an_unreadable_payload_fails_only_its_own_request(
    published: PublishSummary, redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.set(Keys.user(published.version, "u3"), b"\xc1 not msgpack")

    async def read() -> tuple[list[Any], list[list[str]]]:
        async with engine_on(redis_url, RecordingStore) as (engine, store, _):
            queries = (engine.recommend(Query(u, 3)) for u in ["u1", "u3", "u9"])
            return list(await asyncio.gather(*queries, return_exceptions=True)), store.calls

    outcomes, calls = asyncio.run(read())
    assert [[i.item_id for i in out.items] for out in (outcomes[0], outcomes[2])] == [["C", "B", "D"], ["D", "B", "A"]]
    assert isinstance(outcomes[1], ContractError)
    assert "u3" in str(outcomes[1])
    assert calls[0] == ["u1", "u3", "u9"]  # one shared call failed, then each user was read alone
    assert sorted(calls[1:]) == [["u1"], ["u3"], ["u9"]]


def test_a_payload_schema_the_service_cannot_read_is_refused(
    client: TestClient[Any], redis_client: redis.Redis
) -> None:
    assert client.get(RECS.format("u1")).status_code == 200  # connected: later reads take the callback path
    raw = redis_client.get(Keys.ACTIVE)
    assert isinstance(raw, bytes)
    active = decode(raw, ActiveVersion)
    newer = ActiveVersion(**{**{f: getattr(active, f) for f in active.__struct_fields__}, "schema": 99})
    redis_client.set(Keys.ACTIVE, encode(newer))
    response = client.get("/ready")
    assert response.status_code == 503
    assert "payload schema 99" in response.json()["detail"]
    for _ in range(MAX_IN_FLIGHT + 1):  # one by one: a refused read must not stay counted as under way
        response = client.get(RECS.format("u1"))
        assert (response.status_code, response.json()["title"]) == (503, "Service unavailable")
        assert "payload schema 99" in response.json()["detail"]
    redis_client.set(Keys.ACTIVE, raw)  # republished with the right schema: served again
    assert items(client.get(RECS.format("u1"), params={"k": 3}).json()) == ["C", "B", "D"]


def test_the_engine_is_not_injected_before_the_lifespan_has_connected() -> None:
    services = Services(Metrics())
    with pytest.raises(UnavailableError, match="starting"):
        services.provide_engine()
    assert services.provide_metrics() is services.metrics


@pytest.mark.parametrize("record", ["schema 99", "garbage"])
def test_the_service_starts_when_the_active_version_cannot_be_read(
    settings: Settings, published: PublishSummary, redis_client: redis.Redis, record: str
) -> None:
    """An unreadable active record at startup does not stop the service from starting: a newer schema is a
    503 naming it, a damaged record a 500 (logged), as after startup; a readable record is served at once."""
    raw = redis_client.get(Keys.ACTIVE)
    assert isinstance(raw, bytes)
    active = decode(raw, ActiveVersion)
    newer = ActiveVersion(**{**{f: getattr(active, f) for f in active.__struct_fields__}, "schema": 99})
    redis_client.set(Keys.ACTIVE, encode(newer) if record == "schema 99" else b"\x00not msgpack")
    with TestClient(create_app(settings)) as test_client:
        test_client.headers["X-API-Key"] = KEY
        assert test_client.get("/health").status_code == 200
        status = 503 if record == "schema 99" else 500
        for url in ("/ready", RECS.format("u1")):
            response = test_client.get(url)
            assert response.status_code == status
            assert ("payload schema 99" if record == "schema 99" else "unexpected error") in response.json()["detail"]
        redis_client.set(Keys.ACTIVE, raw)
        assert test_client.get("/ready").status_code == 200
        assert items(test_client.get(RECS.format("u1"), params={"k": 3}).json()) == ["C", "B", "D"]


# --- auth ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "detail"),
    [({}, "missing X-API-Key header"), ({"X-API-Key": "wrong"}, "unknown X-API-Key")],
)
def test_requests_without_a_valid_key_get_a_401_problem(
    client: TestClient[Any], headers: dict[str, str], detail: str
) -> None:
    del client.headers["X-API-Key"]
    for method, url in [("GET", RECS.format("u1")), ("GET", "/v1/items/A/similar"), ("POST", "/v1/events")]:
        response = client.request(
            method, url, headers=headers, json={"user_id": "u", "item_id": "i", "event_type": "v"}
        )
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json() == {
            "type": "about:blank", "title": "Unauthorized", "status": 401, "detail": detail, "instance": url,
            "errors": [{"field": "X-API-Key", "message": detail}],
        }  # fmt: skip


def test_every_configured_key_works_and_open_routes_need_none(client: TestClient[Any]) -> None:
    assert client.get(RECS.format("u1"), headers={"X-API-Key": "second-key"}).status_code == 200
    del client.headers["X-API-Key"]
    for url in ["/health", "/ready", "/metrics", "/schema", "/schema/openapi.json"]:
        assert client.get(url).status_code == 200, url


# --- bad input ----------------------------------------------------------------------------------------------
LONG_ID = "x" * 129
EVENT = {"user_id": "u1", "item_id": "A", "event_type": "view"}


@pytest.mark.parametrize(
    ("url", "field"),
    [
        (RECS.format("u1") + "?k=0", "k"),
        (RECS.format("u1") + "?k=101", "k"),
        (RECS.format("u1") + "?k=ten", "k"),
        (RECS.format("u1") + "?k=", "k"),
        (RECS.format("u1") + "?k=3&k=4", "k"),
        (RECS.format(LONG_ID), "user_id"),
        (RECS.format("u1") + "?exclude=" + ",".join(f"i{n}" for n in range(101)), "exclude"),
        (RECS.format("u1") + "?exclude=" + LONG_ID, "exclude"),
        ("/v1/items/A/similar?k=0", "k"),
        (f"/v1/items/{LONG_ID}/similar", "item_id"),
    ],
)
def test_bad_query_input_is_a_400_naming_the_field(client: TestClient[Any], url: str, field: str) -> None:
    response = client.get(url)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert [e["field"] for e in body["errors"]] == [field]
    assert body["detail"].startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": [EVENT] * (MAX_BATCH + 1)}, "events"),
        ({"events": []}, "events"),
        ({"user_id": "u1", "item_id": "A"}, "event_type"),
        ({"events": [EVENT, {"user_id": "u1", "event_type": "view"}]}, "events[1].item_id"),
        ({**EVENT, "user_id": LONG_ID}, "user_id"),
        ({**EVENT, "event_type": ""}, "event_type"),
        ({**EVENT, "event_type": "e" * 33}, "event_type"),
        ({**EVENT, "quantity": "two"}, "quantity"),
        ({**EVENT, "timestamp": "yesterday"}, "timestamp"),
        ({**EVENT, "timestamp": "9999-12-31T23:59:59-01:00"}, "timestamp"),  # valid, but past 9999 in UTC
        ({"events": [EVENT, {**EVENT, "timestamp": "0001-01-01T00:00:00+01:00"}]}, "events[1].timestamp"),
        ([EVENT], "data"),
        (None, "body"),
    ],
)
def test_bad_events_are_a_400_naming_the_field(client: TestClient[Any], body: Any, field: str) -> None:
    response = client.post("/v1/events", json=body) if body is not None else client.post("/v1/events")
    assert response.status_code == 400, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]


def test_malformed_json_is_a_400_problem(client: TestClient[Any], redis_client: redis.Redis) -> None:
    response = client.post("/v1/events", content=b'{"user_id": ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"] == "body: not valid JSON (Input data was truncated)"
    assert redis_client.xlen(Keys.EVENTS) == 0


def test_a_rejected_batch_stores_nothing(client: TestClient[Any], redis_client: redis.Redis) -> None:
    response = client.post("/v1/events", json={"events": [EVENT, {**EVENT, "item_id": ""}]})
    assert response.status_code == 400
    assert redis_client.xlen(Keys.EVENTS) == 0


_ODD = ["", "a", "0", "-1", "%", "%FF", "%00", "%2F", "%C3%A9", "é", "%E2%80%AE", "..", " ", "+", "&", "=", ";", "#",
        "?", "%ED%A0%80", "1e400", "NaN", "99999999999999999999999", "a" * 129]  # fmt: skip
_ODD_VALUES: list[Any] = [None, True, 0, -1, 2**70, 1.5, 1e308, "", "x", "a" * 200, [], {}, [1], {"a": 1},
                          "2024-13-45T99:00:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59+14:00", "\u0000",
                          "é" * 40]  # fmt: skip
_EVENT_FIELDS = [
    "user_id", "item_id", "event_type", "timestamp", "quantity", "price", "session_id", "recommendation_id",
]  # fmt: skip


def test_garbage_input_gets_a_4xx_never_a_5xx_and_stores_only_accepted_events(
    client: TestClient[Any], redis_client: redis.Redis
) -> None:
    """Seeded random paths, query strings and event bodies built from awkward pieces (bad percent-encoding,
    lone surrogates, huge numbers, wrong types, over-long ids): every answer is a success or a 4xx problem."""
    rng = random.Random(0)

    def odd(n: int = 3) -> str:
        return "".join(rng.choice(_ODD) for _ in range(rng.randint(0, n)))

    def event() -> dict[str, Any]:
        body: dict[str, Any] = {"user_id": "u1", "item_id": "A", "event_type": "view"}
        for _ in range(rng.randint(0, 3)):
            body[rng.choice([*_EVENT_FIELDS, "other"])] = rng.choice(_ODD_VALUES)
        if rng.random() < 0.1:
            del body[rng.choice(list(body))]
        return body

    statuses: Counter[int] = Counter()
    accepted = 0
    for _ in range(150):
        query = "&".join(f"{rng.choice(['k', 'category', 'exclude', 'x'])}={odd(2)}" for _ in range(rng.randint(0, 3)))
        for url in (f"/v1/users/{odd()}/recommendations?{query}", f"/v1/items/{odd()}/similar?{query}"):
            response = client.get(url)
            statuses[response.status_code] += 1
            assert response.status_code in (200, 400, 404), (url, response.text)
        body = event() if rng.random() < 0.5 else {"events": [event() for _ in range(rng.randint(0, 3))]}
        response = client.post("/v1/events", json=body)
        statuses[response.status_code] += 1
        assert response.status_code in (202, 400), (body, response.text)
        if response.status_code == 400:
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["errors"]
        else:
            accepted += response.json()["accepted"]
    assert redis_client.xlen(Keys.EVENTS) == accepted
    assert all(statuses[code] > 0 for code in (200, 202, 400, 404)), statuses  # every kind was exercised


# --- operations ---------------------------------------------------------------------------------------------
def test_ready_is_503_before_the_first_publish_and_200_after(
    settings: Settings, tiny_store: TinyStore, redis_client: redis.Redis
) -> None:
    with TestClient(create_app(settings)) as test_client:
        assert test_client.get("/health").json() == {"status": "ok"}
        response = test_client.get("/ready")
        assert response.status_code == 503
        assert response.json()["title"] == "No recommendations published yet"
        no_version = test_client.get(RECS.format("17850"), headers={"X-API-Key": KEY})
        assert no_version.status_code == 503
        assert no_version.json() == examples.PROBLEMS[503]  # the documented example is this answer
        run_publish(tiny_store, redis_client)
        response = test_client.get("/ready")
        assert response.status_code == 200
        assert response.json()["publish_version"] == 1


def test_metrics_expose_latency_and_counters(client: TestClient[Any]) -> None:
    recommend(client, "u1", k=2)
    recommend(client, "stranger", k=2)
    post_events(client, {"user_id": "u1", "item_id": "B", "event_type": "purchase"})
    text = client.get("/metrics").text
    route = 'method="GET",route="/v1/users/{user_id}/recommendations"'
    assert f"tailor_http_request_duration_seconds_count{{{route}}} 2.0" in text
    assert 'tailor_recommendations_total{degraded="false",source="personalized"} 1.0' in text
    assert 'tailor_recommendations_total{degraded="false",source="popular"} 1.0' in text
    assert 'tailor_events_total{event_type="purchase"} 1.0' in text


def test_the_service_collects_young_garbage_less_often_and_restores_the_threshold(
    settings: Settings, published: PublishSummary
) -> None:
    before = gc.get_threshold()
    with TestClient(create_app(settings)) as running:
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        assert running.get("/health").status_code == 200
    assert gc.get_threshold() == before


def test_each_app_has_its_own_metrics(settings: Settings, published: PublishSummary) -> None:
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        first.get(RECS.format("u1"), headers={"X-API-Key": KEY})
        assert 'source="personalized"} 1.0' in first.get("/metrics").text
        assert 'source="personalized"' not in second.get("/metrics").text


def test_the_openapi_schema_lists_the_api(client: TestClient[Any]) -> None:
    schema = client.get("/schema/openapi.json").json()
    assert set(schema["paths"]) == {
        "/health", "/ready", "/v1/users/{user_id}/recommendations", "/v1/items/{item_id}/similar", "/v1/events",
    }  # fmt: skip
    assert schema["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"
    assert "RecommendationsOut" in schema["components"]["schemas"]


def test_the_openapi_schema_documents_the_parameters_that_are_validated(client: TestClient[Any]) -> None:
    """The parameters come from the same Structs that validate them (service.params)."""
    schema = client.get("/schema/openapi.json").json()

    def params(path: str) -> dict[str, Any]:
        return {p["name"]: p for p in schema["paths"][path]["get"]["parameters"]}

    recs, similar = params("/v1/users/{user_id}/recommendations"), params("/v1/items/{item_id}/similar")
    assert list(recs) == ["user_id", "k", "category", "exclude"]
    assert (recs["user_id"]["in"], recs["user_id"]["required"]) == ("path", True)
    assert recs["user_id"]["schema"] == {"type": "string", "minLength": 1, "maxLength": 128, "examples": ["17850"]}
    assert all(recs[name]["in"] == "query" and not recs[name]["required"] for name in ["k", "category", "exclude"])
    k = recs["k"]["schema"]
    assert (k["type"], k["minimum"], k["maximum"], k["default"]) == ("integer", 1, 100, 10)
    assert recs["k"]["examples"] == {"k-example-1": {"value": 10}}
    assert (recs["category"]["schema"]["type"], recs["category"]["schema"]["maxLength"]) == ("string", 128)
    assert recs["exclude"]["description"].startswith("comma-separated item ids")
    assert list(similar) == ["item_id", "k"]
    assert similar["k"] == recs["k"]


def test_the_openapi_examples_are_answers_the_service_gives(client: TestClient[Any]) -> None:
    """Every documented response example decodes as its schema's Struct, and the problem examples of the
    recommendations route are the service's own answers to those requests."""
    schema = client.get("/schema/openapi.json").json()
    types = {t.__name__: t for t in (RecommendationsOut, SimilarItemsOut, EventsAccepted, Problem)}
    checked: Counter[str] = Counter()
    for operations in schema["paths"].values():
        for operation in operations.values():
            for response in operation["responses"].values():
                for content in response.get("content", {}).values():
                    name = content["schema"]["$ref"].rsplit("/", 1)[1]
                    for example in content.get("examples", {}).values():
                        msgspec.convert(example["value"], types[name], strict=False)  # raises if stale
                        checked[name] += 1
    assert set(checked) == set(types), checked
    problems = schema["paths"]["/v1/users/{user_id}/recommendations"]["get"]["responses"]

    def example(status: str) -> Any:
        (only,) = problems[status]["content"]["application/problem+json"]["examples"].values()
        return only["value"]

    assert client.get("/v1/users/17850/recommendations?k=1000").json() == example("400")
    del client.headers["X-API-Key"]
    assert client.get("/v1/users/17850/recommendations").json() == example("401")


def test_unknown_query_parameters_are_ignored(client: TestClient[Any]) -> None:
    response = client.get(RECS.format("u1") + "?k=2&utm_source=mail&user_id=u3")  # the path's user_id wins
    assert response.status_code == 200, response.text
    assert (response.json()["user_id"], len(response.json()["items"])) == ("u1", 2)


@pytest.mark.parametrize(
    "query",
    ["k=10", "", "k", "k=", "a=1&&b=2", "category=caf%C3%A9&exclude=a%2Cb", "exclude=a+b", "k=1=2", "&k=3&"],
)
def test_the_fast_query_split_agrees_with_parse_qsl(query: str) -> None:
    assert query_pairs(query) == parse_qsl(query, keep_blank_values=True)


def test_published_payloads_hold_external_ids_only(published: PublishSummary, redis_client: redis.Redis) -> None:
    """Every list in the namespace decodes and names catalogue items, never matrix indices."""
    lists = 0
    for name in redis_client.scan_iter(match=Keys.namespace(published.version) + "*"):
        key = name.decode()
        kind = UserRecs if ":user:" in key else RecList if (":similar:" in key or ":popular" in key) else None
        if kind is not None:
            payload = decode(redis_client.get(name) or b"", kind, where=key)
            assert set(payload.items) <= set("ABCDEFGH"), key
            lists += 1
    assert lists == 5 + 7 + 1 + 3 + 2  # users, similar, global, categories, segments


def test_because_you_viewed_interleaves_seeds_and_skips_them() -> None:
    similar = [RecList(items=["x", "a", "y"], scores=[3, 2, 1]), None, RecList(items=["z", "x"], scores=[5, 4])]
    merged = because_you_viewed(["a", "b", "c"], similar)
    assert [(item, reason) for item, _, reason in candidates(merged)] == [
        ("x", "because_you_viewed:a"),
        ("z", "because_you_viewed:c"),
        ("x", "because_you_viewed:c"),
        ("y", "because_you_viewed:a"),
    ]  # fmt: skip  ("a" is a seed; the duplicate "x" is skipped later by ranking.pick)
    assert [score for _, score, _ in candidates(merged)] == [3, 5, 4, 1]


def test_pick_reads_a_lists_encoded_rest_only_when_it_gets_there() -> None:
    items = [f"i{n:02d}" for n in range(HEAD_SIZE + 10)]
    whole = RecList.of(items, [float(-n) for n in range(len(items))])
    meta: dict[str, ItemMeta | None] = {item: ItemMeta(available=n % 2 == 0) for n, item in enumerate(items)}
    chosen, _, _ = pick([from_list(whole, "r", Source.PERSONALIZED)], set(), meta, 15, 32, RecommendedItem)
    assert [c.item_id for c in chosen] == items[0::2][:15]  # 12 available in the head, 3 from the rest
    broken = RecList(items=whole.items, scores=whole.scores, rest=msgspec.Raw(b"\xc1"))  # not msgpack
    chosen, _, _ = pick([from_list(broken, "r", Source.PERSONALIZED)], set(), meta, 10, 32, RecommendedItem)
    assert len(chosen) == 10  # the head was enough: the rest was never decoded
    with pytest.raises(ContractError, match="the rest of a ranked list"):
        pick([from_list(broken, "r", Source.PERSONALIZED)], set(), meta, 15, 32, RecommendedItem)


def test_pick_asks_for_unknown_metadata_before_going_past_it() -> None:
    stream = from_list(RecList(items=["a", "b", "c", "d", "a"], scores=[5, 4, 3, 2, 1]), "r", Source.PERSONALIZED)
    meta: dict[str, ItemMeta | None] = {"a": ItemMeta(category="k"), "c": None}  # c: not in the catalogue
    a = RecommendedItem(item_id="a", rank=1, score=5, reason="r", category="k")
    assert pick([stream], {"b"}, {}, 3, 2, RecommendedItem) == ([], Source.NONE, ["a", "c"])
    assert pick([stream], {"b"}, meta, 1, 2, RecommendedItem) == ([a], Source.PERSONALIZED, [])
    assert pick([stream], {"b"}, meta, 3, 2, RecommendedItem) == ([a], Source.PERSONALIZED, ["d"])
    meta["d"] = ItemMeta(available=False)
    assert pick([stream], {"b"}, meta, 3, 2, RecommendedItem) == ([a], Source.PERSONALIZED, [])


def test_pick_ranks_what_it_builds_and_names_the_step_of_the_first() -> None:
    mine = from_list(RecList(items=["a", "b"], scores=[9, 8]), "personalized", Source.PERSONALIZED)
    popular = from_list(RecList(items=["b", "c", "d"], scores=[3, 2, 1]), "popular", Source.POPULAR)
    meta: dict[str, ItemMeta | None] = {i: ItemMeta(category="k") for i in "abcd"}
    items, source, missing = pick([mine, popular], {"a"}, meta, 3, 32, SimilarItem)
    assert (source, missing) == (Source.PERSONALIZED, [])  # "b", the first picked, comes from the user's list
    assert [(i.item_id, i.rank, i.score, i.reason) for i in items] == [
        ("b", 1, 8, "personalized"), ("c", 2, 2, "popular"), ("d", 3, 1, "popular"),
    ]  # fmt: skip
    assert all(type(i) is SimilarItem for i in items)
    items, source, _ = pick([mine, popular], {"a", "b"}, meta, 3, 32, RecommendedItem)
    assert source == Source.POPULAR
    assert [i.item_id for i in items] == ["c", "d"]
    assert pick([mine], {"a", "b"}, meta, 3, 32, RecommendedItem) == ([], Source.NONE, [])


def test_tailor_serve_runs_the_app_factory_under_uvicorn(
    redis_url: str, published: PublishSummary, tmp_path: Any
) -> None:
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "TAILOR_HOME": str(tmp_path), "TAILOR_API_KEYS": KEY}
    command = [sys.executable, "-m", "tailor_cli", "serve", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        for line in server.stderr:  # blocks until uvicorn reports the lifespan ran (or the process ends)
            if "Application startup complete" in line:
                break
        response = httpx.get(f"http://127.0.0.1:{port}{RECS.format('u1')}?k=3", headers={"X-API-Key": KEY})
        assert response.status_code == 200
        assert items(response.json()) == ["C", "B", "D"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_version_cache_never_goes_back_to_an_older_version() -> None:
    def active(version: int) -> ActiveVersion:
        return ActiveVersion(
            version=version, model_name="m", model_version=str(version), run_id=None,
            generated_at=datetime(2024, 1, 1, tzinfo=UTC), users=1, items=1,
        )  # fmt: skip

    cache = VersionCache()
    cache.observe(active(2))
    newer, older = RecList(items=["b"], scores=[1.0]), RecList(items=["a"], scores=[1.0])
    cache.store(active(2), Keys.popular(2), newer)
    cache.store(active(1), Keys.popular(1), older)  # a slow request that started before the switch
    assert cache.outage_copy == (active(2), newer)
    assert cache.lists == {Keys.popular(2): newer}


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_store_reloads_a_flushed_script_and_answers(
    loop: str, published: PublishSummary, redis_url: str, redis_client: redis.Redis
) -> None:
    async def main() -> tuple[list[list[str]], list[list[str]]]:
        async with engine_on(redis_url, RecordingStore) as (engine, store, client):
            await client.script_load(USER_STATE_LUA)  # loaded whatever earlier tests did (FLUSHALL keeps scripts)
            answers = []
            for flush in (False, False, True):
                if flush:
                    await client.script_flush()
                answers.append([item.item_id for item in (await engine.recommend(Query("u1", 3))).items])
            return answers, store.calls

    answers, calls = uvloop.run(main()) if loop == "uvloop" else asyncio.run(main())
    assert answers == [["C", "B", "D"]] * 3
    assert calls == [["u1"]] * 4  # the third request: NOSCRIPT on the fast path, then loaded and called again


def test_a_closed_store_refuses_new_calls(published: PublishSummary, redis_url: str) -> None:
    async def main() -> Exception:
        client = aioredis.Redis.from_url(redis_url)
        store = Store(client)
        try:
            await store.read_users(1, ["u1"])
            await store.close()
            try:
                await store.read_users(1, ["u1"])
            except Exception as exc:
                return exc
            raise AssertionError("a closed store answered")
        finally:
            await client.aclose()

    error = asyncio.run(main())
    assert "the store is closed" in str(error)


class LoadingRedis(Store):
    """Every script call is answered LOADING, as a restarted Redis answers until it has read its AOF."""

    def __init__(self, client: aioredis.Redis) -> None:
        super().__init__(client)
        self.calls = 0

    def script_call(self, pipe: Pipe, version: int, user_ids: Sequence[str]) -> asyncio.Future[Reply]:
        self.calls += 1
        return pipe.call(pack("EVAL", "return redis.error_reply('LOADING Redis is loading the dataset')", 0))


def test_a_redis_still_loading_its_data_is_an_outage_not_an_error(
    published: PublishSummary, redis_url: str, redis_client: redis.Redis
) -> None:
    def connections() -> int:
        return int(redis_client.info("stats")["total_connections_received"])

    async def main() -> tuple[list[tuple[bool, Source]], int, int]:
        async with engine_on(redis_url, LoadingRedis) as (engine, store, _):
            opened = connections()
            outs = [await engine.recommend(Query("u1", 3)) for _ in range(3)]  # connecting, then connected
            return [(out.degraded, out.source) for out in outs], store.calls, connections() - opened

    answers, calls, opened = asyncio.run(main())
    assert answers == [(True, Source.POPULAR)] * 3
    assert (calls, opened) == (3, 1)  # an error reply on a live connection: no retry, no reconnect


def test_a_call_that_cannot_be_sent_fails_its_requests_and_the_store_goes_on(
    published: PublishSummary, redis_url: str
) -> None:
    async def main() -> tuple[BaseException | None, list[str]]:
        async with engine_on(redis_url, Store) as (engine, _, _):
            await engine.recommend(Query("u1", 3))  # connected: the next calls take the callback path
            failures: list[Any] = []
            for _ in range(MAX_IN_FLIGHT + 1):  # one by one, so each is a batch: a leaked one would stall the next
                bad = engine.recommend(Query("bad\udc80id", 3))
                failures += await asyncio.wait_for(asyncio.gather(bad, return_exceptions=True), timeout=30)
            after = await asyncio.wait_for(engine.recommend(Query("u1", 3)), timeout=30)
            errors = [failure for failure in failures if isinstance(failure, UnicodeEncodeError)]
            return (errors[0] if len(errors) == len(failures) else None), [item.item_id for item in after.items]

    error, items_after = asyncio.run(main())
    assert isinstance(error, UnicodeEncodeError)  # a lone surrogate has no UTF-8 form
    assert items_after == ["C", "B", "D"]
