"""``tailor data ...``: loading, validation and the synthetic store.

Exit codes of ``tailor data validate``: 0 the file loads (even with rows dropped or quarantined),
1 invalid rows with ``--strict``, 2 a missing/unreadable file, missing columns or a bad mapping.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from features.errors import DataValidationError, TailorDataError
from tailor_cli.common import console, load_settings

if TYPE_CHECKING:
    from features.mapping import EventMapping
    from features.validation import ValidationReport

app = typer.Typer(no_args_is_help=True)

EXIT_INVALID_ROWS = 1
EXIT_BAD_INPUT = 2


def _fail(message: str, code: int) -> NoReturn:
    # markup=False: messages quote user data (column names, values) that may contain [brackets].
    console.print(f"error: {message}", style="bold red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _resolve_mapping(preset: str | None, mapping_file: Path | None, overrides: dict[str, Any]) -> EventMapping | None:
    """The mapping from ``--preset``/``--mapping`` plus option overrides; None = the native contract."""
    from features.errors import MappingError
    from features.mapping import EventMapping, get_preset, load_mapping, parse_event_map, with_overrides

    if preset is not None and mapping_file is not None:
        raise MappingError("give --preset or --mapping, not both")
    base = get_preset(preset) if preset is not None else load_mapping(mapping_file) if mapping_file else None
    if isinstance(overrides.get("event_map"), str):
        overrides = {**overrides, "event_map": parse_event_map(overrides["event_map"])}
    if all(value is None for value in overrides.values()):
        return base
    return with_overrides(base or EventMapping(), overrides)


def _print_report(report: ValidationReport, seconds: float) -> None:
    console.print(report.render())
    for line in report.messages():
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    if report.quarantine_path:
        moved = report.rows_dropped + report.rows_rejected
        console.print(f"quarantine: {moved:,} rows written to {report.quarantine_path}", markup=False, soft_wrap=True)
    console.print(f"loaded and validated in {seconds:.2f} s", style="dim")


@app.command()
def validate(
    path: Path = typer.Argument(
        ..., help="Events file (.csv, .csv.gz, .parquet, .pq) or a folder with events.parquet."
    ),
    preset: str | None = typer.Option(
        None, "--preset", help="Built-in mapping: tailor (native columns), retailrocket, online-retail."
    ),
    mapping_file: Path | None = typer.Option(
        None, "--mapping", help="Mapping file (TOML or JSON) naming source columns, event values, time format."
    ),
    user_col: str | None = typer.Option(None, "--user-col", help="Source column holding user ids."),
    item_col: str | None = typer.Option(None, "--item-col", help="Source column holding item ids."),
    time_col: str | None = typer.Option(None, "--time-col", help="Source column holding event times."),
    event_col: str | None = typer.Option(None, "--event-col", help="Source column holding event types."),
    quantity_col: str | None = typer.Option(None, "--quantity-col", help="Source column holding quantities."),
    price_col: str | None = typer.Option(None, "--price-col", help="Source column holding unit prices."),
    session_col: str | None = typer.Option(None, "--session-col", help="Source column holding sessions/orders."),
    event_map: str | None = typer.Option(
        None, "--event-map", help='Event values to types, e.g. "addtocart=add_to_cart,transaction=purchase".'
    ),
    constant_event: str | None = typer.Option(
        None, "--constant-event", help="Event type of every row when there is no event column (e.g. purchase)."
    ),
    time_format: str | None = typer.Option(
        None, "--time-format", help="epoch_s, epoch_ms, iso, or a strptime pattern such as '%d/%m/%Y %H:%M'."
    ),
    duplicates: str | None = typer.Option(
        None, "--duplicates", help="Exact duplicate rows: reject (quarantine all but the first) or keep."
    ),
    unknown_event_types: str | None = typer.Option(
        None, "--unknown-event-types", help="Event types neither standard nor mapped: keep or reject."
    ),
    strict: bool = typer.Option(False, "--strict", help="Fail (exit 1) on any invalid row instead of quarantining."),
    quarantine_dir: Path | None = typer.Option(
        None, "--quarantine-dir", help="Where dropped/rejected rows go as Parquet (default: $TAILOR_HOME/quarantine)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout instead of a table."),
) -> None:
    """Load an events file through a mapping, validate it and print what was kept, dropped and rejected.

    Exit codes: 0 loaded (even with quarantined rows), 1 invalid rows with --strict, 2 bad file,
    missing columns or bad mapping.
    """
    from features.loaders import load_events

    overrides = {
        "user": user_col,
        "item": item_col,
        "time": time_col,
        "event": event_col,
        "quantity": quantity_col,
        "price": price_col,
        "session": session_col,
        "event_map": event_map,
        "constant_event": constant_event,
        "time_format": time_format,
        "duplicates": duplicates,
        "unknown_event_types": unknown_event_types,
    }
    started = time.perf_counter()
    try:
        mapping = _resolve_mapping(preset, mapping_file, overrides)
        target = quarantine_dir or load_settings().home / "quarantine"
        result = load_events(path, mapping, quarantine_dir=target.resolve(), strict=strict)
    except DataValidationError as exc:
        _fail(str(exc), EXIT_INVALID_ROWS)
    except (TailorDataError, FileNotFoundError) as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    if json_out:
        typer.echo(json.dumps(result.report.to_dict(), indent=2))
    else:
        _print_report(result.report, time.perf_counter() - started)


@app.command()
def synth(
    users: int = typer.Option(1000, "--users", help="Number of shoppers."),
    items: int = typer.Option(200, "--items", help="Number of catalogue items."),
    days: int = typer.Option(60, "--days", help="Length of the event history in days."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same settings always give the same store."),
    out: Path | None = typer.Option(
        None, "--out", help="Folder to write the store to (default: $TAILOR_HOME/data/synth)."
    ),
) -> None:
    """Generate a synthetic store (events, catalogue, users and ground truth) and write it as Parquet."""
    from pydantic import ValidationError

    from features.synth import SynthConfig, generate_store, write_store

    try:
        config = SynthConfig(users=users, items=items, days=days, seed=seed)
    except ValidationError as exc:
        problems = "; ".join(f"--{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        _fail(f"invalid synthetic store settings: {problems}", EXIT_BAD_INPUT)
    target = out or load_settings().data_dir / "synth"
    store = generate_store(config)
    written = write_store(store, target)
    for part, written_path in written.items():
        console.print(f"wrote {part}: {written_path}", markup=False, soft_wrap=True)
    console.print_json(json.dumps(store.summary(), default=str))


@app.command("sample-user")
def sample_user(
    data: Path = typer.Argument(..., help="Events file, or a store folder with events.parquet"),
    min_purchases: int = typer.Option(3, min=1, help="Only shoppers with at least this many purchases"),
    seed: int = typer.Option(0, help="Seed of the pick, so the same data gives the same shopper"),
) -> None:
    """Print the id of one shopper with purchase history (for demos and curl examples)."""
    import polars as pl

    from features.columns import Columns, EventType
    from features.loaders import load_events

    try:
        events = load_events(data).events
    except TailorDataError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    buyers = (
        events.filter(pl.col(Columns.EVENT) == EventType.PURCHASE)
        .group_by(Columns.USER)
        .len()
        .filter(pl.col("len") >= min_purchases)
        .sort(Columns.USER)
    )
    if buyers.is_empty():
        _fail(f"no shopper in {data} has {min_purchases} or more purchases", EXIT_BAD_INPUT)
    typer.echo(buyers.sample(1, seed=seed)[Columns.USER].item())
