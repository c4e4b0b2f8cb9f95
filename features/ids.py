"""External ↔ internal id maps.

Matrices index users and items by dense internal ids ``0..n-1``; the outside world (events, the API,
Redis payloads) only ever sees external string ids. An :class:`IdMap` is saved with every matrix and
model, so an internal index never leaks out without its map.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl

from features.errors import TailorDataError


class UnknownIdError(TailorDataError, KeyError):
    """An external id is not in the map (and strict lookup was requested)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class IdMap:
    """A bijection between external string ids and internal indices ``0..len-1``.

    ``external[i]`` is the external id of internal index ``i``. Build with :meth:`from_values`.
    """

    external: npt.NDArray[np.str_]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ext = np.asarray(self.external, dtype=np.str_)
        object.__setattr__(self, "external", ext)
        index = {str(v): i for i, v in enumerate(ext.tolist())}
        if len(index) != len(ext):
            raise TailorDataError(f"IdMap has {len(ext) - len(index)} duplicate external ids")
        object.__setattr__(self, "_index", index)

    @classmethod
    def from_values(cls, values: Iterable[str] | pl.Series) -> IdMap:
        """Map the distinct ``values``, sorted, to ``0..n-1`` (sorted, so the map is deterministic)."""
        series = values if isinstance(values, pl.Series) else pl.Series(list(values), dtype=pl.Utf8)
        unique = series.cast(pl.Utf8).drop_nulls().unique().sort()
        return cls(unique.to_numpy().astype(np.str_))

    def __len__(self) -> int:
        return len(self.external)

    def __contains__(self, external_id: object) -> bool:
        return external_id in self._index

    def to_internal(
        self, external_ids: Sequence[str] | npt.NDArray[np.str_], *, strict: bool = True
    ) -> npt.NDArray[np.int64]:
        """Internal indices of ``external_ids``; unknown ids raise, or map to ``-1`` if not strict."""
        out = np.fromiter((self._index.get(str(e), -1) for e in external_ids), dtype=np.int64, count=len(external_ids))
        if strict and (out < 0).any():
            missing = [str(e) for e, i in zip(external_ids, out, strict=True) if i < 0][:5]
            raise UnknownIdError(f"unknown ids (first {len(missing)}): {missing}")
        return out

    def index_of(self, external_id: str) -> int | None:
        """Internal index of one external id, or None."""
        return self._index.get(external_id)

    def to_external(self, internal: npt.ArrayLike) -> npt.NDArray[np.str_]:
        """External ids of internal indices (any shape)."""
        return self.external[np.asarray(internal, dtype=np.int64)]

    def encode(self, column: pl.Series) -> pl.Series:
        """Vectorised lookup of a whole column: internal index (Int64), null where unknown."""
        lookup = pl.DataFrame({"_ext": self.external, "_idx": np.arange(len(self), dtype=np.int64)})
        frame = pl.DataFrame({"_ext": column.cast(pl.Utf8)})
        return frame.join(lookup, on="_ext", how="left", maintain_order="left")["_idx"]

    def save(self, path: str | Path) -> None:
        """Save as a plain ``.npy`` unicode array (no pickle)."""
        np.save(Path(path), self.external, allow_pickle=False)

    @classmethod
    def load(cls, path: str | Path) -> IdMap:
        """Load a map saved by :meth:`save`."""
        return cls(np.load(Path(path), allow_pickle=False))
