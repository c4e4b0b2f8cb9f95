"""The Redis contract shared by publisher and service: key layout and payload encoding."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec
import pytest

from service.contract import (
    HEAD_SIZE,
    SCHEMA_VERSION,
    ActiveVersion,
    ContractError,
    ItemMeta,
    Keys,
    RecList,
    UserRecs,
    VersionState,
    VersionStatus,
    decode,
    encode,
    key,
)

AT = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_the_key_builder_joins_parts_under_the_prefix() -> None:
    assert key("a", 3, "b") == "tailor:a:3:b"
    assert Keys.user(3, "u1") == "tailor:v3:user:u1"
    assert Keys.similar(3, "i9") == "tailor:v3:similar:i9"
    assert Keys.popular_category(3, "toys") == "tailor:v3:popular:category:toys"
    assert Keys.bought("u1") == "tailor:rt:bought:u1"
    assert (Keys.ACTIVE, Keys.EVENTS) == ("tailor:active", "tailor:events")


def test_ids_with_separators_never_make_two_kinds_of_key_collide() -> None:
    ids = ["a", "a:b", "user:a", "similar:a", "category:a", "segment:a", "", "*", "v1:user:a"]
    builders: list[Callable[[str], str]] = [
        partial(Keys.user, 1),
        partial(Keys.similar, 1),
        partial(Keys.popular_category, 1),
        partial(Keys.popular_segment, 1),
        Keys.bought,
        Keys.recent,
    ]
    keys = [build(i) for build in builders for i in ids]
    fixed = [Keys.ACTIVE, Keys.VERSIONS, Keys.VERSION_SEQ, Keys.PUBLISH_LOCK, Keys.EVENTS, Keys.popular(1)]
    assert len(set(keys + fixed)) == len(keys) + len(fixed)


def test_a_version_namespace_covers_its_keys_only() -> None:
    assert Keys.user(1, "x").startswith(Keys.namespace(1))
    assert Keys.items(1).startswith(Keys.namespace(1))
    assert not Keys.user(12, "x").startswith(Keys.namespace(1))
    assert not Keys.ACTIVE.startswith(Keys.namespace(1))


@pytest.mark.parametrize(
    "payload",
    [
        RecList(items=["a", "b"], scores=[2.0, 1.0]),
        RecList.of([str(n) for n in range(100)], [float(n) for n in range(100)]),
        UserRecs(items=["a"], scores=[1.5], segment="vip", bought=["z"]),
        UserRecs(items=[], scores=[]),
        ItemMeta(available=False, category="toys"),
        ActiveVersion(version=7, model_name="m", model_version="3", run_id=None, generated_at=AT, users=5, items=9),
        VersionState(status=VersionStatus.RETIRED, started_at=AT, retired_at=AT),
    ],
)
def test_payloads_round_trip(payload: Any) -> None:
    assert decode(encode(payload), type(payload)) == payload


def test_defaults_are_left_out_of_payloads_but_the_schema_is_not() -> None:
    assert msgspec.msgpack.decode(encode(UserRecs(items=["a"], scores=[1.0]))) == {"items": ["a"], "scores": [1.0]}
    active = ActiveVersion(version=1, model_name="m", model_version="1", run_id="r", generated_at=AT, users=1, items=1)
    assert msgspec.msgpack.decode(encode(active))["schema"] == SCHEMA_VERSION


def test_a_long_list_keeps_its_head_decoded_and_its_rest_encoded() -> None:
    items, scores = [f"i{n}" for n in range(HEAD_SIZE + 6)], [float(-n) for n in range(HEAD_SIZE + 6)]
    rec = decode(encode(UserRecs.of(items, scores, segment="vip")), UserRecs)
    assert (rec.items, rec.scores, rec.segment) == (items[:HEAD_SIZE], scores[:HEAD_SIZE], "vip")
    assert isinstance(rec.rest, msgspec.Raw)
    assert msgspec.msgpack.decode(rec.rest) == {"items": items[HEAD_SIZE:], "scores": scores[HEAD_SIZE:]}
    assert list(rec.entries()) == list(zip(items, scores, strict=True))
    short = RecList.of(items[:HEAD_SIZE], scores[:HEAD_SIZE])
    assert (short.tail(), msgspec.msgpack.decode(encode(short))) == (None, {"items": items[:24], "scores": scores[:24]})


def test_a_ranked_list_needs_a_score_per_item() -> None:
    with pytest.raises(ContractError, match="2 items, 1 scores"):
        RecList.of(["a", "b"], [1.0])


def test_a_user_payload_reads_as_a_plain_list() -> None:
    """The service reads similar and fallback lists as RecList; a UserRecs is one too."""
    raw = encode(UserRecs(items=["a"], scores=[1.0], segment="vip"))
    assert decode(raw, RecList) == RecList(items=["a"], scores=[1.0])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (encode(ItemMeta()), "cannot decode RecList at tailor:v1:popular"),
        (b"\xc1", "cannot decode RecList at tailor:v1:popular"),
        ("text", "tailor:v1:popular: got text, not bytes"),
    ],
)
def test_undecodable_payloads_name_the_key(raw: Any, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        decode(raw, RecList, where=Keys.popular(1))
