"""The publish job against a real redis-server: known lists, atomic switch, grace, interruption, lock."""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np
import polars as pl
import pytest
import redis

from features.columns import Columns
from features.matrix import build_matrix
from service.contract import (
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
from service.redis_server import LocalRedis, free_port
from tests.conftest import TINY_SCORES, StaticConfig, StaticModel, TinyStore, events_frame
from training.models.base import Recommendations, TrainData, get_model_class
from training.publish import (
    LOCK_TTL_S,
    BatchWriter,
    PublishError,
    PublishInfo,
    PublishProgress,
    PublishSummary,
    active_version,
    bought_lists,
    encode_lists,
    list_payload,
    msgpack_strings,
    publish,
    significant,
    write_user_lists,
)

T0 = datetime(2024, 2, 1, 12, 0, tzinfo=UTC)


def run(store: TinyStore, client: redis.Redis, model: Any = None, **kwargs: Any) -> PublishSummary:
    options: dict[str, Any] = {"progress": False, "now": T0, "batch_users": 2} | kwargs
    return publish(
        model or store.model,
        events=store.events,
        catalogue=store.catalogue,
        users=store.users,
        redis_client=client,
        info=PublishInfo(model_name="tiny", model_version=str(options.pop("model_version", "1")), run_id="r1"),
        **options,
    )


def user(client: redis.Redis, version: int, user_id: str) -> UserRecs | None:
    raw = client.get(Keys.user(version, user_id))
    return decode(raw, UserRecs) if raw is not None else None


def rec_list(client: redis.Redis, name: str) -> tuple[list[str], Any] | None:
    raw = client.get(name)
    if raw is None:
        return None
    lst = decode(raw, RecList, where=name)
    return lst.items, lst.scores


def namespace(client: redis.Redis, version: int) -> dict[bytes, bytes]:
    """Every key of a version with a dump of its value (to compare before/after)."""
    return {k: client.dump(k) for k in client.scan_iter(match=Keys.namespace(version) + "*")}  # type: ignore[misc]


def second_model(store: TinyStore) -> StaticModel:
    """Same data, different answers: u1 → D B C G (reversed), so a v2 list is never a v1 list."""
    config = StaticConfig(users={"u1": {"D": 9, "B": 8, "C": 7, "G": 6}}, similar=TINY_SCORES.similar)
    return StaticModel(config).fit(TrainData(build_matrix(store.events)))


# --- what is written --------------------------------------------------------------------------------
def test_publish_writes_the_known_lists(tiny_store: TinyStore, redis_client: redis.Redis) -> None:
    summary = run(tiny_store, redis_client)
    v = summary.version
    assert (v, summary.users, summary.items) == (1, 5, 7)  # u1-u4 + segment-only u9; A..G (X not in catalogue)
    assert user(redis_client, v, "u1") == UserRecs(
        items=["G", "C", "B", "D"], scores=[7.0, 6.0, 5.0, 4.0], segment="vip", bought=["A"]
    )
    assert user(redis_client, v, "u2") == UserRecs(items=["C", "B"], scores=[5.0, 4.0], segment="vip")
    assert user(redis_client, v, "u3") == UserRecs(items=["A"], scores=[3.0], segment="bargain", bought=["D"])
    assert user(redis_client, v, "u4") == UserRecs(items=[], scores=[], bought=["F"])
    assert user(redis_client, v, "u9") == UserRecs(items=[], scores=[], segment="bargain")


def test_segment_only_users_each_get_their_own_segment(tiny_store: TinyStore, redis_client: redis.Redis) -> None:
    more = pl.DataFrame(
        {Columns.USER: ["u9", "n1", "n2", "n3"], Columns.SEGMENT: ["bargain", "vip", "family", "vip"]}
    )  # u9 and n1-n3 are unknown to the model
    summary = run(dataclasses.replace(tiny_store, users=pl.concat([tiny_store.users.head(4), more])), redis_client)
    assert summary.users == 4 + 4
    got = {u: user(redis_client, summary.version, u) for u in ["u9", "n1", "n2", "n3"]}
    assert got == {
        "u9": UserRecs(items=[], scores=[], segment="bargain"),
        "n1": UserRecs(items=[], scores=[], segment="vip"),
        "n2": UserRecs(items=[], scores=[], segment="family"),
        "n3": UserRecs(items=[], scores=[], segment="vip"),
    }


def test_publish_similar_items_drop_items_missing_from_the_catalogue(
    tiny_store: TinyStore, redis_client: redis.Redis
) -> None:
    v = run(tiny_store, redis_client).version
    assert rec_list(redis_client, Keys.similar(v, "A")) == (["B", "C"], pytest.approx([0.9, 0.7]))
    assert rec_list(redis_client, Keys.similar(v, "E")) == (["F", "D"], pytest.approx([0.4, 0.3]))
    assert rec_list(redis_client, Keys.similar(v, "C")) == ([], [])
    assert rec_list(redis_client, Keys.similar(v, "X")) is None  # X is not in the catalogue


def test_publish_fallback_lists_and_item_metadata(tiny_store: TinyStore, redis_client: redis.Redis) -> None:
    v = run(tiny_store, redis_client).version
    assert rec_list(redis_client, Keys.popular(v)) == (list("ADCBEFH"), [12, 10, 4, 2, 1, 0, 0])
    assert rec_list(redis_client, Keys.popular_category(v, "toys")) == (list("ACB"), [12, 4, 2])
    assert rec_list(redis_client, Keys.popular_category(v, "books")) == (list("DEF"), [10, 1, 0])
    assert rec_list(redis_client, Keys.popular_segment(v, "vip")) == (list("ACB"), [12, 4, 1])
    assert rec_list(redis_client, Keys.popular_segment(v, "bargain")) == (list("DB"), [10, 1])
    meta = redis_client.hgetall(Keys.items(v))
    assert decode(meta[b"G"], ItemMeta) == ItemMeta(available=False, category="toys")
    assert decode(meta[b"H"], ItemMeta) == ItemMeta(available=True, category="garden")
    assert len(meta) == 8


def test_fallback_size_caps_every_list(tiny_store: TinyStore, redis_client: redis.Redis) -> None:
    v = run(tiny_store, redis_client, fallback_size=2).version
    assert rec_list(redis_client, Keys.popular(v)) == (["A", "D"], [12, 10])
    assert rec_list(redis_client, Keys.popular_category(v, "toys")) == (["A", "C"], [12, 4])


def test_active_record_and_version_state(tiny_store: TinyStore, redis_client: redis.Redis) -> None:
    run(tiny_store, redis_client)
    expected = ActiveVersion(
        version=1, model_name="tiny", model_version="1", run_id="r1", generated_at=T0, users=5, items=8
    )
    assert active_version(redis_client) == expected
    assert decode(redis_client.get(Keys.manifest(1)), ActiveVersion) == expected  # type: ignore[arg-type]
    state = decode(redis_client.hget(Keys.VERSIONS, "1"), VersionState)  # type: ignore[arg-type]
    assert state.status is VersionStatus.LIVE
    assert redis_client.get(Keys.PUBLISH_LOCK) is None


def test_top_n_limits_user_lists(tiny_store: TinyStore, redis_client: redis.Redis) -> None:
    v = run(tiny_store, redis_client, top_n=2).version
    assert user(redis_client, v, "u1") == UserRecs(items=["G", "C"], scores=[7.0, 6.0], segment="vip", bought=["A"])


def test_exclusions_are_configurable(tiny_store: TinyStore, redis_client: redis.Redis) -> None:
    v = run(tiny_store, redis_client, exclude_event_types=()).version
    u1 = user(redis_client, v, "u1")
    assert u1 is not None
    assert (u1.items, u1.bought) == (["A", "G", "C", "B", "D"], [])


def test_a_registry_model_round_trips(tiny_store: TinyStore, redis_client: redis.Redis) -> None:
    """Popularity counts distinct users: A and B have two each, everything else one."""
    model = get_model_class("popularity")().fit(TrainData(build_matrix(tiny_store.events)))
    v = run(tiny_store, redis_client, model=model).version
    u4 = user(redis_client, v, "u4")
    assert u4 is not None
    assert set(u4.items[:2]) == {"A", "B"}
    assert "X" not in u4.items


def test_bought_lists_hold_any_item_last_bought_first() -> None:
    events = events_frame([
        ("u1", "A", "purchase", "2024-01-01 10:00"),
        ("u1", "B", "purchase", "2024-01-03 10:00"),
        ("u1", "A", "purchase", "2024-01-05 10:00"),  # A again, last: first
        ("u1", "C", "view", "2024-01-06 10:00"),  # not a purchase
        ("u2", "Z", "purchase", "2024-01-02 10:00"),  # ties in time go by item id
        ("u2", "Y", "purchase", "2024-01-02 10:00"),
        ("u2", "Q", "add_to_cart", "2024-01-01 10:00"),
    ])  # fmt: skip

    def bought(types: tuple[str, ...], limit: int = 100) -> dict[str, list[str]]:
        lists = bought_lists(events, types, limit)
        return dict(zip(lists[Columns.USER].to_list(), lists[Columns.ITEM].to_list(), strict=True))

    assert bought(("purchase",)) == {"u1": ["A", "B"], "u2": ["Y", "Z"]}
    assert bought(("purchase", "add_to_cart"), limit=2) == {"u1": ["A", "B"], "u2": ["Y", "Z"]}
    assert bought(("add_to_cart",)) == {"u2": ["Q"]}
    assert bought(()) == {}


def test_purchases_the_model_does_not_know_are_published_too(tiny_store: TinyStore, redis_client: redis.Redis) -> None:
    """Items bought after training (H) and shoppers first seen buying (u8) are kept out of fallback top-ups."""
    newer = pl.concat([
        tiny_store.events,
        events_frame([
            ("u1", "H", "purchase", "2024-01-20 09:00"),
            ("u8", "D", "purchase", "2024-01-19 12:00"),
            ("u8", "C", "purchase", "2024-01-19 13:00"),
        ]),
    ])  # fmt: skip
    summary = run(dataclasses.replace(tiny_store, events=newer), redis_client)
    assert summary.users == 6  # u1-u4, segment-only u9, and u8 known only by purchases
    assert user(redis_client, summary.version, "u1") == UserRecs(
        items=["G", "C", "B", "D"], scores=[7.0, 6.0, 5.0, 4.0], segment="vip", bought=["A", "H"]
    )
    assert user(redis_client, summary.version, "u8") == UserRecs(items=[], scores=[], bought=["C", "D"])
    assert user(redis_client, summary.version, "u9") == UserRecs(items=[], scores=[], segment="bargain")


# --- versions: switch, grace, interruption, lock ----------------------------------------------------
def test_reads_during_a_publish_see_only_the_previous_version(tiny_store: TinyStore, redis_client: redis.Redis) -> None:
    run(tiny_store, redis_client)
    seen: list[tuple[int, list[str]]] = []

    def read_mid_publish(step: PublishProgress) -> None:
        active = active_version(redis_client)
        assert active is not None
        u1 = user(redis_client, active.version, "u1")
        assert u1 is not None
        seen.append((active.version, u1.items))

    run(tiny_store, redis_client, model=second_model(tiny_store), callback=read_mid_publish, model_version="2")
    assert len(seen) >= 4  # items, fallback, 2 user batches, similar batches
    assert all(entry == (1, ["G", "C", "B", "D"]) for entry in seen)
    active = active_version(redis_client)
    assert active is not None
    assert (active.version, active.model_version) == (2, "2")
    assert user(redis_client, 2, "u1") == UserRecs(
        items=["D", "B", "C", "G"], scores=[9, 8, 7, 6], segment="vip", bought=["A"]
    )


def test_old_versions_survive_their_grace_period_then_go(tiny_store: TinyStore, redis_client: redis.Redis) -> None:
    """The grace period counts from the switch (when readers of the old version can last be in flight),
    not from the start of the publish that retired it; each version keeps its own start."""
    run(tiny_store, redis_client, grace_s=60)
    v1_keys = namespace(redis_client, 1)
    before = time.perf_counter()
    run(tiny_store, redis_client, grace_s=60, now=T0 + timedelta(seconds=10))  # switched from v1 to v2
    took = timedelta(seconds=time.perf_counter() - before)
    v1 = decode(redis_client.hget(Keys.VERSIONS, "1"), VersionState)
    # Redis drops the retired version by itself after the grace period, even if no publish follows
    assert {0 < redis_client.ttl(name) <= 60 for name in v1_keys} == {True}
    assert {redis_client.ttl(name) for name in namespace(redis_client, 2)} == {-1}
    assert (v1.status, v1.started_at) == (VersionStatus.RETIRED, T0)
    assert v1.retired_at is not None
    assert T0 + timedelta(seconds=10) < v1.retired_at < T0 + timedelta(seconds=10) + took
    run(tiny_store, redis_client, grace_s=60, now=v1.retired_at + timedelta(seconds=59.999))  # v1 kept
    assert namespace(redis_client, 1) == v1_keys
    run(tiny_store, redis_client, grace_s=60, now=v1.retired_at + timedelta(seconds=60))  # v1 deleted, v2 kept
    assert namespace(redis_client, 1) == {}
    assert namespace(redis_client, 2) != {}
    assert sorted(int(v) for v in redis_client.hkeys(Keys.VERSIONS)) == [2, 3, 4]


def test_without_a_grace_period_the_old_version_goes_at_the_switch(
    tiny_store: TinyStore, redis_client: redis.Redis
) -> None:
    run(tiny_store, redis_client, grace_s=0)
    assert namespace(redis_client, 1) != {}
    run(tiny_store, redis_client, grace_s=0, model=second_model(tiny_store))
    assert namespace(redis_client, 1) == {}
    assert user(redis_client, 2, "u1") is not None
    assert {redis_client.ttl(name) for name in namespace(redis_client, 2)} == {-1}


def test_an_interrupted_publish_leaves_the_previous_version_serving(
    tiny_store: TinyStore, redis_client: redis.Redis
) -> None:
    run(tiny_store, redis_client)
    v1_keys = namespace(redis_client, 1)
    v1_active = redis_client.get(Keys.ACTIVE)

    def crash(step: PublishProgress) -> None:
        if step.stage == "users":
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        run(tiny_store, redis_client, model=second_model(tiny_store), callback=crash)
    assert redis_client.get(Keys.ACTIVE) == v1_active
    assert namespace(redis_client, 1) == v1_keys
    assert user(redis_client, 2, "u1") is not None  # the partial v2 is there ...
    assert redis_client.get(Keys.manifest(2)) is None
    assert redis_client.get(Keys.PUBLISH_LOCK) is None  # ... and the lock was released

    summary = run(tiny_store, redis_client, model=second_model(tiny_store))
    assert summary.version == 3
    assert namespace(redis_client, 2) == {}  # cleaned by the next publish
    assert redis_client.hget(Keys.VERSIONS, "2") is None
    assert namespace(redis_client, 1) == v1_keys  # retired, within its grace period


def test_a_running_publish_holds_the_lock(tiny_store: TinyStore, redis_client: redis.Redis) -> None:
    redis_client.set(Keys.PUBLISH_LOCK, "other-host:123:token", ex=LOCK_TTL_S)
    with pytest.raises(PublishError, match="another publish is running"):
        run(tiny_store, redis_client)
    assert redis_client.get(Keys.ACTIVE) is None
    assert redis_client.get(Keys.VERSION_SEQ) is None  # refused before anything was written


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(
    tiny_store: TinyStore, redis_client: redis.Redis
) -> None:
    dead_pid = _dead_pid()
    redis_client.set(Keys.PUBLISH_LOCK, f"{socket.gethostname()}:{dead_pid}:token", ex=LOCK_TTL_S)
    assert run(tiny_store, redis_client).version == 1


# --- the append-only file after a publish ------------------------------------------------------------------
def forks(client: redis.Redis) -> int:
    return int(client.info("stats")["total_forks"])


@pytest.fixture
def own_client(own_redis: LocalRedis) -> Iterator[redis.Redis]:
    """A client of the test's own server (these tests fork rewrites and change its config)."""
    client = redis.Redis.from_url(own_redis.url)
    yield client
    client.close()


def test_compact_aof_rewrites_the_file_once_the_new_version_is_active(
    tiny_store: TinyStore, own_client: redis.Redis
) -> None:
    before = forks(own_client)
    during: list[int] = []
    summary = run(tiny_store, own_client, compact_aof=True, callback=lambda _: during.append(forks(own_client)))
    assert during
    assert set(during) == {before}
    assert summary.aof_rewrite == "started"
    assert forks(own_client) == before + 1  # one rewrite, after the switch
    assert active_version(own_client) == decode(own_client.get(Keys.manifest(summary.version)), ActiveVersion)


def test_without_compact_aof_nothing_is_rewritten(tiny_store: TinyStore, own_client: redis.Redis) -> None:
    before = forks(own_client)
    assert run(tiny_store, own_client).aof_rewrite == ""
    assert forks(own_client) == before


def test_compact_aof_leaves_a_server_without_aof_alone(tiny_store: TinyStore, own_client: redis.Redis) -> None:
    own_client.config_set("appendonly", "no")
    before = forks(own_client)
    assert run(tiny_store, own_client, compact_aof=True).aof_rewrite == "AOF off"
    assert forks(own_client) == before


def test_compact_aof_does_not_start_a_second_rewrite(tiny_store: TinyStore, own_client: redis.Redis) -> None:
    own_client.mset({f"key-{i}": b"x" for i in range(100)})
    own_client.config_set("rdb-key-save-delay", 1_000_000)  # 1 s per key: the child outlives the test (stopped with it)
    own_client.bgrewriteaof()
    before = forks(own_client)
    summary = run(tiny_store, own_client, compact_aof=True)
    assert summary.aof_rewrite == "already running"
    assert forks(own_client) == before
    assert active_version(own_client) is not None


def test_a_refused_rewrite_is_reported_and_the_version_is_active(
    tiny_store: TinyStore, own_redis: LocalRedis, own_client: redis.Redis
) -> None:
    own_client.acl_setuser(
        "publisher", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-bgrewriteaof"]
    )
    client = redis.Redis.from_url(own_redis.url, username="publisher", password="pw")
    before = forks(own_client)
    summary = run(tiny_store, client, compact_aof=True)
    assert summary.aof_rewrite.startswith("refused: ")
    assert "bgrewriteaof" in summary.aof_rewrite
    assert forks(own_client) == before
    active = active_version(own_client)
    assert active is not None
    assert active.version == summary.version
    client.close()


def test_a_catalogue_without_model_items_is_refused(tiny_store: TinyStore, redis_client: redis.Redis) -> None:
    other = tiny_store.catalogue.with_columns(tiny_store.catalogue["item_id"] + "-other")
    with pytest.raises(PublishError, match="none of the model's 8 items is in the catalogue"):
        publish(
            tiny_store.model, events=tiny_store.events, catalogue=other, users=None, redis_client=redis_client,
            info=PublishInfo(model_name="m", model_version="1"), progress=False,
        )  # fmt: skip
    assert redis_client.get(Keys.ACTIVE) is None


# --- fast list encoding (numpy bytes instead of Python str/float objects) ------------------------------------
ODD_IDS = ["a", "", "é", "中文", "🛒x", "a\x00b", "k" * 31, "k" * 32, "ü" * 128, "k" * 255, "k" * 256, "z" * 70_000]


def test_msgpack_strings_are_msgspec_bytes() -> None:
    """Every msgpack str form (fixstr, str8, str16, str32), 1-4 byte UTF-8, an embedded NUL."""
    blob, sizes = msgpack_strings(np.array(ODD_IDS))
    expected = [msgspec.msgpack.encode(i) for i in ODD_IDS]
    assert blob == b"".join(expected)
    assert sizes.tolist() == [len(e) for e in expected]
    empty_blob, empty_sizes = msgpack_strings(np.array([], dtype=np.str_))
    assert (empty_blob, empty_sizes.tolist()) == (b"", [])


@pytest.mark.parametrize(
    "ids",
    [
        ["i0001", "i0042", "i2999"],  # fixed-width ASCII: the fast path
        ["x"],
        ["k" * 31, "j" * 31],  # the widest fixstr
        ["a\x00b", "abc"],  # an embedded NUL is a character like any other
        ["k" * 32, "j" * 32],  # str8: too wide for the fast path
        ["i0001", "i042"],  # one id shorter
        ["i0001", "é0001"],  # same length, one not ASCII
    ],
)
def test_fixed_width_ids_are_msgspec_bytes(ids: list[str]) -> None:
    """The fixed-width ASCII shortcut, and the near misses that must take the general path, agree with msgspec."""
    blob, sizes = msgpack_strings(np.array(ids * 3))
    expected = [msgspec.msgpack.encode(i) for i in ids * 3]
    assert blob == b"".join(expected)
    assert sizes.tolist() == [len(e) for e in expected]


def test_msgpack_strings_refuse_lone_surrogates() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        msgpack_strings(np.array(["ok", "bad\ud800"]))


@pytest.mark.parametrize("width", [20, HEAD_SIZE + 1, 300])
def test_encoded_lists_equal_msgspec_lists_and_drop_invalid_entries(width: int) -> None:
    """Head and rest split at HEAD_SIZE valid entries, byte for byte what msgspec writes for RecList.of."""
    ids = np.array([[f"i{j}" for j in range(width)], ["é"] + [""] * (width - 1), [f"x{j}" for j in range(width)]])
    scores = np.full((3, width), -np.inf, dtype=np.float32)
    scores[0], scores[1, 0], scores[2] = np.arange(width, 0, -1, dtype=np.float32) / 4, np.float32(0.9), 1.0
    valid = ids != ""
    valid[0, 3] = False  # an entry dropped mid-row (as items missing from the catalogue are)
    rows = encode_lists(ids, scores, valid)
    kept = [j for j in range(width) if j != 3]
    expected = [
        RecList.of([f"i{j}" for j in kept], [(width - j) / 4 for j in kept]),
        RecList.of(["é"], [0.9]),
        RecList.of([f"x{j}" for j in range(width)], [1.0] * width),
    ]
    for encoded, want in zip(rows, expected, strict=True):
        assert list_payload(encoded) == encode(want)
        assert (encoded[0] == 3) == (len(list(want.entries())) > HEAD_SIZE)  # three fields: items, scores, rest


def test_written_user_lists_decode_to_the_plain_structs(redis_client: redis.Redis) -> None:
    """Fast payloads are byte for byte the plain msgspec encoding of the same UserRecs."""
    recs = Recommendations(
        query_ids=np.array(["u1", "ü2", "u3", "u 4", "u5"]),
        item_ids=np.array(
            [["A", "中文", "🛒"], ["B", "", ""], ["", "", ""], ["C", "k" * 40, "D"], ["E", "F", "G"]], dtype="<U40"
        ),
        scores=np.array(
            [[0.9, 0.8, 0.7], [2.5, -np.inf, -np.inf], [-np.inf] * 3, [1e-8, 0.0, -3.25], [3.0, 2.0, 1.0]],
            dtype=np.float32,
        ),
    )
    long_ids = np.array([[f"L{n}" for n in range(HEAD_SIZE + 5)]])
    long = Recommendations(np.array(["u6"]), long_ids, np.linspace(1, 0, HEAD_SIZE + 5, dtype=np.float32)[None, :])
    writer = BatchWriter(redis_client)
    write_user_lists(writer, 7, recs, {"u1": "vip", "u3": "bargain"}, [["X"], [], ["Y", "Z"], [], []])
    write_user_lists(writer, 7, long, {"u6": "vip"})
    write_user_lists(writer, 7, Recommendations(np.array(["u7"]), long_ids, long.scores), None, [["Q"]])
    expected = {
        "u1": UserRecs(items=["A", "中文", "🛒"], scores=[0.9, 0.8, 0.7], segment="vip", bought=["X"]),
        "ü2": UserRecs(items=["B"], scores=[2.5]),
        "u3": UserRecs(items=[], scores=[], segment="bargain", bought=["Y", "Z"]),
        "u 4": UserRecs(items=["C", "k" * 40, "D"], scores=[1e-8, 0.0, -3.25]),
        "u5": UserRecs(items=["E", "F", "G"], scores=[3.0, 2.0, 1.0]),
        "u6": UserRecs.of(long_ids[0].tolist(), significant(long.scores[0]).tolist(), segment="vip"),
        "u7": UserRecs.of(long_ids[0].tolist(), significant(long.scores[0]).tolist(), bought=["Q"]),
    }
    for user_id, want in expected.items():
        raw = redis_client.get(Keys.user(7, user_id))
        assert raw == msgspec.msgpack.encode(want)
        assert decode(raw, UserRecs) == want
    assert (writer.keys, redis_client.dbsize()) == (7, 7)


def test_a_failed_background_send_is_raised(redis_client: redis.Redis) -> None:
    redis_client.set("tailor:test:string", b"x")
    writer = BatchWriter(redis_client)
    writer.hset("tailor:test:string", {"field": b"v"})  # WRONGTYPE: the key holds a string
    writer.send()  # returns at once; the error surfaces on the next wait
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        writer.flush()
    writer.set("tailor:test:after", b"ok")
    writer.flush()  # the writer stays usable; the error was reported once
    assert redis_client.get("tailor:test:after") == b"ok"


def test_a_writer_whose_idle_connection_was_killed_reconnects_and_stores_the_keys(
    redis_url: str, redis_client: redis.Redis
) -> None:
    writer = BatchWriter(redis.Redis.from_url(redis_url))  # a pool of its own, so the kill below reaches it
    writer.set("tailor:test:first", b"1")
    writer.flush()  # the writer's connection now sits idle in its pool
    killed = redis_client.client_kill_filter(_type="normal", skipme=True)
    assert killed == 1
    writer.set("tailor:test:second", b"2")
    writer.hset("tailor:test:hash", {"a": b"x", "ü": b"y"})
    writer.flush()  # the pool finds the dead connection at checkout and connects anew
    assert redis_client.mget("tailor:test:first", "tailor:test:second") == [b"1", b"2"]
    assert redis_client.hgetall("tailor:test:hash") == {b"a": b"x", "ü".encode(): b"y"}


def test_a_writer_that_cannot_connect_raises_on_flush() -> None:
    writer = BatchWriter(redis.Redis(port=free_port(), socket_connect_timeout=1, retry=None))  # nothing listens
    writer.set("tailor:test:lost", b"1")
    with pytest.raises(redis.ConnectionError):
        writer.flush()


def test_an_error_reply_mid_pipeline_leaves_the_other_commands_applied_and_the_connection_in_step(
    redis_client: redis.Redis,
) -> None:
    redis_client.set("tailor:test:string", b"x")
    writer = BatchWriter(redis_client)
    writer.set("tailor:test:before", b"1")
    writer.send()
    writer.wait()
    writer.set("tailor:test:a", b"a")
    writer.hset("tailor:test:string", {"f": b"v"})  # WRONGTYPE, between two MSETs of one pipeline
    writer.set("tailor:test:b", b"b")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        writer.flush()
    assert redis_client.mget("tailor:test:a", "tailor:test:b") == [b"a", b"b"]  # not a transaction
    writer.set("tailor:test:after", b"ok")
    writer.flush()  # replies of the failed pipeline were all read: this one gets its own
    assert redis_client.get("tailor:test:after") == b"ok"


def _dead_pid() -> int:
    """A pid that no process has (the highest pids are practically never in use)."""
    for pid in range(4_194_303, 4_000_000, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("no free pid found")
