"""The model benchmark's own logic: re-weighting a fitted blend, choosing λ, the ratio and verdict text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from benchmarks.bench_models import MUST_BEAT, _best_l2, _blend_config, _blend_variants, _results_table, _verdicts
from features.ids import IdMap
from features.matrix import InteractionMatrix
from training.models.base import TrainData, get_model_class

ALS_BASE = {"name": "als", "model": {"factors": 2, "iterations": 3, "num_threads": 1, "random_state": 7}}


def _tiny_data() -> TrainData:
    """4 shoppers × 5 items; purchases repeat items 0 and 3 so buy-again has something to score."""
    interactions = np.array(
        [[3, 1, 0, 0, 1], [0, 2, 1, 0, 0], [1, 0, 0, 4, 0], [0, 0, 2, 1, 1]],
        dtype=np.float32,
    )
    purchases = np.array([[2, 0, 0, 0, 1], [0, 1, 0, 0, 0], [1, 0, 0, 3, 0], [0, 0, 1, 1, 0]], dtype=np.float32)
    users, items = IdMap.from_values(["u0", "u1", "u2", "u3"]), IdMap.from_values(["i0", "i1", "i2", "i3", "i4"])
    return TrainData(InteractionMatrix(sp.csr_matrix(interactions), users, items), purchases=sp.csr_matrix(purchases))


def test_blend_variants_score_like_fresh_fits(tmp_path: Path) -> None:
    """Re-weighting a saved blend must give exactly what fitting that config from scratch gives."""
    data = _tiny_data()
    configs = [_blend_config(ALS_BASE, w, r) for w, r in ((0.5, 0.0), (4.0, 1.0), (1.0, 0.5))]
    blend = get_model_class("blend")
    fitted = blend(configs[0]).fit(data)
    rows = np.arange(4, dtype=np.int64)
    variants = list(_blend_variants(fitted, tmp_path / "blend", configs))
    for config, variant in zip(configs, variants, strict=True):
        assert variant.get_config() == config
        np.testing.assert_allclose(variant.score(rows), blend(config).fit(data).score(rows), rtol=1e-6)
    # the weights matter: the first and second variant rank u0's items differently
    assert not np.allclose(variants[0].score(rows), variants[1].score(rows))


def test_best_l2_takes_the_best_validation_score_and_the_smallest_lambda_on_ties() -> None:
    grid = [
        {"l2": 50.0, "new_items": 0.10, "all_items": 0.30},
        {"l2": 500.0, "new_items": 0.12, "all_items": 0.30},
        {"l2": 3000.0, "new_items": 0.12, "all_items": 0.20},
    ]
    assert _best_l2(grid, "new_items") == 500.0
    assert _best_l2(grid, "all_items") == 50.0


def _row(label: str, new: float, all_: float) -> dict[str, Any]:
    nan = float("nan")
    metrics = {
        p: {
            "ndcg_at_10": v,
            "recall_at_20": 0.5,
            "hr_at_10": 0.25,
            "coverage_at_10": 0.125,
            "ndcg_at_10_vs_oracle": nan,
        }
        for p, v in (("new_items", new), ("all_items", all_))
    }
    return {"label": label, "fits": [1.0, 3.0], "metrics": metrics}


def test_results_table_divides_ndcg_by_popularity_and_reports_median_fit_time() -> None:
    text = _results_table([_row("popularity", 0.04, 0.08), _row("champion", 0.10, 0.02)], oracle=False)
    champion = next(line for line in text.splitlines() if "champion" in line)
    cells = [c.strip() for c in champion.strip("|").split("|")]
    # label, train s (median of 1 and 3), new: NDCG, ×pop, Recall, HR, Cov, all: NDCG, ×pop, ...
    assert cells[:4] == ["**champion**", "2.00", "0.1000", "2.50"]
    assert cells[7:9] == ["0.0200", "0.25"]


def test_verdicts_count_wins_and_say_ties_and_losses() -> None:
    rows = [_row(label, 0.05, 0.20) for label in MUST_BEAT]
    rows[0] = _row(MUST_BEAT[0], 0.05, 0.30)  # the first baseline is better on all_items
    rows.append(_row("champion", 0.06, 0.20))  # wins every new_items comparison, ties or loses on all_items
    text = _verdicts(rows, required=True)
    n = len(MUST_BEAT)
    assert f"FAIL ({n} of {2 * n} comparisons won)" in text
    assert text.count("**ties with**") == n - 1
    assert text.count("**does NOT beat**") == 1
    assert f"all_items: champion 0.2000 **does NOT beat** {MUST_BEAT[0]} 0.3000 (0.67×)" in text
    assert "new_items: champion 0.0600 beats popularity 0.0500 (1.20×)" in text


def test_verdicts_pass_only_when_every_comparison_is_won() -> None:
    rows = [_row(label, 0.05, 0.20) for label in MUST_BEAT] + [_row("champion", 0.06, 0.21)]
    n = len(MUST_BEAT)
    assert f"PASS ({2 * n} of {2 * n} comparisons won)" in _verdicts(rows, required=True)
    assert "for information" in _verdicts(rows, required=False)
