"""Model-specific known answers: EASE's closed form, exact popularity and buy-again scores, blend,
ALS fold-in and LightFM cold start. The shared contract lives in ``test_models.py``."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from features.columns import Columns
from features.feature_matrices import build_user_features, feature_rows
from features.ids import IdMap
from features.matrix import FeatureMatrix, InteractionMatrix
from tests.test_models import GROUP_ITEMS, checkerboard
from training.models.base import ModelError, TrainData, get_model_class
from training.models.ease import ease_weights
from training.models.implicit_models import ALS
from training.models.lightfm_model import LightFM


def train_data(
    dense: Sequence[Sequence[float]],
    users: list[str],
    items: list[str],
    *,
    item_features: dict[str, list[str]] | None = None,
    user_features: dict[str, list[str]] | None = None,
    purchases: Sequence[Sequence[float]] | None = None,
) -> TrainData:
    """TrainData from a dense matrix (rows/columns in sorted-id order) and one-hot feature dicts."""
    user_map, item_map = IdMap.from_values(users), IdMap.from_values(items)
    assert user_map.external.tolist() == users, "give user ids sorted"
    assert item_map.external.tolist() == items, "give item ids sorted"
    matrix = InteractionMatrix(sp.csr_matrix(np.asarray(dense, dtype=np.float32)), user_map, item_map)
    return TrainData(
        matrix,
        _features(item_features, item_map),
        _features(user_features, user_map),
        sp.csr_matrix(np.asarray(purchases, dtype=np.float32)) if purchases is not None else None,
    )


def _features(spec: dict[str, list[str]] | None, ids: IdMap) -> FeatureMatrix | None:
    if spec is None:
        return None
    names = sorted({n for row in spec.values() for n in row})
    dense = np.zeros((len(ids), len(names)), dtype=np.float32)
    for entity, row in spec.items():
        for name in row:
            dense[ids.index_of(entity), names.index(name)] = 1.0
    return FeatureMatrix(sp.csr_matrix(dense), ids, np.asarray(names))


def scores_of(model: object, user: str) -> dict[str, float]:
    recs = model.recommend([user], 10, filter_seen=False)  # type: ignore[attr-defined]
    return {str(i): float(s) for i, s in zip(recs.item_ids[0], recs.scores[0], strict=True) if i}


# --- EASE ------------------------------------------------------------------------------------------
EASE_X = [[1, 1, 0], [1, 0, 0], [0, 0, 1]]


def test_ease_weights_match_closed_form_by_hand_and_numpy() -> None:
    # G + λI = [[3,1,0],[1,2,0],[0,0,2]] for λ=1; P = inv = [[2/5,-1/5,0],[-1/5,3/5,0],[0,0,1/2]];
    # B_ij = -P_ij / P_jj: B_01 = (1/5)/(3/5) = 1/3, B_10 = (1/5)/(2/5) = 1/2, the rest 0.
    X = np.asarray(EASE_X, dtype=np.float64)
    P = np.linalg.inv(X.T @ X + 1.0 * np.eye(3))
    by_formula = np.eye(3) - P @ np.diag(1.0 / np.diag(P))
    np.fill_diagonal(by_formula, 0.0)
    by_hand = np.asarray([[0, 1 / 3, 0], [1 / 2, 0, 0], [0, 0, 0]])
    B = ease_weights(sp.csr_matrix(X), 1.0)
    assert B.dtype == np.float32
    np.testing.assert_allclose(B, by_formula, atol=1e-7)
    np.testing.assert_allclose(B, by_hand, atol=1e-7)


def test_ease_model_scores_are_x_times_b() -> None:
    data = train_data(EASE_X, ["u0", "u1", "u2"], ["i0", "i1", "i2"])
    model = get_model_class("ease")({"l2": 1.0}).fit(data)
    recs = model.recommend(["u1"], 1)  # u1 has only i0; x B = [0, 1/3, 0]
    assert recs.item_ids.tolist() == [["i1"]]
    assert recs.scores[0, 0] == pytest.approx(1 / 3)
    sims = model.similar_items(["i1"], 2)  # row 1 of B: i0 gets 1/2, i2 gets 0
    assert sims.item_ids.tolist() == [["i0", "i2"]]
    np.testing.assert_allclose(sims.scores[0], [0.5, 0.0], atol=1e-7)


def test_ease_refuses_large_catalogue_naming_size_limit_and_memory() -> None:
    data = train_data(EASE_X, ["u0", "u1", "u2"], ["i0", "i1", "i2"])
    with pytest.raises(ModelError, match=r"3 items.*max_items=2.*216 B"):  # 3² × 8 × 3 bytes
        get_model_class("ease")({"max_items": 2}).fit(data)


# --- popularity ------------------------------------------------------------------------------------
POP = train_data(
    [[2, 0, 1, 0], [1, 3, 0, 0], [0, 1, 0, 4]],  # u1: p=2 r=1; u2: p=1 q=3; u3: q=1 s=4
    ["u1", "u2", "u3"],
    ["p", "q", "r", "s"],
    item_features={"p": ["category=x"], "q": ["category=x"], "r": ["category=y"], "s": ["category=y"]},
    user_features={"u1": ["segment=s1"], "u2": ["segment=s1"], "u3": ["segment=s2"]},
)


def test_popularity_counts_distinct_users_or_weights() -> None:
    by_users = get_model_class("popularity")().fit(POP)
    assert scores_of(by_users, "nobody") == {"p": 2, "q": 2, "r": 1, "s": 1}
    assert scores_of(by_users, "u3") == {"p": 2, "q": 2, "r": 1, "s": 1}
    by_weight = get_model_class("popularity")({"by": "weight"}).fit(POP)
    assert scores_of(by_weight, "nobody") == {"p": 3, "q": 4, "r": 1, "s": 4}


def test_popularity_within_category_is_affinity_times_share() -> None:
    model = get_model_class("popularity")({"by": "weight", "within": "category"}).fit(POP)
    # shares: x total 7 → p 3/7, q 4/7; y total 5 → r 1/5, s 4/5. u1 spends 2/3 on x, 1/3 on y.
    expected_u1 = {"p": Fraction(2, 3) * Fraction(3, 7), "q": Fraction(2, 3) * Fraction(4, 7)}
    expected_u1 |= {"r": Fraction(1, 3) * Fraction(1, 5), "s": Fraction(1, 3) * Fraction(4, 5)}
    assert scores_of(model, "u1") == pytest.approx({k: float(v) for k, v in expected_u1.items()})
    # u2 never touched y: its items follow, by global share − 1 (total weight 12).
    assert scores_of(model, "u2") == pytest.approx({"p": 3 / 7, "q": 4 / 7, "r": 1 / 12 - 1, "s": 4 / 12 - 1})
    assert scores_of(model, "nobody") == {"p": 3, "q": 4, "r": 1, "s": 4}, "unknown users: global"
    assert model.similar_items(["p"], 3).item_ids.tolist() == [["q", "s", "r"]], "same category first"


def test_popularity_within_segment_counts_users_of_the_segment() -> None:
    model = get_model_class("popularity")({"within": "segment"}).fit(POP)
    # s1 = {u1, u2}: p 2, q 1, r 1, s untouched → 1/6 − 1 (global share by users, total 6)
    assert scores_of(model, "u1") == pytest.approx({"p": 2, "q": 1, "r": 1, "s": 1 / 6 - 1})
    assert scores_of(model, "u3") == pytest.approx({"q": 1, "s": 1, "p": 2 / 6 - 1, "r": 1 / 6 - 1})


def test_popularity_groups_need_their_features() -> None:
    bare = TrainData(POP.interactions)
    for within, key in (("category", "category=..."), ("segment", "segment=...")):
        with pytest.raises(ModelError, match=key):
            get_model_class("popularity")({"within": within}).fit(bare)


# --- buy again and blend ---------------------------------------------------------------------------
BOUGHT = [[3, 1, 0], [1, 0, 2], [0, 1, 0]]
REPEAT = train_data(BOUGHT, ["u0", "u1", "u2"], ["i0", "i1", "i2"], purchases=BOUGHT)


def test_buy_again_scores_count_times_repeat_rate_factor() -> None:
    # repeat rates (smoothing 0): i0 1 of 2 buyers repeats → 1/2; i1 0 of 2 → 0; i2 1 of 1 → 1.
    # factor = 0.5 + 0.5 × rate = [0.75, 0.5, 1.0]; score = count × factor.
    model = get_model_class("buy_again")({"smoothing": 0.0}).fit(REPEAT)
    assert model.recommends_seen_items
    assert scores_of(model, "u0") == {"i0": 2.25, "i1": 0.5}
    assert scores_of(model, "u1") == {"i2": 2.0, "i0": 0.75}
    assert scores_of(model, "u2") == {"i1": 0.5}
    smoothed = get_model_class("buy_again")({"smoothing": 1.0, "repeat_rate_weight": 1.0}).fit(REPEAT)
    assert scores_of(smoothed, "u1") == pytest.approx({"i2": 2 * (1 / 2), "i0": 1 * (1 / 3)})


def test_buy_again_falls_back_to_interactions_and_checks_purchase_shape() -> None:
    without = TrainData(REPEAT.interactions)
    model = get_model_class("buy_again")({"smoothing": 0.0}).fit(without)
    assert scores_of(model, "u0") == {"i0": 2.25, "i1": 0.5}
    wrong = TrainData(REPEAT.interactions, purchases=sp.csr_matrix((3, 2), dtype=np.float32))
    with pytest.raises(ModelError, match=r"purchases have shape \(3, 2\)"):
        get_model_class("buy_again")().fit(wrong)


def test_blend_adds_normalised_repeat_scores_to_base_scores() -> None:
    config = {"base": {"name": "popularity"}, "repeat_weight": 1.0, "buy_again": {"smoothing": 0.0}}
    model = get_model_class("blend")(config).fit(REPEAT)
    # popularity (distinct users) [2, 2, 1] → min-max [1, 1, 0]; u0's buy-again [2.25, 0.5, -] / 2.25.
    assert scores_of(model, "u0") == pytest.approx({"i0": 2.0, "i1": 1 + 0.5 / 2.25, "i2": 0.0})
    assert scores_of(model, "nobody") == {"i0": 2.0, "i1": 2.0, "i2": 1.0}, "unknown users: the base's answer"
    assert model.handles_unknown_users
    assert model.recommends_seen_items
    assert model.get_config()["base"]["config"] == {"by": "users", "within": None}, "base config normalised"


def test_blend_config_validates_its_base() -> None:
    blend = get_model_class("blend")
    with pytest.raises(ValidationError, match="nope"):
        blend({"base": {"name": "als", "config": {"nope": 1}}})
    with pytest.raises(ValidationError, match=r"known models: .*als"):
        blend({"base": {"name": "no-such-model"}})
    with pytest.raises(ValidationError, match="another blend"):
        blend({"base": {"name": "blend"}})


# --- ALS fold-in -----------------------------------------------------------------------------------
def test_als_fold_in_reproduces_fitted_users() -> None:
    data = checkerboard()
    model = ALS({"factors": 4, "iterations": 10, "regularization": 1.0, "num_threads": 1}).fit(data)
    X = data.interactions.matrix
    folded = model.fold_in(X)
    cosine = np.sum(folded * model.user_factors, axis=1) / (
        np.linalg.norm(folded, axis=1) * np.linalg.norm(model.user_factors, axis=1)
    )
    assert cosine.min() > 0.99
    users = data.interactions.users.external
    from_history = model.recommend_from_history(X, 2, query_ids=list(users))
    fitted = model.recommend(users, 2)
    for a, b in zip(from_history.item_ids, fitted.item_ids, strict=True):
        assert set(a.tolist()) == set(b.tolist())
    assert from_history.query_ids.tolist() == users.tolist()


def test_als_recommend_from_history_for_a_new_user() -> None:
    data = checkerboard()
    model = ALS({"factors": 4, "iterations": 10, "regularization": 1.0, "num_threads": 1}).fit(data)
    items = data.interactions.items
    bought = items.to_internal(["b0", "b1", "b2", "b3"])
    history = sp.csr_matrix((np.ones(4), (np.zeros(4, dtype=int), bought)), shape=(2, len(items)))
    recs = model.recommend_from_history(history, 2)
    assert set(recs.item_ids[0].tolist()) == {"b4", "b5"}, "a b-shopper gets the rest of the b items"
    assert (recs.item_ids[1] == "").all(), "an empty history gives a padded row"
    assert "b5" not in model.recommend_from_history(history, 2, exclude_items=["b5"]).item_ids[0].tolist()
    assert "b0" in model.recommend_from_history(history, 12, filter_seen=False).item_ids[0].tolist()
    with pytest.raises(ValueError, match="5 columns"):
        model.fold_in(sp.csr_matrix((1, 5)))


# --- LightFM cold start ----------------------------------------------------------------------------
def test_lightfm_cold_user_with_a_segment_gets_that_segments_items() -> None:
    model = LightFM({"no_components": 8, "epochs": 30}).fit(checkerboard())
    assert model.user_feature_names.tolist() == ["segment=a", "segment=b"]
    rows = model.user_feature_rows([["segment=a"], ["segment=b"], []])
    recs = model.recommend_cold(rows, GROUP_ITEMS, query_ids=["new-a", "new-b", "new-none"])
    assert {str(i)[0] for i in recs.item_ids[0]} == {"a"}
    assert {str(i)[0] for i in recs.item_ids[1]} == {"b"}
    unknown = model.recommend(["nobody"], GROUP_ITEMS)
    np.testing.assert_array_equal(recs.scores[2], unknown.scores[0])  # no features → unknown-user mean
    with pytest.raises(ValueError, match="unknown user feature 'segment=z'"):
        model.user_feature_rows([["segment=z"]])


def test_lightfm_scores_new_items_from_their_features() -> None:
    model = LightFM({"no_components": 8, "epochs": 30}).fit(checkerboard())
    new_items = model.item_feature_rows([["category=a"], ["category=b"]])
    scores = model.score_new_items(new_items, ["ua0", "ub0", "nobody"])
    assert scores.shape == (3, 2)
    assert scores[0, 0] > scores[0, 1], "an a-user prefers the new a-item"
    assert scores[1, 1] > scores[1, 0], "a b-user prefers the new b-item"


def test_lightfm_without_user_features_refuses_cold_rows() -> None:
    model = LightFM({"no_components": 4, "epochs": 2, "use_user_features": False}).fit(checkerboard())
    assert model.user_feature_names.tolist() == []
    with pytest.raises(ModelError, match="without user features"):
        model.recommend_cold(sp.csr_matrix((1, 0)), 3)
    assert (model.recommend(["nobody"], 3).item_ids != "").all(), "mean user representation"


def test_lightfm_accepts_feature_matrices_with_their_own_identity_block() -> None:
    """``features.feature_matrices`` output (identity block first) and its cold-start rows."""
    data = checkerboard()
    users = data.interactions.users
    segments = pl.DataFrame({Columns.USER: users.external, Columns.SEGMENT: [str(u)[1] for u in users.external]})
    user_f = build_user_features(segments, users)
    assert str(user_f.names[0]).startswith(f"{Columns.USER}=")
    model = LightFM({"no_components": 8, "epochs": 30}).fit(TrainData(data.interactions, data.item_features, user_f))
    assert model.user_feature_names.tolist() == ["segment=a", "segment=b"]
    cold = feature_rows(pl.DataFrame({Columns.USER: ["new"], Columns.SEGMENT: ["b"]}), user_f)
    assert cold.shape[1] == len(user_f.names)
    recs = model.recommend_cold(cold, GROUP_ITEMS)
    assert {str(i)[0] for i in recs.item_ids[0]} == {"b"}


def test_diverging_fit_raises_and_keeps_the_previous_model() -> None:
    data = checkerboard()
    model = get_model_class("bpr")({"factors": 4, "iterations": 50, "num_threads": 1}).fit(data)
    before = model.recommend(["ua0"], 3)
    diverging = {"factors": 64, "learning_rate": 1.0, "regularization": 0.0, "iterations": 500, "num_threads": 1}
    model.config = type(model.config).model_validate(diverging)
    with pytest.raises(ModelError, match="NaN"):
        model.fit(checkerboard(("c", "d")))
    after = model.recommend(["ua0"], 3)
    np.testing.assert_array_equal(before.item_ids, after.item_ids)
    np.testing.assert_array_equal(before.scores, after.scores)
