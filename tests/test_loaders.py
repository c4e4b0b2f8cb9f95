"""Loaders: each format, mappings (files, options, presets) and the catalogue/users contracts.

Every expected value below is read off the tiny hand-written files.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from features.columns import Columns
from features.errors import DataValidationError, MappingError, SchemaError, TailorDataError
from features.loaders import EVENT_SCHEMA, load_catalogue, load_events, load_users
from features.mapping import PRESETS, EventMapping, get_preset, load_mapping, parse_event_map, with_overrides

NATIVE_CSV = """user_id,item_id,event_type,timestamp
u1,i1,view,2024-01-01 10:00:00
u1,i2,purchase,2024-01-02T11:30:00
u2,i1,add_to_cart,2024-01-03
"""

ONLINE_RETAIL_CSV = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom
536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom
536366,22633,HAND WARMER,6,12/1/2010 8:28,1.85,13047.0,United Kingdom
536367,84879,BIRD ORNAMENT,32,2010-12-01 08:34:00,1.69,,United Kingdom
C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom
536380,22961,JAM MAKING SET,-2,2010-12-01 09:45:00,1.45,14527.0,United Kingdom
C536381,22962,JAR,-1,2010-12-01 09:46:00,1.45,,United Kingdom
536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom
"""

RETAILROCKET_CSV = """timestamp,visitorid,event,itemid,transactionid
1433221332117,257597,view,355908,
1433224214164,992329,view,248676,
1433221999827,111016,addtocart,318965,
1433222147345,111016,transaction,318965,4000
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def ms(value: int) -> datetime:
    """Epoch milliseconds → naive UTC datetime, computed with the standard library."""
    return datetime(1970, 1, 1) + timedelta(milliseconds=value)


def rows(frame: pl.DataFrame, *columns: str) -> list[tuple[object, ...]]:
    return frame.select(columns).rows()


# ---- formats ----


def test_native_csv_gives_contract_columns_and_types(tmp_path: Path) -> None:
    result = load_events(write(tmp_path / "events.csv", NATIVE_CSV))
    assert result.events.schema == pl.Schema(EVENT_SCHEMA)
    assert rows(result.events, Columns.USER, Columns.ITEM, Columns.EVENT, Columns.TIMESTAMP) == [
        ("u1", "i1", "view", datetime(2024, 1, 1, 10)),
        ("u1", "i2", "purchase", datetime(2024, 1, 2, 11, 30)),
        ("u2", "i1", "add_to_cart", datetime(2024, 1, 3)),
    ]
    assert result.events[Columns.QUANTITY].null_count() == 3  # not in the file
    assert result.quarantine_path is None
    assert result.quarantined.height == 0


def test_gzipped_csv_loads_like_plain_csv(tmp_path: Path) -> None:
    plain = load_events(write(tmp_path / "events.csv", NATIVE_CSV)).events
    gz_path = tmp_path / "events.csv.gz"
    gz_path.write_bytes(gzip.compress(NATIVE_CSV.encode()))
    assert load_events(gz_path).events.equals(plain)


def test_parquet_with_typed_columns_and_pq_extension(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "user_id": [17850, 13047],  # integer ids become strings
            "item_id": ["i1", "i2"],
            "event_type": ["view", "purchase"],
            "timestamp": [datetime(2024, 1, 1, 12, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)],
            "price": [1.5, 2.0],
        }
    ).with_columns(pl.col("timestamp").dt.convert_time_zone("Europe/Paris"))
    frame.write_parquet(tmp_path / "events.pq")
    events = load_events(tmp_path / "events.pq").events
    assert events.schema == pl.Schema(EVENT_SCHEMA)
    # Paris times convert back to the same instants, as naive UTC.
    assert rows(events, Columns.USER, Columns.TIMESTAMP, Columns.PRICE) == [
        ("17850", datetime(2024, 1, 1, 12), 1.5),
        ("13047", datetime(2024, 1, 2), 2.0),
    ]


def test_parquet_text_is_trimmed_only_where_needed_with_the_same_result(tmp_path: Path) -> None:
    # user_id is clean (used as it is); item_id and event_type need trimming (a no-break space is
    # whitespace too); a blank item is rejected like a missing one; row 4 repeats row 1 once trimmed.
    day = datetime(2024, 1, 1)
    pl.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u1"],
            "item_id": [" i1", "i2 ", "  ", "i1"],
            "event_type": ["view", "\u00a0purchase", "view", "view\t"],
            "timestamp": [day, day, day, day],
        }
    ).write_parquet(tmp_path / "events.parquet")
    result = load_events(tmp_path / "events.parquet")
    assert rows(result.events, Columns.USER, Columns.ITEM, Columns.EVENT) == [
        ("u1", "i1", "view"),
        ("u2", "i2", "purchase"),
    ]
    assert result.quarantined.select("row", "reason", "item_id").rows() == [
        (3, "empty_item_id", "  "),
        (4, "duplicate_row", "i1"),
    ]


def test_folder_with_events_parquet(tmp_path: Path) -> None:
    load_events(write(tmp_path / "e.csv", NATIVE_CSV)).events.write_parquet(tmp_path / "events.parquet")
    result = load_events(tmp_path)
    assert result.report.rows_valid == 3
    assert result.report.event_counts == {"view": 1, "purchase": 1, "add_to_cart": 1}


def test_missing_file_and_folder_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        load_events(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match=r"has no events\.parquet"):
        load_events(tmp_path)


def test_unsupported_extension(tmp_path: Path) -> None:
    with pytest.raises(TailorDataError, match=r"unsupported file type"):
        load_events(write(tmp_path / "events.txt", NATIVE_CSV))


def test_ids_are_read_as_text(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "user_id,item_id,event_type,timestamp\n007, 0042 ,view,2024-01-01\n")
    assert rows(load_events(path).events, Columns.USER, Columns.ITEM) == [("007", "0042")]


# ---- time formats ----


@pytest.mark.parametrize(
    ("time_format", "value", "expected"),
    [
        ("epoch_s", "1700000000", datetime(2023, 11, 14, 22, 13, 20)),
        ("epoch_s", "1700000000.5", datetime(2023, 11, 14, 22, 13, 20, 500000)),
        ("epoch_ms", "1433221332117", ms(1433221332117)),
        ("iso", "2024-03-01T12:00:00Z", datetime(2024, 3, 1, 12)),
        ("iso", "2024-03-01T12:00:00+02:00", datetime(2024, 3, 1, 10)),
        ("iso", "2024-03-01 12:00:00.250", datetime(2024, 3, 1, 12, 0, 0, 250000)),
        ("%d/%m/%Y %H:%M", "31/01/2024 09:05", datetime(2024, 1, 31, 9, 5)),
    ],
)
def test_time_formats(tmp_path: Path, time_format: str, value: str, expected: datetime) -> None:
    path = write(tmp_path / "e.csv", f"user_id,item_id,event_type,timestamp\nu,i,view,{value}\n")
    events = load_events(path, EventMapping(time_format=time_format)).events
    assert events[Columns.TIMESTAMP].to_list() == [expected]


def test_mixed_iso_and_pattern_fallbacks_in_one_column(tmp_path: Path) -> None:
    values = ["2024-01-01T10:00:00", "2024-01-01 11:00:00.5", "2024-01-02", "2024-01-01T10:00:00+01:00"]
    values.append("1/2/2024 8:05")
    body = "".join(f"u,i{n},view,{value}\n" for n, value in enumerate(values))
    path = write(tmp_path / "e.csv", "user_id,item_id,event_type,timestamp\n" + body)
    events = load_events(path, EventMapping(time_format=("iso", "%m/%d/%Y %H:%M"))).events
    assert events[Columns.TIMESTAMP].to_list() == [
        datetime(2024, 1, 1, 10),
        datetime(2024, 1, 1, 11, 0, 0, 500000),
        datetime(2024, 1, 2),
        datetime(2024, 1, 1, 9),
        datetime(2024, 1, 2, 8, 5),
    ]


def test_numeric_time_column_needs_an_epoch_format(tmp_path: Path) -> None:
    pl.DataFrame({"user_id": ["u"], "item_id": ["i"], "event_type": ["view"], "timestamp": [1700000000]}).write_parquet(
        tmp_path / "e.parquet"
    )
    with pytest.raises(MappingError, match=r"'timestamp'.*type Int64.*need epoch_s or epoch_ms"):
        load_events(tmp_path / "e.parquet", EventMapping(time_format="iso"))
    events = load_events(tmp_path / "e.parquet", EventMapping(time_format="epoch_s")).events
    assert events[Columns.TIMESTAMP].to_list() == [datetime(2023, 11, 14, 22, 13, 20)]


def test_format_that_parses_nothing_is_a_mapping_error(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", NATIVE_CSV)
    with pytest.raises(MappingError, match=r"parsed none of the timestamps in column 'timestamp'.*row 1"):
        load_events(path, EventMapping(time_format="%d.%m.%Y"))


# ---- mapping files and options ----

RETAILROCKET_TOML = """
user = "visitorid"
item = "itemid"
time = "timestamp"
event = "event"
time_format = "epoch_ms"
event_map = { addtocart = "add_to_cart", transaction = "purchase" }
"""


def test_toml_mapping_file(tmp_path: Path) -> None:
    mapping = load_mapping(write(tmp_path / "rr.toml", RETAILROCKET_TOML))
    assert mapping == get_preset("retailrocket")
    events = load_events(write(tmp_path / "events.csv", RETAILROCKET_CSV), mapping).events
    assert rows(events, Columns.USER, Columns.ITEM, Columns.EVENT, Columns.TIMESTAMP) == [
        ("257597", "355908", "view", ms(1433221332117)),
        ("992329", "248676", "view", ms(1433224214164)),
        ("111016", "318965", "add_to_cart", ms(1433221999827)),
        ("111016", "318965", "purchase", ms(1433222147345)),
    ]


def test_json_mapping_file_with_drop_rule(tmp_path: Path) -> None:
    data = {
        "user": "visitor",
        "item": "sku",
        "time": "ts",
        "constant_event": "purchase",
        "drop": [{"reason": "test_account", "column": "visitor", "when": "starts_with", "value": "test"}],
    }
    mapping = load_mapping(write(tmp_path / "m.json", json.dumps(data)))
    path = write(tmp_path / "e.csv", "visitor,sku,ts\nv1,s1,2024-01-01\ntest-9,s2,2024-01-02\n")
    result = load_events(path, mapping)
    assert rows(result.events, Columns.USER, Columns.EVENT) == [("v1", "purchase")]
    assert [(c.reason, c.count, c.first_rows) for c in result.report.dropped] == [("test_account", 1, (2,))]


def test_mapping_file_errors_name_key_and_file(tmp_path: Path) -> None:
    bad_key = write(tmp_path / "bad.toml", 'user = "a"\nusr = "b"\n')
    with pytest.raises(MappingError, match=r"bad\.toml[\s\S]*usr: unknown key"):
        load_mapping(bad_key)
    bad_format = write(tmp_path / "fmt.toml", 'time_format = "epoch_minutes"\n')
    with pytest.raises(MappingError, match=r"fmt\.toml[\s\S]*time_format: unknown time format 'epoch_minutes'"):
        load_mapping(bad_format)
    both = write(tmp_path / "both.toml", 'event = "e"\nconstant_event = "purchase"\n')
    with pytest.raises(MappingError, match=r"either 'event'.*or 'constant_event'"):
        load_mapping(both)
    reserved = write(tmp_path / "r.toml", '[[drop]]\nreason = "empty_user_id"\ncolumn = "u"\nwhen = "empty"\n')
    with pytest.raises(MappingError, match=r"drop\.0\.reason: 'empty_user_id' is a validation reason"):
        load_mapping(reserved)
    with pytest.raises(MappingError, match=r"cannot parse mapping file"):
        load_mapping(write(tmp_path / "broken.toml", "user = \n"))
    with pytest.raises(MappingError, match=r"not found"):
        load_mapping(tmp_path / "absent.toml")


def test_mapping_naming_absent_column_names_key_column_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", RETAILROCKET_CSV)
    mapping = get_preset("retailrocket").model_copy(update={"item": "item_id"})
    with pytest.raises(MappingError) as err:
        load_events(path, mapping)
    message = str(err.value)
    assert "key 'item' names column 'item_id'" in message
    assert "events.csv" in message
    assert "'visitorid'" in message  # the columns that are present


def test_cli_style_overrides(tmp_path: Path) -> None:
    mapping = with_overrides(
        EventMapping(),
        {
            "user": "visitorid",
            "item": "itemid",
            "event": "event",
            "event_map": parse_event_map("addtocart=add_to_cart, transaction=purchase"),
            "time_format": "epoch_ms",
            "price": None,  # unset options leave the base alone
        },
    )
    assert mapping == get_preset("retailrocket")
    purchase_only = with_overrides(mapping, {"constant_event": "purchase"})
    assert (purchase_only.event, purchase_only.constant_event, purchase_only.event_map) == (None, "purchase", {})


def test_parse_event_map_rejects_pairs_without_equals() -> None:
    with pytest.raises(MappingError, match=r"--event-map: 'addtocart' is not SOURCE=TYPE"):
        parse_event_map("addtocart,transaction=purchase")


def test_unknown_preset_lists_names() -> None:
    with pytest.raises(MappingError, match=r"unknown preset 'shopify'; presets: online-retail, retailrocket, tailor"):
        get_preset("shopify")
    assert set(PRESETS) == {"tailor", "retailrocket", "online-retail"}


def test_other_event_types_are_kept_by_default(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "user_id,item_id,event_type,timestamp\nu,i,wishlist,2024-01-01\n")
    assert load_events(path).report.event_counts == {"wishlist": 1}


# ---- presets on files in the real formats ----


def test_retailrocket_preset(tmp_path: Path) -> None:
    result = load_events(write(tmp_path / "events.csv", RETAILROCKET_CSV), get_preset("retailrocket"))
    report = result.report
    assert result.events.schema == pl.Schema(EVENT_SCHEMA)
    assert (report.rows_read, report.rows_valid, report.n_users, report.n_items) == (4, 4, 3, 3)
    assert report.event_counts == {"view": 2, "add_to_cart": 1, "purchase": 1}
    assert (report.time_min, report.time_max) == (ms(1433221332117), ms(1433224214164))


def test_online_retail_preset(tmp_path: Path) -> None:
    result = load_events(write(tmp_path / "online_retail.csv", ONLINE_RETAIL_CSV), get_preset("online-retail"))
    report = result.report
    assert result.events.schema == pl.Schema(EVENT_SCHEMA)
    assert (report.rows_read, report.rows_valid, report.n_users, report.n_items) == (8, 4, 2, 3)
    assert report.event_counts == {"purchase": 4}
    assert report.duplicates_kept == 1  # row 8 repeats row 1: a real second line, kept
    assert report.rejected == ()
    assert [(c.reason, c.count, c.columns, c.first_rows) for c in report.dropped] == [
        ("cancellation", 2, ("InvoiceNo", "Quantity"), (5, 6)),
        ("guest_no_customer_id", 2, ("CustomerID",), (4, 7)),  # row 7 is also a cancellation: guest wins
    ]
    assert rows(result.events, Columns.USER, Columns.ITEM, Columns.TIMESTAMP, Columns.QUANTITY, Columns.PRICE) == [
        ("17850", "85123A", datetime(2010, 12, 1, 8, 26), 6.0, 2.55),
        ("17850", "71053", datetime(2010, 12, 1, 8, 26), 6.0, 3.39),
        ("13047", "22633", datetime(2010, 12, 1, 8, 28), 6.0, 1.85),  # "12/1/2010 8:28"
        ("17850", "85123A", datetime(2010, 12, 1, 8, 26), 6.0, 2.55),
    ]
    assert result.events[Columns.SESSION].to_list() == ["536365", "536365", "536366", "536365"]


def test_tailor_preset_is_the_native_contract(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", NATIVE_CSV)
    assert load_events(path, get_preset("tailor")).events.equals(load_events(path).events)


# ---- catalogue and users ----

CATALOGUE_CSV = """item_id,category,brand,price,available,colour
i1,shoes,acme,19.90,true,red
i2,shoes,zest,5,0,
i3,hats,acme,,yes,blue
"""


def test_load_catalogue(tmp_path: Path) -> None:
    frame = load_catalogue(write(tmp_path / "catalogue.csv", CATALOGUE_CSV))
    assert frame.columns == ["item_id", "category", "brand", "price", "available", "colour"]
    assert frame.rows() == [
        ("i1", "shoes", "acme", 19.9, True, "red"),
        ("i2", "shoes", "zest", 5.0, False, None),
        ("i3", "hats", "acme", None, True, "blue"),
    ]


def test_catalogue_errors(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"missing required column\(s\) 'available'.*present: 'item_id'"):
        load_catalogue(write(tmp_path / "c1.csv", "item_id,category,brand,price\ni1,a,b,1\n"))
    bad = "item_id,category,brand,price,available\ni1,a,b,1,true\ni1,a,b,x,true\ni3,a,b,2,maybe\n"
    with pytest.raises(DataValidationError) as err:
        load_catalogue(write(tmp_path / "c2.csv", bad))
    assert "duplicate_id: 1 row in column 'item_id' (first rows: 2)" in str(err.value)
    assert "unparseable_available: 1 row in column 'available' (first rows: 3)" in str(err.value)


def test_catalogue_from_store_folder(tmp_path: Path) -> None:
    load_catalogue(write(tmp_path / "c.csv", CATALOGUE_CSV)).write_parquet(tmp_path / "catalogue.parquet")
    assert load_catalogue(tmp_path).height == 3


def test_load_users(tmp_path: Path) -> None:
    frame = load_users(write(tmp_path / "users.csv", "user_id,region,segment,age\n17850,north,bargain,31\nu2,,,\n"))
    assert frame.columns == ["user_id", "segment", "region", "age"]
    assert frame.rows() == [("17850", "bargain", "north", "31"), ("u2", None, None, None)]
    with pytest.raises(SchemaError, match=r"'user_id'"):
        load_users(write(tmp_path / "u1.csv", "customer,region\n1,north\n"))
    with pytest.raises(DataValidationError, match=r"empty_user_id: 1 row in column 'user_id' \(first rows: 2\)"):
        load_users(write(tmp_path / "u2.csv", "user_id\na\n \n"))
