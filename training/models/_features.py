"""Helpers shared by models that read item/user feature matrices (popularity groups, LightFM).

Feature matrices carry their own id maps; these helpers align them with the interaction matrix's
users or items and decode one-hot groups such as ``"category=shoes"`` or ``"segment=bargain"``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from features.ids import IdMap
from features.matrix import FeatureMatrix


def align_rows(features: FeatureMatrix, ids: IdMap) -> sp.csr_matrix:
    """Feature rows reordered to follow ``ids``; entities without a feature row get an empty row."""
    src = features.ids.to_internal(ids.external, strict=False)
    known = np.flatnonzero(src >= 0)
    pick = sp.csr_matrix(
        (np.ones(len(known), dtype=np.float32), (known, src[known])), shape=(len(ids), features.matrix.shape[0])
    )
    return sp.csr_matrix(pick @ sp.csr_matrix(features.matrix, dtype=np.float32))


def group_codes(
    features: FeatureMatrix | None, ids: IdMap, prefix: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.str_]]:
    """Each entity's group among feature columns named ``"{prefix}=<group>"``.

    Returns ``(codes, groups)``: ``codes[i]`` indexes ``groups`` (the group values, e.g. ``"shoes"``),
    or is ``-1`` when the entity has no such feature. With several, the largest value wins.
    """
    names = np.asarray(features.names if features is not None else [], dtype=np.str_)
    marker = f"{prefix}="
    columns = np.flatnonzero(np.char.startswith(names, marker)) if len(names) else np.empty(0, dtype=np.int64)
    groups = np.asarray([str(n)[len(marker) :] for n in names[columns]], dtype=np.str_)
    if features is None or not len(columns):
        return np.full(len(ids), -1, dtype=np.int64), groups
    block = align_rows(features, ids)[:, columns].toarray()
    codes = np.argmax(block, axis=1).astype(np.int64)
    codes[block.max(axis=1, initial=0.0) <= 0] = -1
    return codes, groups


def one_hot(codes: npt.NDArray[np.int64], n_groups: int) -> sp.csr_matrix:
    """``len(codes) × n_groups`` 0/1 CSR; rows with code ``-1`` are empty."""
    known = np.flatnonzero(codes >= 0)
    return sp.csr_matrix((np.ones(len(known), dtype=np.float32), (known, codes[known])), shape=(len(codes), n_groups))
