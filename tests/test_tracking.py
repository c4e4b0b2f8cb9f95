"""MLflow glue on a real sqlite store: params, lineage, the pyfunc, the registry and aliases.

Two popularity models on hand-made matrices are logged once (module fixture) and registered as
versions 1 and 2. Their answers are known by hand:

    version 1: users u1{a,b,c} u2{a,b} u3{a} → popularity a=3 b=2 c=1 d=0 → u3 gets b, c
    version 2: users u1{a,b,c} u2{a,c} u3{a} → popularity a=3 c=2 b=1 d=0 → u3 gets c, b
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
import redis
import scipy.sparse as sp

from features.columns import Columns
from features.ids import IdMap
from features.mapping import EventMapping
from features.matrix import InteractionMatrix
from features.settings import Settings
from service.contract import Keys
from training import tracking
from training.models.base import Recommender, TrainData, get_model_class

ITEMS = ["a", "b", "c", "d"]
USERS = ["u1", "u2", "u3"]


def _popularity(rows: list[list[str]]) -> Recommender:
    dense = np.array([[1.0 if item in row else 0.0 for item in ITEMS] for row in rows], dtype=np.float32)
    matrix = InteractionMatrix(sp.csr_matrix(dense), IdMap.from_values(USERS), IdMap.from_values(ITEMS))
    return get_model_class("popularity")().fit(TrainData(matrix))


def _events() -> pl.DataFrame:
    return pl.DataFrame(
        {
            Columns.USER: ["u1", "u2", "u3"],
            Columns.ITEM: ["a", "b", "a"],
            Columns.EVENT: ["view", "purchase", "view"],
            Columns.TIMESTAMP: [datetime(2024, 1, 1), datetime(2024, 1, 2), datetime(2024, 1, 5)],
        }
    )


def make_settings(tmp_path_factory: pytest.TempPathFactory, name: str = "home") -> Settings:
    """Settings with a fresh home holding an empty MLflow sqlite store.

    Creating MLflow's tables runs every alembic migration (~10 s), so the empty database is built
    once per test session and copied; other test modules call this too.
    """
    template = tmp_path_factory.getbasetemp() / "mlflow-template"
    if not (template / "mlflow.db").exists():
        with tracking.quiet_mlflow():
            tracking.connect(Settings(home=template, mlflow_tracking_uri=None)).search_experiments()
    home = tmp_path_factory.mktemp(name)
    shutil.copy(template / "mlflow.db", home / "mlflow.db")
    return Settings(home=home, mlflow_tracking_uri=None)


@dataclass(frozen=True)
class Store:
    settings: Settings
    runs: tuple[str, str]
    models: tuple[Recommender, Recommender]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    settings = make_settings(tmp_path_factory)
    models = (_popularity([["a", "b", "c"], ["a", "b"], ["a"]]), _popularity([["a", "b", "c"], ["a", "c"], ["a"]]))
    runs = []
    with tracking.quiet_mlflow():
        for i, model in enumerate(models):
            with tracking.start_run("tailor/hand", settings, run_name=f"pop-{i}") as run_id:
                tracking.log_params({"model": model.name, **tracking.flatten("model", model.get_config())})
                tracking.log_dataset(_events(), source="/data/hand/events.parquet", name="hand")
                tracking.log_metrics({"new_items.ndcg_at_10": 0.1 * (i + 1), "new_items.recall_at_10": float("nan")})
                tracking.register(tracking.log_recommender(model), settings)
                runs.append(run_id)
    return Store(settings, (runs[0], runs[1]), models)


def test_flatten_nests_keys_with_dots_and_stringifies() -> None:
    flat = tracking.flatten("model", {"factors": 8, "base": {"name": "als", "config": {"alpha": 1.5}}, "x": None})
    assert flat == {"model.factors": "8", "model.base.name": "als", "model.base.config.alpha": "1.5", "model.x": "None"}


def test_dataset_digest_ignores_row_order_but_not_content() -> None:
    events = _events()
    assert tracking.dataset_digest(events) == tracking.dataset_digest(events.reverse())
    changed = events.with_columns(
        pl.when(pl.col(Columns.USER) == "u3").then(pl.lit("b")).otherwise(Columns.ITEM).alias(Columns.ITEM)
    )
    assert tracking.dataset_digest(changed) != tracking.dataset_digest(events)
    assert len(tracking.dataset_digest(events)) == 32


def test_matrix_params_names() -> None:
    params = tracking.matrix_params({"view": 1.0, "purchase": 10.0}, 0.5, None)
    assert params == {
        "matrix.weight.purchase": "10.0",
        "matrix.weight.view": "1.0",
        "matrix.other_weight": "0.5",
        "matrix.half_life_days": "None",
    }


def test_git_commit_inside_and_outside_a_repository(tmp_path: Path) -> None:
    commit = tracking.git_commit()
    assert commit is not None
    assert len(commit) == 40
    assert tracking.git_commit(tmp_path) is None


def test_run_records_params_lineage_metrics_tags_and_local_artifacts(store: Store) -> None:
    client = tracking.connect(store.settings)
    run = client.get_run(store.runs[0])
    assert run.data.params["model"] == "popularity"
    assert run.data.params["model.by"] == "users"
    assert run.data.params["data.rows"] == "3"
    assert run.data.params["data.users"] == "3"
    assert run.data.params["data.items"] == "2"
    assert run.data.params["data.start"] == "2024-01-01 00:00:00"
    assert run.data.metrics == {"new_items.ndcg_at_10": pytest.approx(0.1)}  # NaN recall skipped
    assert run.data.tags[tracking.KIND_TAG] == "train"
    assert len(run.data.tags[tracking.GIT_TAG]) == 40
    assert run.inputs is not None
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == tracking.dataset_digest(_events())
    assert dataset_input.dataset.name == "hand"
    assert "/data/hand/events.parquet" in dataset_input.dataset.source
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "tailor/hand"
    assert experiment.artifact_location == (store.settings.artifact_root / "tailor_hand").as_uri()


def test_pyfunc_predicts_the_recommenders_top_k(store: Store) -> None:
    import mlflow.pyfunc

    with tracking.quiet_mlflow():
        pyfunc = mlflow.pyfunc.load_model(f"models:/{store.settings.model_name}/1")
        out = pyfunc.predict(pd.DataFrame({Columns.USER: ["u3", "u2", "ghost"]}), params={"k": 2})
    assert list(out.columns) == [Columns.USER, Columns.RANK, Columns.ITEM, Columns.SCORE]
    assert out[out[Columns.USER] == "u3"][Columns.ITEM].tolist() == ["b", "c"]
    expected = store.models[0].recommend(["u3", "u2", "ghost"], 2).to_frame().to_pandas()
    pd.testing.assert_frame_equal(out.reset_index(drop=True), expected)
    params = pyfunc.metadata.get_params_schema()
    assert params is not None
    assert params.to_dict()[0]["name"] == "k"


def test_promote_switches_what_champion_resolves_to(store: Store) -> None:
    name = store.settings.model_name
    with tracking.quiet_mlflow():
        tracking.set_alias(name, "champion", 1, store.settings)
        first, info1 = tracking.load_recommender(f"models:/{name}@champion", store.settings)
        tracking.set_alias(name, "champion", 2, store.settings)
        second, info2 = tracking.load_recommender(f"models:/{name}@champion", store.settings)
    assert (info1.model_version, info1.run_id, info1.alias) == ("1", store.runs[0], "champion")
    assert (info2.model_version, info2.run_id, info2.model_name) == ("2", store.runs[1], name)
    assert first.recommend(["u3"], 2).item_ids.tolist() == [["b", "c"]]
    assert second.recommend(["u3"], 2).item_ids.tolist() == [["c", "b"]]


def test_load_recommender_by_version_and_run(store: Store) -> None:
    with tracking.quiet_mlflow():
        by_version, info = tracking.load_recommender(f"models:/{store.settings.model_name}/2", store.settings)
        by_run, run_info = tracking.load_recommender(f"runs:/{store.runs[0]}/model", store.settings)
    assert info.alias is None
    assert info.model_version == "2"
    assert run_info == tracking.ModelInfo(None, None, store.runs[0], None, f"runs:/{store.runs[0]}/model")
    assert by_version.get_config() == store.models[1].get_config()
    assert by_run.recommend(["u2"], 1).item_ids.tolist() == [["c"]]


def test_unknown_alias_version_and_scheme_are_clear_errors(store: Store) -> None:
    name = store.settings.model_name
    with tracking.quiet_mlflow():
        with pytest.raises(tracking.TrackingError, match="cannot resolve model 'models:/tailor@nope'"):
            tracking.load_recommender(f"models:/{name}@nope", store.settings)
        with pytest.raises(tracking.TrackingError, match="version 9"):
            tracking.set_alias(name, "champion", 9, store.settings)
        with pytest.raises(tracking.TrackingError, match="must start with models:/ or runs:/"):
            tracking.resolve_model_uri("s3://bucket/model", store.settings)


def test_runs_table_and_registry_listing(store: Store) -> None:
    with tracking.quiet_mlflow():
        table = tracking.runs_table("hand", store.settings)  # the tailor/ prefix is optional
        tracking.set_alias(store.settings.model_name, "challenger", 1, store.settings)
        registry = tracking.registered_models(store.settings)
    assert table["run_id"].to_list() == [store.runs[1], store.runs[0]]  # newest first
    assert table["model"].to_list() == ["popularity", "popularity"]
    assert table["new_items.ndcg_at_10"].to_list() == pytest.approx([0.2, 0.1])
    assert "new_items.coverage_at_10" not in table.columns  # never logged
    assert registry["version"].to_list() == [2, 1]
    assert "challenger" in registry.filter(pl.col("version") == 1)["aliases"][0]
    with pytest.raises(tracking.TrackingError, match="no experiment named 'missing'"):
        tracking.runs_table("missing", store.settings)


def test_downloaded_model_is_cached_under_home(store: Store) -> None:
    with tracking.quiet_mlflow():
        tracking.load_recommender(f"models:/{store.settings.model_name}/1", store.settings)
    cached = list((store.settings.home / "models").glob("*/MLmodel"))
    assert cached, "load_recommender should cache downloads under <home>/models"
    meta = json.loads(next((p.parent / "artifacts" / "recommender" / "model.json") for p in cached).read_text())
    assert meta["name"] == "popularity"


def test_publish_from_the_registry_compacts_the_aof_of_the_embedded_server_only(
    store: Store, tmp_path: Path, redis_url: str
) -> None:
    """``tailor publish``'s path: the embedded server's AOF is rewritten after the switch; a REDIS_URL one is not."""
    from service.redis_server import free_port, stop_redis
    from training.publish import active_version, publish_from_registry

    events = tmp_path / "events.parquet"
    _events().write_parquet(events)
    uri = f"models:/{store.settings.model_name}/2"
    embedded = store.settings.model_copy(update={"redis_port": free_port()})
    try:
        with tracking.quiet_mlflow():
            summary = publish_from_registry(uri, events, embedded, progress=False)
        client = redis.Redis(host="127.0.0.1", port=embedded.redis_port)
        active = active_version(client)
        client.close()
    finally:
        stop_redis(embedded)
    assert summary.aof_rewrite == "started"
    assert active is not None
    assert (active.version, active.model_version) == (summary.version, "2")

    external = store.settings.model_copy(update={"redis_url": redis_url})
    with tracking.quiet_mlflow():
        assert publish_from_registry(uri, events, external, progress=False).aof_rewrite == ""


def test_publish_without_data_uses_the_data_the_model_was_trained_on(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, redis_url: str
) -> None:
    """``tailor publish --model-uri ...`` alone: the events come from the run's ``data.source``; a run whose
    data is gone, or that records none, is a clear error naming what to give, and nothing is published."""
    from training.publish import PublishError, active_version, publish_from_registry

    settings = make_settings(tmp_path_factory, "trained-on").model_copy(update={"redis_url": redis_url})
    store_folder = tmp_path / "store"
    store_folder.mkdir()
    _events().write_parquet(store_folder / "events.parquet")
    own_columns = {Columns.USER: "visitor", Columns.ITEM: "product", Columns.EVENT: "kind", Columns.TIMESTAMP: "at"}
    csv = tmp_path / "export.csv"
    _events().rename(own_columns).write_csv(csv)  # another store's columns, read through a mapping
    mapping = EventMapping(user="visitor", item="product", event="kind", time="at")
    summaries = []
    with tracking.quiet_mlflow():
        for source in (str(store_folder), str(csv), None, str(tmp_path / "gone")):
            with tracking.start_run("tailor/trained-on", settings) as run_id:
                if source is not None:
                    tracking.log_dataset(
                        _events(), source=source, name="store", mapping=mapping if source == str(csv) else None
                    )
                version = tracking.register(tracking.log_recommender(_popularity([["a"], ["b"], ["a"]])), settings)
            uri = f"models:/{settings.model_name}/{version}"
            if source in (str(store_folder), str(csv)):  # the CSV is read with the mapping the run logged
                summaries.append(publish_from_registry(uri, None, settings, progress=False))
                continue
            expected = f"its run {run_id} records no" if source is None else f"trained on {tmp_path / 'gone'}, which"
            with pytest.raises(PublishError, match=re.escape(expected)):
                publish_from_registry(uri, None, settings, progress=False)
    client = redis.Redis.from_url(redis_url)
    active = active_version(client)
    assert active is not None
    assert [(s.version, s.users) for s in summaries] == [(1, 3), (2, 3)]
    assert (active.version, active.model_version) == (2, "2")
    assert client.exists(Keys.user(active.version, "u2")) == 1
    client.close()
