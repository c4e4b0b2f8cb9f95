"""Ranking and beyond-accuracy metrics, vectorised over a batch of users.

Every function works on whole batches with numpy (no Python loop over users or items) and returns
one value *per user* (an ``[n_users]`` float64 array) unless it is a catalogue-level quantity
(coverage). Averaging over test users, and over slices of them, is the caller's job, so a user with
no recommendation still counts, with 0.

Inputs
    ``hits[n, K]``        bool: is the item at rank ``j`` (0-based) one of user ``i``'s targets
    ``n_targets[n]``      how many distinct targets each user has
    ``recommended[n, K]`` int item indices into the item arrays below, ``-1`` = padding (a list
                          shorter than K); only the first ``k`` columns count for a metric "at k"

Accuracy at cutoff k (binary relevance; ``hits@k = sum(hits[:, :k])``; users with no target get 0)
    precision@k  = hits@k / k                      (k, not the list length: short lists are penalised)
    recall@k     = hits@k / n_targets              (RecTools; not min(n_targets, k), so it can be < 1
                                                    even for a perfect list when n_targets > k)
    NDCG@k       = DCG@k / IDCG@k, DCG@k = Σ_{j<k} hits[j] / log2(j + 2),
                   IDCG@k = Σ_{j<min(n_targets, k)} 1 / log2(j + 2)          (RecTools, implicit)
    AP@k         = Σ_{j<k} precision@(j+1) · hits[j] / min(n_targets, k); MAP@k = mean AP@k (implicit)
    HR@k         = 1 if hits@k ≥ 1 else 0
    RR@k         = 1 / (rank of the first hit, 1-based) within the first k, 0 if none; MRR = mean RR

Beyond accuracy (``popularity[i]`` = distinct training users who interacted with item i)
    coverage@k   = |distinct catalogue items recommended in any top-k| / |catalogue|
    novelty@k    = mean over the user's top-k of −log2(max(popularity[i], 1) / n_train_users)
                   (mean self-information; items unseen in training count as one user, as in
                   RecTools' MeanInvUserFreq)
    ILD@k        = share of item pairs in the top-k whose categories differ (0 for lists < 2 items)
    ARP@k        = mean over the user's top-k of popularity[i] (average recommended popularity)
    tail@k       = share of the user's top-k outside the head, the top 20% of catalogue items by
                   popularity (see :func:`long_tail_mask`)

List means (novelty, ILD, ARP, tail) divide by the number of items actually in the list (≤ k); an
empty list scores 0.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

IntMatrix = npt.NDArray[np.int64]
BoolMatrix = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]

HEAD_SHARE = 0.2  # the most popular 20% of catalogue items form the "head"; the rest is the long tail


# --- hits -------------------------------------------------------------------------------------------
def hit_matrix(recommended: IntMatrix, targets: sp.csr_matrix) -> BoolMatrix:
    """``hits[i, j]``: is ``recommended[i, j]`` a non-zero of row ``i`` of ``targets``.

    ``targets`` is a ``n_users × n_items`` CSR matrix aligned with ``recommended``'s item indices.
    Works by encoding each (row, item) pair as one int64 key and looking the recommended keys up in
    the sorted target keys, so the cost is O(n·K·log nnz) with no Python loop.
    """
    n_items = targets.shape[1]
    csr = sp.csr_matrix(targets, copy=True)
    csr.sum_duplicates()  # also sorts the indices, so the keys below come out sorted
    rows = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
    keys = rows * n_items + csr.indices.astype(np.int64)
    if keys.size == 0:
        return np.zeros(recommended.shape, dtype=np.bool_)
    wanted = np.arange(recommended.shape[0], dtype=np.int64)[:, None] * n_items + recommended
    pos = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
    return np.asarray((recommended >= 0) & (keys[pos] == wanted), dtype=np.bool_)


def n_targets_of(targets: sp.csr_matrix) -> Floats:
    """Distinct targets per row of a target matrix."""
    csr = sp.csr_matrix(targets, copy=True)
    csr.sum_duplicates()
    return np.asarray(np.diff(csr.indptr), dtype=np.float64)


# --- accuracy ---------------------------------------------------------------------------------------
def _discounts(k: int) -> Floats:
    """``1 / log2(rank + 1)`` for ranks 1..k."""
    return np.asarray(1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64)), dtype=np.float64)


def _safe_divide(num: Floats, den: Floats) -> Floats:
    """``num / den`` with 0 where ``den`` is 0 (users without targets score 0)."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_at_k(hits: BoolMatrix, k: int) -> Floats:
    """Hits in the top-k divided by k."""
    return np.asarray(hits[:, :k].sum(axis=1) / float(k), dtype=np.float64)


def recall_at_k(hits: BoolMatrix, n_targets: Floats, k: int) -> Floats:
    """Hits in the top-k divided by the user's number of targets."""
    return _safe_divide(hits[:, :k].sum(axis=1).astype(np.float64), np.asarray(n_targets, np.float64))


def ndcg_at_k(hits: BoolMatrix, n_targets: Floats, k: int) -> Floats:
    """Binary-relevance NDCG@k; the ideal list puts ``min(n_targets, k)`` targets first."""
    top = hits[:, :k]
    disc = _discounts(k)
    dcg = np.asarray(top @ disc[: top.shape[1]], dtype=np.float64)
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    idcg = ideal_cum[np.minimum(np.asarray(n_targets, np.int64), k)]
    return _safe_divide(dcg, idcg)


def average_precision_at_k(hits: BoolMatrix, n_targets: Floats, k: int) -> Floats:
    """AP@k normalised by ``min(n_targets, k)``; MAP@k is its mean over users."""
    top = hits[:, :k].astype(np.float64)
    precision_at_rank = np.cumsum(top, axis=1) / np.arange(1, top.shape[1] + 1)
    total = (precision_at_rank * top).sum(axis=1)
    return _safe_divide(total, np.minimum(np.asarray(n_targets, np.float64), k))


def hit_rate_at_k(hits: BoolMatrix, k: int) -> Floats:
    """1.0 for users with at least one hit in the top-k, else 0.0."""
    return np.asarray(hits[:, :k].any(axis=1), dtype=np.float64)


def reciprocal_rank_at_k(hits: BoolMatrix, k: int) -> Floats:
    """``1 / rank`` of the first hit within the top-k (0 if none); MRR is its mean over users."""
    top = hits[:, :k]
    first = np.argmax(top, axis=1)  # first True, or 0 when the row has none (masked below)
    return np.where(top.any(axis=1), 1.0 / (first + 1.0), 0.0)


# --- beyond accuracy --------------------------------------------------------------------------------
def coverage_at_k(recommended: IntMatrix, in_catalogue: npt.NDArray[np.bool_], k: int) -> float:
    """Distinct catalogue items in any top-k, as a share of the catalogue (0 for an empty catalogue)."""
    size = int(in_catalogue.sum())
    top = recommended[:, :k]
    items = np.unique(top[top >= 0])
    return float(in_catalogue[items].sum()) / size if size else 0.0


def list_mean_at_k(recommended: IntMatrix, item_values: Floats, k: int) -> Floats:
    """Per user, the mean of ``item_values`` over the items in their top-k (0 for an empty list)."""
    top = recommended[:, :k]
    valid = top >= 0
    values = np.where(valid, np.asarray(item_values, np.float64)[np.where(valid, top, 0)], 0.0)
    return _safe_divide(values.sum(axis=1), valid.sum(axis=1).astype(np.float64))


def self_information(popularity: Floats, n_train_users: int) -> Floats:
    """``−log2(popularity share)`` per item; items nobody had in training count as one user."""
    share = np.maximum(np.asarray(popularity, np.float64), 1.0) / max(n_train_users, 1)
    return np.asarray(-np.log2(share), dtype=np.float64)


def novelty_at_k(recommended: IntMatrix, popularity: Floats, n_train_users: int, k: int) -> Floats:
    """Mean self-information of the user's top-k items (higher = less obvious recommendations)."""
    return list_mean_at_k(recommended, self_information(popularity, n_train_users), k)


def average_popularity_at_k(recommended: IntMatrix, popularity: Floats, k: int) -> Floats:
    """ARP: mean training popularity of the user's top-k items (higher = more popularity bias)."""
    return list_mean_at_k(recommended, popularity, k)


def long_tail_mask(
    popularity: Floats, in_catalogue: npt.NDArray[np.bool_], head_share: float = HEAD_SHARE
) -> npt.NDArray[np.bool_]:
    """True for items outside the head: the ``ceil(head_share · |catalogue|)`` most popular catalogue items.

    Ties in popularity are broken by item index, so the head always has exactly that many items.
    Items outside the catalogue are never in the head.
    """
    catalogue = np.flatnonzero(in_catalogue)
    order = catalogue[np.lexsort((catalogue, -np.asarray(popularity, np.float64)[catalogue]))]
    tail = np.ones(len(in_catalogue), dtype=np.bool_)
    tail[order[: math.ceil(head_share * len(catalogue))]] = False
    return tail


def long_tail_share_at_k(recommended: IntMatrix, is_tail: npt.NDArray[np.bool_], k: int) -> Floats:
    """Share of the user's top-k items that come from the long tail."""
    return list_mean_at_k(recommended, is_tail.astype(np.float64), k)


def intra_list_diversity_at_k(recommended: IntMatrix, categories: IntMatrix, k: int) -> Floats:
    """Share of item pairs in the user's top-k with different categories (0 for lists of < 2 items).

    ``categories[i]`` is item i's category code (≥ 0). Different pairs = all pairs − same-category
    pairs, and same-category pairs come from per-(user, category) counts built as one sparse matrix.
    """
    top = recommended[:, :k]
    valid = top >= 0
    rows = np.broadcast_to(np.arange(top.shape[0])[:, None], top.shape)[valid]
    codes = np.asarray(categories, np.int64)[top[valid]]
    n_codes = int(codes.max()) + 1 if codes.size else 1
    counts = sp.csr_matrix((np.ones(codes.size), (rows, codes)), shape=(top.shape[0], n_codes))
    counts.sum_duplicates()
    counts.data = counts.data * (counts.data - 1.0) / 2.0  # c items of one category make c·(c−1)/2 pairs
    same = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    m = valid.sum(axis=1).astype(np.float64)
    pairs = m * (m - 1.0) / 2.0
    return _safe_divide(pairs - same, pairs)
