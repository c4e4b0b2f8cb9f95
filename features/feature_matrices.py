"""Item and user feature matrices for LightFM hybrids.

Items get one-hot ``category=…``, ``brand=…`` and ``price_band=k`` (k = 1…bands, quantile bands of
price over the catalogue); users get ``segment=…`` and ``region=…``. With ``identity=True`` the first
``len(ids)`` columns are an identity block (``item_id=<id>`` / ``user_id=<id>``), the layout LightFM
expects so that each known entity also learns its own embedding. Rows are aligned exactly with the
given :class:`~features.ids.IdMap`; ids without a catalogue/user row get their identity feature only.

For entities outside the map (cold start), :func:`feature_rows` builds rows in the *same* column
space — features only, identity columns left empty — ready for ``LightFM.predict``.
Missing values (null or empty strings) simply give no feature.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import polars as pl
import scipy.sparse as sp

from features.columns import Columns
from features.errors import SchemaError, TailorDataError
from features.ids import IdMap
from features.matrix import FeatureMatrix

ITEM_COLUMNS: tuple[str, ...] = (Columns.CATEGORY, Columns.BRAND)
USER_COLUMNS: tuple[str, ...] = (Columns.SEGMENT, Columns.REGION)
PRICE_BAND = "price_band"
_IDENTITY_PREFIXES = (Columns.ITEM, Columns.USER)
_ROW, _NAME = "_row", "_name"


def build_item_features(
    catalogue: pl.DataFrame, items: IdMap, *, price_bands: int = 5, identity: bool = True
) -> FeatureMatrix:
    """Item features (category, brand, price band) with rows aligned to ``items``.

    Price band edges are the ``1/price_bands … (price_bands-1)/price_bands`` quantiles of the
    catalogue's prices (linear interpolation); ``price_bands=0`` turns bands off. Duplicate catalogue
    rows of one item: the first wins.
    """
    if price_bands < 0:
        raise TailorDataError(f"price_bands must be ≥ 0, got {price_bands}")
    _require(catalogue, Columns.ITEM, "catalogue")
    catalogue = catalogue.unique(subset=Columns.ITEM, keep="first", maintain_order=True)
    edges = _price_edges(catalogue, price_bands)
    rows = _rows_in_map(catalogue, Columns.ITEM, items)
    long = _long_features(rows, ITEM_COLUMNS, edges)
    bands = {Columns.PRICE: tuple(edges.tolist())} if edges is not None else {}
    return _assemble(long, items, Columns.ITEM if identity else None, bands)


def build_user_features(users: pl.DataFrame, user_ids: IdMap, *, identity: bool = True) -> FeatureMatrix:
    """User features (segment, region) with rows aligned to ``user_ids``. Duplicate users: first row wins."""
    _require(users, Columns.USER, "users")
    users = users.unique(subset=Columns.USER, keep="first", maintain_order=True)
    long = _long_features(_rows_in_map(users, Columns.USER, user_ids), USER_COLUMNS, None)
    return _assemble(long, user_ids, Columns.USER if identity else None, {})


def feature_rows(frame: pl.DataFrame, features: FeatureMatrix) -> sp.csr_matrix:
    """Rows for entities *not* in ``features.ids`` (cold start), one per row of ``frame``.

    Uses the columns and price bands of ``features``; values never seen when it was built, and the
    identity columns, stay zero. The result has ``len(features.names)`` columns, like the original.
    """
    vocabulary = _feature_vocabulary(features.names)
    columns = sorted(set(vocabulary[_NAME].str.extract(r"^([^=]*)=").to_list()))
    edges = np.asarray(features.bands[Columns.PRICE]) if PRICE_BAND in columns else None
    categorical = [c for c in columns if c != PRICE_BAND]
    long = _long_features(frame.with_row_index(_ROW), categorical, edges)
    hits = long.join(vocabulary, on=_NAME, how="inner")
    return _csr(hits[_ROW].to_numpy(), hits["_col"].to_numpy(), (frame.height, len(features.names)))


def normalize_rows(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Scale each non-empty row to sum to 1 (what ``lightfm.data.Dataset`` does by default)."""
    sums = np.asarray(matrix.sum(axis=1)).ravel()
    scale = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    return sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ matrix, dtype=np.float32)


def _require(frame: pl.DataFrame, column: str, what: str) -> None:
    if column not in frame.columns:
        raise SchemaError(f"{what} has no {column!r} column (columns: {frame.columns})")


def _rows_in_map(frame: pl.DataFrame, id_column: str, ids: IdMap) -> pl.DataFrame:
    """``frame`` with its internal row (``_row``); rows whose id is not in ``ids`` are dropped."""
    return frame.with_columns(ids.encode(frame[id_column]).alias(_ROW)).drop_nulls(_ROW)


def _price_edges(catalogue: pl.DataFrame, bands: int) -> npt.NDArray[np.float64] | None:
    if bands == 0 or Columns.PRICE not in catalogue.columns:
        return None
    prices = catalogue[Columns.PRICE].cast(pl.Float64).drop_nulls().to_numpy()
    prices = prices[np.isfinite(prices)]
    if prices.size == 0:
        return None
    edges: npt.NDArray[np.float64] = np.quantile(prices, np.arange(1, bands) / bands).astype(np.float64)
    return edges


def _long_features(frame: pl.DataFrame, columns: Sequence[str], edges: npt.NDArray[np.float64] | None) -> pl.DataFrame:
    """One ``(_row, _name)`` pair per feature an entity has; absent values give none."""
    parts = [_one_hot(frame, column) for column in columns if column in frame.columns]
    if edges is not None and Columns.PRICE in frame.columns:
        parts.append(_price_band(frame, edges))
    empty = pl.DataFrame(schema={_ROW: pl.Int64, _NAME: pl.Utf8})
    # No duplicates to remove: rows are unique per id and each column gives at most one feature.
    return pl.concat([empty, *parts]).drop_nulls()


def _one_hot(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    value = pl.col(column).cast(pl.Utf8).str.strip_chars()
    name = pl.when(value != "").then(pl.lit(f"{column}=") + value)
    return frame.select(pl.col(_ROW).cast(pl.Int64), name.alias(_NAME))


def _price_band(frame: pl.DataFrame, edges: npt.NDArray[np.float64]) -> pl.DataFrame:
    """``price_band=k``: k-1 edges lie at or below the price, so k runs 1…len(edges)+1."""
    price = frame[Columns.PRICE].cast(pl.Float64)
    band = np.searchsorted(edges, price.fill_null(np.nan).to_numpy(), side="right") + 1
    known = price.is_finite().fill_null(False)
    names = pl.Series(np.char.add(f"{PRICE_BAND}=", band.astype(np.str_)), dtype=pl.Utf8)
    return pl.DataFrame({_ROW: frame[_ROW].cast(pl.Int64), _NAME: names}).filter(known)


def _assemble(
    long: pl.DataFrame, ids: IdMap, identity_prefix: str | None, bands: dict[str, tuple[float, ...]]
) -> FeatureMatrix:
    """CSR ``[identity | features]`` with feature columns in sorted name order."""
    vocabulary = long[_NAME].unique().sort()
    offset = len(ids) if identity_prefix is not None else 0
    cols = long[_NAME].cast(pl.Enum(vocabulary)).to_physical().cast(pl.Int64).to_numpy()
    matrix = _csr(long[_ROW].to_numpy(), cols + offset, (len(ids), offset + len(vocabulary)))
    names = vocabulary
    if identity_prefix is not None:
        matrix = sp.csr_matrix(matrix + sp.eye(len(ids), matrix.shape[1], dtype=np.float32, format="csr"))
        identity = f"{identity_prefix}=" + pl.Series(ids.external, dtype=pl.Utf8)
        names = pl.concat([identity, vocabulary])
    return FeatureMatrix(matrix, ids, names.to_numpy().astype(np.str_), bands)


def _csr(rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64], shape: tuple[int, int]) -> sp.csr_matrix:
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=shape, dtype=np.float32)


def _feature_vocabulary(names: npt.NDArray[np.str_]) -> pl.DataFrame:
    """``(_name, _col)`` of the non-identity columns (``"brand=acme"``, not ``"item_id=i1"``)."""
    frame = pl.DataFrame({_NAME: pl.Series(names, dtype=pl.Utf8)}).with_row_index("_col")
    identity = pl.any_horizontal(pl.col(_NAME).str.starts_with(f"{prefix}=") for prefix in _IDENTITY_PREFIXES)
    return frame.filter(~identity).select(_NAME, pl.col("_col").cast(pl.Int64))
