"""The benchmark's load generator against real loopback servers (asyncio streams) with known answers.

Each server answers the request line it reads; the tests check what the generator counted against
what the server saw: how many requests, which ids in which order, which answers were degraded, and
that broken answers or refused connections end a run as errors instead of hanging it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from benchmarks.loadgen import LoadResult, Spec, _Run, content_length, requests_of, run_load

Answer = Callable[[bytes], Awaitable[list[bytes]]]  # request line → the chunks to write back


def _response(body: bytes, status: int = 200) -> bytes:
    head = b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (status, len(body))
    return head + body


async def _serve(answer: Answer, seen: list[tuple[float, bytes]]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                line = head.split(b"\r\n", 1)[0]
                length = content_length(head)
                if length:
                    await reader.readexactly(length)
                seen.append((time.perf_counter(), line))
                for chunk in await answer(line):
                    writer.write(chunk)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _load(answer: Answer, **spec: object) -> tuple[LoadResult, list[tuple[float, bytes]]]:
    seen: list[tuple[float, bytes]] = []

    async def main() -> LoadResult:
        server = await _serve(answer, seen)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await run_load(Spec(port=port, **spec))  # type: ignore[arg-type]

    return uvloop.run(main()), seen  # as run_sync: uvloop's timers tick in whole milliseconds


async def _ok(line: bytes) -> list[bytes]:
    user = line.split(b" ")[1].rsplit(b"/", 1)[-1]
    return [_response(b'{"user":"%s","degraded":%s}' % (user, b"true" if user == b"u2" else b"false"))]


@pytest.mark.parametrize("rate", [None, 50_000.0], ids=["closed-loop", "fixed-rate"])
def test_a_run_sends_exactly_max_requests_rotating_over_the_ids(rate: float | None) -> None:
    result, seen = _load(_ok, path="/users/{id}", ids=["u1", "u2", "u3"], connections=4, max_requests=30, rate=rate)
    assert (result.requests, result.errors, result.unsent, result.statuses) == (30, 0, 0, {"200": 30})
    assert sorted(line for _, line in seen) == sorted(b"GET /users/u%d HTTP/1.1" % (i % 3 + 1) for i in range(30))
    assert result.degraded == 10  # every third answer (u2's) says degraded
    assert len(result.latencies_ms) == 30
    assert min(result.latencies_ms) >= 0


def test_fixed_rate_never_sends_a_request_before_it_is_due() -> None:
    rate, n = 4_000.0, 40  # 0.25 ms apart: below the event loop timers' 1 ms tick
    result, seen = _load(_ok, path="/users/{id}", ids=["u1"], connections=8, max_requests=n, rate=rate)
    assert result.requests == n
    arrivals = sorted(t for t, _ in seen)
    # request i is due at start + i / rate (the server's clock is the same process's): none arrives earlier
    assert all(arrival >= result.started + i / rate for i, arrival in enumerate(arrivals))


def test_a_late_release_is_reported_as_the_clients_own_lag() -> None:
    async def released_late() -> _Run:
        run = _Run(Spec(port=1, path="/{id}", rate=1_000.0, duration_s=10.0), asyncio.get_running_loop())
        run.started = time.perf_counter() - 0.050  # as if the client had not run for the first 50 ms
        run.deadline = run.started + 10.0
        run._release()
        assert run.timer is not None
        run.timer.cancel()
        return run

    run = uvloop.run(released_late())
    assert len(run.due) >= 50  # everything due in those 50 ms went out at once...
    assert run.result.release_lag_ms >= 50.0  # ...and the oldest of them 50 ms late
    assert run.result.release_lag_ms == run.close().summary()["release_lag_ms"]


def test_a_fixed_rate_run_is_not_over_until_its_last_request_due_before_the_deadline_is_sent() -> None:
    # The last request due before the deadline is released on the timer tick after its due time, which
    # can come after an answer has already seen the clock past the deadline. The run used to end on
    # that answer; the timer then sent the request on a closed run, and the benchmark's verdict counted
    # it as a failed request (0-6 per 8-s run at 3,300 req/s).
    loop = asyncio.new_event_loop()
    try:
        fixed = _Run(Spec(port=1, path="/x", rate=1000.0, duration_s=1.0), loop)
        fixed.started, fixed.deadline = 0.0, 1.0
        fixed.issued = 999  # request 999 is due at 0.999 s and not released yet
        assert not fixed.used_up(now=1.0005)
        fixed.issued = 1000  # request 1000 would be due at the deadline itself: it is never sent
        assert fixed.used_up(now=1.0005)
        capped = _Run(Spec(port=1, path="/x", rate=1000.0, duration_s=1.0, max_requests=10), loop)
        capped.issued = 10
        assert capped.used_up(now=0.0)
        closed = _Run(Spec(port=1, path="/x", duration_s=1.0), loop)  # a closed loop ends on the clock
        closed.started, closed.deadline, closed.issued = 0.0, 1.0, 5
        assert not closed.used_up(now=0.9999)
        assert closed.used_up(now=1.0)
    finally:
        loop.close()


def test_answers_still_missing_at_the_hard_limit_are_unsent_and_not_also_errors() -> None:
    async def never(line: bytes) -> list[bytes]:
        await asyncio.Future()  # no answer, ever
        return []

    result, seen = _load(never, path="/x", connections=2, duration_s=0.05, timeout_s=0.05)
    assert len(seen) == 2
    # given up after duration + 2 × timeout: counted once, as unsent (closing their connections is not a failure)
    assert (result.requests, result.errors, result.unsent) == (0, 0, 2)


def test_an_answer_split_across_writes_is_read_whole() -> None:
    body = b'{"items":[' + b",".join(b'"i%d"' % i for i in range(2000)) + b'],"degraded":true}'
    whole = _response(body, status=404)

    async def in_pieces(line: bytes) -> list[bytes]:
        return [whole[:20], whole[20:60], whole[60:5000], whole[5000:]]

    result, _ = _load(in_pieces, path="/x", connections=2, max_requests=6)
    assert (result.requests, result.statuses, result.degraded, result.errors) == (6, {"404": 6}, 6, 0)


def test_a_malformed_answer_is_an_error_and_ends_the_run() -> None:
    async def garbage(line: bytes) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\ncontent-length: lots\r\n\r\n"]

    result, seen = _load(garbage, path="/x", connections=3, max_requests=100, duration_s=30.0)
    assert (result.requests, result.errors) == (0, 3)  # one per connection, each then closed
    assert len(seen) == 3
    assert result.unsent == 0


def test_a_refused_connection_is_counted_and_nothing_is_sent() -> None:
    async def main() -> LoadResult:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()  # the port is free again: connecting is refused
        return await run_load(Spec(port=port, path="/x", connections=5, duration_s=30.0))

    result = uvloop.run(main())
    assert (result.requests, result.errors, result.unsent) == (0, 5, 0)


def test_the_id_files_are_read_before_the_clock_starts(tmp_path: Path) -> None:
    ids, items = tmp_path / "ids.txt", tmp_path / "items.txt"
    ids.write_text("a\nb\n")
    items.write_text("x\n")

    spec = Spec(port=1, path="/{id}/{item}", ids_file=str(ids), items_file=str(items))

    async def prepared() -> _Run:
        return _Run(spec, asyncio.get_running_loop())

    run = uvloop.run(prepared())
    ids.write_text("late\n")  # what a file read on the first request (after the clock started) would see
    items.unlink()
    assert next(run.source).startswith(b"GET /a/x HTTP/1.1\r\n")


def test_requests_fill_ids_and_items_in_turn_with_a_body_length() -> None:
    spec = Spec(port=1, path="/e/{id}", method="POST", body='{"u":"{id}","i":"{item}"}', ids=["a", "b"], items=["x"])
    first, second, third = (request for request, _ in zip(requests_of(spec), range(3), strict=False))
    assert first == b'POST /e/a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 17\r\n\r\n{"u":"a","i":"x"}'
    assert second.startswith(b"POST /e/b ")
    assert second.endswith(b'{"u":"b","i":"x"}')
    assert b"/e/a " in third
