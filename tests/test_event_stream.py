"""Events posted to the service, read back from the real Redis stream into a Parquet file for training."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis
from litestar.testing import TestClient
from typer.testing import CliRunner

from features.columns import Columns
from features.loaders import load_events
from features.settings import Settings
from service.app import create_app
from service.contract import Keys
from service.redis_server import LocalRedis
from tailor_cli import app as cli
from tests.conftest import TinyStore, publish_tiny
from training.event_stream import RECOMMENDATION_ID, STREAM_ID, EventExportError, export_events

KEY = "test-key"
POSTED = [
    {"user_id": "u1", "item_id": "B", "event_type": "view", "timestamp": "2024-05-01T10:00:00+02:00",
     "session_id": "s1", "recommendation_id": "r1"},
    {"user_id": "u1", "item_id": "B", "event_type": "purchase", "timestamp": "2024-05-01T08:05:00",
     "quantity": 2, "price": 1.5},
    {"user_id": "new", "item_id": "C", "event_type": "wishlist", "timestamp": "2024-05-02T00:00:00Z"},
]  # fmt: skip


@pytest.fixture
def service(
    redis_server: LocalRedis, redis_url: str, tiny_store: TinyStore, tmp_path: Path
) -> Iterator[TestClient[Any]]:
    publish_tiny(redis_server, tiny_store)
    with TestClient(create_app(Settings(home=tmp_path / ".tailor", redis_url=redis_url, api_keys=[KEY]))) as client:
        client.headers["X-API-Key"] = KEY
        yield client


def post(client: TestClient[Any], *events: dict[str, Any]) -> list[str]:
    response = client.post("/v1/events", json={"events": list(events)})
    assert response.status_code == 202, response.text
    ids: list[str] = response.json()["event_ids"]
    return ids


def test_posted_events_come_back_in_the_event_contract(
    service: TestClient[Any], redis_client: redis.Redis, tmp_path: Path
) -> None:
    ids = post(service, *POSTED)
    summary = export_events(redis_client, tmp_path / "events.parquet")
    assert (summary.events, summary.first_id, summary.last_id, summary.gap) == (3, ids[0], ids[-1], None)
    assert (summary.start, summary.end) == (datetime(2024, 5, 1, 8), datetime(2024, 5, 2))

    frame = pl.read_parquet(tmp_path / "events.parquet")
    assert frame[STREAM_ID].to_list() == ids
    assert frame[RECOMMENDATION_ID].to_list() == ["r1", None, None]
    # What training reads: the native contract, timestamps naive UTC, every event valid.
    loaded = load_events(tmp_path / "events.parquet")
    assert loaded.report.rows_rejected == 0
    assert loaded.events.select(Columns.USER, Columns.ITEM, Columns.EVENT, Columns.TIMESTAMP).rows() == [
        ("u1", "B", "view", datetime(2024, 5, 1, 8, 0)),
        ("u1", "B", "purchase", datetime(2024, 5, 1, 8, 5)),
        ("new", "C", "wishlist", datetime(2024, 5, 2, 0, 0)),
    ]
    assert loaded.events[Columns.QUANTITY].to_list() == [None, 2.0, None]
    assert loaded.events[Columns.PRICE].to_list() == [None, 1.5, None]
    assert loaded.events[Columns.SESSION].to_list() == ["s1", None, None]


def test_an_export_after_the_last_one_writes_only_newer_events(
    service: TestClient[Any], redis_client: redis.Redis, tmp_path: Path
) -> None:
    first = export_events(redis_client, tmp_path / "1.parquet", batch=2)
    assert (first.events, first.last_id) == (0, None)
    old = post(service, *POSTED)
    everything = export_events(redis_client, tmp_path / "2.parquet", batch=2)  # two XRANGE pages
    assert pl.read_parquet(tmp_path / "2.parquet")[STREAM_ID].to_list() == old
    new = post(service, {"user_id": "u2", "item_id": "A", "event_type": "view"})
    later = export_events(redis_client, tmp_path / "3.parquet", after=everything.last_id)
    assert pl.read_parquet(tmp_path / "3.parquet")[STREAM_ID].to_list() == new
    nothing = export_events(redis_client, tmp_path / "4.parquet", after=later.last_id)
    assert (nothing.events, nothing.gap) == (0, None)
    assert pl.read_parquet(tmp_path / "4.parquet").height == 0


def test_a_trimmed_stream_is_reported_as_a_possible_gap(
    service: TestClient[Any], redis_client: redis.Redis, tmp_path: Path
) -> None:
    ids = post(service, *POSTED)
    redis_client.xtrim(Keys.EVENTS, maxlen=1, approximate=False)  # as MAXLEN ~ does once the stream is full
    summary = export_events(redis_client, tmp_path / "events.parquet", after=ids[0])
    assert summary.events == 1
    assert summary.gap is not None
    assert f"no longer holds {ids[0]}" in summary.gap
    assert f"oldest entry is {ids[2]}" in summary.gap


def test_bad_arguments_and_bad_entries_are_named_and_leave_the_destination_alone(
    service: TestClient[Any], redis_client: redis.Redis, tmp_path: Path
) -> None:
    out = tmp_path / "events.parquet"
    out.write_bytes(b"an earlier export")
    with pytest.raises(EventExportError, match="exists: give another path, or --overwrite"):
        export_events(redis_client, out)
    for after in ("yesterday", "18446744073709551616-0", "\u0661\u0662\u0663"):  # 2**64, Arabic-Indic digits
        with pytest.raises(EventExportError, match=re.escape(f"--after {after!r} is not a stream id")):
            export_events(redis_client, tmp_path / "other.parquet", after=after)
    with pytest.raises(EventExportError, match=re.escape("must end in .parquet or .pq")):
        export_events(redis_client, tmp_path / "events.csv")
    (tmp_path / "folder.parquet").mkdir()
    with pytest.raises(EventExportError, match=re.escape("folder.parquet is a folder")):
        export_events(redis_client, tmp_path / "folder.parquet", overwrite=True)

    post(service, POSTED[0])
    bad = redis_client.xadd(Keys.EVENTS, {"user_id": "u1", "item_id": "B", "event_type": "view", "timestamp": "soon"})
    with pytest.raises(EventExportError, match=f"stream entry {bad.decode()} of tailor:events"):
        export_events(redis_client, out, overwrite=True)
    bad_price = redis_client.xadd(
        Keys.EVENTS, {"user_id": "u1", "item_id": "B", "event_type": "view", "timestamp": "2024-05-01", "price": "abc"}
    )
    with pytest.raises(EventExportError, match=f"entry {bad_price.decode()} of tailor:events: price 'abc' is not"):
        export_events(redis_client, out, overwrite=True, after=bad.decode())
    missing = redis_client.xadd(Keys.EVENTS, {"user_id": "u1", "event_type": "view"})
    with pytest.raises(EventExportError, match=f"entry {missing.decode()} of tailor:events has no item_id"):
        export_events(redis_client, out, overwrite=True, after=bad_price.decode())
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["events.parquet"]  # no partial file left


def test_empty_optional_fields_are_exported_as_absent(
    service: TestClient[Any], redis_client: redis.Redis, tmp_path: Path
) -> None:
    post(service, {"user_id": "u1", "item_id": "B", "event_type": "view", "session_id": "", "recommendation_id": ""})
    export_events(redis_client, tmp_path / "events.pq")
    frame = pl.read_parquet(tmp_path / "events.pq")
    assert frame.select(Columns.SESSION, RECOMMENDATION_ID, Columns.QUANTITY).rows() == [(None, None, None)]


def test_the_cli_exports_and_prints_the_next_after(service: TestClient[Any], redis_url: str, tmp_path: Path) -> None:
    ids = post(service, *POSTED)
    env = {"TAILOR_HOME": str(tmp_path / "home"), "REDIS_URL": redis_url, "COLUMNS": "200"}
    result = CliRunner().invoke(cli, ["events", "export", str(tmp_path / "e.parquet")], env=env)
    assert result.exit_code == 0, result.output
    assert "wrote 3 events" in result.output
    assert f"--after {ids[-1]}" in result.output
    again = CliRunner().invoke(cli, ["events", "export", str(tmp_path / "e.parquet")], env=env)
    assert again.exit_code == 2
    assert "exists: give another path, or --overwrite" in again.output
    redis_client = redis.Redis.from_url(redis_url)
    redis_client.delete(Keys.EVENTS)
    redis_client.set(Keys.EVENTS, "not a stream")
    redis_client.close()
    wrong = CliRunner().invoke(cli, ["events", "export", str(tmp_path / "w.parquet")], env=env)
    assert wrong.exit_code == 2, wrong.output
    assert "WRONGTYPE" in wrong.output
