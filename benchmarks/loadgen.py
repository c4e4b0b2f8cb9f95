"""A bounded HTTP/1.1 load generator on asyncio: the fallback when ``wrk`` is absent, and the fixed-rate client.

Two modes, both over keep-alive connections to one loopback address, both bounded in request count
*and* time (every run stops by itself):

* **closed loop** (``rate=None``): each of ``connections`` connections sends its next request as soon
  as the previous answer is read — what ``wrk -c N`` does. Latency = answer read − request sent.
* **fixed rate** (``rate=R``): request *i* is due at ``start + i / R`` (open loop; ``wrk2``'s model).
  A free connection sends the oldest due request; latency is measured from the *due* time, so a
  server that falls behind is charged for the queueing it causes (no coordinated omission).

All connections are opened before the clock starts: a run measures requests on established keep-alive
connections, as a storefront's backend sends them, not TCP handshakes.

Each connection is an :class:`asyncio.Protocol` driven by callbacks (no task, stream or timeout object
per request): the generator shares the machine's cores with the server it measures, so the less CPU it
takes per request, the less it disturbs the figures.

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
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import cycle
from pathlib import Path
from typing import Any

DEGRADED = b'"degraded":true'
_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024
_TICK_S = 0.001


@dataclass(frozen=True)
class Spec:
    """One load run. ``max_requests`` and ``duration_s`` both bound it; whichever comes first ends it.

    Answers still missing ``2 * timeout_s`` after ``duration_s`` are given up (counted as unsent).
    """

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
    """What a run measured. ``latencies_ms`` and ``started`` stay out of the JSON output (percentiles go out).

    ``errors`` counts requests that failed (connection refused or lost, malformed answer) and
    connections that could not be opened; ``unsent`` counts requests issued but never answered
    (still queued or in flight when the run's hard time limit struck).

    ``release_lag_ms`` is the client's own delay, which every latency includes: at a fixed rate, the most
    any request was released after its due time. A timer tick accounts for up to about 1 ms; more means
    the client itself did not run (the machine was stalled, or its cores were all taken), so the requests
    due meanwhile were charged time that no server could have avoided.
    """

    requests: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    degraded: int = 0
    errors: int = 0
    unsent: int = 0
    release_lag_ms: float = 0.0  # fixed rate: the latest the client released a request after it was due
    latencies_ms: list[float] = field(default_factory=list)
    started: float = 0.0  # time.perf_counter() when the clock started (the connections are open by then)

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
        out = {k: v for k, v in asdict(self).items() if k not in ("latencies_ms", "started")}
        out.update(rps=self.rps, p50_ms=self.percentile(50), p90_ms=self.percentile(90), p99_ms=self.percentile(99))
        out["max_ms"] = max(self.latencies_ms, default=float("nan"))
        return out


def requests_of(spec: Spec) -> Iterator[bytes]:
    """Encoded requests, rotating over ``ids`` and ``items`` (endless; the caller bounds it).

    The id files are read here, when it is called, not on the first request: a run calls it before its
    clock starts, so reading 100,000 ids (about 7 ms) does not hold back the first requests due and get
    charged to the server as latency.
    """
    ids = Path(spec.ids_file).read_text().split() if spec.ids_file else spec.ids
    items = Path(spec.items_file).read_text().split() if spec.items_file else spec.items
    return _encoded(spec, ids, items)


def _encoded(spec: Spec, ids: list[str], items: list[str]) -> Iterator[bytes]:
    common = "".join(f"{k}: {v}\r\n" for k, v in {"Host": spec.host, **spec.headers}.items())
    for user, item in zip(cycle(ids), cycle(items), strict=False):
        path = spec.path.replace("{id}", user).replace("{item}", item)
        body = spec.body.replace("{id}", user).replace("{item}", item).encode()
        length = f"Content-Length: {len(body)}\r\n" if spec.method != "GET" else ""
        yield f"{spec.method} {path} HTTP/1.1\r\n{common}{length}\r\n".encode() + body


def content_length(head: bytes) -> int:
    """The ``Content-Length`` of a response head (0 when absent); ValueError when it is not a number."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class _Connection(asyncio.Protocol):
    """One keep-alive connection: sends a request when idle, parses the answer, hands itself back."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.since = 0.0  # latency counts from here: the send (closed loop) or the due time (fixed rate)
        self.busy = False
        self.head_end = -1
        self.length = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, since: float) -> None:
        assert self.transport is not None
        self.busy, self.since, self.head_end = True, since, -1
        self.buffer.clear()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self.head_end < 0:
            end = buffer.find(_HEAD_END)
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    self._fail()
                return
            try:
                self.length = content_length(bytes(buffer[:end]))
            except ValueError:
                self._fail()
                return
            self.head_end = end + len(_HEAD_END)
        if len(buffer) < self.head_end + self.length:
            return
        try:
            status = int(buffer[9:12])
        except ValueError:
            self._fail()
            return
        self.busy = False
        self.run.answered(self, status, DEGRADED in buffer)

    def _fail(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows and counts the error

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.run.lost(self)


class _Run:
    """One run: the request source, the schedule, the free connections and the tallies."""

    def __init__(self, spec: Spec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.source = requests_of(spec)
        self.result = LoadResult()
        self.statuses: Counter[str] = Counter()
        self.conns: list[_Connection] = []
        self.free: deque[_Connection] = deque()
        self.due: deque[tuple[float, bytes]] = deque()  # fixed rate: released, waiting for a free connection
        self.open = 0
        self.issued = 0
        self.failed = 0  # requests whose connection broke (errors also counts connections never opened)
        self.started = self.deadline = 0.0
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None
        self.rate = spec.rate or 0.0
        self.done = loop.create_future()

    async def connect(self) -> None:
        """Open every connection (in parallel); one that cannot be opened counts as an error."""
        spec = self.spec

        async def one() -> None:
            try:
                _, conn = await self.loop.create_connection(lambda: _Connection(self), spec.host, spec.port)
            except OSError:
                self.result.errors += 1
                return
            self.open += 1
            self.conns.append(conn)
            self.free.append(conn)

        await asyncio.gather(*(one() for _ in range(spec.connections)))

    def start(self) -> None:
        self.started = time.perf_counter()
        self.deadline = self.started + self.spec.duration_s
        if not self.free:
            self._finish()
        elif self.spec.rate is None:
            while self.free and self._issue(time.perf_counter()):
                pass
        else:
            self._release()

    def _take(self, now: float) -> bytes | None:
        """The next request, or None once the run is :meth:`used_up`."""
        if self.used_up(now):
            return None
        self.issued += 1
        return next(self.source)

    def _issue(self, now: float) -> bool:
        """Closed loop: send the next request on a free connection; False when the run is used up."""
        request = self._take(now)
        if request is None:
            self._maybe_finish()
            return False
        self.free.popleft().send(request, now)
        return True

    def _release(self) -> None:
        """Fixed rate: release every request due by now, send as many as free connections allow, re-arm."""
        self.timer = None
        now = time.perf_counter()
        used_up = False
        first = self.issued
        while (due_at := self.started + self.issued / self.rate) <= now:
            request = self._take(due_at)
            if request is None:
                used_up = True
                break
            self.due.append((due_at, request))
        if self.issued > first:  # requests are due in order: the first one released waited longest
            lag_ms = (now - self.started - first / self.rate) * 1000
            self.result.release_lag_ms = max(self.result.release_lag_ms, lag_ms)
        self._send_due()
        if used_up:
            self._maybe_finish()
        else:  # libuv's timers tick in whole milliseconds and fire at once below half of one: never spin on them
            self.timer = self.loop.call_later(max(due_at - time.perf_counter(), _TICK_S), self._release)

    def _send_due(self) -> None:
        """Fixed rate: send released requests, oldest first, while connections are free."""
        while self.due and self.free:
            scheduled, request = self.due.popleft()
            self.free.popleft().send(request, scheduled)

    def answered(self, conn: _Connection, status: int, degraded: bool) -> None:
        now = time.perf_counter()
        self.result.latencies_ms.append((now - conn.since) * 1000)
        self.statuses[str(status)] += 1
        self.result.degraded += degraded
        self._hand_back(conn, now)

    def lost(self, conn: _Connection) -> None:
        if self.closed:  # closing the connections at the end: a request still in flight is already unsent
            return
        self.open -= 1
        if conn.busy:
            self.result.errors += 1
            self.failed += 1
        with contextlib.suppress(ValueError):
            self.free.remove(conn)
        self._maybe_finish()

    def _hand_back(self, conn: _Connection, now: float) -> None:
        self.free.append(conn)
        if self.spec.rate is None:
            self._issue(now)
        elif self.due:
            self._send_due()
        else:
            self._maybe_finish()

    def used_up(self, now: float) -> bool:
        """Nothing more will be issued: the count is reached, or the deadline has passed — the clock's in a
        closed loop, the schedule's at a fixed rate. A request due just before the deadline is released on
        the next timer tick, which can come after the clock has passed the deadline: the run is not over
        until it has been sent and answered."""
        if self.issued >= self.spec.max_requests:
            return True
        if self.spec.rate is None:
            return now >= self.deadline
        return self.started + self.issued / self.rate >= self.deadline

    def _maybe_finish(self) -> None:
        """Done once nothing more will be issued and nothing is queued or in flight (or no connection is left)."""
        idle = not self.due and len(self.free) == self.open
        if (idle and self.used_up(time.perf_counter())) or self.open == 0:
            self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> LoadResult:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        result = self.result
        result.started = self.started
        result.seconds = time.perf_counter() - self.started
        result.requests = sum(self.statuses.values())
        result.statuses = dict(sorted(self.statuses.items()))
        result.unsent = self.issued - result.requests - self.failed
        return result


async def run_load(spec: Spec) -> LoadResult:
    """Run ``spec`` to its end (count, time, or the stragglers' timeout) and return the tallies."""
    run = _Run(spec, asyncio.get_running_loop())
    await run.connect()
    run.start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(run.done), spec.duration_s + 2 * spec.timeout_s)
    result = run.close()
    for conn in run.conns:
        if conn.transport is not None:
            conn.transport.close()
    return result


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
