"""The embedded redis-server launcher, its clients and ``tailor redis`` (real processes, free ports)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from features.settings import Settings
from service.redis_server import (
    EmbeddedRedis,
    LocalRedis,
    RedisServerError,
    async_client,
    ensure_redis,
    free_port,
    redis_status,
    resolve_redis_url,
    sync_client,
)
from tailor_cli import app


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalRedis]:
    """A launcher handle whose server is NOT started yet (stopped at the end if it was)."""
    handle = LocalRedis(tmp_path / "home", free_port())
    yield handle
    handle.stop()


def test_ensure_starts_once_and_status_follows(server: LocalRedis) -> None:
    assert redis_status(server.settings, port=server.port).running is False
    assert server.start() == server.url
    first = redis_status(server.settings, port=server.port)
    assert (first.running, first.embedded, first.url) == (True, True, server.url)
    assert first.pid is not None
    assert server.start() == server.url  # idempotent: the same process keeps running
    assert redis_status(server.settings, port=server.port).pid == first.pid
    config = EmbeddedRedis(server.settings.redis_dir, server.port).config_file.read_text()
    assert "bind 127.0.0.1" in config
    assert "appendonly yes" in config
    assert "appendfsync everysec" in config
    client = redis.Redis.from_url(server.url)
    # publish rewrites the AOF itself; Redis' own rewrite waits for 256 MB of growth (not 64 MB)
    assert client.config_get("auto-aof-rewrite-min-size") == {"auto-aof-rewrite-min-size": str(256 * 1024 * 1024)}
    client.close()


def test_data_survives_stop_and_start(server: LocalRedis) -> None:
    server.start()
    client = redis.Redis.from_url(server.url)
    client.set("kept", b"yes")
    client.close()
    assert server.stop() is True
    assert server.stop() is False  # idempotent
    assert redis_status(server.settings, port=server.port).running is False
    server.start()
    client = redis.Redis.from_url(server.url)
    assert client.get("kept") == b"yes"
    client.close()


def test_redis_url_wins_and_nothing_is_started(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, redis_url="redis://127.0.0.1:1/0")
    assert ensure_redis(settings) == "redis://127.0.0.1:1/0"
    assert resolve_redis_url(settings) == "redis://127.0.0.1:1/0"
    assert not settings.redis_dir.exists()
    status = redis_status(settings)
    assert (status.embedded, status.running) == (False, False)


def test_a_redis_that_is_not_ours_is_not_adopted(server: LocalRedis, tmp_path: Path) -> None:
    server.start()
    stranger = Settings(home=tmp_path / "other-home")
    with pytest.raises(RedisServerError, match=f"port {server.port} already serves a Redis that is not Tailor's"):
        ensure_redis(stranger, port=server.port)


def test_a_start_failure_reports_the_server_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RedisServerError, match="did not start") as failure:
            ensure_redis(Settings(home=tmp_path), port=port, timeout_s=0.5)
    assert "Address already in use" in str(failure.value)


def test_clients_use_the_configured_timeouts_and_pool(redis_url: str) -> None:
    settings = Settings(redis_timeout_s=0.5, redis_max_connections=3)
    client = sync_client(redis_url, settings, socket_timeout=30)
    assert client.ping()
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 30
    assert client.connection_pool.max_connections == 3
    client.close()

    async def ping() -> tuple[bool, float, int]:
        aclient = async_client(redis_url, settings)
        try:
            kwargs = aclient.connection_pool.connection_kwargs
            return bool(await aclient.ping()), kwargs["socket_timeout"], kwargs["retry"].get_retries()
        finally:
            await aclient.aclose()
            await aclient.connection_pool.disconnect()

    assert asyncio.run(ping()) == (True, 0.5, 1)


def test_redis_status_command(redis_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    up = runner.invoke(app, ["redis", "status"], env={"REDIS_URL": redis_url, "TAILOR_HOME": str(tmp_path)})
    assert up.exit_code == 0, up.output
    assert f"external (REDIS_URL) Redis at {redis_url}: running" in up.output
    assert "nothing published yet" in up.output
    down = runner.invoke(app, ["redis", "status"], env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert down.exit_code == 1
    assert "down" in down.output
