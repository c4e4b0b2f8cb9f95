"""Load store exports into Tailor's contracts: events, catalogue and users.

Sources are CSV (plain or gzipped, ``.csv`` / ``.csv.gz``) or Parquet (``.parquet`` / ``.pq``), or a
folder written by the synthetic store (``events.parquet``, ``catalogue.parquet``, ``users.parquet``).
A lazy polars scan maps the columns; text times are then parsed and rows checked on the collected
frame, always with vectorised expressions: no Python loop touches rows.

CSV columns are read as strings, so ids like ``"17850.0"`` or ``"00123"`` keep their text; values are
then cast to contract types non-strictly and every failed cast becomes a validation problem with its
row number, never a crash or a silent null.

Errors: :class:`FileNotFoundError` (no such file or folder);
:class:`~features.errors.TailorDataError` (unsupported or unreadable file);
:class:`~features.errors.SchemaError` / :class:`~features.errors.MappingError` (missing columns, a
mapping that does not fit the file); :class:`~features.errors.DataValidationError` (``strict=True``
and invalid rows).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import polars as pl

from features.columns import CATALOGUE_REQUIRED, USERS_OPTIONAL, USERS_REQUIRED, Columns
from features.errors import MappingError, TailorDataError
from features.mapping import DropRule, EventMapping
from features.validation import (
    COLUMN,
    REASON,
    ROW,
    Check,
    Reason,
    ValidationReport,
    count_reasons,
    raise_if_invalid,
    require_columns,
    tag_expressions,
)

EVENTS_FILE: Final = "events.parquet"
CATALOGUE_FILE: Final = "catalogue.parquet"
USERS_FILE: Final = "users.parquet"
PARQUET_SUFFIXES: Final = (".parquet", ".pq")

#: The loaded events frame: always these columns with these types (optional ones null when absent).
EVENT_SCHEMA: Final[dict[str, pl.DataType]] = {
    Columns.USER: pl.Utf8(),
    Columns.ITEM: pl.Utf8(),
    Columns.EVENT: pl.Utf8(),
    Columns.TIMESTAMP: pl.Datetime("us"),
    Columns.QUANTITY: pl.Float64(),
    Columns.PRICE: pl.Float64(),
    Columns.SESSION: pl.Utf8(),
}

# Working columns carry a prefix no export uses, so they never collide with source columns.
_TMP: Final = "__tailor_"
_ROW, _REASON, _COLUMN = f"{_TMP}row", f"{_TMP}reason", f"{_TMP}column"
_HASH, _DUP = f"{_TMP}hash", f"{_TMP}dup_kept"

# "iso" tries these in order: naive date-times (T or space, optional fraction), then with a UTC
# offset or Z (converted to naive UTC), then minutes only, then a bare date.
_ISO_FORMATS: Final = (
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
)
_EPOCH_TO_US: Final = {"epoch_s": 1_000_000.0, "epoch_ms": 1_000.0}
_SNIFF_ROWS: Final = 200  # values used to order the ISO patterns
_TRUE: Final = ("true", "t", "yes", "y", "1")
_FALSE: Final = ("false", "f", "no", "n", "0")


@dataclass(frozen=True)
class LoadResult:
    """Loaded events plus what happened to the other rows.

    ``events`` has exactly :data:`EVENT_SCHEMA` (in source order, not sorted by time).
    ``quarantined`` holds the dropped and rejected rows (``row``, ``reason``, ``column`` and the
    original values as strings); ``quarantine_path`` is where they were written, if anywhere.
    """

    events: pl.DataFrame
    report: ValidationReport
    quarantine_path: Path | None
    quarantined: pl.DataFrame


# ---------------------------------------------------------------------------------------------
# Reading sources


def resolve_source(path: str | Path, default_name: str = EVENTS_FILE) -> Path:
    """The file to read: ``path`` itself, or ``path/default_name`` when ``path`` is a folder."""
    path = Path(path)
    if path.is_dir():
        inner = path / default_name
        if not inner.is_file():
            raise FileNotFoundError(f"folder {path} has no {default_name}")
        return inner
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    return path


def _file_kind(path: Path) -> Literal["csv", "parquet"]:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise TailorDataError(f"{path}: unsupported file type; use .csv, .csv.gz, .parquet or .pq")


def scan_source(path: Path) -> pl.LazyFrame:
    """A lazy scan of ``path``: CSV columns all as strings (lossy UTF-8), Parquet with its own types."""
    if _file_kind(path) == "csv":
        return pl.scan_csv(path, infer_schema=False, encoding="utf8-lossy")
    return pl.scan_parquet(path)


def _collect_schema(frame: pl.LazyFrame, source: Path) -> pl.Schema:
    try:
        return frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise TailorDataError(f"cannot read {source}: {exc}") from exc


def _collect(frame: pl.LazyFrame, source: Path) -> pl.DataFrame:
    try:
        return frame.collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise TailorDataError(f"cannot read {source}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Expressions: source columns → contract values


class _SourceSchema(pl.Schema):
    """A source schema that also knows which text columns are already clean.

    A clean column has no blank value and none with leading or trailing whitespace, so trimming it
    (and blank → null) would change nothing: expressions then use it as it is, sparing a pass and a
    copy of the column (10M values: 0.2 s and 160 MB each).
    """

    def __init__(self, schema: pl.Schema, clean: frozenset[str]) -> None:
        super().__init__(schema)
        self.clean = clean


def _clean_columns(frame: pl.DataFrame, columns: list[str]) -> frozenset[str]:
    """The text ``columns`` of ``frame`` with no blank and no untrimmed value, in one parallel select."""
    if not columns:
        return frozenset()
    # Rust's regex \s and str::trim (used by strip_chars) both mean Unicode White_Space.
    dirty = frame.select(pl.col(c).cast(pl.Utf8).str.contains(r"^\s|\s$|^$").any() for c in columns).row(0)
    return frozenset(c for c, bad in zip(columns, dirty, strict=True) if not bad)


def _is_text(dtype: pl.DataType) -> bool:
    """Values of this type are text to trim and parse (not numbers, datetimes or dates)."""
    return not (isinstance(dtype, pl.Datetime | pl.Date) or dtype.is_numeric())


def _text(column: str, schema: pl.Schema) -> pl.Expr:
    """The column as text: trimmed, blank becomes null. Typed columns are only cast (nothing to trim)."""
    if not _is_text(schema[column]) or (isinstance(schema, _SourceSchema) and column in schema.clean):
        return pl.col(column).cast(pl.Utf8)
    # One expression on purpose: referring to the stripped text twice (when/then) strips it twice.
    return pl.col(column).cast(pl.Utf8).str.strip_chars().replace("", None)


def _blank(column: str, schema: pl.Schema) -> pl.Expr:
    """Null, or blank text (typed columns skip the cast to text)."""
    return _text(column, schema).is_null() if _is_text(schema[column]) else pl.col(column).is_null()


def _id(column: str, schema: pl.Schema, strip_float: bool) -> pl.Expr:
    text = _text(column, schema)
    # "17850.0" → "17850": ids that went through a float column on the way out of the store.
    return text.str.replace(r"^(-?\d+)\.0+$", "${1}") if strip_float else text


def _number(column: str, schema: pl.Schema) -> pl.Expr:
    if schema[column].is_numeric():
        return pl.col(column).cast(pl.Float64)
    return _text(column, schema).cast(pl.Float64, strict=False)


def _parse_text_time(text: pl.Expr, fmt: str) -> pl.Expr:
    """Parse text with one concrete format (``epoch_s``, ``epoch_ms`` or a strptime pattern)."""
    if fmt in _EPOCH_TO_US:
        return _from_epoch(text.cast(pl.Float64, strict=False), fmt)
    parsed = text.str.to_datetime(fmt, time_unit="us", strict=False)
    # A pattern with an offset (%z, %:z, %#z) yields UTC-aware times; the contract is naive UTC.
    return parsed.dt.replace_time_zone(None) if re.search(r"%[#:]*z", fmt) else parsed


def _from_epoch(seconds_or_ms: pl.Expr, fmt: str) -> pl.Expr:
    micros = (seconds_or_ms * _EPOCH_TO_US[fmt]).round().cast(pl.Int64, strict=False)
    return micros.cast(pl.Datetime("us"))


def _typed_time(column: str, dtype: pl.DataType, formats: tuple[str, ...], source: Path) -> pl.Expr:
    """Contract timestamps from a typed column: datetime (any zone), date, or epoch numbers."""
    col = pl.col(column)
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone:
            col = col.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return col.cast(pl.Datetime("us"))
    if isinstance(dtype, pl.Date):
        return col.cast(pl.Datetime("us"))
    epochs = [fmt for fmt in formats if fmt in _EPOCH_TO_US]
    if not epochs:
        raise MappingError(
            f"time column '{column}' of {source} has type {dtype} but time_format is {formats!r}; "
            "numbers need epoch_s or epoch_ms"
        )
    return _from_epoch(col.cast(pl.Float64), epochs[0])


def _parse_series(text: pl.Series, fmt: str) -> pl.Series:
    return text.to_frame("t").select(_parse_text_time(pl.col("t"), fmt)).to_series()


def _concrete_formats(formats: tuple[str, ...], text: pl.Series) -> list[str]:
    """The formats in the order given, ``iso`` expanded to its patterns, best-fitting first.

    ISO patterns never match the same string, so ordering them by how many of the first values they
    parse changes no result, only how many rows the fallbacks see.
    """
    sample = text.drop_nulls().head(_SNIFF_ROWS)
    iso = sorted(_ISO_FORMATS, key=lambda fmt: _parse_series(sample, fmt).null_count())
    return [concrete for fmt in formats for concrete in (iso if fmt == "iso" else [fmt])]


def parse_times(text: pl.Series, formats: tuple[str, ...]) -> pl.Series:
    """Parse text times, each value with the first format that fits (null when none does).

    The first format runs over every value; each next one only over the values still unparsed, so a
    mostly uniform column costs one parse whatever the number of formats.
    """
    ordered = _concrete_formats(formats, text)
    parsed = _parse_series(text, ordered[0])
    for fmt in ordered[1:]:
        missing = (parsed.is_null() & text.is_not_null()).arg_true()
        if missing.is_empty():
            break
        parsed = parsed.scatter(missing, _parse_series(text.gather(missing), fmt))
    return parsed


def _event(mapping: EventMapping, schema: pl.Schema) -> pl.Expr:
    if mapping.constant_event is not None:
        return pl.lit(mapping.constant_event, dtype=pl.Utf8)
    assert mapping.event is not None  # guaranteed by EventMapping's validator
    text = _text(mapping.event, schema)
    return text.replace(mapping.event_map) if mapping.event_map else text


def _optional_columns(mapping: EventMapping, present: pl.Schema) -> dict[str, str | None]:
    """Contract name → source column of the optional fields; unset ones fall back to the contract name."""
    pairs = ((Columns.QUANTITY, mapping.quantity), (Columns.PRICE, mapping.price), (Columns.SESSION, mapping.session))
    return {name: col if col is not None else (name if name in present else None) for name, col in pairs}


def _mapped(mapping: EventMapping, schema: pl.Schema, source: Path) -> dict[str, pl.Expr]:
    """Contract column → expression, for every column of :data:`EVENT_SCHEMA`."""
    optional = _optional_columns(mapping, schema)
    quantity, price, session = (optional[c] for c in (Columns.QUANTITY, Columns.PRICE, Columns.SESSION))
    return {
        Columns.USER: _id(mapping.user, schema, mapping.strip_float_ids),
        Columns.ITEM: _id(mapping.item, schema, mapping.strip_float_ids),
        Columns.EVENT: _event(mapping, schema),
        Columns.TIMESTAMP: (  # text times are parsed after collecting: see parse_times
            pl.lit(None, dtype=pl.Datetime("us"))
            if _is_text(schema[mapping.time])
            else _typed_time(mapping.time, schema[mapping.time], mapping.time_formats, source)
        ),
        Columns.QUANTITY: _number(quantity, schema) if quantity else pl.lit(None, dtype=pl.Float64),
        Columns.PRICE: _number(price, schema) if price else pl.lit(None, dtype=pl.Float64),
        Columns.SESSION: _text(session, schema) if session else pl.lit(None, dtype=pl.Utf8),
    }


# ---------------------------------------------------------------------------------------------
# Checks: which rows are dropped by rule or rejected, and why


def _rule_check(rule: DropRule, schema: pl.Schema) -> Check:
    text = _text(rule.column, schema)
    if rule.when == "empty":
        failed = _blank(rule.column, schema)
    elif rule.when == "starts_with":
        failed = text.str.starts_with(str(rule.value))
    elif rule.when == "equals":
        failed = text == str(rule.value)
    else:
        failed = _number(rule.column, schema) <= float(rule.value or 0)
    return Check(rule.reason, rule.column, failed)


def _event_checks(mapping: EventMapping) -> list[Check]:
    if mapping.event is None:
        return []
    checks = [Check(Reason.EMPTY_EVENT_TYPE, mapping.event, _tmp(Columns.EVENT).is_null())]
    if mapping.unknown_event_types == "reject":
        known = sorted(mapping.known_event_types)
        checks.append(Check(Reason.UNKNOWN_EVENT_TYPE, mapping.event, ~_tmp(Columns.EVENT).is_in(known)))
    return checks


def _value_checks(optional: dict[str, str | None], schema: pl.Schema) -> list[Check]:
    """Quantity/price given but not a number."""
    checks = []
    for name, reason in ((Columns.QUANTITY, Reason.UNPARSEABLE_QUANTITY), (Columns.PRICE, Reason.UNPARSEABLE_PRICE)):
        column = optional[name]
        if column is not None:
            checks.append(Check(reason, column, ~_blank(column, schema) & _tmp(name).is_null()))
    return checks


def _checks(mapping: EventMapping, schema: pl.Schema) -> list[Check]:
    """All row checks in priority order: drop rules first (in mapping order), then contract checks."""
    return [
        *(_rule_check(rule, schema) for rule in mapping.drop),
        Check(Reason.EMPTY_USER_ID, mapping.user, _tmp(Columns.USER).is_null()),
        Check(Reason.EMPTY_ITEM_ID, mapping.item, _tmp(Columns.ITEM).is_null()),
        *_event_checks(mapping),
        Check(Reason.EMPTY_TIMESTAMP, mapping.time, _blank(mapping.time, schema)),
        Check(Reason.UNPARSEABLE_TIMESTAMP, mapping.time, _tmp(Columns.TIMESTAMP).is_null()),
        *_value_checks(_optional_columns(mapping, schema), schema),
    ]


def _tmp(name: str) -> pl.Expr:
    return pl.col(_TMP + name)


def _read(scan: pl.LazyFrame, mapping: EventMapping, schema: pl.Schema, source: Path) -> tuple[pl.DataFrame, pl.Schema]:
    """The source rows with their row numbers, and the schema knowing which mapped text is clean."""
    frame = _collect(scan.with_row_index(_ROW, offset=1), source)
    used = {*mapping.source_columns().values(), *(c for c in _optional_columns(mapping, schema).values() if c)}
    text = [c for c in schema if c in used and _is_text(schema[c])]
    return frame, _SourceSchema(schema, _clean_columns(frame, text))


def _plan(frame: pl.DataFrame, mapping: EventMapping, schema: pl.Schema, source: Path) -> pl.LazyFrame:
    """The lazy part: source columns as they are, plus the mapped columns."""
    mapped = {_TMP + name: expr for name, expr in _mapped(mapping, schema, source).items()}
    return frame.lazy().with_columns(**mapped)


def _with_times(frame: pl.DataFrame, mapping: EventMapping, schema: pl.Schema) -> pl.DataFrame:
    """Fill the contract timestamps of a text time column (typed ones were converted in the plan)."""
    if not _is_text(schema[mapping.time]):
        return frame
    text = frame.select(_text(mapping.time, schema)).to_series()
    return frame.with_columns(parse_times(text, mapping.time_formats).alias(_TMP + Columns.TIMESTAMP))


def _tag(frame: pl.DataFrame, mapping: EventMapping, schema: pl.Schema) -> pl.DataFrame:
    """Add each row's reason and faulty column (null when valid) and, for valid rows, a row hash."""
    checks = _checks(mapping, schema)
    failed = pl.any_horizontal(*(check.failed.fill_null(False) for check in checks))
    # Duplicates are looked for among valid rows only, by the hash of their mapped values. The mask
    # and the hashes come from one lazy select, so polars computes them side by side on the cores.
    row_hash = pl.struct(*(_tmp(c) for c in EVENT_SCHEMA)).hash()
    marks = frame.lazy().select(failed.alias(_REASON), row_hash.alias(_HASH)).collect()
    if not marks[_REASON].any():
        # All valid, the common case: no reason columns at all (see _has_reasons). Adding even constant
        # columns makes later with_columns calls materialise them: 10M rows cost a second.
        return frame.hstack([marks[_HASH]])
    reason, column = tag_expressions(checks)
    tagged = frame.with_columns(reason.alias(_REASON), column.alias(_COLUMN))
    return tagged.with_columns(pl.when(pl.col(_REASON).is_null()).then(marks[_HASH]).alias(_HASH))


def _has_reasons(frame: pl.DataFrame) -> bool:
    """False when :func:`_tag` found every row valid and so added no reason/column columns."""
    return _REASON in frame.columns


def _with_reasons(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with its reason/column columns, all null when :func:`_tag` left them out."""
    if _has_reasons(frame):
        return frame
    nothing = pl.lit(None, dtype=pl.Utf8)
    return frame.with_columns(nothing.alias(_REASON), nothing.alias(_COLUMN))


def _find_duplicates(frame: pl.DataFrame) -> pl.Series:
    """True where a valid row exactly repeats an earlier valid row (after mapping).

    Equal hashes only nominate candidates; the mapped values of candidates are then compared exactly,
    so a hash collision can never drop a row. Without any repeated hash this costs one unique count.
    """
    hashes = frame[_HASH]
    valid = hashes.drop_nulls()
    if valid.n_unique() == valid.len():
        return pl.repeat(False, frame.height, eager=True)
    keys = [_TMP + c for c in EVENT_SCHEMA]
    candidates = frame.filter(hashes.is_not_null() & hashes.is_duplicated()).select(_ROW, *keys)
    repeats = candidates.filter(~pl.struct(keys).is_first_distinct())[_ROW]
    return frame[_ROW].is_in(repeats.implode())


def _apply_duplicates(frame: pl.DataFrame, policy: Literal["reject", "keep"]) -> pl.DataFrame:
    """Reject duplicates (reason ``duplicate_row``, no single column at fault) or flag them as kept."""
    duplicate = _find_duplicates(frame)
    if not duplicate.any():
        return frame  # no _DUP column: nothing kept (see _report)
    if policy == "keep":
        return frame.with_columns(duplicate.alias(_DUP))
    frame = _with_reasons(frame)
    return frame.with_columns(
        pl.when(duplicate).then(pl.lit(Reason.DUPLICATE_ROW)).otherwise(pl.col(_REASON)).alias(_REASON),
        pl.when(duplicate).then(None).otherwise(pl.col(_COLUMN)).alias(_COLUMN),
        pl.repeat(False, frame.height, eager=True).alias(_DUP),
    )


# ---------------------------------------------------------------------------------------------
# Splitting, reporting, quarantine


def _split(frame: pl.DataFrame, schema: pl.Schema) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(valid events in contract form, quarantined rows with original values)."""
    # The mapped expressions already have the contract types (tests check it): a no-op cast still costs.
    contract = [_tmp(c).alias(c) for c in EVENT_SCHEMA]
    taken = {ROW, REASON, COLUMN}
    originals = [pl.col(name).cast(pl.Utf8).alias(f"source_{name}" if name in taken else name) for name in schema]
    quarantine = [pl.col(_ROW).cast(pl.Int64).alias(ROW), pl.col(_REASON).alias(REASON), pl.col(_COLUMN).alias(COLUMN)]
    if not _has_reasons(frame) or frame[_REASON].null_count() == frame.height:
        # All valid, the common case: take the mapped Series as they are. A `select` would rechunk
        # (copy) every column; building the frame from the Series copies nothing.
        events = pl.DataFrame([frame[_TMP + c].alias(c) for c in EVENT_SCHEMA])
        return events, _with_reasons(frame.head(0)).select(*quarantine, *originals)
    valid = frame[_REASON].is_null()
    return frame.filter(valid).select(contract), frame.filter(~valid).select(*quarantine, *originals)


def _check_time_format(frame: pl.DataFrame, quarantined: pl.DataFrame, mapping: EventMapping, source: Path) -> None:
    """No timestamp at all parsed: the format is wrong for this file, not the rows."""
    bad = quarantined.filter(pl.col(REASON) == Reason.UNPARSEABLE_TIMESTAMP)
    if bad.height and frame[_TMP + Columns.TIMESTAMP].is_not_null().sum() == 0:
        example = bad[mapping.time][0] if mapping.time in bad.columns else bad[f"source_{mapping.time}"][0]
        raise MappingError(
            f"time_format {mapping.time_format!r} parsed none of the timestamps in column '{mapping.time}' "
            f"of {source} (e.g. row {bad[ROW][0]}: {example!r}); set time_format in the mapping"
        )


def _distinct(column: str) -> pl.Expr:
    """Distinct ids, counted by 64-bit hash: about 5x faster than on strings, and exact unless two
    different ids share a hash (odds about n²/2⁶⁵: 3e-8 for a million ids). Only reports use it."""
    return pl.col(column).hash().n_unique()


def _summary(events: pl.DataFrame) -> tuple[dict[str, Any], pl.DataFrame]:
    """(distinct users/items and first/last time, event counts): one parallel pass over the columns."""
    lazy = events.lazy()
    stats, counts = pl.collect_all(
        [
            lazy.select(
                _distinct(Columns.USER).alias("users"),
                _distinct(Columns.ITEM).alias("items"),
                pl.col(Columns.TIMESTAMP).min().alias("min"),
                pl.col(Columns.TIMESTAMP).max().alias("max"),
            ),
            lazy.group_by(Columns.EVENT).len("count"),
        ]
    )
    return stats.row(0, named=True), counts.sort(["count", Columns.EVENT], descending=[True, False])


def _report(
    source: Path, frame: pl.DataFrame, events: pl.DataFrame, quarantined: pl.DataFrame, mapping: EventMapping
) -> ValidationReport:
    rules = {rule.reason for rule in mapping.drop}
    counts = count_reasons(quarantined)
    stats, event_counts = _summary(events)
    return ValidationReport(
        source=str(source),
        rows_read=frame.height,
        rows_valid=events.height,
        n_users=stats["users"],
        n_items=stats["items"],
        event_counts={str(k): int(v) for k, v in event_counts.iter_rows()},
        time_min=stats["min"],
        time_max=stats["max"],
        rejected=tuple(c for c in counts if c.reason not in rules),
        dropped=tuple(c for c in counts if c.reason in rules),
        duplicates_kept=int(frame[_DUP].sum()) if _DUP in frame.columns else 0,
    )


def _source_stem(source: Path) -> str:
    name = source.name
    for suffix in (".csv.gz", ".csv", ".parquet", ".pq"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return source.stem


def write_quarantine(quarantined: pl.DataFrame, directory: Path, source: Path) -> Path:
    """Write ``<directory>/<source-stem>-<utc timestamp>.parquet`` atomically; never overwrite a file."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{_source_stem(source)}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    path = _reserve(directory, stem)
    partial = path.with_name(f".{path.name}.partial")
    try:
        quarantined.write_parquet(partial)
        os.replace(partial, path)  # readers never see a half-written file
    except BaseException:
        path.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
        raise
    return path


def _reserve(directory: Path, stem: str) -> Path:
    """Create an empty ``stem[-n].parquet`` exclusively, so two runs in the same second never collide."""
    for n in range(1000):
        path = directory / (f"{stem}.parquet" if n == 0 else f"{stem}-{n}.parquet")
        try:
            path.touch(exist_ok=False)
        except FileExistsError:
            continue
        return path
    raise TailorDataError(f"too many quarantine files named {stem}-*.parquet in {directory}")


# ---------------------------------------------------------------------------------------------
# Public loaders


def load_events(
    path: str | Path,
    mapping: EventMapping | None = None,
    *,
    quarantine_dir: Path | None = None,
    strict: bool = False,
) -> LoadResult:
    """Load, map and validate events from a CSV/CSV.gz/Parquet file or a synthetic-store folder.

    ``mapping`` defaults to the native contract. Rows dropped by rule or rejected as invalid are
    counted in the report and, when ``quarantine_dir`` is given, written there as Parquet.
    ``strict=True`` raises :class:`DataValidationError` on any invalid row instead (drop rules are
    policy, not errors, and never raise).
    """
    source = resolve_source(path, EVENTS_FILE)
    explicit = mapping is not None and mapping != EventMapping()
    mapping = mapping or EventMapping()
    scan = scan_source(source)
    schema = _collect_schema(scan, source)
    require_columns(list(schema), mapping.source_columns(), str(source), explicit_mapping=explicit)
    frame, schema = _read(scan, mapping, schema, source)
    frame = _with_times(_collect(_plan(frame, mapping, schema, source), source), mapping, schema)
    frame = _apply_duplicates(_tag(frame, mapping, schema), mapping.duplicates)
    events, quarantined = _split(frame, schema)
    _check_time_format(frame, quarantined, mapping, source)
    report = _report(source, frame, events, quarantined, mapping)
    if strict and report.rejected:
        rules = {rule.reason for rule in mapping.drop}
        raise_if_invalid(quarantined.filter(~pl.col(REASON).is_in(sorted(rules))), str(source))
    written = None
    if quarantine_dir is not None and quarantined.height:
        written = write_quarantine(quarantined, quarantine_dir, source)
        report = replace(report, quarantine_path=str(written))
    return LoadResult(events, report, written, quarantined)


def _bool(column: str, schema: pl.Schema) -> pl.Expr:
    dtype = schema[column]
    if dtype == pl.Boolean:
        return pl.col(column)
    if dtype.is_numeric():
        return pl.col(column) != 0
    text = _text(column, schema).str.to_lowercase()
    return pl.when(text.is_in(_TRUE)).then(True).when(text.is_in(_FALSE)).then(False).otherwise(None)


def _open_table(path: str | Path, default_name: str, required: tuple[str, ...]) -> tuple[Path, pl.LazyFrame, pl.Schema]:
    """Resolve, scan and check the columns of a reference table (catalogue, users)."""
    source = resolve_source(path, default_name)
    scan = scan_source(source)
    schema = _collect_schema(scan, source)
    require_columns(list(schema), {c: c for c in required}, str(source), explicit_mapping=False)
    return source, scan, schema


def _load_table(source: Path, scan: pl.LazyFrame, typed: dict[str, pl.Expr], checks: list[Check]) -> pl.DataFrame:
    """Read a reference table, failing on any invalid row (no quarantine: it is small and curated)."""
    reason, column = tag_expressions(checks)
    frame = _collect(
        scan.with_row_index(_ROW, offset=1)
        .with_columns(reason.alias(_REASON), column.alias(_COLUMN))
        .with_columns(**typed),
        source,
    )
    tagged = frame.filter(pl.col(_REASON).is_not_null()).select(
        pl.col(_ROW).alias(ROW), pl.col(_REASON).alias(REASON), pl.col(_COLUMN).alias(COLUMN)
    )
    raise_if_invalid(tagged, str(source))
    body = frame.drop(_ROW, _REASON, _COLUMN)
    return body.select(*typed, *(c for c in body.columns if c not in typed))


def _id_checks(column: str, schema: pl.Schema) -> list[Check]:
    empty = Reason.EMPTY_USER_ID if column == Columns.USER else Reason.EMPTY_ITEM_ID
    return [
        Check(empty, column, _blank(column, schema)),
        Check(Reason.DUPLICATE_ID, column, ~_text(column, schema).is_first_distinct()),
    ]


def _unparseable(reason: str, column: str, typed: pl.Expr, schema: pl.Schema) -> Check:
    """A value is there but did not convert."""
    return Check(reason, column, ~_blank(column, schema) & typed.is_null())


def load_catalogue(path: str | Path) -> pl.DataFrame:
    """Load the catalogue: ``item_id, category, brand, price, available`` first, free attributes kept.

    Raises :class:`SchemaError` on missing columns, :class:`DataValidationError` on empty or
    duplicate item ids and unparseable prices/availability (naming columns and first rows).
    """
    source, scan, schema = _open_table(path, CATALOGUE_FILE, CATALOGUE_REQUIRED)
    typed = {
        Columns.ITEM: _text(Columns.ITEM, schema),
        Columns.CATEGORY: _text(Columns.CATEGORY, schema),
        Columns.BRAND: _text(Columns.BRAND, schema),
        Columns.PRICE: _number(Columns.PRICE, schema),
        Columns.AVAILABLE: _bool(Columns.AVAILABLE, schema),
    }
    checks = [
        *_id_checks(Columns.ITEM, schema),
        _unparseable(Reason.UNPARSEABLE_PRICE, Columns.PRICE, typed[Columns.PRICE], schema),
        _unparseable(Reason.UNPARSEABLE_AVAILABLE, Columns.AVAILABLE, typed[Columns.AVAILABLE], schema),
    ]
    return _load_table(source, scan, typed, checks)


def load_users(path: str | Path) -> pl.DataFrame:
    """Load users: ``user_id`` (+ ``segment``, ``region`` when present) first, other columns kept.

    Raises :class:`SchemaError` when ``user_id`` is missing, :class:`DataValidationError` on empty or
    duplicate user ids.
    """
    source, scan, schema = _open_table(path, USERS_FILE, USERS_REQUIRED)
    typed = {c: _text(c, schema) for c in (*USERS_REQUIRED, *USERS_OPTIONAL) if c in schema}
    return _load_table(source, scan, typed, _id_checks(Columns.USER, schema))


__all__ = [
    "CATALOGUE_FILE",
    "EVENTS_FILE",
    "EVENT_SCHEMA",
    "USERS_FILE",
    "LoadResult",
    "load_catalogue",
    "load_events",
    "load_users",
    "parse_times",
    "resolve_source",
    "scan_source",
    "write_quarantine",
]
