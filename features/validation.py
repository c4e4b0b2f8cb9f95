"""Row-level validation of mapped data, and the report of what was kept, dropped and rejected.

Problems are found with vectorised polars expressions (:class:`Check`): each row gets the reason of
the first check it fails, and the source column at fault. Two kinds of reasons:

- *dropped by rule*: store policy declared in the mapping (guest checkouts, cancellations);
- *rejected as invalid*: the row breaks the contract (:class:`Reason`).

Both are counted by reason with the first offending row numbers (1-based data rows, header
excluded) and both go to the quarantine file; nothing vanishes silently. Missing columns are a
:class:`~features.errors.SchemaError` (or :class:`~features.errors.MappingError` when an explicit
mapping names them) raised before any row is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Final

import polars as pl

from features.errors import DataValidationError, MappingError, SchemaError

if TYPE_CHECKING:
    from rich.table import Table

#: How many offending row numbers a report names per reason.
FIRST_ROWS: Final = 5

ROW: Final = "row"
REASON: Final = "reason"
COLUMN: Final = "column"


class Reason:
    """Reasons a row is rejected as invalid (drop-rule reasons come from the mapping)."""

    EMPTY_USER_ID: Final = "empty_user_id"
    EMPTY_ITEM_ID: Final = "empty_item_id"
    EMPTY_EVENT_TYPE: Final = "empty_event_type"
    UNKNOWN_EVENT_TYPE: Final = "unknown_event_type"
    EMPTY_TIMESTAMP: Final = "empty_timestamp"
    UNPARSEABLE_TIMESTAMP: Final = "unparseable_timestamp"
    UNPARSEABLE_QUANTITY: Final = "unparseable_quantity"
    UNPARSEABLE_PRICE: Final = "unparseable_price"
    UNPARSEABLE_AVAILABLE: Final = "unparseable_available"
    DUPLICATE_ROW: Final = "duplicate_row"
    DUPLICATE_ID: Final = "duplicate_id"


#: Every reason Tailor itself uses; drop rules must pick other names, so the two kinds never mix.
INVALID_REASONS: Final = frozenset(value for name, value in vars(Reason).items() if name.isupper())


@dataclass(frozen=True)
class Check:
    """A row fails this check where ``failed`` is true; ``column`` is the source column at fault."""

    reason: str
    column: str | None
    failed: pl.Expr


def tag_expressions(checks: Sequence[Check]) -> tuple[pl.Expr, pl.Expr]:
    """``(reason, column)`` expressions: the first failed check of each row, null when all pass."""
    if not checks:
        return pl.lit(None, dtype=pl.Utf8), pl.lit(None, dtype=pl.Utf8)
    reason: Any = pl
    column: Any = pl
    for check in checks:
        failed = check.failed.fill_null(False)
        reason = reason.when(failed).then(pl.lit(check.reason))
        column = column.when(failed).then(pl.lit(check.column, dtype=pl.Utf8))
    return (
        reason.otherwise(pl.lit(None, dtype=pl.Utf8)).alias(REASON),
        column.otherwise(pl.lit(None, dtype=pl.Utf8)).alias(COLUMN),
    )


@dataclass(frozen=True)
class ReasonCount:
    """How many rows failed for one reason, in which source column(s), and the first row numbers."""

    reason: str
    count: int
    columns: tuple[str, ...]
    first_rows: tuple[int, ...]

    def message(self) -> str:
        """E.g. ``unparseable_timestamp: 3 rows in column 'InvoiceDate' (first rows: 7, 19, 42)``."""
        noun = "row" if self.count == 1 else "rows"
        where = ""
        if self.columns:
            label = "column" if len(self.columns) == 1 else "columns"
            where = f" in {label} " + ", ".join(f"'{c}'" for c in self.columns)
        first = ", ".join(str(r) for r in self.first_rows)
        return f"{self.reason}: {self.count:,} {noun}{where} (first rows: {first})"


def count_reasons(tagged: pl.DataFrame) -> list[ReasonCount]:
    """Count the rows of ``tagged`` (columns ``row``, ``reason``, ``column``) by reason, largest first."""
    if tagged.is_empty():
        return []
    grouped = (
        tagged.group_by(REASON)
        .agg(
            pl.len().alias("count"),
            pl.col(COLUMN).drop_nulls().unique(maintain_order=True).alias("columns"),
            pl.col(ROW).sort().head(FIRST_ROWS).alias("first_rows"),
        )
        .sort(["count", REASON], descending=[True, False])
    )
    return [
        ReasonCount(r[REASON], int(r["count"]), tuple(r["columns"]), tuple(int(x) for x in r["first_rows"]))
        for r in grouped.iter_rows(named=True)
    ]


def raise_if_invalid(tagged: pl.DataFrame, what: str) -> None:
    """Raise :class:`DataValidationError` listing every reason in ``tagged``, if it has any row."""
    counts = count_reasons(tagged)
    if counts:
        lines = "\n".join(f"  {c.message()}" for c in counts)
        raise DataValidationError(f"{what} has invalid rows:\n{lines}")


def require_columns(present: Sequence[str], needed: Mapping[str, str], source: str, *, explicit_mapping: bool) -> None:
    """Fail before reading rows when a needed column is absent.

    ``needed`` maps a mapping key (or contract name) to the source column. With an explicit mapping
    the fault is the mapping's (:class:`MappingError` naming the key); otherwise the file's
    (:class:`SchemaError`).
    """
    missing = {key: col for key, col in needed.items() if col not in present}
    if not missing:
        return
    have = ", ".join(f"'{c}'" for c in present) or "(none)"
    if explicit_mapping:
        named = "; ".join(f"key '{key}' names column '{col}'" for key, col in missing.items())
        raise MappingError(f"mapping does not fit {source}: {named}, which is not in the file. Columns present: {have}")
    cols = ", ".join(f"'{c}'" for c in dict.fromkeys(missing.values()))
    raise SchemaError(f"{source} is missing required column(s) {cols}. Columns present: {have}")


@dataclass(frozen=True)
class ValidationReport:
    """What a load kept, dropped by rule and rejected as invalid. ``to_dict()`` is JSON-ready."""

    source: str
    rows_read: int
    rows_valid: int
    n_users: int
    n_items: int
    event_counts: dict[str, int]
    time_min: datetime | None
    time_max: datetime | None
    rejected: tuple[ReasonCount, ...] = ()
    dropped: tuple[ReasonCount, ...] = ()
    duplicates_kept: int = 0
    quarantine_path: str | None = None

    @property
    def rows_rejected(self) -> int:
        return sum(c.count for c in self.rejected)

    @property
    def rows_dropped(self) -> int:
        return sum(c.count for c in self.dropped)

    def messages(self) -> list[str]:
        """One line per reason, dropped-by-rule first, then rejected-as-invalid."""
        return [f"dropped by rule: {c.message()}" for c in self.dropped] + [
            f"rejected as invalid: {c.message()}" for c in self.rejected
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (times as ISO strings), for ``--json`` and MLflow."""
        data = asdict(self)
        data["time_min"] = self.time_min.isoformat() if self.time_min else None
        data["time_max"] = self.time_max.isoformat() if self.time_max else None
        data["rows_rejected"] = self.rows_rejected
        data["rows_dropped"] = self.rows_dropped
        for kind in ("rejected", "dropped"):
            data[kind] = {c["reason"]: c for c in data[kind]}
        return data

    def render(self) -> Table:
        """A two-column rich table of the summary (reason lines: :meth:`messages`)."""
        from rich.table import Table

        # The file name only: a long path would wrap the title; to_dict() keeps the full path.
        table = Table(title=f"Events in {PurePath(self.source).name}", show_header=False, title_justify="left")
        table.add_column("what", style="bold")
        table.add_column("value", justify="right")
        for label, value in self._summary_rows():
            table.add_row(label, value)
        return table

    def _summary_rows(self) -> Iterable[tuple[str, str]]:
        first, last = (f"{t:%Y-%m-%d %H:%M:%S}" if t else "-" for t in (self.time_min, self.time_max))
        yield "rows read", f"{self.rows_read:,}"
        yield "valid events", f"{self.rows_valid:,}"
        for event_type, count in self.event_counts.items():
            yield f"  {event_type}", f"{count:,}"
        yield "users", f"{self.n_users:,}"
        yield "items", f"{self.n_items:,}"
        yield "first event", first
        yield "last event", last
        yield "dropped by rule", f"{self.rows_dropped:,}"
        yield "rejected as invalid", f"{self.rows_rejected:,}"
        yield "duplicates kept", f"{self.duplicates_kept:,}"
