"""``tailor train / tune / runs / promote / export / models / mlflow-ui``: models tracked in MLflow.

Every command builds :class:`~features.settings.Settings` from the environment, silences MLflow's
chatter, and turns the errors a user can fix (unknown model, bad config key, missing data, unknown
model URI) into one red line and exit code 2 — no traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from tailor_cli.common import console, load_settings

if TYPE_CHECKING:
    import polars as pl

    from features.mapping import EventMapping
    from features.settings import Settings
    from training.pipeline import RunConfig, TrainResult

PANEL = "Models"
EXIT_USAGE = 2

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Model name (see `tailor models`): popularity, als, bpr, item_knn, ease, lightfm, buy_again, blend",
    ),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        help="Events file, or a store folder with events.parquet (+ catalogue, users) "
        "(default: <TAILOR_HOME>/data/synth, where `tailor data synth` writes)",
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="JSON/TOML model config: flat, or with \\[model] and \\[matrix] sections "
        "(e.g. the best config `tailor tune` writes)",
    ),
]
PresetOpt = Annotated[
    str | None, typer.Option("--preset", help="Built-in column mapping: tailor, retailrocket, online-retail")
]
MappingOpt = Annotated[Path | None, typer.Option("--mapping", help="Column mapping file (TOML/JSON)")]
TestDaysOpt = Annotated[
    float | None, typer.Option("--test-days", min=0.001, help="Held-out period: the last N days (default 14)")
]
CutoffOpt = Annotated[
    datetime | None, typer.Option("--cutoff", help="Held-out period starts here (UTC); overrides --test-days")
]
ExperimentOpt = Annotated[
    str | None, typer.Option("--experiment", "-e", help="MLflow experiment (default tailor/<dataset name>)")
]


@contextmanager
def _user_errors() -> Iterator[None]:
    """Print a clear message and exit 2 for errors caused by the input, not by a bug."""
    from pydantic import ValidationError

    from features.errors import TailorDataError
    from training.export import ExportError
    from training.models.base import ModelError
    from training.pipeline import ConfigFileError
    from training.tracking import TrackingError, quiet_mlflow

    try:
        with quiet_mlflow():
            yield
    except ValidationError as exc:
        _fail(f"invalid configuration for {exc.title}:\n{_describe(exc)}")
    except (TailorDataError, ModelError, ConfigFileError, TrackingError, ExportError) as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(EXIT_USAGE)


def _describe(exc: Any) -> str:
    """One line per pydantic error: the key and what is wrong with it."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(config)"
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def _mapping(preset: str | None, mapping_file: Path | None) -> EventMapping | None:
    from features.mapping import get_preset, load_mapping

    if preset and mapping_file:
        _fail("give either --preset or --mapping, not both")
    if mapping_file is not None:
        return load_mapping(mapping_file)
    return get_preset(preset) if preset else None


def _run_config(config: Path | None) -> RunConfig:
    from training.pipeline import RunConfig, read_config

    return read_config(config) if config is not None else RunConfig()


def _data_path(data: Path | None, settings: Settings) -> Path:
    """``--data``, or the synthetic store's default folder; fails clearly when it does not exist."""
    path = data if data is not None else settings.data_dir / "synth"
    if not path.exists():
        _fail(f"data not found: {path} (create a synthetic store with `tailor data synth`, or pass --data)")
    return path


# --- commands -----------------------------------------------------------------------------------------
def train(
    model: ModelOpt,
    data: DataOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    mapping: MappingOpt = None,
    test_days: TestDaysOpt = None,
    cutoff: CutoffOpt = None,
    register: Annotated[
        bool, typer.Option("--register/--no-register", help="Register the model in the MLflow registry")
    ] = True,
    refit: Annotated[
        bool, typer.Option("--refit/--no-refit", help="After evaluation, refit on all events before logging the model")
    ] = True,
    run_name: Annotated[str | None, typer.Option("--run-name", help="MLflow run name (default: the model)")] = None,
    experiment: ExperimentOpt = None,
) -> None:
    """Train a model, evaluate it against the popularity baseline, and log everything to MLflow."""
    from training.models.base import get_model_class
    from training.pipeline import train as run_train

    settings = load_settings()
    path = _data_path(data, settings)
    with _user_errors():
        get_model_class(model)  # fail fast on a typo, before loading any data
        run_config = _run_config(config)
        result = run_train(
            model,
            run_config.model,
            path,
            _mapping(preset, mapping),
            settings,
            matrix_config=run_config.matrix_config(),
            test_days=test_days,
            cutoff=cutoff,
            register=register,
            refit=refit,
            run_name=run_name,
            experiment=experiment,
        )
    _print_train_result(result, settings.model_name)


SUMMARY_METRICS = ("ndcg_at_10", "recall_at_10", "hr_at_10", "coverage_at_10", "ndcg_at_10_vs_oracle")


def _print_train_result(result: TrainResult, model_name: str) -> None:
    from rich.table import Table

    table = Table(title=f"run {result.run_id} in {result.experiment}", title_justify="left")
    for column in ("metric", "model", "baseline"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for protocol in ("new_items", "all_items"):
        for metric in SUMMARY_METRICS:
            name = f"{protocol}.{metric}"
            if name in result.metrics:
                table.add_row(name, _cell(result.metrics[name]), _cell(result.metrics.get(f"baseline.{name}")))
    console.print(table)
    if result.model_version is not None:
        console.print(
            f"registered [bold]{model_name}[/] version [bold]{result.model_version}[/]; promote it with "
            f"`tailor promote --version {result.model_version} --alias champion`"
        )
    typer.echo(result.run_id)


def tune(
    model: ModelOpt,
    data: DataOpt = None,
    trials: Annotated[int, typer.Option("--trials", "-n", min=1, help="Number of Optuna trials")] = 20,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    mapping: MappingOpt = None,
    test_days: TestDaysOpt = None,
    cutoff: CutoffOpt = None,
    validation_days: Annotated[
        float | None,
        typer.Option(
            "--validation-days",
            min=0.001,
            help="Validation period cut from the end of training (default: as long as the test period)",
        ),
    ] = None,
    metric: Annotated[str, typer.Option("--metric", help="Validation metric to maximise")] = "new_items.ndcg_at_10",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the TPE sampler")] = 0,
    experiment: ExperimentOpt = None,
) -> None:
    """Search a model's hyperparameters, event weights and half-life on a validation period (Optuna TPE)."""
    from training.models.base import get_model_class
    from training.tune import tune as run_tune

    settings = load_settings()
    path = _data_path(data, settings)
    with _user_errors():
        get_model_class(model)
        run_config = _run_config(config)
        result = run_tune(
            model,
            trials,
            path,
            _mapping(preset, mapping),
            settings,
            base_config=run_config.model,
            matrix_config=run_config.matrix_config(),
            test_days=test_days,
            cutoff=cutoff,
            validation_days=validation_days,
            metric=metric,
            seed=seed,
            experiment=experiment,
        )
    console.print(f"best {metric} = [bold]{result.best_value:.4f}[/] (trial {result.best_trial}); config:")
    console.print_json(data=result.best_config)
    source = f"--preset {preset} " if preset else (f"--mapping {mapping} " if mapping else "")
    console.print("train it with:")
    typer.echo(f"tailor train --model {model} --config {result.config_path} --data {path} {source}".rstrip())


RUN_LABELS = {
    "new_items.ndcg_at_10": "ndcg@10",
    "baseline.new_items.ndcg_at_10": "baseline ndcg@10",
    "new_items.recall_at_10": "recall@10",
    "new_items.coverage_at_10": "coverage@10",
    "new_items.ndcg_at_10_vs_oracle": "vs oracle",
    "all_items.ndcg_at_10": "all-items ndcg@10",
    "start_time": "started (UTC)",
}


def runs(
    experiment: ExperimentOpt = None,
    trials: Annotated[bool, typer.Option("--trials", help="Also list tuning trials")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most this many runs")] = 20,
) -> None:
    """Compare runs, newest first: model, new-item NDCG@10 vs the popularity baseline, coverage, oracle ratio.

    Metrics are on held-out purchases of items the shopper had not interacted with (``new_items``);
    ``all-items`` counts repeat purchases too; ``vs oracle`` is NDCG relative to the synthetic ground truth.
    """
    from training.tracking import runs_table

    settings = load_settings()
    with _user_errors():
        table = runs_table(experiment, settings, include_trials=trials)
    if table.is_empty():
        console.print("no runs yet: train one with `tailor train --model als --data PATH`")
        return
    drop = ["status", "run_name"] + (["experiment"] if table["experiment"].n_unique() == 1 else [])
    shown = table.head(limit).drop(drop).rename(lambda c: RUN_LABELS.get(c, c))
    _print_frame(shown, title=f"runs in {', '.join(table['experiment'].unique(maintain_order=True))}")


def _print_frame(frame: pl.DataFrame, *, title: str) -> None:
    from rich.table import Table

    out = Table(title=title, title_justify="left")
    for name, dtype in frame.schema.items():
        out.add_column(name, justify="right" if dtype.is_numeric() else "left", no_wrap=name == "run_id")
    for row in frame.iter_rows():
        out.add_row(*(_cell(v) for v in row))
    console.print(out)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, datetime):
        return value.strftime("%m-%d %H:%M")
    return str(value)


def promote(
    version: Annotated[
        int | None,
        typer.Option("--version", "-v", min=1, help="Registered model version to promote (default: the newest)"),
    ] = None,
    alias: Annotated[str, typer.Option("--alias", "-a", help="Alias to point at it: champion or challenger")] = (
        "champion"
    ),
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="Registered model name (default TAILOR_MODEL_NAME)")
    ] = None,
) -> None:
    """Point a registry alias (champion/challenger) at a model version; `tailor publish` serves the champion."""
    from training.tracking import latest_version, set_alias

    settings = load_settings()
    name = model_name or settings.model_name
    with _user_errors():
        chosen = version if version is not None else latest_version(name, settings)
        set_alias(name, alias, chosen, settings)
    console.print(f"{name}@{alias} → version {chosen}")


def export(
    users: Annotated[
        Path, typer.Option("--users", "-u", help="Users file: CSV/Parquet with user_id, or one id a line")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file: .csv or .parquet")],
    model_uri: Annotated[
        str | None, typer.Option("--model-uri", help="Model to use (default models:/<model name>@champion)")
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Recommendations per user")] = 50,
) -> None:
    """Write top-k recommendations (user_id, rank, item_id, score) for a list of users."""
    from training.export import export_recommendations

    settings = load_settings()
    uri = model_uri or f"models:/{settings.model_name}@champion"
    with _user_errors():
        result = export_recommendations(uri, users, out, settings, k=k)
    console.print(f"wrote {result.n_rows} rows for {result.n_users} users to {result.path} ({uri})")
    if result.unknown_users:
        console.print(
            f"[yellow]{result.unknown_users} users unknown to the model[/] (e.g. {', '.join(result.unknown_sample)})"
        )


def models() -> None:
    """List the available model types with their config fields, and the registry's versions."""
    from training.tracking import registered_models

    _print_model_types()
    settings = load_settings()
    with _user_errors():
        registry = registered_models(settings)
    if registry.is_empty():
        console.print("registry is empty: `tailor train` registers each trained model")
    else:
        _print_frame(registry, title=f"registered models ({settings.tracking_uri})")


def _print_model_types() -> None:
    from rich.table import Table

    from training.models.base import REGISTRY, get_model_class

    get_model_class("popularity")  # loads the built-in models
    table = Table(title="model types (config fields for --config)", title_justify="left")
    for column in ("model", "field", "default", "description"):
        table.add_column(column, overflow="fold")
    for name in sorted(REGISTRY):
        for i, (field, info) in enumerate(REGISTRY[name].Config.model_fields.items()):
            default = info.get_default(call_default_factory=True)
            table.add_row(name if i == 0 else "", field, _default(default), info.description or "")
    console.print(table)


def _default(value: object) -> str:
    """A config default as JSON-ish text (nested configs as their dict)."""
    import json

    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value) if isinstance(value, dict | list | str | bool) or value is None else str(value)


def mlflow_ui(
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on (bound to 127.0.0.1)")] = 5000,
) -> None:
    """Open the MLflow UI on Tailor's tracking store (http://127.0.0.1:PORT); Ctrl-C stops it."""
    settings = load_settings()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", settings.tracking_uri,
        "--default-artifact-root", settings.artifact_root.as_uri(),
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",  # one local user; each extra worker re-imports MLflow and slows start-up
    ]  # fmt: skip
    # MLflow 3's server also starts background job workers (huey); a local UI needs none of them.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    console.print(f"MLflow UI on http://127.0.0.1:{port} ({settings.tracking_uri}); starting, Ctrl-C stops it")
    # Its own process group, so Ctrl-C here stops the server *and* every worker it forked.
    server = subprocess.Popen(command, env=env, start_new_session=True)
    signal.signal(signal.SIGTERM, _interrupt)  # stopped by a process manager: take the server down too
    try:
        code = server.wait()
    except KeyboardInterrupt:
        code = _stop_group(server)
    raise typer.Exit(0 if code in (0, -signal.SIGTERM, -signal.SIGKILL) else code)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_group(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM the process group of ``process``; SIGKILL it if it is not gone within 15 s."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def register(app: typer.Typer) -> None:
    """Add the model commands to the root app."""
    for command, name in (
        (train, "train"),
        (tune, "tune"),
        (runs, "runs"),
        (promote, "promote"),
        (export, "export"),
        (models, "models"),
        (mlflow_ui, "mlflow-ui"),
    ):
        app.command(name=name, rich_help_panel=PANEL)(command)
