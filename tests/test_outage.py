"""Redis stops in the middle of a test and starts again (same port, same data folder): the service
degrades to its in-memory popular list, refuses events with 503, and recovers by itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from features.settings import Settings
from service.app import create_app
from service.redis_server import LocalRedis
from tests.conftest import TinyStore, publish_tiny

KEY = "test-key"
EVENT = {"user_id": "u2", "item_id": "C", "event_type": "purchase"}


def settings_for(server: LocalRedis) -> Settings:
    return Settings(home=server.home, redis_url=server.url, api_keys=[KEY])


@pytest.fixture
def client(own_redis: LocalRedis, tiny_store: TinyStore) -> Iterator[TestClient[Any]]:
    """A service started while Redis is up and the tiny store is published."""
    publish_tiny(own_redis, tiny_store)
    with TestClient(create_app(settings_for(own_redis))) as test_client:
        test_client.headers["X-API-Key"] = KEY
        yield test_client


def get(client: TestClient[Any], url: str) -> tuple[int, dict[str, Any]]:
    response = client.get(url)
    return response.status_code, response.json()


def test_reads_degrade_to_memory_and_recover(client: TestClient[Any], own_redis: LocalRedis) -> None:
    status, body = get(client, "/v1/users/u1/recommendations?k=3")
    assert (status, body["degraded"], [i["item_id"] for i in body["items"]]) == (200, False, ["C", "B", "D"])

    assert own_redis.stop()
    status, body = get(client, "/v1/users/u1/recommendations?k=3&exclude=D")
    assert (status, body["degraded"], body["source"]) == (200, True, "popular")
    assert [i["item_id"] for i in body["items"]] == ["A", "C", "B"]  # global A D C B ... minus D
    assert (body["model_version"], body["publish_version"]) == ("1", 1)
    assert get(client, "/v1/users/stranger/recommendations?k=2")[1]["degraded"] is True
    status, problem = get(client, "/v1/items/A/similar")
    assert (status, problem["title"]) == (503, "Recommendation store unavailable")
    assert get(client, "/ready")[0] == 503
    assert get(client, "/health")[0] == 200
    assert 'tailor_recommendations_total{degraded="true",source="popular"} 2.0' in client.get("/metrics").text

    own_redis.start()  # same port and data folder: the AOF brings the published version back
    status, body = get(client, "/v1/users/u1/recommendations?k=3")
    assert (status, body["degraded"], [i["item_id"] for i in body["items"]]) == (200, False, ["C", "B", "D"])
    assert get(client, "/ready")[0] == 200


def test_the_first_request_after_a_restart_nobody_saw_is_answered_from_redis(
    client: TestClient[Any], own_redis: LocalRedis
) -> None:
    """The service's Redis connections broke while no request was made: the first one replaces them."""
    assert get(client, "/v1/users/u1/recommendations?k=3")[1]["degraded"] is False
    assert own_redis.stop()
    own_redis.start()
    status, body = get(client, "/v1/users/u1/recommendations?k=3")
    assert (status, body["degraded"], [i["item_id"] for i in body["items"]]) == (200, False, ["C", "B", "D"])


def test_events_during_an_outage_are_refused_with_503(client: TestClient[Any], own_redis: LocalRedis) -> None:
    own_redis.stop()
    response = client.post("/v1/events", json=EVENT)
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"].startswith("events cannot be stored right now; retry later")

    own_redis.start()
    assert client.post("/v1/events", json=EVENT).status_code == 202
    assert get(client, "/v1/users/u2/recommendations?k=1")[1]["items"][0]["item_id"] == "B"  # C was bought


def test_the_outage_copy_is_loaded_at_startup(own_redis: LocalRedis, tiny_store: TinyStore) -> None:
    """No request has read anything yet: the copy comes from the startup refresh."""
    publish_tiny(own_redis, tiny_store)
    with TestClient(create_app(settings_for(own_redis))) as test_client:
        own_redis.stop()
        response = test_client.get("/v1/users/u1/recommendations?k=2", headers={"X-API-Key": KEY})
        assert response.status_code == 200
        assert [i["item_id"] for i in response.json()["items"]] == ["A", "D"]


def test_a_service_started_during_an_outage_answers_503_until_redis_is_back(
    own_redis: LocalRedis, tiny_store: TinyStore
) -> None:
    publish_tiny(own_redis, tiny_store)
    own_redis.stop()
    with TestClient(create_app(settings_for(own_redis))) as test_client:
        test_client.headers["X-API-Key"] = KEY
        status, problem = get(test_client, "/v1/users/u1/recommendations")
        assert (status, problem["title"]) == (503, "Recommendation store unavailable")
        assert "no popular list is cached" in problem["detail"]
        own_redis.start()
        status, body = get(test_client, "/v1/users/u1/recommendations?k=3")
        assert (status, body["degraded"], [i["item_id"] for i in body["items"]]) == (200, False, ["C", "B", "D"])
