"""LightFM feature matrices: exact one-hot rows on a 3-item catalogue and 2 users."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from features.columns import Columns
from features.errors import SchemaError, TailorDataError
from features.feature_matrices import build_item_features, build_user_features, feature_rows, normalize_rows
from features.ids import IdMap
from features.matrix import FeatureMatrix

# Prices 1, 2, 3 in 3 bands: edges are the 1/3 and 2/3 quantiles, 5/3 and 7/3 → bands 1, 2, 3.
CATALOGUE = pl.DataFrame(
    {
        Columns.ITEM: ["i1", "i2", "i3"],
        Columns.CATEGORY: ["kitchen", "garden", "kitchen"],
        Columns.BRAND: ["acme", "acme", None],
        Columns.PRICE: [1.0, 2.0, 3.0],
        Columns.AVAILABLE: [True, True, False],
    }
)
FEATURES = ["brand=acme", "category=garden", "category=kitchen", "price_band=1", "price_band=2", "price_band=3"]
# The map lists items in a different order than the catalogue, plus i9 which has no catalogue row.
ITEMS = IdMap(np.array(["i3", "i1", "i2", "i9"]))


def dense(matrix: sp.csr_matrix) -> list[list[float]]:
    return matrix.toarray().tolist()  # type: ignore[no-any-return]


def test_item_features_without_identity() -> None:
    fm = build_item_features(CATALOGUE, ITEMS, price_bands=3, identity=False)
    assert fm.names.tolist() == FEATURES
    assert dense(fm.matrix) == [
        [0, 0, 1, 0, 0, 1],  # i3: kitchen, no brand, band 3
        [1, 0, 1, 1, 0, 0],  # i1: acme, kitchen, band 1
        [1, 1, 0, 0, 1, 0],  # i2: acme, garden, band 2
        [0, 0, 0, 0, 0, 0],  # i9: not in the catalogue
    ]
    assert fm.ids is ITEMS
    assert fm.bands == {Columns.PRICE: pytest.approx((5 / 3, 7 / 3))}


def test_identity_block_comes_first_and_covers_unknown_items() -> None:
    fm = build_item_features(CATALOGUE, ITEMS, price_bands=3)
    assert fm.names.tolist() == ["item_id=i3", "item_id=i1", "item_id=i2", "item_id=i9", *FEATURES]
    assert dense(fm.matrix)[0] == [1, 0, 0, 0, 0, 0, 1, 0, 0, 1]
    assert dense(fm.matrix)[3] == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert fm.matrix.dtype == np.float32


def test_price_bands_are_catalogue_quantiles() -> None:
    # 5 bands over prices 1, 2, 3: edges 1.4, 1.8, 2.2, 2.6 → 1 is band 1, 2 is band 3, 3 is band 5.
    fm = build_item_features(CATALOGUE, IdMap(np.array(["i1", "i2", "i3"])), price_bands=5, identity=False)
    bands = fm.matrix[:, [i for i, n in enumerate(fm.names) if n.startswith("price_band=")]]
    names = [n for n in fm.names if n.startswith("price_band=")]
    assert names == ["price_band=1", "price_band=3", "price_band=5"]
    assert dense(bands) == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_price_bands_off_and_missing_prices() -> None:
    assert not any(n.startswith("price_band") for n in build_item_features(CATALOGUE, ITEMS, price_bands=0).names)
    no_price = CATALOGUE.with_columns(pl.lit(None, dtype=pl.Float64).alias(Columns.PRICE))
    fm = build_item_features(no_price, ITEMS, identity=False)
    assert fm.names.tolist() == ["brand=acme", "category=garden", "category=kitchen"]
    assert fm.bands == {}


def test_duplicate_catalogue_rows_first_wins() -> None:
    twice = pl.concat([CATALOGUE, CATALOGUE.head(1).with_columns(pl.lit("toys").alias(Columns.CATEGORY))])
    fm = build_item_features(twice, ITEMS, price_bands=0, identity=False)
    assert "category=toys" not in fm.names.tolist()


def test_user_features() -> None:
    users = pl.DataFrame(
        {
            Columns.USER: ["u1", "u2", "u3"],
            Columns.SEGMENT: ["bargain", "premium", "vip"],
            Columns.REGION: ["north", None, ""],
        }
    )
    fm = build_user_features(users, IdMap(np.array(["u2", "u1"])), identity=False)  # u3 is not in the map
    assert fm.names.tolist() == ["region=north", "segment=bargain", "segment=premium"]
    assert dense(fm.matrix) == [[0, 0, 1], [1, 1, 0]]
    with_id = build_user_features(users, IdMap(np.array(["u2", "u1"])))
    assert with_id.names.tolist()[:2] == ["user_id=u2", "user_id=u1"]


def test_feature_rows_for_cold_items_share_the_column_space() -> None:
    fm = build_item_features(CATALOGUE, ITEMS, price_bands=3)
    cold = pl.DataFrame(
        {
            Columns.ITEM: ["new1", "new2"],
            Columns.CATEGORY: ["kitchen", "toys"],  # toys was never seen: no feature
            Columns.BRAND: ["zeta", "acme"],  # zeta was never seen
            Columns.PRICE: [2.5, None],
        }
    )
    rows = feature_rows(cold, fm)
    assert rows.shape == (2, 10)
    assert dense(rows) == [
        [0, 0, 0, 0, 0, 0, 1, 0, 0, 1],  # kitchen, band 3 (2.5 > 7/3)
        [0, 0, 0, 0, 1, 0, 0, 0, 0, 0],  # acme
    ]


def test_normalize_rows() -> None:
    fm = build_item_features(CATALOGUE, ITEMS, price_bands=3)
    norm = normalize_rows(fm.matrix)
    assert np.asarray(norm.sum(axis=1)).ravel().tolist() == pytest.approx([1, 1, 1, 1])
    assert norm[1, 1] == pytest.approx(1 / 4)  # i1: identity + acme + kitchen + band 1


def test_save_load_round_trip(tmp_path: Path) -> None:
    fm = build_item_features(CATALOGUE, ITEMS, price_bands=3)
    fm.save(tmp_path, "item")
    back = FeatureMatrix.load(tmp_path, "item")
    assert dense(back.matrix) == dense(fm.matrix)
    assert back.names.tolist() == fm.names.tolist()
    assert back.ids.external.tolist() == ITEMS.external.tolist()
    assert back.bands == fm.bands


def test_errors() -> None:
    with pytest.raises(SchemaError, match="catalogue has no 'item_id' column"):
        build_item_features(CATALOGUE.drop(Columns.ITEM), ITEMS)
    with pytest.raises(TailorDataError, match="price_bands"):
        build_item_features(CATALOGUE, ITEMS, price_bands=-1)
    with pytest.raises(TailorDataError, match="does not match 4 ids × 1 names"):
        FeatureMatrix(sp.csr_matrix((4, 2), dtype=np.float32), ITEMS, np.array(["a"]))
