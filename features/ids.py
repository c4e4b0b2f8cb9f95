"""External ↔ internal id maps.

Matrices index users and items by dense internal ids ``0..n-1``; the outside world (events, the API,
Redis payloads) only ever sees external string ids. An :class:`IdMap` is saved with every matrix and
model, so an internal index never leaks out without its map.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl

from features.errors import TailorDataError

_DICT_LOOKUP_MAX = 10_000  # above this many ids per call, look up with a polars join instead of a dict


class UnknownIdError(TailorDataError, KeyError):
    """An external id is not in the map (and strict lookup was requested)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True, eq=False)
class IdMap:
    """A bijection between external string ids and internal indices ``0..len-1``.

    ``external[i]`` is the external id of internal index ``i``. Build with :meth:`from_values`.
    The Python dict behind single-id lookups is built lazily, on first use: whole columns are looked
    up with a polars join (:meth:`encode`), so a map of millions of ids never needs the dict.
    """

    external: npt.NDArray[np.str_]

    def __post_init__(self) -> None:
        ext = np.asarray(self.external, dtype=np.str_)
        object.__setattr__(self, "external", ext)
        duplicates = len(ext) - self._series.n_unique()
        if duplicates:
            raise TailorDataError(f"IdMap has {duplicates} duplicate external ids")

    @classmethod
    def from_values(cls, values: Iterable[str] | pl.Series) -> IdMap:
        """Map the distinct ``values``, sorted, to ``0..n-1`` (sorted, so the map is deterministic)."""
        series = values if isinstance(values, pl.Series) else pl.Series(list(values), dtype=pl.Utf8)
        return cls.from_sorted_unique(series.cast(pl.Utf8).drop_nulls().unique().sort())

    @classmethod
    def from_sorted_unique(cls, series: pl.Series) -> IdMap:
        """Wrap a series already known to be distinct, non-null strings, skipping the duplicate check."""
        ids = cls.__new__(cls)
        object.__setattr__(ids, "external", series.to_numpy().astype(np.str_))
        ids.__dict__["_series"] = series.cast(pl.Utf8).rename("external")  # seed the cached property
        return ids

    @cached_property
    def _series(self) -> pl.Series:
        return pl.Series("external", self.external, dtype=pl.Utf8)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.external.tolist())}

    def __len__(self) -> int:
        return len(self.external)

    def __contains__(self, external_id: object) -> bool:
        return external_id in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and np.array_equal(self.external, other.external)

    __hash__ = None  # type: ignore[assignment]  # mutable-array content: not hashable

    def to_internal(
        self, external_ids: Sequence[str] | npt.NDArray[np.str_], *, strict: bool = True
    ) -> npt.NDArray[np.int64]:
        """Internal indices of ``external_ids``; unknown ids raise, or map to ``-1`` if not strict."""
        if len(external_ids) > _DICT_LOOKUP_MAX:  # a vectorised join beats a Python loop
            out = self.encode(pl.Series(np.asarray(external_ids, dtype=np.str_))).fill_null(-1).to_numpy()
        else:
            out = np.fromiter((self._index.get(str(e), -1) for e in external_ids), np.int64, len(external_ids))
        if strict and (out < 0).any():
            missing = [str(external_ids[i]) for i in np.flatnonzero(out < 0)[:5]]
            raise UnknownIdError(f"unknown ids (first {len(missing)}): {missing}")
        return out

    def index_of(self, external_id: str) -> int | None:
        """Internal index of one external id, or None."""
        return self._index.get(external_id)

    def to_external(self, internal: npt.ArrayLike) -> npt.NDArray[np.str_]:
        """External ids of internal indices (any shape)."""
        return self.external[np.asarray(internal, dtype=np.int64)]

    def lookup_frame(self, id_column: str, index_column: str) -> pl.DataFrame:
        """The map as a frame ``(id_column: Utf8, index_column: Int32)``, for joins on big columns."""
        return pl.DataFrame(
            [self._series.alias(id_column), pl.Series(index_column, np.arange(len(self), dtype=np.int32))]
        )

    def encode(self, column: pl.Series) -> pl.Series:
        """Vectorised lookup of a whole column: internal index (Int64), null where unknown."""
        frame = pl.DataFrame({"_ext": column.cast(pl.Utf8)})
        joined = frame.join(self.lookup_frame("_ext", "_idx"), on="_ext", how="left", maintain_order="left")
        return joined["_idx"].cast(pl.Int64)

    def save(self, path: str | Path) -> None:
        """Save as a plain ``.npy`` unicode array (no pickle)."""
        np.save(Path(path), self.external, allow_pickle=False)

    @classmethod
    def load(cls, path: str | Path) -> IdMap:
        """Load a map saved by :meth:`save`."""
        return cls(np.load(Path(path), allow_pickle=False))
