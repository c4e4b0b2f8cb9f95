"""Read back the events the service stored: the Redis stream ``tailor:events`` to a Parquet file.

``POST /v1/events`` appends each accepted event to the stream (capped at about
:data:`~service.contract.EVENT_STREAM_MAXLEN` entries, oldest trimmed first) before answering 202.
:func:`export_events` writes those entries in the native event contract (``user_id``, ``item_id``,
``event_type``, ``timestamp`` as naive UTC, ``quantity``, ``price``, ``session_id``) plus
``recommendation_id`` and the entry's ``stream_id``, so ``tailor data validate`` and ``tailor train
--data`` read the file as they read any store export.

An export writes what the stream held when it started; events that arrive meanwhile go to the next
one. Exports are incremental: ``after`` takes the last ``stream_id`` of the previous export, and only newer
entries are written. If the stream no longer holds that entry (it was trimmed), entries between it
and the oldest one left may be lost, and the summary says so.

The file is written beside its destination and moved into place once complete, so ``out`` never holds
a partial export, and an existing file is replaced only with ``overwrite=True`` (even one that appears
while the export runs).

Errors: :class:`EventExportError` for bad arguments or an entry that is not an event (naming the
entry); Redis errors propagate as ``redis.RedisError``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, cast

import polars as pl
import redis

from features.columns import Columns
from features.loaders import EVENT_SCHEMA, PARQUET_SUFFIXES
from service.contract import EVENT_STREAM_MAXLEN, Keys

BATCH: Final = 10_000
"""Entries fetched per ``XRANGE`` call."""
RECOMMENDATION_ID: Final = "recommendation_id"
STREAM_ID: Final = "stream_id"
_STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?", re.ASCII)
_MAX_ID_PART: Final = 2**64 - 1
_TEXT: Final = (Columns.USER, Columns.ITEM, Columns.EVENT, Columns.SESSION, RECOMMENDATION_ID)
_NUMBERS: Final = (Columns.QUANTITY, Columns.PRICE)
SCHEMA: Final = pl.Schema({**EVENT_SCHEMA, RECOMMENDATION_ID: pl.Utf8(), STREAM_ID: pl.Utf8()})
"""The export's columns: the loaded events' (:data:`features.loaders.EVENT_SCHEMA`), then the stream's own."""


class EventExportError(ValueError):
    """The export cannot run as asked (bad ``after``, destination exists) or met an entry that is not an event."""


@dataclass(frozen=True)
class ExportSummary:
    """What one export wrote."""

    path: Path
    events: int
    first_id: str | None
    last_id: str | None
    """The ``after`` of the next export (``None`` when nothing was written: reuse this export's ``after``)."""
    start: datetime | None
    end: datetime | None
    gap: str | None
    """Why events may be missing between ``after`` and the first entry written, or ``None``."""


def export_events(
    client: redis.Redis, out: Path, *, after: str | None = None, overwrite: bool = False, batch: int = BATCH
) -> ExportSummary:
    """Write the stream's entries after ``after`` (all it holds when ``None``) to the Parquet file ``out``."""
    if after is not None and _id_key(after) is None:
        raise EventExportError(
            f"--after {after!r} is not a stream id: give the last stream_id of an export, e.g. 1732353961234-0"
        )
    if out.suffix.lower() not in PARQUET_SUFFIXES:
        raise EventExportError(f"{out}: the export is Parquet, so its name must end in {' or '.join(PARQUET_SUFFIXES)}")
    if out.is_dir():
        raise EventExportError(f"{out} is a folder: give the path of the Parquet file to write")
    if out.exists() and not overwrite:
        raise _exists(out)
    if not out.parent.is_dir():
        raise EventExportError(f"{out.parent} is not a folder")
    columns: dict[str, list[object]] = {name: [] for name in SCHEMA.names()}
    low = "-" if after is None else f"({after}"
    newest = cast(list[tuple[bytes, object]], client.xrevrange(Keys.EVENTS, count=1))
    high = newest[0][0].decode() if newest else "-"  # what the stream held at the start: events keep arriving
    while entries := _entries(client, low, high, batch):
        for entry_id, fields in entries:
            _append(columns, entry_id, fields)
        low = f"({entries[-1][0]}"
    frame = pl.DataFrame(columns, schema=SCHEMA)
    # Checked after reading: trimming only removes the oldest entries, so if ``after`` is still there,
    # nothing after it was trimmed before it was read.
    gap = _gap(client, after)
    _write(frame, out, overwrite)
    ids, times = frame[STREAM_ID], frame[Columns.TIMESTAMP]
    return ExportSummary(
        path=out,
        events=frame.height,
        first_id=ids[0] if frame.height else None,
        last_id=ids[-1] if frame.height else None,
        start=times.min() if frame.height else None,  # type: ignore[arg-type]
        end=times.max() if frame.height else None,  # type: ignore[arg-type]
        gap=gap,
    )


def _gap(client: redis.Redis, after: str | None) -> str | None:
    """Whether entries right after ``after`` may have been trimmed (the stream no longer holds ``after``)."""
    if after is None:
        return None
    oldest = _entries(client, "-", "+", 1)
    if not oldest:
        return None
    oldest_id = oldest[0][0]
    oldest_key, after_key = _id_key(oldest_id), _id_key(after)
    if oldest_key is None or after_key is None or oldest_key <= after_key:
        return None
    return (
        f"the stream no longer holds {after} (its oldest entry is {oldest_id}): events after {after} and "
        f"before {oldest_id} may have been trimmed (the stream keeps about the last {EVENT_STREAM_MAXLEN:,}); "
        "export more often"
    )


def _entries(client: redis.Redis, low: str, high: str, count: int) -> list[tuple[str, dict[bytes, bytes]]]:
    """Up to ``count`` stream entries from ``low`` to ``high`` (``(ID`` excludes ID), ids decoded."""
    found = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(Keys.EVENTS, min=low, max=high, count=count))
    return [(entry_id.decode(), fields) for entry_id, fields in found]


def _id_key(text: str) -> tuple[int, int] | None:
    """``MILLIS`` or ``MILLIS-SEQ`` as a sortable pair, or ``None`` unless both parts are ASCII digits
    within 64 bits (what Redis accepts)."""
    match = _STREAM_ID.fullmatch(text)
    if match is None:
        return None
    millis, seq = (int(part) for part in match.groups("0"))
    return (millis, seq) if max(millis, seq) <= _MAX_ID_PART else None


def _exists(out: Path) -> EventExportError:
    return EventExportError(f"{out} exists: give another path, or --overwrite to replace it")


def _append(columns: dict[str, list[object]], entry_id: str, raw: dict[bytes, bytes]) -> None:
    """Add one stream entry to ``columns``, or raise naming the entry and the field that is wrong."""
    where = f"stream entry {entry_id} of {Keys.EVENTS}"
    try:
        fields = {key.decode(): value.decode() for key, value in raw.items()}
    except UnicodeDecodeError as exc:
        raise EventExportError(f"{where} is not UTF-8: {exc}") from exc
    for name in (Columns.USER, Columns.ITEM, Columns.EVENT, Columns.TIMESTAMP):
        if not fields.get(name):
            raise EventExportError(f"{where} has no {name}: {fields}")
    try:
        stamp = datetime.fromisoformat(fields[Columns.TIMESTAMP])
    except ValueError as exc:
        raise EventExportError(f"{where}: timestamp {fields[Columns.TIMESTAMP]!r} is not valid: {exc}") from exc
    stamp = stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
    columns[Columns.TIMESTAMP].append(stamp.replace(tzinfo=None))
    for name in _NUMBERS:  # an error abandons the whole export, so columns never go out of step
        text = fields.get(name) or None
        try:
            columns[name].append(None if text is None else float(text))
        except ValueError as exc:
            raise EventExportError(f"{where}: {name} {text!r} is not a number") from exc
    for name in _TEXT:
        columns[name].append(fields.get(name) or None)  # an empty optional field is absent
    columns[STREAM_ID].append(entry_id)


def _write(frame: pl.DataFrame, out: Path, overwrite: bool) -> None:
    """Write ``frame`` beside ``out``, flushed to disk, then move it into place: renamed over ``out`` when
    ``overwrite``, else hard-linked, which fails if a file appeared at ``out`` meanwhile."""
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        frame.write_parquet(partial)
        with partial.open("rb") as written:
            os.fsync(written.fileno())
        if overwrite:
            partial.replace(out)
        else:
            try:
                os.link(partial, out)
            except FileExistsError:
                raise _exists(out) from None
    finally:
        partial.unlink(missing_ok=True)
