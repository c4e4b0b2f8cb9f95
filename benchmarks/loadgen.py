"""A bounded HTTP/1.1 load generator on asyncio: the fallback when ``wrk`` is absent, and the fixed-rate client.

Two modes, both over keep-alive connections to one loopback address, both bounded in request count
*and* time (every loop stops by itself):

* **closed loop** (``rate=None``): ``connections`` workers each send their next request as soon as the
  previous answer is read — what ``wrk -c N`` does. Latency = answer read − request sent.
* **fixed rate** (``rate=R``): request *i* is due at ``start + i / R`` (open loop; ``wrk2``'s model).
  A free connection sends the oldest due request; latency is measured from the *due* time, so a
  server that falls behind is charged for the queueing it causes (no coordinated omission).

Requests rotate over a list of ids: ``path`` (and ``body``) contain ``{id}`` (and ``{item}``), filled
in turn from ``ids`` (and ``items``), or from the files ``ids_file`` / ``items_file`` (one id a line).
Responses are parsed just enough to get the status and the body (``Content-Length`` framing; Tailor
never answers chunked) and to count bodies containing ``"degraded":true``.

Run as a program, it reads a JSON :class:`Spec` from argv and prints one JSON :class:`LoadResult` line,
so a benchmark can start it as a subprocess next to the server and a Redis outage::

    python -m benchmarks.loadgen '{"port": 8000, "path": "/health", "duration_s": 2}'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import cycle
from pathlib import Path
from typing import Any

DEGRADED = b'"degraded":true'
_READ_LIMIT = 1 << 20


@dataclass(frozen=True)
class Spec:
    """One load run. ``max_requests`` and ``duration_s`` both bound it; whichever comes first ends it."""

    port: int
    path: str
    method: str = "GET"
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    ids: list[str] = field(default_factory=lambda: [""])
    items: list[str] = field(default_factory=lambda: [""])
    ids_file: str | None = None
    items_file: str | None = None
    connections: int = 16
    duration_s: float = 10.0
    max_requests: int = 1_000_000
    rate: float | None = None
    timeout_s: float = 5.0
    host: str = "127.0.0.1"


@dataclass
class LoadResult:
    """What a run measured. ``latencies_ms`` is dropped from the JSON output (only percentiles go out)."""

    requests: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    degraded: int = 0
    errors: int = 0
    unsent: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile ``q`` (0-100) in ms, nearest rank; NaN without requests."""
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
        return ordered[rank]

    def summary(self) -> dict[str, Any]:
        """JSON-able facts: counts, rate, p50/p90/p99/max latency."""
        out = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        out.update(rps=self.rps, p50_ms=self.percentile(50), p90_ms=self.percentile(90), p99_ms=self.percentile(99))
        out["max_ms"] = max(self.latencies_ms, default=float("nan"))
        return out


def requests_of(spec: Spec) -> Iterator[bytes]:
    """Encoded requests, rotating over ``ids`` and ``items`` (endless; the caller bounds it)."""
    common = "".join(f"{k}: {v}\r\n" for k, v in {"Host": spec.host, **spec.headers}.items())
    ids = Path(spec.ids_file).read_text().split() if spec.ids_file else spec.ids
    items = Path(spec.items_file).read_text().split() if spec.items_file else spec.items
    for user, item in zip(cycle(ids), cycle(items), strict=False):
        path = spec.path.replace("{id}", user).replace("{item}", item)
        body = spec.body.replace("{id}", user).replace("{item}", item).encode()
        length = f"Content-Length: {len(body)}\r\n" if spec.method != "GET" else ""
        yield f"{spec.method} {path} HTTP/1.1\r\n{common}{length}\r\n".encode() + body


class _Connection:
    """One keep-alive connection that sends a request and reads its answer."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.spec.host, self.spec.port, limit=_READ_LIMIT)
        assert self.reader is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        body = await self.reader.readexactly(_content_length(head))
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class _Run:
    """Shared state of one run: the request source, the bounds and the tallies."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.source = requests_of(spec)
        self.result = LoadResult()
        self.statuses: Counter[str] = Counter()
        self.started = time.perf_counter()
        self.deadline = self.started + spec.duration_s
        self.issued = 0

    def take(self) -> bytes | None:
        """The next request, or None once the count or the time is used up."""
        if self.issued >= self.spec.max_requests or time.perf_counter() >= self.deadline:
            return None
        self.issued += 1
        return next(self.source)

    async def send(self, conn: _Connection, request: bytes, since: float) -> None:
        """Send one request on ``conn`` and record its outcome; latency counts from ``since``."""
        try:
            status, body = await asyncio.wait_for(conn.exchange(request), self.spec.timeout_s)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            self.result.errors += 1
            conn.close()
            return
        self.result.latencies_ms.append((time.perf_counter() - since) * 1000)
        self.statuses[str(status)] += 1
        self.result.degraded += DEGRADED in body

    def finish(self) -> LoadResult:
        self.result.unsent = self.issued - sum(self.statuses.values()) - self.result.errors
        self.result.seconds = time.perf_counter() - self.started
        self.result.requests = sum(self.statuses.values())
        self.result.statuses = dict(sorted(self.statuses.items()))
        return self.result


async def _closed_worker(run: _Run) -> None:
    conn = _Connection(run.spec)
    try:
        while (request := run.take()) is not None:
            await run.send(conn, request, time.perf_counter())
    finally:
        conn.close()


async def _fixed_rate_worker(run: _Run, due: asyncio.Queue[tuple[float, bytes] | None]) -> None:
    conn = _Connection(run.spec)
    try:
        while (job := await due.get()) is not None:
            await run.send(conn, job[1], job[0])
    finally:
        conn.close()


async def _dispatch(run: _Run, rate: float, due: asyncio.Queue[tuple[float, bytes] | None], workers: int) -> None:
    """Release request *i* at ``start + i / rate``; everything already due is released at once."""
    n = 0
    while True:
        scheduled = run.started + n / rate
        now = time.perf_counter()
        if scheduled > now:
            await asyncio.sleep(scheduled - now)
        request = run.take()
        if request is None:
            break
        due.put_nowait((scheduled, request))
        n += 1
    for _ in range(workers):
        due.put_nowait(None)


async def run_load(spec: Spec) -> LoadResult:
    """Run ``spec`` to its end (count, time, or the stragglers' timeout) and return the tallies."""
    run = _Run(spec)
    if spec.rate is None:
        tasks = [_closed_worker(run) for _ in range(spec.connections)]
    else:
        due: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        workers = [_fixed_rate_worker(run, due) for _ in range(spec.connections)]
        tasks = [_dispatch(run, spec.rate, due, spec.connections), *workers]
    futures = [asyncio.ensure_future(task) for task in tasks]
    _, pending = await asyncio.wait(futures, timeout=spec.duration_s + 2 * spec.timeout_s)
    for future in pending:  # stragglers past the hard limit: stop them, count what never went out
        future.cancel()
    await asyncio.gather(*futures, return_exceptions=True)
    return run.finish()


def run_sync(spec: Spec) -> LoadResult:
    """:func:`run_load` on a fresh event loop (uvloop when installed: less client overhead)."""
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(run_load(spec))
    return asyncio.run(run_load(spec))


def main(argv: list[str]) -> int:
    """``python -m benchmarks.loadgen SPEC_JSON``: run and print the summary as one JSON line."""
    spec = Spec(**json.loads(argv[0]))
    print(json.dumps(run_sync(spec).summary()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
