"""``tailor train / runs / promote / export / models`` through typer's CliRunner on a real MLflow store.

A tiny synthetic store sits where ``tailor data synth`` writes it (``<home>/data/synth``), so
``tailor train`` finds it without ``--data``. Two runs are trained once for the module: item-kNN
(version 1) and popularity by weight from a TOML config (version 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from features.columns import Columns
from features.settings import Settings
from features.synth import SynthConfig, generate_store, write_store
from tailor_cli import app
from training import tracking

from .test_tracking import make_settings


@dataclass(frozen=True)
class Home:
    path: Path
    knn_run: str
    popularity_run: str


def run(home: Path, *args: str) -> tuple[int, str]:
    """(exit code, stdout+stderr) of ``tailor ARGS`` with TAILOR_HOME=home and the local MLflow store."""
    env = {"TAILOR_HOME": str(home), "COLUMNS": "250", "MLFLOW_TRACKING_URI": None, "TAILOR_MODEL_NAME": None}
    result = CliRunner().invoke(app, list(args), env=env)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    path = make_settings(tmp_path_factory).home
    write_store(generate_store(SynthConfig(users=60, items=25, days=30, seed=5)), path / "data" / "synth")
    config = path / "popularity.toml"
    config.write_text('by = "weight"\n')
    code, out = run(path, "train", "--model", "item_knn", "--test-days", "7", "--no-refit")
    assert code == 0, out
    knn_run = out.strip().splitlines()[-1]
    code, out = run(path, "train", "-m", "popularity", "--config", str(config), "--test-days", "7", "--run-name", "pop")
    assert code == 0, out
    return Home(path, knn_run, out.strip().splitlines()[-1])


def test_train_prints_metrics_registers_and_logs_the_config(home: Home) -> None:
    settings = make_settings_for(home)
    client = tracking.connect(settings)
    knn, pop = client.get_run(home.knn_run), client.get_run(home.popularity_run)
    assert (knn.data.params["model"], pop.data.params["model.by"]) == ("item_knn", "weight")
    assert pop.info.run_name == "pop"
    versions = {str(mv.version): mv.run_id for mv in client.search_model_versions("name = 'tailor'")}
    assert versions == {"1": home.knn_run, "2": home.popularity_run}
    assert knn.data.metrics["baseline.new_items.ndcg_at_10"] == pytest.approx(
        pop.data.metrics["baseline.new_items.ndcg_at_10"]
    )


def make_settings_for(home: Home) -> Settings:
    return Settings(home=home.path, mlflow_tracking_uri=None)


def test_runs_lists_both_runs_newest_first(home: Home) -> None:
    code, out = run(home.path, "runs")
    assert code == 0, out
    assert out.index(home.popularity_run) < out.index(home.knn_run)
    assert "ndcg@10" in out
    assert "baseline ndcg@10" in out
    code, out = run(home.path, "runs", "--experiment", "nope")
    assert (code, "no experiment named 'nope'" in out) == (2, True)


def test_promote_moves_champion_and_export_follows_it(home: Home, tmp_path: Path) -> None:
    settings = make_settings_for(home)
    code, out = run(home.path, "promote", "--alias", "champion")  # the newest version by default
    assert (code, "tailor@champion → version 2" in out) == (0, True)
    with tracking.quiet_mlflow():
        assert tracking.load_recommender("models:/tailor@champion", settings)[0].name == "popularity"
    code, out = run(home.path, "promote", "-v", "1")
    assert code == 0, out
    with tracking.quiet_mlflow():
        knn, info = tracking.load_recommender("models:/tailor@champion", settings)
    assert (knn.name, info.model_version) == ("item_knn", "1")

    users = tmp_path / "users.txt"
    known = knn.users.external[:4].tolist()
    users.write_text("\n".join([*known, "stranger"]) + "\n")
    code, out = run(home.path, "export", "--users", str(users), "--k", "3", "--out", str(tmp_path / "recs.parquet"))
    assert code == 0, out
    assert "1 users unknown to the model" in out
    recs = pl.read_parquet(tmp_path / "recs.parquet")
    assert recs[Columns.USER].unique(maintain_order=True).to_list() == known
    expected = knn.recommend(known, 3).to_frame()
    assert recs[Columns.ITEM].to_list() == expected[Columns.ITEM].to_list()


def test_user_errors_exit_2_with_a_clear_message(home: Home, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"factorz": 3}')
    cases = [
        (["train", "--model", "alz"], "unknown model 'alz'; known models: als"),
        (["train", "--model", "als", "--config", str(bad)], "factorz: unknown key"),
        (["train", "--model", "als", "--data", str(tmp_path / "nothing")], "data not found"),
        (["train", "--model", "als", "--preset", "nope"], "unknown preset 'nope'"),
        (["promote", "--version", "9"], "cannot set tailor@champion → version 9"),
        (["promote", "--model-name", "other"], "no versions of model 'other' are registered"),
        (["export", "--users", str(bad), "--out", str(tmp_path / "x.txt")], "must end in .csv or .parquet"),
        (["tune", "--model", "nope", "--trials", "1"], "unknown model 'nope'"),
    ]
    for args, message in cases:
        code, out = run(home.path, *args)
        assert code == 2, (args, out)
        assert message in out, (args, out)


def test_models_lists_config_fields_and_registry(home: Home) -> None:
    code, out = run(home.path, "models")
    assert code == 0, out
    for text in ("als", "factors", "neighbours", "repeat_weight", "registered models", "item_knn"):
        assert text in out


def test_every_model_command_option_has_help() -> None:
    group = typer.main.get_command(app)
    commands = getattr(group, "commands", {})
    for name in ("train", "tune", "runs", "promote", "export", "models", "mlflow-ui"):
        command = commands[name]
        assert command.help, name
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert getattr(param, "help", None), f"{name} --{param.name} has no help"
