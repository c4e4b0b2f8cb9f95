"""Every metric in ``training.metrics`` against values computed by hand on a few users."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from training import metrics as m

# --- accuracy fixture -------------------------------------------------------------------------------
# 6 items. Recommendations (K = 4, -1 = padding) and targets per user:
#   u0: [0, 1, 2, 3]    targets {0, 2}          hits [1, 0, 1, 0]
#   u1: [4, 5, -, -]    targets {5}             hits [0, 1, 0, 0]   (list shorter than k, hit at rank 2)
#   u2: [1, 3, 5, 0]    targets {0,1,2,3,4}     hits [1, 1, 0, 1]   (more targets than k)
#   u3: [2, -, -, -]    targets {4}             hits [0, 0, 0, 0]   (no hit)
#   u4: [0, 1, 2, 3]    targets {}              hits [0, 0, 0, 0]   (no target at all: scores 0, no NaN)
RECO = np.array([[0, 1, 2, 3], [4, 5, -1, -1], [1, 3, 5, 0], [2, -1, -1, -1], [0, 1, 2, 3]], dtype=np.int64)
TARGET_SETS = [{0, 2}, {5}, {0, 1, 2, 3, 4}, {4}, set()]
HITS = np.array(
    [[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]],
    dtype=np.bool_,
)
N_TARGETS = np.array([2, 1, 5, 1, 0], dtype=np.float64)
L2, L3, L4, L5 = math.log2(2), math.log2(3), math.log2(4), math.log2(5)


def _targets() -> sp.csr_matrix:
    rows = [u for u, items in enumerate(TARGET_SETS) for _ in items]
    cols = [i for items in TARGET_SETS for i in sorted(items)]
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(TARGET_SETS), 6))


def test_hit_matrix_and_target_counts() -> None:
    np.testing.assert_array_equal(m.hit_matrix(RECO, _targets()), HITS)
    np.testing.assert_array_equal(m.n_targets_of(_targets()), N_TARGETS)


def test_hit_matrix_ignores_padding_that_would_alias_the_previous_row() -> None:
    # Row 1's padding key would be 1·6 − 1 = 5 = (row 0, item 5): it must not count as a hit.
    targets = sp.csr_matrix(([1.0], ([0], [5])), shape=(2, 6))
    hits = m.hit_matrix(np.array([[5], [-1]], dtype=np.int64), targets)
    np.testing.assert_array_equal(hits, [[True], [False]])


def test_hit_matrix_without_any_target() -> None:
    hits = m.hit_matrix(RECO, sp.csr_matrix((5, 6)))
    assert hits.shape == RECO.shape
    assert not hits.any()


def test_precision() -> None:
    # hits in top-k / k, even for u1's two-item list: u1@4 = 1/4
    np.testing.assert_allclose(m.precision_at_k(HITS, 4), [2 / 4, 1 / 4, 3 / 4, 0, 0])
    np.testing.assert_allclose(m.precision_at_k(HITS, 2), [1 / 2, 1 / 2, 2 / 2, 0, 0])


def test_recall() -> None:
    # hits / n_targets; u2 has 5 targets, so even 3 hits in 4 slots give 3/5
    np.testing.assert_allclose(m.recall_at_k(HITS, N_TARGETS, 4), [2 / 2, 1 / 1, 3 / 5, 0, 0])
    np.testing.assert_allclose(m.recall_at_k(HITS, N_TARGETS, 2), [1 / 2, 1 / 1, 2 / 5, 0, 0])


def test_ndcg() -> None:
    expected_at_4 = [
        (1 / L2 + 1 / L4) / (1 / L2 + 1 / L3),  # u0: hits at ranks 1 and 3; ideal = 2 targets first
        (1 / L3) / (1 / L2),  # u1: hit at rank 2; ideal = 1 target at rank 1
        (1 / L2 + 1 / L3 + 1 / L5) / (1 / L2 + 1 / L3 + 1 / L4 + 1 / L5),  # u2: IDCG over min(5, 4) = 4
        0.0,
        0.0,
    ]
    np.testing.assert_allclose(m.ndcg_at_k(HITS, N_TARGETS, 4), expected_at_4)
    expected_at_2 = [(1 / L2) / (1 / L2 + 1 / L3), (1 / L3) / (1 / L2), 1.0, 0.0, 0.0]
    np.testing.assert_allclose(m.ndcg_at_k(HITS, N_TARGETS, 2), expected_at_2)


def test_average_precision() -> None:
    expected_at_4 = [
        (1 / 1 + 2 / 3) / 2,  # u0: precision 1/1 at rank 1, 2/3 at rank 3; / min(2, 4)
        (1 / 2) / 1,  # u1: precision 1/2 at rank 2; / min(1, 4)
        (1 / 1 + 2 / 2 + 3 / 4) / 4,  # u2: / min(5, 4) = 4
        0.0,
        0.0,
    ]
    np.testing.assert_allclose(m.average_precision_at_k(HITS, N_TARGETS, 4), expected_at_4)
    # k = 2: u0 (1/1) / min(2, 2); u2 (1/1 + 2/2) / min(5, 2)
    np.testing.assert_allclose(m.average_precision_at_k(HITS, N_TARGETS, 2), [1 / 2, 1 / 2, 1.0, 0, 0])


def test_hit_rate_and_reciprocal_rank() -> None:
    np.testing.assert_allclose(m.hit_rate_at_k(HITS, 4), [1, 1, 1, 0, 0])
    np.testing.assert_allclose(m.hit_rate_at_k(HITS, 1), [1, 0, 1, 0, 0])
    np.testing.assert_allclose(m.reciprocal_rank_at_k(HITS, 4), [1, 1 / 2, 1, 0, 0])
    np.testing.assert_allclose(m.reciprocal_rank_at_k(HITS, 1), [1, 0, 1, 0, 0])  # u1's hit is beyond k=1


def test_k_larger_than_the_lists() -> None:
    # K = 4 columns, k = 10: missing slots count as misses; precision still divides by 10
    np.testing.assert_allclose(m.precision_at_k(HITS, 10), [2 / 10, 1 / 10, 3 / 10, 0, 0])
    # u2 at k=10: IDCG over min(5, 10) = 5 ranks
    idcg_u2 = 1 / L2 + 1 / L3 + 1 / L4 + 1 / L5 + 1 / math.log2(6)
    assert m.ndcg_at_k(HITS, N_TARGETS, 10)[2] == pytest.approx((1 / L2 + 1 / L3 + 1 / L5) / idcg_u2)


# --- beyond-accuracy fixture ------------------------------------------------------------------------
# 8 items; item 6 is not in the catalogue (7 catalogue items). Train has 4 users.
#   popularity (distinct train users) = [4, 2, 1, 0, 1, 0, 3, 0]
#   categories                        = [0, 0, 1, 2, 1, 1, 3, 0]
BA_RECO = np.array([[0, 1, 2, 3], [4, 5, -1, -1], [6, -1, -1, -1], [-1, -1, -1, -1]], dtype=np.int64)
POPULARITY = np.array([4, 2, 1, 0, 1, 0, 3, 0], dtype=np.float64)
IN_CATALOGUE = np.array([1, 1, 1, 1, 1, 1, 0, 1], dtype=np.bool_)
CATEGORIES = np.array([0, 0, 1, 2, 1, 1, 3, 0], dtype=np.int64)


def test_coverage() -> None:
    # top-4: catalogue items {0..5} recommended (item 6 is not in the catalogue) → 6 / 7
    assert m.coverage_at_k(BA_RECO, IN_CATALOGUE, 4) == pytest.approx(6 / 7)
    # top-2: {0, 1, 4, 5} → 4 / 7
    assert m.coverage_at_k(BA_RECO, IN_CATALOGUE, 2) == pytest.approx(4 / 7)
    assert m.coverage_at_k(BA_RECO, np.zeros(8, dtype=np.bool_), 2) == 0.0


def test_novelty() -> None:
    # self-information −log2(max(pop, 1) / 4) = [0, 1, 2, 2, 2, 2, −log2(3/4), 2]
    np.testing.assert_allclose(m.self_information(POPULARITY, 4), [0, 1, 2, 2, 2, 2, -math.log2(3 / 4), 2])
    # u0 (0+1+2+2)/4; u1 (2+2)/2; u2 −log2(3/4); u3 has no recommendation → 0
    expected = [5 / 4, 2.0, -math.log2(3 / 4), 0.0]
    np.testing.assert_allclose(m.novelty_at_k(BA_RECO, POPULARITY, 4, 4), expected)


def test_average_recommended_popularity() -> None:
    # u0 (4+2+1+0)/4; u1 (1+0)/2; u2 3/1; u3 0
    np.testing.assert_allclose(m.average_popularity_at_k(BA_RECO, POPULARITY, 4), [7 / 4, 1 / 2, 3, 0])
    np.testing.assert_allclose(m.average_popularity_at_k(BA_RECO, POPULARITY, 2), [6 / 2, 1 / 2, 3, 0])


def test_long_tail() -> None:
    # head = ceil(0.2 · 7) = 2 most popular catalogue items: {0 (4 users), 1 (2 users)}; item 6 (outside
    # the catalogue) is tail although 3 users had it
    tail = m.long_tail_mask(POPULARITY, IN_CATALOGUE)
    np.testing.assert_array_equal(tail, [False, False, True, True, True, True, True, True])
    # u0 {2, 3} of 4; u1 2 of 2; u2 1 of 1; u3 empty → 0
    np.testing.assert_allclose(m.long_tail_share_at_k(BA_RECO, tail, 4), [2 / 4, 1, 1, 0])
    np.testing.assert_allclose(m.long_tail_share_at_k(BA_RECO, tail, 2), [0, 1, 1, 0])


def test_long_tail_ties_are_broken_by_item_index() -> None:
    # head = ceil(0.4 · 7) = 3: items 0, 1, then 2 and 4 tie at 1 user → the lower index (2) wins
    tail = m.long_tail_mask(POPULARITY, IN_CATALOGUE, head_share=0.4)
    np.testing.assert_array_equal(np.flatnonzero(~tail), [0, 1, 2])


def test_intra_list_diversity() -> None:
    # u0 categories [0, 0, 1, 2]: 6 pairs, 1 same-category pair (items 0, 1) → 5/6
    # u1 [1, 1]: 1 pair, same → 0;  u2 one item → 0;  u3 empty → 0
    np.testing.assert_allclose(m.intra_list_diversity_at_k(BA_RECO, CATEGORIES, 4), [5 / 6, 0, 0, 0])
    # k = 3, u0 [0, 0, 1]: 3 pairs, 1 same → 2/3
    np.testing.assert_allclose(m.intra_list_diversity_at_k(BA_RECO, CATEGORIES, 3), [2 / 3, 0, 0, 0])


def test_list_metrics_on_an_empty_batch() -> None:
    empty = np.zeros((0, 3), dtype=np.int64)
    assert m.novelty_at_k(empty, POPULARITY, 4, 3).shape == (0,)
    assert m.intra_list_diversity_at_k(empty, CATEGORIES, 3).shape == (0,)
    assert m.ndcg_at_k(np.zeros((0, 3), dtype=np.bool_), np.zeros(0), 3).shape == (0,)
