"""The serving benchmark's report helpers (the runs themselves need wrk and minutes: `make bench`)."""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.bench_service import Load, each, steal_seconds


def load(requests: int, seconds: float, server_cpu_us: float) -> Load:
    return Load("loadgen", 32, requests, seconds, 1.0, 5.0, server_cpu_us=server_cpu_us)


def test_busy_is_server_cpu_per_request_times_the_rate() -> None:
    # 2,700 req/s × 300 µs = 0.81 of a core; 1,000 req/s × 500 µs = half of one
    assert each([load(27_000, 10.0, 300.0), load(1_000, 1.0, 500.0)], "core_busy", ".0%") == "81%, 50%"


def test_steal_is_the_eighth_value_of_the_cpu_line_in_clock_ticks(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    ticks = os.sysconf("SC_CLK_TCK")
    # cpu  user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(f"cpu  100 0 50 9000 3 0 7 {3 * ticks} 0 0\ncpu0 50 0 25 4500 1 0 3 {ticks} 0 0\n")
    assert steal_seconds(stat) == 3.0
    assert steal_seconds(tmp_path / "absent") != steal_seconds(tmp_path / "absent")  # NaN: no such file
