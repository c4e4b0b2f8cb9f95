"""The train pipeline, tuning and export on a tiny synthetic store, against a real MLflow sqlite store.

One ALS run and one popularity run are trained once for the module (they register versions 1 and 2);
the tests read what they logged. Cross-checks with known answers:

* the ALS run's ``baseline.*`` metrics are exactly the popularity run's own metrics (same split);
* the cutoff is the last event minus ``test_days``; ``data.rows`` is the events' row count;
* with refit (the default) the logged model knows every user of the events, test period included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import polars as pl
import pytest

from features.columns import Columns
from features.settings import Settings
from features.synth import SynthConfig, generate_store, write_store
from training import pipeline, tracking, tune
from training.export import ExportError, export_recommendations, read_user_ids
from training.models.base import ModelError
from training.pipeline import TrainResult

from .test_tracking import make_settings

ALS_CONFIG = {"factors": 8, "iterations": 4, "num_threads": 1}
TEST_DAYS = 10.0


@dataclass(frozen=True)
class Trained:
    settings: Settings
    data: Path
    events: pl.DataFrame
    als: TrainResult
    popularity: TrainResult


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    settings = make_settings(tmp_path_factory)
    data = tmp_path_factory.mktemp("data") / "shop"
    store = generate_store(SynthConfig(users=80, items=30, days=35, seed=7))
    write_store(store, data)
    with tracking.quiet_mlflow():
        als = pipeline.train("als", ALS_CONFIG, data, None, settings, test_days=TEST_DAYS)
        popularity = pipeline.train("popularity", None, data, None, settings, test_days=TEST_DAYS, refit=False)
    return Trained(settings, data, pipeline.load_dataset(data).events, als, popularity)


def _cutoff(events: pl.DataFrame) -> datetime:
    last = events[Columns.TIMESTAMP].max()
    assert isinstance(last, datetime)
    return last - timedelta(days=TEST_DAYS)


def _run(trained: Trained, run_id: str) -> mlflow.entities.Run:
    return tracking.connect(trained.settings).get_run(run_id)


def test_run_logs_params_split_and_lineage(trained: Trained) -> None:
    run = _run(trained, trained.als.run_id)
    params = run.data.params
    assert trained.als.experiment == "tailor/shop"
    assert params["model"] == "als"
    assert params["model.factors"] == "8"
    assert params["model.alpha"] == "1.0"  # defaults are logged too
    assert params["matrix.weight.purchase"] == "10.0"
    assert params["matrix.half_life_days"] == "None"
    assert params["eval.ks"] == "10,20,50"
    assert params["split.test_days"] == str(TEST_DAYS)
    assert params["split.cutoff"] == _cutoff(trained.events).isoformat()
    assert params["data.rows"] == str(trained.events.height)
    assert params["data.name"] == "shop"
    assert run.inputs is not None
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == tracking.dataset_digest(trained.events)
    assert run.data.tags[tracking.KIND_TAG] == "train"
    assert run.data.tags[tracking.MODEL_TAG] == "als"


def test_metrics_include_both_protocols_oracle_and_the_baseline(trained: Trained) -> None:
    logged = _run(trained, trained.als.run_id).data.metrics
    assert logged["new_items.ndcg_at_10"] == pytest.approx(trained.als.metrics["new_items.ndcg_at_10"])
    assert 0.0 < logged["new_items.ndcg_at_10"] <= 1.0
    assert "all_items.recall_at_50" in logged
    assert "new_items.ndcg_at_10_vs_oracle" in logged  # the store has truth/
    popularity = _run(trained, trained.popularity.run_id).data.metrics
    for name in ("new_items.ndcg_at_10", "all_items.recall_at_20", "new_items.coverage_at_10"):
        assert logged[f"baseline.{name}"] == pytest.approx(popularity[name])


def test_artifacts_hold_plots_reports_and_the_model(trained: Trained) -> None:
    client = tracking.connect(trained.settings)
    run_id = trained.als.run_id
    plots = {f.path for f in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/metrics_vs_k.png", "plots/popularity_bias.png", "plots/segments.png"}
    png = Path(client.download_artifacts(run_id, "plots/segments.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    validation = json.loads(Path(client.download_artifacts(run_id, "reports/validation.json")).read_text())
    assert validation["rows_valid"] == trained.events.height
    assert trained.als.model_uri.startswith("models:/m-")


def test_registered_model_is_the_refitted_als_and_pyfunc_agrees(trained: Trained) -> None:
    assert (trained.als.model_version, trained.popularity.model_version) == ("1", "2")
    name = trained.settings.model_name
    with tracking.quiet_mlflow():
        model, info = tracking.load_recommender(f"models:/{name}/1", trained.settings)
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/1")
    assert (model.name, info.run_id) == ("als", trained.als.run_id)
    assert len(model.users) == trained.events[Columns.USER].n_unique()  # refit saw the test period
    users = [*model.users.external[:5].tolist(), "nobody"]
    expected = model.recommend(users, 7).to_frame().to_pandas()
    out = pyfunc.predict(pd.DataFrame({Columns.USER: users}), params={"k": 7})
    pd.testing.assert_frame_equal(out.reset_index(drop=True), expected)
    assert (out.groupby(Columns.USER).size() == 7).all()


def test_without_refit_the_model_only_knows_training_users(trained: Trained) -> None:
    with tracking.quiet_mlflow():
        model, _ = tracking.load_recommender(f"models:/{trained.settings.model_name}/2", trained.settings)
    train_users = trained.events.filter(pl.col(Columns.TIMESTAMP) < _cutoff(trained.events))[Columns.USER].n_unique()
    assert len(model.users) == train_users


def test_bad_model_or_config_logs_no_run(trained: Trained) -> None:
    before = len(tracking.runs_table("shop", trained.settings))
    with tracking.quiet_mlflow(), pytest.raises(ModelError, match="unknown model 'alz'"):
        pipeline.train("alz", None, trained.data, None, trained.settings, register=False)
    with tracking.quiet_mlflow(), pytest.raises(ValueError, match="factorz"):
        pipeline.train("als", {"factorz": 3}, trained.data, None, trained.settings, register=False)
    assert len(tracking.runs_table("shop", trained.settings)) == before


def test_read_config_sections_and_flat(tmp_path: Path) -> None:
    sectioned = tmp_path / "best.toml"
    sectioned.write_text("[model]\nfactors = 16\n[matrix]\nhalf_life_days = 30.0\n[matrix.event_weights]\nview = 2.0\n")
    config = pipeline.read_config(sectioned)
    assert config.model == {"factors": 16}
    matrix = config.matrix_config()
    assert (matrix.half_life_days, matrix.event_weights) == (30.0, {"view": 2.0})
    flat = tmp_path / "flat.json"
    flat.write_text('{"factors": 4, "alpha": 2.0}')
    assert pipeline.read_config(flat) == pipeline.RunConfig(model={"factors": 4, "alpha": 2.0})
    (tmp_path / "bad.json").write_text("{factors: 4")
    with pytest.raises(pipeline.ConfigFileError, match="cannot parse config file"):
        pipeline.read_config(tmp_path / "bad.json")


def test_tune_runs_nested_trials_and_writes_a_trainable_config(trained: Trained) -> None:
    with tracking.quiet_mlflow():
        result = tune.tune("ease", 3, trained.data, None, trained.settings, test_days=TEST_DAYS, validation_days=7)
        runs = tracking.runs_table("shop", trained.settings, include_trials=True)
    trials = runs.filter(pl.col("kind") == "trial")
    assert len(trials) == 3
    client = tracking.connect(trained.settings)
    children = [client.get_run(r) for r in trials["run_id"]]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {result.run_id}
    values = [c.data.metrics["new_items.ndcg_at_10"] for c in children]
    assert result.best_value == pytest.approx(max(values))
    first = next(c.data.params for c in children if c.data.params["trial"] == "0")
    assert (first["model.l2"], first["matrix.weight.purchase"], first["matrix.half_life_days"]) == (
        "500.0",
        "10.0",
        "none",
    )
    best = json.loads(Path(client.download_artifacts(result.run_id, "best_config.json")).read_text())
    assert best == result.best_config == json.loads(result.config_path.read_text())
    assert result.config_path == (trained.settings.home / "best_config_ease.json").resolve()
    parent = client.get_run(result.run_id)
    assert parent.data.params["best.model.l2"] == str(best["model"]["l2"])
    config = pipeline.read_config(result.config_path)
    assert config.matrix_config().event_weights["purchase"] == best["matrix"]["event_weights"]["purchase"]


def test_tune_rejects_unknown_models_and_metrics(trained: Trained) -> None:
    with pytest.raises(tune.TuneError, match="no search space for model 'nope'"):
        tune.tune("nope", 1, trained.data, None, trained.settings)
    with pytest.raises(tune.TuneError, match="must start with one of new_items, all_items"):
        tune.tune("ease", 1, trained.data, None, trained.settings, metric="ndcg_at_10")


def test_export_csv_and_parquet_with_unknown_users(trained: Trained, tmp_path: Path) -> None:
    name = trained.settings.model_name
    with tracking.quiet_mlflow():
        tracking.set_alias(name, "champion", 1, trained.settings)
        model, _ = tracking.load_recommender(f"models:/{name}@champion", trained.settings)
    known = model.users.external[:3].tolist()
    users_csv = tmp_path / "users.csv"
    users_csv.write_text("user_id,other\n" + "".join(f"{u},x\n" for u in [*known, "ghost", known[0]]))
    with tracking.quiet_mlflow():
        csv = export_recommendations(
            f"models:/{name}@champion", users_csv, tmp_path / "recs.csv", trained.settings, k=5
        )
        pq = export_recommendations(f"models:/{name}/1", users_csv, tmp_path / "recs.parquet", trained.settings, k=5)
    assert (csv.n_users, csv.unknown_users, csv.unknown_sample, csv.n_rows) == (4, 1, ("ghost",), 15)
    written = pl.read_csv(tmp_path / "recs.csv", schema_overrides={Columns.USER: pl.Utf8, Columns.ITEM: pl.Utf8})
    assert written.columns == [Columns.USER, Columns.RANK, Columns.ITEM, Columns.SCORE]
    assert written[Columns.USER].unique(maintain_order=True).to_list() == known
    expected = model.recommend(np.asarray(known), 5).to_frame()
    assert written[Columns.ITEM].to_list() == expected[Columns.ITEM].to_list()
    assert pl.read_parquet(tmp_path / "recs.parquet").drop(Columns.SCORE).equals(written.drop(Columns.SCORE))
    assert pq.model_version == "1"


def test_read_user_ids_formats(tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_text("u1\n\nu2\nu1\n")
    assert read_user_ids(tmp_path / "ids.txt") == ["u1", "u2"]
    pl.DataFrame({Columns.USER: [3, 1]}).write_parquet(tmp_path / "ids.parquet")
    assert read_user_ids(tmp_path / "ids.parquet") == ["3", "1"]
    pl.DataFrame({"customer": ["a"]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ExportError, match="has no 'user_id' column"):
        read_user_ids(tmp_path / "bad.parquet")
    (tmp_path / "wide.csv").write_text("customer,country\nc1,UK\n")
    with pytest.raises(ExportError, match="several columns but none named 'user_id'"):
        read_user_ids(tmp_path / "wide.csv")
    with pytest.raises(ExportError, match="users file not found"):
        read_user_ids(tmp_path / "missing.csv")
