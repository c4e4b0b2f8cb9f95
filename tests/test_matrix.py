"""Interaction matrices and id maps: hand-computed weights, decay, aggregation, round trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from features.columns import Columns
from features.errors import SchemaError, TailorDataError
from features.ids import IdMap, UnknownIdError
from features.matrix import InteractionMatrix, MatrixConfig, build_matrix

NOW = datetime(2024, 3, 1)


def events(rows: list[tuple[str, str, str, float]]) -> pl.DataFrame:
    """Events from ``(user, item, event_type, days_before_NOW)``."""
    users, items, kinds, ages = zip(*rows, strict=True)
    return pl.DataFrame(
        {
            Columns.USER: users,
            Columns.ITEM: items,
            Columns.EVENT: kinds,
            Columns.TIMESTAMP: [NOW - timedelta(days=a) for a in ages],
        },
        schema_overrides={Columns.TIMESTAMP: pl.Datetime("us")},
    )


def cell(m: InteractionMatrix, user: str, item: str) -> float:
    return float(m.matrix[m.users.index_of(user), m.items.index_of(item)])


def test_event_type_weights_and_other_type() -> None:
    config = MatrixConfig(event_weights={"view": 1.0, "add_to_cart": 4.0, "purchase": 10.0}, other_weight=0.5)
    frame = events(
        [("u1", "a", "view", 0), ("u1", "b", "add_to_cart", 0), ("u2", "a", "purchase", 0), ("u2", "c", "wishlist", 0)]
    )
    m = build_matrix(frame, config)
    assert m.users.external.tolist() == ["u1", "u2"]
    assert m.items.external.tolist() == ["a", "b", "c"]
    assert m.matrix.toarray().tolist() == [[1.0, 4.0, 0.0], [10.0, 0.0, 0.5]]
    assert m.matrix.dtype == np.float32


def test_default_weights() -> None:
    m = build_matrix(events([("u", "a", "view", 0), ("u", "b", "add_to_cart", 0), ("u", "c", "purchase", 0)]))
    assert m.matrix.toarray().tolist() == [[1.0, 4.0, 10.0]]


def test_duplicates_are_summed() -> None:
    m = build_matrix(events([("u", "a", "view", 0), ("u", "a", "view", 0), ("u", "a", "purchase", 0)]))
    assert cell(m, "u", "a") == 12.0
    assert m.nnz == 1


def test_recency_half_life() -> None:
    # Half-life 10 days: 10 days old weighs 1/2, 20 days 1/4; the newest event is the reference.
    config = MatrixConfig(event_weights={"view": 1.0, "purchase": 8.0}, half_life_days=10)
    m = build_matrix(events([("u", "a", "purchase", 0), ("u", "b", "purchase", 10), ("u", "c", "view", 20)]), config)
    assert m.matrix.toarray()[0].tolist() == pytest.approx([8.0, 4.0, 0.25])


def test_reference_time_and_future_events() -> None:
    config = MatrixConfig(half_life_days=1)
    frame = events([("u", "a", "view", 1), ("u", "b", "view", -1)])  # b is one day after NOW
    m = build_matrix(frame, config, reference_time=NOW)
    # a is one half-life old; events after the reference time count as brand new (no boost).
    assert m.matrix.toarray()[0].tolist() == pytest.approx([0.5, 1.0])
    aware = build_matrix(frame, config, reference_time=NOW.replace(tzinfo=UTC))
    assert aware.matrix.toarray()[0].tolist() == pytest.approx([0.5, 1.0])


def test_zero_weight_cells_are_not_stored() -> None:
    m = build_matrix(events([("u", "a", "view", 0), ("u", "b", "hover", 0)]), MatrixConfig(other_weight=0.0))
    assert m.items.external.tolist() == ["a", "b"]
    assert m.nnz == 1


def test_fixed_maps_drop_unknown_ids() -> None:
    users = IdMap(np.array(["u2", "u1"]))
    items = IdMap(np.array(["b", "a"]))
    frame = events([("u1", "a", "view", 0), ("u2", "b", "purchase", 0), ("u3", "a", "view", 0), ("u1", "z", "view", 0)])
    m = build_matrix(frame, users=users, items=items)
    assert m.users is users
    assert m.matrix.toarray().tolist() == [[10.0, 0.0], [0.0, 1.0]]  # rows u2, u1; columns b, a


def test_empty_events_give_empty_matrix() -> None:
    m = build_matrix(events([("u", "a", "view", 0)]).clear())
    assert m.matrix.shape == (0, 0)


def test_null_weight_guard_names_rows() -> None:
    frame = events([("u", "a", "view", 0), ("u", "b", "view", 1)])
    frame = frame.with_columns(
        pl.when(pl.col(Columns.ITEM) == "b").then(None).otherwise(pl.col(Columns.TIMESTAMP)).alias(Columns.TIMESTAMP)
    )
    with pytest.raises(TailorDataError, match=r"1 interaction weights are null/NaN \(first rows, 1-based: \[2\]\)"):
        build_matrix(frame, MatrixConfig(half_life_days=7))


def test_config_rejects_nan_and_negative_weights() -> None:
    with pytest.raises(ValidationError):
        MatrixConfig(event_weights={"view": float("nan")})
    with pytest.raises(ValidationError):
        MatrixConfig(other_weight=-1.0)
    with pytest.raises(ValidationError):
        MatrixConfig(half_life=3)  # type: ignore[call-arg]  # unknown keys are rejected


def test_missing_column() -> None:
    with pytest.raises(SchemaError, match=Columns.EVENT):
        build_matrix(events([("u", "a", "view", 0)]).drop(Columns.EVENT))


def test_lazy_input() -> None:
    assert build_matrix(events([("u", "a", "view", 0)]).lazy()).nnz == 1


def test_matrix_save_load(tmp_path: Path) -> None:
    m = build_matrix(events([("u1", "a", "view", 0), ("u2", "b", "purchase", 3)]), MatrixConfig(half_life_days=3))
    m.save(tmp_path / "m")
    back = InteractionMatrix.load(tmp_path / "m")
    assert back.users == m.users
    assert back.items == m.items
    assert back.matrix.toarray().tolist() == m.matrix.toarray().tolist()
    assert back.matrix.dtype == np.float32


def test_matrix_shape_must_match_maps() -> None:
    m = build_matrix(events([("u1", "a", "view", 0)]))
    with pytest.raises(TailorDataError, match=r"does not match id maps \(2 users, 1 items\)"):
        InteractionMatrix(m.matrix, IdMap(np.array(["u1", "u2"])), m.items)


# --- id maps -----------------------------------------------------------------------------------


def test_id_map_round_trip(tmp_path: Path) -> None:
    ids = IdMap.from_values(["c", "a", "b", "a", None])  # type: ignore[list-item]
    assert ids.external.tolist() == ["a", "b", "c"]
    internal = ids.to_internal(["c", "a"])
    assert internal.tolist() == [2, 0]
    assert ids.to_external(internal).tolist() == ["c", "a"]
    assert ids.index_of("b") == 1
    assert ids.index_of("zz") is None
    assert "b" in ids
    ids.save(tmp_path / "ids.npy")
    assert IdMap.load(tmp_path / "ids.npy") == ids


def test_id_map_unknown_ids() -> None:
    ids = IdMap(np.array(["x", "y"]))
    assert ids.to_internal(["y", "q"], strict=False).tolist() == [1, -1]
    with pytest.raises(UnknownIdError, match=r"unknown ids \(first 1\): \['q'\]"):
        ids.to_internal(["y", "q"])
    assert ids.encode(pl.Series(["y", "q", None])).to_list() == [1, None, None]


def test_id_map_large_lookup_matches_small() -> None:
    ids = IdMap(np.array([f"id{i}" for i in range(50)]))
    query = np.array([f"id{i % 60}" for i in range(20_000)])  # above the dict threshold; ids 50-59 unknown
    expected = np.array([i % 60 if i % 60 < 50 else -1 for i in range(20_000)])
    assert ids.to_internal(query, strict=False).tolist() == expected.tolist()
    with pytest.raises(UnknownIdError, match="id50"):
        ids.to_internal(query)


def test_id_map_rejects_duplicates() -> None:
    with pytest.raises(TailorDataError, match="1 duplicate"):
        IdMap(np.array(["a", "b", "a"]))


def test_null_ids_are_dropped() -> None:
    frame = events([("u1", "a", "view", 0), ("u2", "b", "view", 0), ("u1", "b", "purchase", 0)])
    frame = frame.with_columns(
        pl.when(pl.col(Columns.USER) == "u2").then(None).otherwise(pl.col(Columns.USER)).alias(Columns.USER)
    )
    m = build_matrix(frame)
    assert m.users.external.tolist() == ["u1"]
    assert m.matrix.toarray().tolist() == [[1.0, 10.0]]
