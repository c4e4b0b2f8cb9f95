"""The serving benchmark's report helpers (the runs themselves need wrk and minutes: `make bench`)."""

from __future__ import annotations

from benchmarks.bench_service import Load, busy


def load(requests: int, seconds: float, server_cpu_us: float) -> Load:
    return Load("loadgen", 32, requests, seconds, 1.0, 5.0, server_cpu_us=server_cpu_us)


def test_busy_is_server_cpu_per_request_times_the_rate() -> None:
    # 2,700 req/s × 300 µs = 0.81 of a core; 1,000 req/s × 500 µs = half of one
    assert busy([load(27_000, 10.0, 300.0), load(1_000, 1.0, 500.0)]) == "81%, 50%"
