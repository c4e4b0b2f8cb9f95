"""Data path benchmark: Parquet events → validated events → weighted CSR matrix, Tailor vs pandas.

Tailor's path is ``features.loaders.load_events`` (mapping, every validation check, duplicate
detection, the report) followed by ``features.matrix.build_matrix``. The reference is the same work
written plainly with pandas/numpy/scipy: ``read_parquet``; the same checks (null/blank user and item
ids, null/blank and unknown event types, null timestamps, exact duplicate rows); the event-type
weights; a ``groupby(user, item).sum()``; ``factorize`` of both id columns; a scipy CSR. Both run on
the same synthetic store, each in its own process, alternating, best of N runs, and must produce the
same matrix (shape, non-zeros and total weight are compared).

Also loads the real UCI Online Retail export with the ``online-retail`` preset, when present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Ctx, Measurement, Stopwatch, describe_phases, table

SIZES = (1_000_000, 10_000_000)
QUICK_SIZES = (100_000, 1_000_000)
TARGET_EVENTS_PER_S = 2_000_000
TARGET_SPEEDUP = 3.0
# Imported before the clock starts in each measured process (see benchmarks.common.measure).
TAILOR_MODULES = ("features.loaders", "features.mapping", "features.matrix", "scipy.sparse")
PANDAS_MODULES = ("pandas", "pyarrow.parquet", "numpy", "scipy.sparse", "features.columns")
ONLINE_RETAIL = REPO.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"


# --- steps (each runs in its own process) ------------------------------------------------------


def make_store(n_events: int, out: str) -> dict[str, Any]:
    """Write the synthetic store for ~``n_events`` to ``out`` unless the same config is already there."""
    from features.synth import SynthConfig, generate_store, write_store

    config = SynthConfig.for_events(n_events, seed=0)
    stored = Path(out) / "config.json"
    present = stored.exists() and (Path(out) / "events.parquet").exists()
    reuse = present and SynthConfig.model_validate_json(stored.read_text()) == config
    if not reuse:
        write_store(generate_store(config), Path(out))
    size_mb = (Path(out) / "events.parquet").stat().st_size / 1e6
    return {"generated": not reuse, "users": config.users, "items": config.items, "days": config.days, "mb": size_mb}


def tailor_step(path: str) -> dict[str, Any]:
    """Tailor: load + validate (known event types enforced, like the reference) + matrix."""
    from features.loaders import load_events
    from features.mapping import EventMapping
    from features.matrix import build_matrix

    sw = Stopwatch()
    with sw.phase("load + validate"):
        loaded = load_events(path, EventMapping(unknown_event_types="reject"))
    with sw.phase("matrix"):
        matrix = build_matrix(loaded.events)
    return {
        "rows": loaded.report.rows_read,
        "valid": loaded.events.height,
        **_matrix_facts(matrix.matrix),
        "phases": sw.as_dict(),
    }


def pandas_step(path: str) -> dict[str, Any]:
    """The reference: the same steps in plain pandas + numpy + scipy."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from features.columns import DEFAULT_EVENT_WEIGHTS, DEFAULT_OTHER_WEIGHT, Columns

    sw = Stopwatch()
    with sw.phase("read"):
        df = pd.read_parquet(path)
    rows = len(df)
    with sw.phase("validate"):
        bad = _blank(df[Columns.USER]) | _blank(df[Columns.ITEM]) | _blank(df[Columns.EVENT])
        bad |= ~df[Columns.EVENT].isin(list(DEFAULT_EVENT_WEIGHTS)) | df[Columns.TIMESTAMP].isna()
        bad |= df.duplicated(keep="first")
        df = df[~bad]
    with sw.phase("weights"):
        weights = df[Columns.EVENT].map(DEFAULT_EVENT_WEIGHTS).fillna(DEFAULT_OTHER_WEIGHT).astype(np.float64)
    with sw.phase("groupby"):
        frame = pd.DataFrame({"u": df[Columns.USER].to_numpy(), "i": df[Columns.ITEM].to_numpy(), "w": weights})
        cells = frame.groupby(["u", "i"], sort=False)["w"].sum()
    with sw.phase("factorize + csr"):
        r, users = pd.factorize(cells.index.get_level_values(0), sort=True)
        c, items = pd.factorize(cells.index.get_level_values(1), sort=True)
        matrix = sp.csr_matrix((cells.to_numpy(), (r, c)), shape=(len(users), len(items)), dtype=np.float32)
    return {"rows": rows, "valid": len(df), **_matrix_facts(matrix), "phases": sw.as_dict()}


def _blank(column: Any) -> Any:
    return column.isna() | column.fillna("").str.strip().eq("")


def _matrix_facts(matrix: Any) -> dict[str, Any]:
    return {"shape": list(matrix.shape), "nnz": int(matrix.nnz), "weight_sum": float(matrix.sum(dtype="float64"))}


def retail_step(path: str) -> dict[str, Any]:
    """Load UCI Online Retail (CSV.gz) with its preset, then build the purchase matrix."""
    from features.loaders import load_events
    from features.mapping import get_preset
    from features.matrix import build_matrix

    sw = Stopwatch()
    with sw.phase("load + validate"):
        loaded = load_events(path, get_preset("online-retail"))
    with sw.phase("matrix"):
        matrix = build_matrix(loaded.events)
    report = loaded.report
    return {
        "rows": report.rows_read,
        "valid": report.rows_valid,
        "users": report.n_users,
        "items": report.n_items,
        "dropped": {c.reason: c.count for c in report.dropped},
        "rejected": {c.reason: c.count for c in report.rejected},
        "duplicates_kept": report.duplicates_kept,
        **_matrix_facts(matrix.matrix),
        "phases": sw.as_dict(),
    }


# --- orchestration -----------------------------------------------------------------------------


def _compare(ctx: Ctx, path: str) -> tuple[Measurement, Measurement]:
    """Alternate Tailor and pandas runs (so both see the same machine load); keep each one's best."""
    tailor: list[Measurement] = []
    reference: list[Measurement] = []
    for i in range(ctx.repeats):
        ctx.log(f"  run {i + 1}/{ctx.repeats}")
        tailor.append(ctx.measure("benchmarks.bench_data:tailor_step", TAILOR_MODULES, path=path))
        reference.append(ctx.measure("benchmarks.bench_data:pandas_step", PANDAS_MODULES, path=path))
    return min(tailor, key=lambda m: m.wall_s), min(reference, key=lambda m: m.wall_s)


def _same_matrix(a: dict[str, Any], b: dict[str, Any]) -> bool:
    close = abs(a["weight_sum"] - b["weight_sum"]) <= 1e-6 * max(1.0, abs(b["weight_sum"]))
    return bool(a["shape"] == b["shape"] and a["nnz"] == b["nnz"] and close)


def _synthetic_section(ctx: Ctx) -> str:
    sizes = QUICK_SIZES if ctx.quick else SIZES
    rows, phases, verdicts, stores = [], [], [], []
    for n in sizes:
        folder = ctx.work / f"synth-{n}"
        ctx.log(f"synthetic store for {n:,} events → {folder}")
        store = ctx.measure("benchmarks.bench_data:make_store", n_events=n, out=str(folder)).result
        path = str(folder / "events.parquet")
        ctx.log(f"Parquet → CSR, {n:,} target events")
        tailor, ref = _compare(ctx, path)
        events = tailor.result["rows"]
        t_rate, p_rate = events / tailor.wall_s, events / ref.wall_s
        same = "yes" if _same_matrix(tailor.result, ref.result) else "**NO**"
        shape = "×".join(f"{x:,}" for x in tailor.result["shape"])
        rows.append([events, "Tailor", tailor.wall_s, t_rate, tailor.cpu_s, tailor.peak_rss_mb, shape, same])
        rows.append([events, "pandas", ref.wall_s, p_rate, ref.cpu_s, ref.peak_rss_mb, "", ""])
        memory = tailor.peak_rss_mb / ref.peak_rss_mb
        rows.append([events, "**Tailor/pandas**", ref.wall_s / tailor.wall_s, t_rate / p_rate, "", memory, "", ""])
        stores.append(
            f"{events:,} events: `SynthConfig.for_events({n:_}, seed=0)` = {store['users']:,} shoppers, "
            f"{store['items']:,} items, {store['days']} days; `events.parquet` {store['mb']:.0f} MB."
        )
        phases.append(_phase_row(events, "Tailor", tailor))
        phases.append(_phase_row(events, "pandas", ref))
        if n == max(sizes):
            verdicts.append(_verdict(events, t_rate, t_rate / p_rate))
    headers = ["events", "implementation", "wall s", "events/s", "CPU s", "peak RSS MB", "users×items", "same matrix"]
    return "\n\n".join(
        [
            "### Synthetic store: Parquet → validated events → CSR",
            "\n".join(f"- {line}" for line in stores),
            table(headers, rows, align="rlrrrrrl"),
            "In the ratio row, *wall s* is the speed-up (pandas time / Tailor time), *events/s* the same "
            "ratio of rates and *peak RSS MB* Tailor's memory as a fraction of pandas'. "
            "CPU s above wall s means several cores were used; wall s above CPU s means the process "
            "waited (other jobs on the machine: see the load average in the header).",
            "Per-phase wall seconds and CPU seconds (best run):",
            table(["events", "implementation", "phases"], phases, align="rll"),
            *verdicts,
        ]
    )


def _phase_row(events: int, name: str, m: Measurement) -> list[object]:
    return [events, name, describe_phases(m.result["phases"])]


def _verdict(events: int, rate: float, speedup: float) -> str:
    ok = rate >= TARGET_EVENTS_PER_S and speedup >= TARGET_SPEEDUP
    return (
        f"**Requirement** (≥ {TARGET_EVENTS_PER_S / 1e6:.0f}M events/s and ≥ {TARGET_SPEEDUP:.0f}× pandas, "
        f"Parquet → CSR at {events:,} events): {'PASS' if ok else 'FAIL'} — "
        f"{rate / 1e6:.2f}M events/s, {speedup:.1f}× pandas."
    )


def _retail_section(ctx: Ctx) -> str:
    title = "### Real data: UCI Online Retail (CSV.gz, `online-retail` preset)"
    if not ONLINE_RETAIL.exists():
        ctx.log(f"skipped Online Retail: {ONLINE_RETAIL} not found")
        return f"{title}\n\nSkipped: `{ONLINE_RETAIL}` is not present on this machine."
    ctx.log("UCI Online Retail")
    step = "benchmarks.bench_data:retail_step"
    runs = [ctx.measure(step, TAILOR_MODULES, path=str(ONLINE_RETAIL)) for _ in range(ctx.repeats)]
    best = min(runs, key=lambda m: m.wall_s)
    r = best.result
    facts = [
        ["rows read", r["rows"]],
        ["valid purchase events", r["valid"]],
        *([f"dropped: {k}", v] for k, v in r["dropped"].items()),
        *([f"rejected: {k}", v] for k, v in r["rejected"].items()),
        ["identical lines kept (preset keeps them)", r["duplicates_kept"]],
        ["customers", r["users"]],
        ["stock codes", r["items"]],
        ["matrix non-zeros", r["nnz"]],
    ]
    speed = [[best.wall_s, r["rows"] / best.wall_s, best.cpu_s, best.peak_rss_mb]]
    phases = describe_phases(r["phases"])
    return "\n\n".join(
        [
            title,
            f"`{ONLINE_RETAIL.name}` ({ONLINE_RETAIL.stat().st_size / 1e6:.1f} MB gzip), "
            f"best of {len(runs)}: {phases}.",
            table(["wall s", "rows/s", "CPU s", "peak RSS MB"], speed),
            table(["", "count"], facts, align="lr"),
        ]
    )


def run(ctx: Ctx) -> str:
    """The markdown section of this benchmark."""
    intro = __doc__.split("\n\n", 1)[1].strip() if __doc__ else ""
    return "\n\n".join(
        [
            "## Data: load → validate → interaction matrix",
            intro,
            f"Runs: best of {ctx.repeats} (fastest wall time), Tailor and pandas alternating.",
            _synthetic_section(ctx),
            _retail_section(ctx),
        ]
    )
