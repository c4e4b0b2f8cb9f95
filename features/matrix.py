"""Weighted user × item interaction matrices.

Each event contributes ``weight(event_type) * 0.5 ** (age_days / half_life_days)`` to its
(user, item) cell, where ``age_days`` is measured back from a reference time (by default the latest
event). The result is a CSR matrix plus the two :class:`~features.ids.IdMap` that give its rows and
columns meaning. All of it runs inside polars/numpy/scipy, with no Python loop over events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from features.columns import DEFAULT_EVENT_WEIGHTS, DEFAULT_OTHER_WEIGHT, Columns
from features.errors import SchemaError, TailorDataError
from features.ids import IdMap

_US_PER_DAY = 86_400 * 1_000_000


class MatrixConfig(BaseModel):
    """How events become matrix weights. Logged to MLflow as params; tunable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    other_weight: float = Field(DEFAULT_OTHER_WEIGHT, ge=0.0, description="weight of event types not listed")
    half_life_days: float | None = Field(None, gt=0.0, description="recency half-life; None = no decay")


@dataclass(frozen=True)
class InteractionMatrix:
    """A CSR ``users × items`` float32 matrix with the id maps of its rows and columns."""

    matrix: sp.csr_matrix
    users: IdMap
    items: IdMap

    def __post_init__(self) -> None:
        if self.matrix.shape != (len(self.users), len(self.items)):
            raise TailorDataError(
                f"matrix shape {self.matrix.shape} does not match id maps "
                f"({len(self.users)} users, {len(self.items)} items)"
            )

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    def save(self, folder: str | Path) -> None:
        """Save as ``matrix.npz`` + ``users.npy`` + ``items.npy`` (no pickle)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sp.save_npz(folder / "matrix.npz", self.matrix)
        self.users.save(folder / "users.npy")
        self.items.save(folder / "items.npy")

    @classmethod
    def load(cls, folder: str | Path) -> InteractionMatrix:
        folder = Path(folder)
        matrix = sp.load_npz(folder / "matrix.npz").tocsr()
        return cls(matrix, IdMap.load(folder / "users.npy"), IdMap.load(folder / "items.npy"))


@dataclass(frozen=True)
class FeatureMatrix:
    """A CSR ``entities × features`` matrix (items or users) for LightFM, with names for columns.

    ``ids`` gives the rows (aligned with the interaction matrix's items or users);
    ``names`` gives the columns, e.g. ``"category=shoes"``, ``"price_band=3"``, ``"segment=bargain"``.
    ``bands`` holds the edges of banded numeric columns (``{"price": (e1, e2, …)}``), so features of
    entities seen later (cold start) fall into the same bands.
    """

    matrix: sp.csr_matrix
    ids: IdMap
    names: npt.NDArray[np.str_]
    bands: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.matrix.shape != (len(self.ids), len(self.names)):
            raise TailorDataError(
                f"feature matrix shape {self.matrix.shape} does not match {len(self.ids)} ids × {len(self.names)} names"
            )

    def save(self, folder: str | Path, prefix: str) -> None:
        """Save as ``{prefix}_features.npz``, ``_ids.npy``, ``_names.npy`` and ``_bands.json`` (no pickle)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sp.save_npz(folder / f"{prefix}_features.npz", self.matrix)
        self.ids.save(folder / f"{prefix}_ids.npy")
        np.save(folder / f"{prefix}_names.npy", np.asarray(self.names, dtype=np.str_), allow_pickle=False)
        (folder / f"{prefix}_bands.json").write_text(json.dumps({k: list(v) for k, v in self.bands.items()}))

    @classmethod
    def load(cls, folder: str | Path, prefix: str) -> FeatureMatrix:
        """Load what :meth:`save` wrote (``_bands.json`` is optional, for older folders)."""
        folder = Path(folder)
        bands_path = folder / f"{prefix}_bands.json"
        bands = json.loads(bands_path.read_text()) if bands_path.exists() else {}
        return cls(
            sp.load_npz(folder / f"{prefix}_features.npz").tocsr(),
            IdMap.load(folder / f"{prefix}_ids.npy"),
            np.load(folder / f"{prefix}_names.npy", allow_pickle=False),
            {str(k): tuple(float(x) for x in v) for k, v in bands.items()},
        )


def _weight_expr(config: MatrixConfig, reference_time: datetime | None) -> pl.Expr:
    base = pl.col(Columns.EVENT).replace_strict(
        config.event_weights, default=config.other_weight, return_dtype=pl.Float64
    )
    if config.half_life_days is None:
        return base.cast(pl.Float32)
    ref = pl.lit(reference_time) if reference_time is not None else pl.col(Columns.TIMESTAMP).max()
    age_days = (ref - pl.col(Columns.TIMESTAMP)).dt.total_microseconds() / _US_PER_DAY
    return (base * (0.5 ** (age_days.clip(lower_bound=0.0) / config.half_life_days))).cast(pl.Float32)


def _codes(frame: pl.DataFrame, column: str, ids: IdMap | None) -> tuple[pl.Series, IdMap]:
    """Internal codes for ``column``: a fresh sorted map, or lookups into a given one (null if unknown)."""
    if ids is None:
        ids = IdMap.from_values(frame[column])
    enum = pl.Enum(ids.external.tolist())
    codes = frame[column].cast(pl.Utf8).cast(enum, strict=False).to_physical()
    return codes, ids


def build_matrix(
    events: pl.DataFrame | pl.LazyFrame,
    config: MatrixConfig | None = None,
    *,
    reference_time: datetime | None = None,
    users: IdMap | None = None,
    items: IdMap | None = None,
) -> InteractionMatrix:
    """Aggregate events into a weighted CSR matrix.

    ``users``/``items`` fix the rows/columns (e.g. to the training maps); events whose ids are not in
    them are dropped. Without them, maps are built from the events, sorted by id.
    Duplicate (user, item) cells are summed.
    """
    config = config or MatrixConfig()
    frame = events.lazy().select(Columns.USER, Columns.ITEM, _weight_expr(config, reference_time).alias(Columns.WEIGHT))
    try:
        df = frame.collect()
    except pl.exceptions.ColumnNotFoundError as exc:
        raise SchemaError(f"events are missing a column needed for the matrix: {exc}") from exc
    if df.height and df[Columns.WEIGHT].is_nan().any():
        raise TailorDataError("interaction weights contain NaN (check timestamps and weights)")
    rows, users = _codes(df, Columns.USER, users)
    cols, items = _codes(df, Columns.ITEM, items)
    keep = (rows.is_not_null() & cols.is_not_null()).to_numpy()
    r = rows.to_numpy()[keep].astype(np.int32)
    c = cols.to_numpy()[keep].astype(np.int32)
    w = df[Columns.WEIGHT].to_numpy()[keep]
    matrix = sp.csr_matrix((w, (r, c)), shape=(len(users), len(items)), dtype=np.float32)
    matrix.sum_duplicates()
    return InteractionMatrix(matrix, users, items)


def save_config(config: MatrixConfig, path: str | Path) -> None:
    Path(path).write_text(json.dumps(config.model_dump(), indent=2))
