"""``tailor data validate`` / ``tailor data synth`` through typer's CliRunner, on tiny files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from features.loaders import load_catalogue, load_users
from tailor_cli import app

NATIVE_CSV = """user_id,item_id,event_type,timestamp
u1,i1,view,2024-01-01 10:00:00
u1,i2,purchase,2024-01-02 11:30:00
u2,i1,view,someday
u2,i1,view,2024-01-03 08:00:00
"""

RETAILROCKET_CSV = """timestamp,visitorid,event,itemid,transactionid
1433221332117,257597,view,355908,
1433221999827,111016,addtocart,318965,
1433222147345,111016,transaction,318965,4000
"""

ONLINE_RETAIL_CSV = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom
536366,22633,HAND WARMER,6,12/1/2010 8:28,1.85,13047.0,United Kingdom
536367,84879,BIRD ORNAMENT,32,2010-12-01 08:34:00,1.69,,United Kingdom
C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def run(home: Path, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stdout+stderr) of ``tailor ARGS`` with TAILOR_HOME=home."""
    result = CliRunner().invoke(app, list(args), env={"TAILOR_HOME": str(home), "COLUMNS": "200"})
    return result.exit_code, result.stdout, result.output


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_validate_prints_counts_and_quarantines_under_home(tmp_path: Path, home: Path) -> None:
    code, _, output = run(home, "data", "validate", str(write(tmp_path / "events.csv", NATIVE_CSV)))
    assert code == 0, output
    for label, value in (("rows read", 4), ("valid events", 3), ("users", 2), ("items", 2), ("view", 2)):
        assert re.search(rf"{label}\W+{value}\b", output), label
    assert "rejected as invalid: unparseable_timestamp: 1 row in column 'timestamp' (first rows: 3)" in output
    files = list((home / "quarantine").glob("events-*.parquet"))
    assert len(files) == 1
    assert pl.read_parquet(files[0])["row"].to_list() == [3]
    assert str(files[0].resolve()) in output


def test_validate_json_report(tmp_path: Path, home: Path) -> None:
    path = write(tmp_path / "events.csv", NATIVE_CSV)
    code, stdout, _ = run(home, "data", "validate", str(path), "--json", "--quarantine-dir", str(tmp_path / "q"))
    assert code == 0
    report = json.loads(stdout)
    assert (report["rows_read"], report["rows_valid"], report["n_users"], report["n_items"]) == (4, 3, 2, 2)
    assert report["event_counts"] == {"view": 2, "purchase": 1}
    assert report["rejected"]["unparseable_timestamp"]["first_rows"] == [3]
    assert Path(report["quarantine_path"]).parent == (tmp_path / "q").resolve()


def test_validate_with_mapping_options(tmp_path: Path, home: Path) -> None:
    path = write(tmp_path / "rr.csv", RETAILROCKET_CSV)
    args = ["--user-col", "visitorid", "--item-col", "itemid", "--time-col", "timestamp", "--event-col", "event"]
    args += ["--event-map", "addtocart=add_to_cart,transaction=purchase", "--time-format", "epoch_ms", "--json"]
    code, stdout, output = run(home, "data", "validate", str(path), *args)
    assert code == 0, output
    report = json.loads(stdout)
    assert report["event_counts"] == {"view": 1, "add_to_cart": 1, "purchase": 1}
    assert report["time_min"] == "2015-06-02T05:02:12.117000"


def test_validate_with_preset(tmp_path: Path, home: Path) -> None:
    path = write(tmp_path / "online_retail.csv", ONLINE_RETAIL_CSV)
    code, _, output = run(home, "data", "validate", str(path), "--preset", "online-retail")
    assert code == 0, output
    assert "dropped by rule: guest_no_customer_id: 1 row in column 'CustomerID' (first rows: 3)" in output
    assert "dropped by rule: cancellation: 1 row in column 'InvoiceNo' (first rows: 4)" in output
    assert "purchase" in output


def test_validate_with_mapping_file_and_constant_event_override(tmp_path: Path, home: Path) -> None:
    mapping = write(tmp_path / "m.toml", 'user = "visitorid"\nitem = "itemid"\ntime_format = "epoch_ms"\n')
    path = write(tmp_path / "rr.csv", RETAILROCKET_CSV)
    code, stdout, output = run(
        home, "data", "validate", str(path), "--mapping", str(mapping), "--constant-event", "view", "--json"
    )
    assert code == 0, output
    assert json.loads(stdout)["event_counts"] == {"view": 3}


def test_bad_mapping_file_exits_2_with_message(tmp_path: Path, home: Path) -> None:
    mapping = write(tmp_path / "m.toml", 'user = "visitorid"\nitme = "itemid"\n')
    code, _, output = run(
        home, "data", "validate", str(write(tmp_path / "e.csv", NATIVE_CSV)), "--mapping", str(mapping)
    )
    assert code == 2
    assert "itme: unknown key" in output
    assert "m.toml" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user-col", "visitor"], "key 'user' names column 'visitor'"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--event-map", "addtocart"], "--event-map: 'addtocart' is not SOURCE=TYPE"),
        (["--time-format", "epoch_minutes"], "unknown time format 'epoch_minutes'"),
        (["--preset", "tailor", "--mapping", "x.toml"], "give --preset or --mapping, not both"),
    ],
)
def test_mapping_problems_exit_2(tmp_path: Path, home: Path, args: list[str], message: str) -> None:
    code, _, output = run(home, "data", "validate", str(write(tmp_path / "e.csv", NATIVE_CSV)), *args)
    assert code == 2
    assert message in output


def test_missing_column_and_missing_file_exit_2(tmp_path: Path, home: Path) -> None:
    path = write(tmp_path / "e.csv", "user_id,item_id,timestamp\nu1,i1,2024-01-01\n")
    code, _, output = run(home, "data", "validate", str(path))
    assert code == 2
    assert "missing required column(s) 'event_type'" in output
    code, _, output = run(home, "data", "validate", str(tmp_path / "absent.csv"))
    assert code == 2
    assert "file not found" in output


def test_strict_exits_1_and_writes_nothing(tmp_path: Path, home: Path) -> None:
    code, _, output = run(home, "data", "validate", str(write(tmp_path / "e.csv", NATIVE_CSV)), "--strict")
    assert code == 1
    assert "unparseable_timestamp: 1 row in column 'timestamp' (first rows: 3)" in output
    assert not (home / "quarantine").exists()


def test_synth_writes_a_store_that_validates(tmp_path: Path, home: Path) -> None:
    out = tmp_path / "store"
    args = ["--users", "30", "--items", "24", "--days", "7", "--seed", "1", "--out", str(out)]
    code, _, output = run(home, "data", "synth", *args)
    assert code == 0, output
    assert "events.parquet" in output
    assert (out / "catalogue.parquet").exists()
    code, stdout, output = run(home, "data", "validate", str(out), "--json")
    assert code == 0, output
    assert json.loads(stdout)["rows_valid"] == pl.read_parquet(out / "events.parquet").height
    assert load_catalogue(out).height == 24
    assert load_users(out).height == 30


def test_synth_bad_settings_exit_2(tmp_path: Path, home: Path) -> None:
    code, _, output = run(home, "data", "synth", "--users", "0", "--out", str(tmp_path / "s"))
    assert code == 2
    assert "--users" in output
