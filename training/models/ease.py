"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"), in closed form.

With ``G = XᵀX`` (items × items) and ``P = (G + λI)⁻¹``, the item-item weights are
``B = I − P · diag(1 / diag(P))``, i.e. ``B_ij = −P_ij / P_jj`` off the diagonal and ``B_ii = 0``.
A user's scores are ``x_u B``. The inverse is computed in float64 and ``B`` stored as float32.

Memory grows with the square of the catalogue (``G``, ``P`` and ``B`` are dense), so catalogues over
``max_items`` are refused with the estimate ``n_items² × 8 bytes × 3``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from pydantic import Field

from training.models.base import ModelConfig, ModelError, Recommender, TrainData, register

_BYTES_PER_CELL = 8 * 3  # float64 Gram matrix and inverse, plus the float32 result and temporaries


class EASEConfig(ModelConfig):
    """EASE's single hyper-parameter and a memory guard."""

    l2: float = Field(500.0, gt=0.0, description="λ, L2 penalty added to the diagonal of XᵀX")
    max_items: int = Field(30_000, ge=1, description="refuse larger catalogues (memory ~ n_items² × 24 bytes)")


def _human_bytes(n: float) -> str:
    """``216 B``, ``21.6 GB``: decimal units, as memory figures are quoted."""
    units = ("B", "KB", "MB", "GB", "TB")
    step = 0
    while n >= 1000 and step < len(units) - 1:
        n, step = n / 1000, step + 1
    return f"{n:.0f} B" if step == 0 else f"{n:.1f} {units[step]}"


def ease_weights(X: sp.csr_matrix, l2: float) -> npt.NDArray[np.float32]:
    """The EASE matrix ``B`` for a users × items matrix ``X`` (float64 inverse, float32 result)."""
    gram = np.asarray((X.T @ X).toarray(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += l2
    P = np.linalg.inv(gram)
    B = P / -np.diag(P)[None, :]  # column j divided by -P_jj
    np.fill_diagonal(B, 0.0)
    return B.astype(np.float32)


@register
class EASE(Recommender):
    """Closed-form item-item linear model; similar items are the rows of ``B``."""

    name: ClassVar[str] = "ease"
    Config: ClassVar[type[ModelConfig]] = EASEConfig
    config: EASEConfig

    def _fit(self, data: TrainData) -> None:
        n_items = len(data.interactions.items)
        if n_items > self.config.max_items:
            raise ModelError(
                f"ease: the catalogue has {n_items} items, more than max_items={self.config.max_items}; "
                f"EASE would need about {_human_bytes(n_items**2 * _BYTES_PER_CELL)} (n_items² × 8 bytes × 3). "
                "Raise max_items if the machine has the memory, or use als/item_knn"
            )
        X = sp.csr_matrix(data.interactions.matrix, dtype=np.float64)
        B = ease_weights(X, self.config.l2)
        if not np.isfinite(B).all():
            raise ModelError("ease: weights contain NaN/inf (increase l2)")
        self._B = B

    def _score_users(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return np.asarray(self.data.interactions.matrix[rows] @ self._B, dtype=np.float32)

    def _similar_scores(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return self._B[rows]

    def _save_state(self, folder: Path) -> None:
        np.save(folder / "ease_B.npy", self._B, allow_pickle=False)

    def _load_state(self, folder: Path) -> None:
        self._B = np.load(folder / "ease_B.npy", allow_pickle=False)
