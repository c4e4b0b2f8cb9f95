"""Validation: each error case, the quarantine file, strict mode and the report.

Row numbers are 1-based data rows (the header is not counted), read off the tiny files below.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from features.columns import Columns
from features.errors import DataValidationError, MappingError, SchemaError
from features.loaders import load_events
from features.mapping import EventMapping, get_preset
from features.validation import ReasonCount, ValidationReport

HEADER = "user_id,item_id,event_type,timestamp\n"


def write(path: Path, body: str, header: str = HEADER) -> Path:
    path.write_text(header + body, encoding="utf-8")
    return path


def reasons(report: ValidationReport) -> dict[str, tuple[int, tuple[str, ...], tuple[int, ...]]]:
    return {c.reason: (c.count, c.columns, c.first_rows) for c in report.rejected}


def test_missing_column_names_it_the_file_and_present_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "u1,i1,2024-01-01\n", header="user_id,item_id,timestamp\n")
    quarantine = tmp_path / "q"
    with pytest.raises(SchemaError) as err:
        load_events(path, quarantine_dir=quarantine)
    message = str(err.value)
    assert "missing required column(s) 'event_type'" in message
    assert str(path) in message
    assert "Columns present: 'user_id', 'item_id', 'timestamp'" in message
    assert not quarantine.exists()  # nothing to quarantine


def test_unparseable_timestamps_name_column_and_rows(tmp_path: Path) -> None:
    body = "".join(f"u{i},i1,view,{'yesterday' if i in (3, 5) else '2024-01-01 10:00:00'}\n" for i in range(1, 8))
    result = load_events(write(tmp_path / "e.csv", body))
    assert result.report.rows_valid == 5
    assert reasons(result.report) == {"unparseable_timestamp": (2, ("timestamp",), (3, 5))}
    assert (
        result.report.rejected[0].message() == "unparseable_timestamp: 2 rows in column 'timestamp' (first rows: 3, 5)"
    )


def test_unknown_event_types_rejected_only_when_asked(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "u1,i1,view,2024-01-01\nu1,i2,wishlist,2024-01-01\nu2,i1,buy,2024-01-01\n")
    assert load_events(path).report.event_counts == {"view": 1, "wishlist": 1, "buy": 1}
    strict_types = EventMapping(unknown_event_types="reject", event_map={"buy": "purchase"})
    report = load_events(path, strict_types).report
    assert report.event_counts == {"view": 1, "purchase": 1}
    assert reasons(report) == {"unknown_event_type": (1, ("event_type",), (2,))}


def test_empty_ids_and_event_types(tmp_path: Path) -> None:
    body = "u1,i1,view,2024-01-01\n  ,i1,view,2024-01-01\nu2,,view,2024-01-01\nu3,i3,,2024-01-01\nu4,i4,view,\n"
    report = load_events(write(tmp_path / "e.csv", body)).report
    assert report.rows_valid == 1
    assert reasons(report) == {
        "empty_user_id": (1, ("user_id",), (2,)),
        "empty_item_id": (1, ("item_id",), (3,)),
        "empty_event_type": (1, ("event_type",), (4,)),
        "empty_timestamp": (1, ("timestamp",), (5,)),
    }


def test_first_failed_check_wins(tmp_path: Path) -> None:
    report = load_events(write(tmp_path / "e.csv", ",i1,view,garbage\n")).report
    assert reasons(report) == {"empty_user_id": (1, ("user_id",), (1,))}


def test_unparseable_quantity(tmp_path: Path) -> None:
    path = write(
        tmp_path / "e.csv",
        "u1,i1,view,2024-01-01,2\nu1,i2,view,2024-01-01,two\nu1,i3,view,2024-01-01,\n",
        header=HEADER.strip() + ",quantity\n",
    )
    result = load_events(path)
    assert reasons(result.report) == {"unparseable_quantity": (1, ("quantity",), (2,))}
    assert result.events[Columns.QUANTITY].to_list() == [2.0, None]  # blank is allowed: unknown quantity


DUPLICATES = "u1,i1,view,2024-01-01\nu1,i1,view,2024-01-01\nu1,i1,view,2024-01-02\nu1,i1,view,2024-01-01\n"


def test_duplicates_rejected_by_default_first_kept(tmp_path: Path) -> None:
    result = load_events(write(tmp_path / "e.csv", DUPLICATES))
    assert result.report.rows_valid == 2
    assert reasons(result.report) == {"duplicate_row": (2, (), (2, 4))}
    assert result.report.duplicates_kept == 0
    assert result.report.rejected[0].message() == "duplicate_row: 2 rows (first rows: 2, 4)"


def test_duplicates_kept_are_counted(tmp_path: Path) -> None:
    result = load_events(write(tmp_path / "e.csv", DUPLICATES), EventMapping(duplicates="keep"))
    assert result.report.rows_valid == 4
    assert result.report.rejected == ()
    assert result.report.duplicates_kept == 2


def test_duplicates_compare_mapped_values(tmp_path: Path) -> None:
    # Same instant written two ways, and padded ids: equal after mapping, so a duplicate.
    body = "u1,i1,view,2024-01-01 10:00:00\n u1 ,i1,view,2024-01-01T10:00:00\n"
    assert reasons(load_events(write(tmp_path / "e.csv", body)).report) == {"duplicate_row": (1, (), (2,))}


def test_invalid_rows_are_not_compared_for_duplicates(tmp_path: Path) -> None:
    body = ",i1,view,2024-01-01\n,i1,view,2024-01-01\n"
    assert reasons(load_events(write(tmp_path / "e.csv", body)).report) == {"empty_user_id": (2, ("user_id",), (1, 2))}


def test_quarantine_file_holds_rows_reasons_and_original_text(tmp_path: Path) -> None:
    body = "u1,i1,view,2024-01-01\nu2,i2,view,someday\n,i3,view,2024-01-02\nu1,i1,view,2024-01-01\n"
    result = load_events(write(tmp_path / "shop_events.csv", body), quarantine_dir=tmp_path / "q")
    assert result.quarantine_path is not None
    assert result.quarantine_path.parent == tmp_path / "q"
    assert re.fullmatch(r"shop_events-\d{8}T\d{6}Z\.parquet", result.quarantine_path.name)
    assert result.report.quarantine_path == str(result.quarantine_path)
    saved = pl.read_parquet(result.quarantine_path)
    assert saved.columns == ["row", "reason", "column", "user_id", "item_id", "event_type", "timestamp"]
    assert saved.rows() == [
        (2, "unparseable_timestamp", "timestamp", "u2", "i2", "view", "someday"),
        (3, "empty_user_id", "user_id", None, "i3", "view", "2024-01-02"),
        (4, "duplicate_row", None, "u1", "i1", "view", "2024-01-01"),
    ]


def test_quarantine_never_overwrites(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "u1,i1,view,2024-01-01\nu1,i1,view,bad\n")
    first = load_events(path, quarantine_dir=tmp_path / "q").quarantine_path
    second = load_events(path, quarantine_dir=tmp_path / "q").quarantine_path
    assert first is not None
    assert second is not None
    assert first != second
    assert first.exists()
    assert second.exists()


def test_quarantine_keeps_source_columns_named_like_its_own(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "u1,i1,view,2024-01-01,6\nu1,i1,view,bad,7\n", header=HEADER.strip() + ",row\n")
    saved = load_events(path).quarantined
    assert saved.columns == ["row", "reason", "column", "user_id", "item_id", "event_type", "timestamp", "source_row"]
    assert saved.rows() == [(2, "unparseable_timestamp", "timestamp", "u1", "i1", "view", "bad", "7")]


def test_strict_raises_instead_of_quarantining(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "u1,i1,view,2024-01-01\nu2,i1,view,nope\n,i1,view,2024-01-01\n")
    with pytest.raises(DataValidationError) as err:
        load_events(path, quarantine_dir=tmp_path / "q", strict=True)
    assert "unparseable_timestamp: 1 row in column 'timestamp' (first rows: 2)" in str(err.value)
    assert "empty_user_id: 1 row in column 'user_id' (first rows: 3)" in str(err.value)
    assert str(path) in str(err.value)
    assert not (tmp_path / "q").exists()


def test_strict_accepts_rows_dropped_by_rule(tmp_path: Path) -> None:
    header = "InvoiceNo,StockCode,Quantity,InvoiceDate,UnitPrice,CustomerID\n"
    body = "1,A,1,2010-12-01 08:26:00,1.0,17850.0\nC2,A,-1,2010-12-01 08:27:00,1.0,17850.0\n"
    result = load_events(write(tmp_path / "r.csv", body, header), get_preset("online-retail"), strict=True)
    assert result.report.rows_valid == 1
    assert result.report.rows_dropped == 1


def test_first_rows_are_capped_at_five() -> None:
    count = ReasonCount("empty_item_id", 7, ("sku",), (1, 2, 3, 4, 5))
    assert count.message() == "empty_item_id: 7 rows in column 'sku' (first rows: 1, 2, 3, 4, 5)"


def test_first_rows_in_report_are_the_first_five(tmp_path: Path) -> None:
    body = "".join(f"u{i},,view,2024-01-01\n" for i in range(1, 9))
    (count,) = load_events(write(tmp_path / "e.csv", body)).report.rejected
    assert (count.count, count.first_rows) == (8, (1, 2, 3, 4, 5))


def test_report_dict_render_and_messages(tmp_path: Path) -> None:
    body = "u1,i1,view,2024-01-01 09:00:00\nu2,i1,purchase,2024-01-03 18:00:00\nu2,,view,2024-01-02\n"
    report = load_events(write(tmp_path / "e.csv", body)).report
    data = json.loads(json.dumps(report.to_dict()))
    assert data["rows_read"] == 3
    assert data["rows_valid"] == 2
    assert (data["n_users"], data["n_items"]) == (2, 1)
    assert data["event_counts"] == {"view": 1, "purchase": 1}
    assert (data["time_min"], data["time_max"]) == ("2024-01-01T09:00:00", "2024-01-03T18:00:00")
    assert data["rejected"]["empty_item_id"]["first_rows"] == [3]
    assert data["rows_rejected"] == 1
    assert report.messages() == ["rejected as invalid: empty_item_id: 1 row in column 'item_id' (first rows: 3)"]
    assert report.render().row_count == 11
    assert (report.time_min, report.time_max) == (datetime(2024, 1, 1, 9), datetime(2024, 1, 3, 18))


def test_empty_file_loads_empty(tmp_path: Path) -> None:
    result = load_events(write(tmp_path / "e.csv", ""))
    assert result.events.height == 0
    assert result.report.time_min is None
    assert result.report.event_counts == {}


def test_mapping_error_raised_before_reading_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "u1,i1,view,2024-01-01\n")
    with pytest.raises(MappingError, match=r"key 'user' names column 'visitor'"):
        load_events(path, EventMapping(user="visitor"), quarantine_dir=tmp_path / "q")
    assert not (tmp_path / "q").exists()
