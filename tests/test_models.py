"""The contract every registered model keeps, checked on a checkerboard with known answers.

Parametrised over ``REGISTRY``: a newly registered model is covered automatically (with its default
config unless ``FAST`` gives a quicker one).

The data (after implicit's ``get_checker_board``): two groups of 8 users each like the 6 items of their
own group, except two items per user, so a good model fills those two gaps from the user's own group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

import training.models  # noqa: F401  (registers the built-in models)
import training.models.base as base_module
from features.ids import IdMap
from features.matrix import FeatureMatrix, InteractionMatrix
from training.models.base import REGISTRY, ModelError, Recommender, TrainData, get_model_class

GROUP_USERS, GROUP_ITEMS = 8, 6

FAST: dict[str, dict[str, Any]] = {
    "als": {"factors": 4, "iterations": 10, "regularization": 1.0, "num_threads": 1},
    "bpr": {"factors": 4, "iterations": 200, "learning_rate": 0.05, "num_threads": 1},
    "lightfm": {"no_components": 8, "epochs": 30},
    "ease": {"l2": 10.0},
    "blend": {
        "base": {"name": "als", "config": {"factors": 4, "iterations": 10, "regularization": 1.0, "num_threads": 1}}
    },
}


def checkerboard(groups: tuple[str, ...] = ("a", "b")) -> TrainData:
    """Users ``u<g><n>`` like items ``<g><j>`` of their group ``g`` except ``j = n, n+1 (mod 6)``.

    Weights (also purchase counts) are ``1 + (n + j) % 3``. Items have ``category=<g>`` (and every
    other item ``brand=x``); users have ``segment=<g>``.
    """
    users = [f"u{g}{n}" for g in groups for n in range(GROUP_USERS)]
    items = [f"{g}{j}" for g in groups for j in range(GROUP_ITEMS)]
    dense = np.zeros((len(users), len(items)), dtype=np.float32)
    for gi in range(len(groups)):
        for n in range(GROUP_USERS):
            for j in range(GROUP_ITEMS):
                if j not in (n % GROUP_ITEMS, (n + 1) % GROUP_ITEMS):
                    dense[gi * GROUP_USERS + n, gi * GROUP_ITEMS + j] = 1 + (n + j) % 3
    # IdMap sorts ids; these names already sort in construction order.
    user_map, item_map = IdMap(np.asarray(users)), IdMap(np.asarray(items))
    matrix = sp.csr_matrix(dense)
    item_names = np.asarray([f"category={g}" for g in groups] + ["brand=x"])
    item_f = np.zeros((len(items), len(item_names)), dtype=np.float32)
    user_f = np.zeros((len(users), len(groups)), dtype=np.float32)
    for gi in range(len(groups)):
        item_f[gi * GROUP_ITEMS : (gi + 1) * GROUP_ITEMS, gi] = 1
        user_f[gi * GROUP_USERS : (gi + 1) * GROUP_USERS, gi] = 1
    item_f[::2, -1] = 1
    return TrainData(
        InteractionMatrix(matrix, user_map, item_map),
        FeatureMatrix(sp.csr_matrix(item_f), item_map, item_names),
        FeatureMatrix(sp.csr_matrix(user_f), user_map, np.asarray([f"segment={g}" for g in groups])),
        matrix.copy(),
    )


DATA = checkerboard()
USERS = DATA.interactions.users.external
ITEMS = DATA.interactions.items.external
N_ITEMS = len(ITEMS)
NAMES = sorted(REGISTRY)
# Models answering recommend/similar_items through a library path instead of the dense base path.
FAST_PATH = [
    n
    for n in NAMES
    if REGISTRY[n].recommend is not Recommender.recommend or REGISTRY[n].similar_items is not Recommender.similar_items
]


def make(name: str) -> Recommender:
    return get_model_class(name)(FAST.get(name))


@pytest.fixture(scope="module")
def fitted() -> dict[str, Recommender]:
    """One fitted model per registered name, shared by the read-only tests of this module."""
    return {name: make(name).fit(DATA) for name in NAMES}


def seen_items(user: str) -> set[str]:
    row = DATA.interactions.matrix[DATA.interactions.users.to_internal([user])[0]]
    return set(ITEMS[row.indices])


def row_items(items: np.ndarray) -> list[str]:
    return [str(i) for i in items if i != ""]


# --- known answers ---------------------------------------------------------------------------------
def check_group_purity(model: Recommender) -> None:
    """Each user's two best unseen items are exactly the two gaps in their own group."""
    recs = model.recommend(USERS, 2)
    for user, items in zip(USERS, recs.item_ids, strict=True):
        group = str(user)[1]
        gaps = {f"{group}{j}" for j in range(GROUP_ITEMS)} - seen_items(str(user))
        assert set(items.tolist()) == gaps, f"{model.name}: {user} got {items}, expected {gaps}"


def check_popularity(model: Recommender) -> None:
    """Unknown users get items by number of distinct users, scores equal to those counts."""
    counts = np.asarray((DATA.interactions.matrix > 0).sum(axis=0)).ravel()
    recs = model.recommend(["nobody"], N_ITEMS)
    got = dict(zip(recs.item_ids[0].tolist(), recs.scores[0].tolist(), strict=True))
    assert got == {str(i): float(c) for i, c in zip(ITEMS, counts, strict=True)}
    assert np.all(np.diff(recs.scores[0]) <= 0)


def check_buy_again(model: Recommender) -> None:
    """Without seen filtering, each user gets exactly the items they bought; with it, nothing."""
    recs = model.recommend(USERS, N_ITEMS, filter_seen=False)
    for user, items in zip(USERS, recs.item_ids, strict=True):
        assert set(row_items(items)) == seen_items(str(user))
    assert (model.recommend(USERS, N_ITEMS).item_ids == "").all()


KNOWN_ANSWER = {"popularity": check_popularity, "buy_again": check_buy_again}


@pytest.mark.parametrize("name", NAMES)
def test_known_answer(fitted: dict[str, Recommender], name: str) -> None:
    KNOWN_ANSWER.get(name, check_group_purity)(fitted[name])


# --- the contract ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_and_external_ids(fitted: dict[str, Recommender], name: str) -> None:
    model = fitted[name]
    recs = model.recommend(USERS[:3], 5, filter_seen=False)
    assert recs.item_ids.shape == recs.scores.shape == (3, 5)
    assert recs.query_ids.tolist() == USERS[:3].tolist()
    assert set(recs.item_ids.ravel().tolist()) <= set(ITEMS.tolist()) | {""}
    assert recs.scores.dtype == np.float32
    finite = np.isfinite(recs.scores)
    assert ((recs.item_ids != "") == finite).all()
    assert np.all(np.diff(np.where(finite, recs.scores, -1e30), axis=1) <= 0), "best first"
    assert model.recommend(USERS[:1], 10 * N_ITEMS).item_ids.shape == (1, N_ITEMS), "k capped at catalogue"


@pytest.mark.parametrize("name", NAMES)
def test_filter_seen(fitted: dict[str, Recommender], name: str) -> None:
    model = fitted[name]
    filtered = model.recommend(USERS, N_ITEMS)
    unfiltered = model.recommend(USERS, N_ITEMS, filter_seen=False)
    repeated = 0
    for user, kept, everything in zip(USERS, filtered.item_ids, unfiltered.item_ids, strict=True):
        assert not set(row_items(kept)) & seen_items(str(user))
        repeated += len(set(row_items(everything)) & seen_items(str(user)))
    assert repeated > 0, "without filtering, seen items are recommended"


@pytest.mark.parametrize("name", NAMES)
def test_exclude_and_exclude_items(fitted: dict[str, Recommender], name: str) -> None:
    model = fitted[name]
    users = USERS[[0, 1, 9]]
    base = model.recommend(users, N_ITEMS, filter_seen=False)
    top1 = base.item_ids[:, 0]
    exclude = sp.csr_matrix((np.ones(3), (np.arange(3), DATA.interactions.items.to_internal(top1))), shape=(3, N_ITEMS))
    banned = str(base.item_ids[0, 1])
    recs = model.recommend(users, N_ITEMS, filter_seen=False, exclude=exclude, exclude_items=[banned, "not-an-item"])
    for i in range(3):
        before = dict(zip(row_items(base.item_ids[i]), base.scores[i].tolist(), strict=False))
        after = dict(zip(row_items(recs.item_ids[i]), recs.scores[i].tolist(), strict=False))
        assert after == {k: v for k, v in before.items() if k not in {top1[i], banned}}
    with pytest.raises(ValueError, match="exclude has shape"):
        model.recommend(users, 3, exclude=exclude[:2])


@pytest.mark.parametrize("name", NAMES)
def test_unknown_users(fitted: dict[str, Recommender], name: str) -> None:
    model = fitted[name]
    recs = model.recommend(["nobody", str(USERS[0])], 4, filter_seen=False)
    assert recs.query_ids.tolist() == ["nobody", USERS[0]]
    if model.handles_unknown_users:
        assert (recs.item_ids[0] != "").all()
    else:
        assert (recs.item_ids[0] == "").all()
        assert np.isneginf(recs.scores[0]).all()
    assert (recs.item_ids[1] != "").any()


@pytest.mark.parametrize("name", NAMES)
def test_similar_items(fitted: dict[str, Recommender], name: str) -> None:
    model = fitted[name]
    sims = model.similar_items(np.append(ITEMS, "not-an-item"), N_ITEMS)
    assert sims.item_ids.shape == (N_ITEMS + 1, N_ITEMS)
    for query, items in zip(ITEMS, sims.item_ids, strict=False):
        assert query not in items.tolist()
    assert (sims.item_ids[-1] == "").all()


@pytest.mark.parametrize("name", NAMES)
def test_save_load_identical(fitted: dict[str, Recommender], name: str, tmp_path: Path) -> None:
    model = fitted[name]
    model.save(tmp_path / name)
    loaded = Recommender.load(tmp_path / name)
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    queries = np.append(USERS, "nobody")
    for filter_seen in (True, False):
        a, b = (
            model.recommend(queries, 5, filter_seen=filter_seen),
            loaded.recommend(queries, 5, filter_seen=filter_seen),
        )
        np.testing.assert_array_equal(a.item_ids, b.item_ids)
        np.testing.assert_array_equal(a.scores, b.scores)
    a, b = model.similar_items(ITEMS, 4), loaded.similar_items(ITEMS, 4)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    np.testing.assert_array_equal(a.scores, b.scores)


@pytest.mark.parametrize("name", NAMES)
def test_scoring_in_blocks_gives_the_same_answer(
    fitted: dict[str, Recommender], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = fitted[name]
    queries = np.append(USERS, "nobody")
    whole, whole_sim = model.recommend(queries, 5, filter_seen=False), model.similar_items(ITEMS, 5)
    monkeypatch.setattr(base_module, "_SCORE_BUDGET", 3 * N_ITEMS)  # three rows per block
    blocks, blocks_sim = model.recommend(queries, 5, filter_seen=False), model.similar_items(ITEMS, 5)
    for a, b in ((whole, blocks), (whole_sim, blocks_sim)):
        np.testing.assert_array_equal(a.item_ids, b.item_ids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)  # BLAS may round by block shape


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip_and_unknown_key(fitted: dict[str, Recommender], name: str) -> None:
    model = fitted[name]
    cls = type(model)
    assert cls(model.get_config()).get_config() == model.get_config()
    assert cls().get_config() == cls(None).get_config(), "defaults are valid"
    with pytest.raises(ValidationError, match="no_such_key"):
        cls({"no_such_key": 1})


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(fitted: dict[str, Recommender], name: str) -> None:
    again = make(name).fit(DATA)
    a, b = fitted[name].recommend(USERS, 4), again.recommend(USERS, 4)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_fit_leaves_training_data_untouched(name: str) -> None:
    data = checkerboard()
    before = [m.copy() for m in (data.interactions.matrix, data.purchases, data.item_features.matrix)]  # type: ignore[union-attr]
    make(name).fit(data)
    after = (data.interactions.matrix, data.purchases, data.item_features.matrix)  # type: ignore[union-attr]
    for old, new in zip(before, after, strict=True):
        assert old.nnz == new.nnz
        assert (old != new).nnz == 0


@pytest.mark.parametrize("name", NAMES)
def test_refit_on_new_data(name: str) -> None:
    model = make(name).fit(DATA)
    other = checkerboard(("c", "d", "e"))
    model.fit(other)
    recs = model.recommend(["uc0", "ua0"], 3, filter_seen=False)
    assert set(row_items(recs.item_ids[0])) <= set(other.interactions.items.external.tolist())
    assert row_items(recs.item_ids[0])
    if not model.handles_unknown_users:
        assert (recs.item_ids[1] == "").all(), "users of the old data are unknown after refit"
    assert model.similar_items(["c0"], 40).item_ids.shape == (1, 18)


@pytest.mark.parametrize("name", FAST_PATH)
def test_library_fast_path_matches_dense_reference(fitted: dict[str, Recommender], name: str) -> None:
    """Models overriding recommend/similar_items keep the base class's semantics exactly."""
    model = fitted[name]
    queries = np.append(USERS, "nobody")
    exclude = sp.csr_matrix(np.eye(len(queries), N_ITEMS, k=3, dtype=np.float32))
    kwargs: dict[str, Any] = {"exclude": exclude, "exclude_items": [str(ITEMS[0])]}
    fast, ref = model.recommend(queries, 7, **kwargs), Recommender.recommend(model, queries, 7, **kwargs)
    fast_s, ref_s = model.similar_items(ITEMS, 5), Recommender.similar_items(model, ITEMS, 5)
    for a, b in ((fast, ref), (fast_s, ref_s)):
        assert a.item_ids.shape == b.item_ids.shape
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-6)
        # ties may come in any order: compare each returned item's score with the reference's
        for ids_a, sc_a, ids_b, sc_b in zip(a.item_ids, a.scores, b.item_ids, b.scores, strict=True):
            ref_scores = dict(zip(ids_b.tolist(), sc_b.tolist(), strict=True))
            for item, score in zip(ids_a.tolist(), sc_a.tolist(), strict=True):
                if item and item in ref_scores:
                    assert score == pytest.approx(ref_scores[item], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_empty_matrix_and_unfitted_raise(name: str) -> None:
    empty = InteractionMatrix(
        sp.csr_matrix((2, 3), dtype=np.float32), IdMap.from_values(["x", "y"]), IdMap.from_values(["p", "q", "r"])
    )
    with pytest.raises(ModelError, match="empty"):
        make(name).fit(TrainData(empty))
    with pytest.raises(ModelError, match="not fitted"):
        make(name).recommend(["x"], 3)
    with pytest.raises(ValueError, match="k must be at least 1"):
        make(name).fit(DATA).recommend(USERS[:1], 0)


def test_unknown_model_name_lists_known_names() -> None:
    with pytest.raises(ModelError, match="nope") as info:
        get_model_class("nope")
    for name in ("popularity", "als", "bpr", "item_knn", "lightfm", "ease", "buy_again", "blend"):
        assert name in str(info.value)
