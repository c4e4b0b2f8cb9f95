"""Popularity: the baseline every run is compared with.

``popularity[i]`` is the number of distinct users who interacted with item ``i`` (``by="users"``) or
the sum of their weights (``by="weight"``). Scores by ``within``:

* ``None``: every user gets the global popularity.
* ``"category"`` (needs item features with ``category=...`` columns): ``affinity(u, c) × share(i)``
  where ``affinity`` is the fraction of the user's interaction weight in item ``i``'s category ``c`` and
  ``share(i)`` is ``i``'s fraction of its category's popularity. Items in categories the user never
  touched come after, ordered by global popularity (score ``global_share(i) − 1`` in ``[-1, 0)``).
* ``"segment"`` (needs user features with ``segment=...`` columns): popularity among users of the
  same segment; items nobody in the segment touched come after (``global_share − 1``); users
  without a segment get the global popularity.

Users unknown to the model always get the global popularity. Similar items are the most popular
items of the same category (then the rest by popularity); without categories, the most popular.
The fitted state is a pure function of the saved training data, so loading recomputes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from pydantic import Field

from training.models._features import group_codes, one_hot
from training.models.base import ModelConfig, ModelError, Recommender, TrainData, register


class PopularityConfig(ModelConfig):
    """How popularity is counted and within which group it is ranked."""

    by: Literal["users", "weight"] = Field("users", description="count distinct users, or sum weights")
    within: Literal["category", "segment"] | None = Field(
        None,
        description="None = global; 'category' = user's category affinity × in-category share; "
        "'segment' = popularity among users of the same segment",
    )


@register
class Popularity(Recommender):
    """Global or in-group popularity (see the module docstring for the exact scores)."""

    name: ClassVar[str] = "popularity"
    Config: ClassVar[type[ModelConfig]] = PopularityConfig
    config: PopularityConfig

    @property
    def handles_unknown_users(self) -> bool:
        return True

    def _fit(self, data: TrainData) -> None:
        X = sp.csr_matrix(data.interactions.matrix, dtype=np.float32, copy=True)
        X.eliminate_zeros()  # in place, hence the copy
        counts = X.astype(bool).astype(np.float32) if self.config.by == "users" else X
        pop = np.asarray(counts.sum(axis=0), dtype=np.float64).ravel()
        item_cat, n_cats = self._item_groups(data)
        user_seg, seg_pop = self._segment_popularity(data, counts)
        self._weights, self._pop = X, pop.astype(np.float32)
        self._fallback = (pop / max(pop.sum(), 1e-12) - 1.0).astype(np.float32)
        self._item_cat, self._n_cats = item_cat, n_cats
        self._user_seg, self._seg_pop = user_seg, seg_pop
        self._cat_share = self._category_share(pop, item_cat, n_cats)

    def _item_groups(self, data: TrainData) -> tuple[npt.NDArray[np.int64], int]:
        codes, groups = group_codes(data.item_features, data.interactions.items, "category")
        if self.config.within == "category" and not len(groups):
            raise ModelError(
                "popularity within='category' needs item features with 'category=...' columns (TrainData.item_features)"
            )
        return codes, len(groups)

    def _segment_popularity(
        self, data: TrainData, counts: sp.csr_matrix
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        if self.config.within != "segment":
            return np.full(counts.shape[0], -1, dtype=np.int64), np.zeros((0, counts.shape[1]), dtype=np.float32)
        codes, groups = group_codes(data.user_features, data.interactions.users, "segment")
        if not len(groups):
            raise ModelError(
                "popularity within='segment' needs user features with 'segment=...' columns (TrainData.user_features)"
            )
        seg_pop = (one_hot(codes, len(groups)).T @ counts).toarray().astype(np.float32)
        return codes, seg_pop

    @staticmethod
    def _category_share(
        pop: npt.NDArray[np.float64], item_cat: npt.NDArray[np.int64], n_cats: int
    ) -> npt.NDArray[np.float32]:
        """Each item's fraction of its category's popularity (0 for items without a category)."""
        cat_total = np.bincount(item_cat[item_cat >= 0], weights=pop[item_cat >= 0], minlength=n_cats)
        share = np.zeros(len(pop), dtype=np.float64)
        has = item_cat >= 0
        share[has] = pop[has] / np.maximum(cat_total[item_cat[has]], 1e-12)
        return share.astype(np.float32)

    # --- scoring -----------------------------------------------------------------------------
    def _score_users(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        if self.config.within == "category":
            return self._score_category(rows)
        if self.config.within == "segment":
            return self._score_segment(rows)
        return np.tile(self._pop, (len(rows), 1))

    def _score_unknown(self, n: int) -> npt.NDArray[np.float32]:
        return np.tile(self._pop, (n, 1))

    def _score_category(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """``affinity(u, category(i)) × share(i)``; untouched categories fall back below zero."""
        spent = (self._weights[rows] @ one_hot(self._item_cat, self._n_cats)).toarray()
        affinity = spent / np.maximum(spent.sum(axis=1, keepdims=True), 1e-12)
        per_item = np.where(self._item_cat >= 0, affinity[:, np.maximum(self._item_cat, 0)], 0.0)
        scores = np.where(per_item > 0, per_item * self._cat_share, self._fallback)
        return scores.astype(np.float32)

    def _score_segment(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Popularity within the user's segment; users without one get global popularity."""
        seg = self._user_seg[rows]
        scores = np.tile(self._pop, (len(rows), 1))
        has = seg >= 0
        in_seg = self._seg_pop[seg[has]]
        scores[has] = np.where(in_seg > 0, in_seg, self._fallback)
        return scores

    def _similar_scores(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Same-category items by popularity share first, then everything else by popularity."""
        share = (self._pop / max(float(self._pop.sum()), 1e-12)).astype(np.float32)
        same = (self._item_cat[rows][:, None] == self._item_cat[None, :]) & (self._item_cat[rows][:, None] >= 0)
        if self._n_cats == 0:
            same[:] = True
        return np.where(same, share, share - 1.0).astype(np.float32)

    def _load_state(self, folder: Path) -> None:
        self._fit(self.data)  # cheap and deterministic: recompute from the saved training data
