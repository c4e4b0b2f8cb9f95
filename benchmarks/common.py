"""Shared benchmark machinery: isolated measured steps, machine info, markdown tables.

Every measured step runs in a fresh Python subprocess (``python -m benchmarks.common TARGET KWARGS``),
so Tailor and a reference implementation never share a heap, caches or thread pools, and each step's
peak memory is its own process's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss`` read by the child at
the end). A step is a plain function ``step(**kwargs) -> dict`` that imports what it needs, does the
work and returns JSON-able facts (counts, per-phase seconds from :class:`Stopwatch`). The child adds
its own wall/CPU time of the call and its peak RSS and prints one marked JSON line for the parent.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_MARKER = "@@BENCH_RESULT@@ "
REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "benchmarks" / ".work"
LIBRARIES = ("polars", "pyarrow", "numpy", "scipy", "pandas", "implicit", "lightfm", "mlflow", "litestar", "redis")


class BenchError(RuntimeError):
    """A measured step failed; the message carries the child's stderr tail."""


@dataclass
class Stopwatch:
    """Per-phase times inside a step: ``with sw.phase("load"): ...``.

    ``seconds`` holds wall seconds per phase, ``cpu_seconds`` the process CPU seconds (all threads),
    which stay meaningful when other jobs share the machine.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start, start_cpu = time.perf_counter(), _cpu_seconds()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + _cpu_seconds() - start_cpu

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{phase: {"wall": s, "cpu": s}}`` for a step's JSON result."""
        return {k: {"wall": v, "cpu": self.cpu_seconds[k]} for k, v in self.seconds.items()}


def describe_phases(phases: dict[str, dict[str, float]]) -> str:
    """``load 1.20 s (CPU 2.10), matrix 0.30 s (CPU 0.31)``."""
    return ", ".join(f"{k} {v['wall']:.2f} s (CPU {v['cpu']:.2f})" for k, v in phases.items())


@dataclass(frozen=True)
class Measurement:
    """One run of a step in its own process."""

    wall_s: float  # wall time of the step function (imports of the step module excluded)
    cpu_s: float  # user+system CPU time of the step, all threads
    peak_rss_mb: float  # peak resident memory of the whole child process
    result: dict[str, Any]


@dataclass(frozen=True)
class Ctx:
    """What a benchmark module's ``run(ctx)`` gets: where to put scratch data, how hard to try."""

    name: str
    quick: bool = False
    repeats: int = 3

    @property
    def work(self) -> Path:
        """Scratch folder of this benchmark (gitignored), created on demand."""
        path = WORK / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log(self, message: str) -> None:
        print(f"[{self.name}] {message}", file=sys.stderr, flush=True)

    def measure(self, target: str, preload: Sequence[str] = (), **kwargs: Any) -> Measurement:
        """Run ``module:function(**kwargs)`` once in a fresh interpreter (see :func:`measure`)."""
        return measure(target, preload, **kwargs)

    def best_of(self, target: str, preload: Sequence[str] = (), **kwargs: Any) -> Measurement:
        """The fastest of ``repeats`` isolated runs (the least disturbed by other load on the machine)."""
        runs = [measure(target, preload, **kwargs) for _ in range(max(1, self.repeats))]
        return min(runs, key=lambda m: m.wall_s)


def measure(target: str, preload: Sequence[str] = (), **kwargs: Any) -> Measurement:
    """Run ``module:function(**kwargs)`` in a subprocess and collect its timing, memory and result.

    Modules in ``preload`` are imported before the clock starts, so library import time (seconds for
    pandas or polars on a busy machine) is not counted as work; their memory still is.
    """
    command = [sys.executable, "-m", "benchmarks.common", target, json.dumps(kwargs), ",".join(preload)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_MARKER)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise BenchError(f"{target} failed (exit {proc.returncode}):\n{tail}")
    data = json.loads(lines[-1][len(_MARKER) :])
    return Measurement(data["wall_s"], data["cpu_s"], data["peak_rss_mb"], data["result"])


def _child(target: str, kwargs_json: str, preload: str) -> None:
    for name in filter(None, preload.split(",")):
        importlib.import_module(name)
    module, function = target.split(":")
    step = getattr(importlib.import_module(module), function)
    kwargs = json.loads(kwargs_json)
    start_wall, start_cpu = time.perf_counter(), _cpu_seconds()
    result = step(**kwargs)
    wall, cpu = time.perf_counter() - start_wall, _cpu_seconds() - start_cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(_MARKER + json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak_mb, "result": result}), flush=True)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- machine description -----------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    dists = {"lightfm": "rectools-lightfm"}
    out = {}
    for name in names:
        try:
            out[name] = version(dists.get(name, name))
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision() -> str:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return proc.stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    # RESULTS.md itself is rewritten by every run: an earlier run's figures in it are not a code change
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/RESULTS.md")
    return rev + (" (with uncommitted changes)" if changed else "")


def machine_info() -> dict[str, str]:
    """What the results depend on, for the RESULTS.md header (each section stamps its own run: :func:`run_stamp`)."""
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    libs = ", ".join(f"{k} {v}" for k, v in library_versions().items())
    return {
        "CPU": cpu_model(),
        "Cores": f"{cores} logical ({usable} usable by this process)",
        "RAM": f"{ram_gib():.1f} GiB",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "Libraries": libs,
    }


def run_stamp(command: str) -> str:
    """One line naming the run that measured a section: command, git revision, date, load average."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"_Measured by `{command}` at revision {git_revision()}, {date}; load average at start {load}._"


# --- formatting --------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one char per column (``l``/``r``), numbers right by default."""
    if align is None:
        align = "".join("r" if rows and isinstance(rows[0][i], int | float) else "l" for i in range(len(headers)))
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = [_row(headers), _row(rule), *(_row([fmt(v) for v in row]) for row in rows)]
    return "\n".join(lines)


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def fmt(value: object) -> str:
    """Numbers with thousands separators and sensible precision."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value != value:  # NaN
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
