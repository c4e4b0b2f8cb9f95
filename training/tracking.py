"""MLflow glue: where runs go, what they record, and the model registry.

Nothing here touches MLflow at import time: every function takes the caller's
:class:`~features.settings.Settings` (or runs inside a run the caller started with
:func:`start_run`) and points MLflow at ``settings.tracking_uri`` when called.

Layout of what Tailor records:

- experiments ``tailor/<dataset name>`` (artifacts under ``<home>/mlartifacts/<experiment>`` for the
  local store); run tags ``tailor.kind`` (``train`` | ``tune`` | ``trial``), ``tailor.model``,
  ``tailor.dataset``, ``git_commit``;
- params ``model`` + ``model.<key>`` (model config), ``matrix.weight.<event type>``,
  ``matrix.other_weight``, ``matrix.half_life_days``, ``split.<key>``, ``eval.ks``, ``data.<key>``;
- a dataset input (``mlflow.data`` polars dataset with a content digest, the source path, and
  rows/users/items/time span), metrics from evaluation reports, figures under ``plots/``, JSON
  under ``reports/``;
- the model as a pyfunc (:mod:`training.pyfunc`) under the artifact path ``model``, registered under
  ``settings.model_name``; aliases ``champion`` / ``challenger`` pick versions.

Errors: :class:`TrackingError` (a ``RuntimeError``) for anything the user can fix — an unknown model
URI, alias or experiment; MLflow's own exceptions are translated where the message would confuse.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from features.columns import Columns
from features.settings import Settings

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from features.mapping import EventMapping
    from training.models.base import Recommender

EXPERIMENT_PREFIX = "tailor/"
MAPPING_ARTIFACT = "data/mapping.json"
"""How a run's events were read (an :class:`~features.mapping.EventMapping`), when not Tailor's own columns."""
MODEL_ARTIFACT_PATH = "model"
KIND_TAG = "tailor.kind"
MODEL_TAG = "tailor.model"
DATASET_TAG = "tailor.dataset"
GIT_TAG = "git_commit"
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
_MAX_PARAM_LEN = 6000  # MLflow rejects longer param values


class TrackingError(RuntimeError):
    """A tracking or registry request cannot be satisfied (unknown model URI, alias, experiment)."""


@dataclass(frozen=True)
class ModelInfo:
    """Where a loaded model came from: registry name/version/alias (if any) and its training run."""

    model_name: str | None
    model_version: str | None
    run_id: str
    alias: str | None
    model_uri: str = ""


# --- setup ------------------------------------------------------------------------------------------
def connect(settings: Settings) -> MlflowClient:
    """Point MLflow (fluent API and registry) at ``settings.tracking_uri``; return a client for it."""
    import mlflow

    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's INFO logs, warnings and progress bars for the duration of a command."""
    import mlflow  # noqa: F401  (importing configures MLflow's loggers; adjust them afterwards)

    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    old_bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if old_bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = old_bar


def experiment_name(dataset: str) -> str:
    """The experiment of a dataset: ``tailor/<dataset>``."""
    return dataset if dataset.startswith(EXPERIMENT_PREFIX) else f"{EXPERIMENT_PREFIX}{dataset}"


def ensure_experiment(name: str, settings: Settings) -> str:
    """Id of experiment ``name``, created if missing (artifacts under the home folder when local)."""
    client = connect(settings)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    location = None
    if settings.mlflow_tracking_uri is None:  # local store: keep artifacts next to the database
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        location = (settings.artifact_root / slug).as_uri()
    return str(client.create_experiment(name, artifact_location=location))


@contextmanager
def start_run(
    experiment: str, settings: Settings, *, run_name: str | None = None, kind: str = "train", nested: bool = False
) -> Iterator[str]:
    """Start a run in ``experiment`` tagged with its kind and the git commit; yields the run id."""
    import mlflow

    experiment_id = ensure_experiment(experiment, settings)
    tags = {KIND_TAG: kind}
    commit = git_commit()
    if commit:
        tags[GIT_TAG] = commit
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, nested=nested, tags=tags) as run:
        yield str(run.info.run_id)


def git_commit(folder: Path = _PROJECT_ROOT) -> str | None:
    """``git rev-parse HEAD`` of the code's repository, or None outside git (failures ignored)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# --- params, lineage, metrics, artifacts -------------------------------------------------------------
def flatten(prefix: str, values: Mapping[str, Any]) -> dict[str, str]:
    """``{"a": {"b": 1}}`` with prefix ``p`` → ``{"p.a.b": "1"}`` (values stringified for MLflow)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(name, value))
        else:
            out[name] = str(value)[:_MAX_PARAM_LEN]
    return out


def log_params(params: Mapping[str, Any]) -> None:
    """Log already-flat params on the active run (values stringified)."""
    import mlflow

    mlflow.log_params({key: str(value)[:_MAX_PARAM_LEN] for key, value in params.items()})


def matrix_params(
    event_weights: Mapping[str, float], other_weight: float, half_life_days: float | None
) -> dict[str, str]:
    """The matrix config as params: ``matrix.weight.<type>``, ``matrix.other_weight``, ``matrix.half_life_days``."""
    params = {f"matrix.weight.{event}": str(weight) for event, weight in sorted(event_weights.items())}
    params["matrix.other_weight"] = str(other_weight)
    params["matrix.half_life_days"] = str(half_life_days)
    return params


def dataset_digest(events: pl.DataFrame) -> str:
    """Content hash of an events frame, independent of row order (stable within a polars version)."""
    hashes = events.hash_rows(seed=0).sort()
    digest = hashlib.sha256(hashes.to_numpy().tobytes())
    digest.update(",".join(f"{n}:{t}" for n, t in events.schema.items()).encode())
    return digest.hexdigest()[:32]  # MLflow stores at most 36 characters


def dataset_profile(events: pl.DataFrame) -> dict[str, str]:
    """Rows, users, items and time span of an events frame, as ``data.*`` params."""
    span = events.select(pl.col(Columns.TIMESTAMP).min().alias("start"), pl.col(Columns.TIMESTAMP).max().alias("end"))
    return {
        "data.rows": str(events.height),
        "data.users": str(events[Columns.USER].n_unique()),
        "data.items": str(events[Columns.ITEM].n_unique()),
        "data.start": str(span["start"][0]),
        "data.end": str(span["end"][0]),
    }


def log_dataset(
    events: pl.DataFrame, *, source: str, name: str, context: str = "training", mapping: EventMapping | None = None
) -> str:
    """Log ``events`` as the run's dataset input (digest, source, schema, profile); return the digest.

    ``mapping`` (how the source's columns were read) is logged as the artifact :data:`MAPPING_ARTIFACT`,
    so that ``tailor publish`` can read the same source again (:func:`training_data`).
    """
    import mlflow
    from mlflow.data.polars_dataset import from_polars

    digest = dataset_digest(events)
    dataset = from_polars(events, source=source, name=name, digest=digest)
    mlflow.log_input(dataset, context=context)
    log_params({**dataset_profile(events), "data.digest": digest, "data.source": source, "data.name": name})
    if mapping is not None:
        mlflow.log_dict(mapping.model_dump(mode="json"), MAPPING_ARTIFACT)
    return digest


def log_metrics(metrics: Mapping[str, float], prefix: str = "", *, model_id: str | None = None) -> None:
    """Log metrics (names like ``new_items.ndcg_at_10``) on the active run, skipping NaN values.

    ``model_id`` also links them to a logged model (shown with the model in the MLflow UI).
    """
    import mlflow

    clean = {f"{prefix}{key}": float(value) for key, value in metrics.items() if not math.isnan(value)}
    if clean:
        mlflow.log_metrics(clean, model_id=model_id)


def log_figure(figure: Figure, artifact_file: str) -> None:
    """Log a matplotlib figure as a PNG artifact and free it."""
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_figure(figure, artifact_file)
    plt.close(figure)


def log_json(payload: Mapping[str, Any], artifact_file: str) -> None:
    """Log a JSON-serialisable mapping as an artifact (e.g. ``reports/validation.json``)."""
    import mlflow

    mlflow.log_dict(dict(payload), artifact_file)


# --- the model ----------------------------------------------------------------------------------------
def log_recommender(model: Recommender) -> Any:
    """Log ``model`` as a pyfunc under ``model`` on the active run; returns MLflow's ``ModelInfo``."""
    import mlflow.pyfunc

    from training.pyfunc import ARTIFACT_KEY, signature, write_model_code

    with tempfile.TemporaryDirectory(prefix="tailor-model-") as tmp:
        folder = Path(tmp) / ARTIFACT_KEY
        model.save(folder)
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_PATH,
            python_model=str(write_model_code(Path(tmp))),
            artifacts={ARTIFACT_KEY: str(folder)},
            signature=signature(),
            # The model runs in the venv that trained it: require the project, never resolve/install.
            pip_requirements=["tailor"],
            uv_project_path=_PROJECT_ROOT if (_PROJECT_ROOT / "uv.lock").exists() else None,
        )


def register(logged: Any, settings: Settings, *, model_name: str | None = None) -> str:
    """Register a logged model (from :func:`log_recommender`) under ``settings.model_name``; return the version."""
    client = connect(settings)
    name = model_name or settings.model_name
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source=logged.model_uri, run_id=logged.run_id, model_id=logged.model_id)
    return str(version.version)


def set_alias(name: str, alias: str, version: str | int, settings: Settings) -> None:
    """Point ``name@alias`` at ``version`` (e.g. promote version 3 to ``champion``)."""
    from mlflow.exceptions import MlflowException

    client = connect(settings)
    try:
        client.get_model_version(name, str(version))
        client.set_registered_model_alias(name, alias, str(version))
    except MlflowException as exc:
        raise TrackingError(f"cannot set {name}@{alias} → version {version}: {_short(exc)}") from exc


def latest_version(name: str, settings: Settings) -> int:
    """The newest version number registered under ``name``."""
    client = connect(settings)
    versions = [int(mv.version) for mv in client.search_model_versions(filter_string=f"name = '{name}'")]
    if not versions:
        raise TrackingError(f"no versions of model {name!r} are registered (train one with `tailor train`)")
    return max(versions)


def resolve_model_uri(model_uri: str, settings: Settings) -> tuple[ModelInfo, str]:
    """Registry name/version/alias and training run of ``model_uri``, plus the URI to download from.

    Accepts ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/<logged model id>`` and
    ``runs:/RUN_ID/PATH``.
    """
    from mlflow.exceptions import MlflowException

    client = connect(settings)
    try:
        return _resolve(client, model_uri)
    except MlflowException as exc:
        raise TrackingError(f"cannot resolve model {model_uri!r}: {_short(exc)}") from exc


def _resolve(client: MlflowClient, uri: str) -> tuple[ModelInfo, str]:
    if uri.startswith("runs:/"):
        run_id = uri.removeprefix("runs:/").split("/", 1)[0]
        return ModelInfo(None, None, run_id, None, uri), uri
    if not uri.startswith("models:/"):
        raise TrackingError(f"model URI {uri!r} must start with models:/ or runs:/")
    ref = uri.removeprefix("models:/").rstrip("/")
    if ref.startswith("m-") and "/" not in ref and "@" not in ref:  # a logged model id
        return ModelInfo(None, None, str(client.get_logged_model(ref).source_run_id), None, uri), uri
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, _, number = ref.partition("/")
        alias = None
        version = client.get_model_version(name, number)
    return ModelInfo(name, str(version.version), str(version.run_id), alias, uri), str(version.source)


def load_recommender(model_uri: str, settings: Settings) -> tuple[Recommender, ModelInfo]:
    """Download (once, cached under ``<home>/models``) and load the Recommender behind ``model_uri``."""
    from training.models.base import Recommender

    info, source = resolve_model_uri(model_uri, settings)
    folder = _download(source, settings)
    return Recommender.load(_recommender_folder(folder)), info


def training_data(run_id: str, settings: Settings) -> tuple[Path | None, EventMapping | None]:
    """Where a run's events came from (its ``data.source`` param) and how they were read (the mapping it
    logged, None for Tailor's own columns); see :func:`log_dataset`."""
    from mlflow.exceptions import MlflowException

    from features.mapping import EventMapping

    client = connect(settings)
    try:
        source = client.get_run(run_id).data.params.get("data.source")
        logged = {entry.path for entry in client.list_artifacts(run_id, path=MAPPING_ARTIFACT.rsplit("/", 1)[0])}
        mapping = None
        if MAPPING_ARTIFACT in logged:
            import mlflow.artifacts

            mapping = EventMapping.model_validate(mlflow.artifacts.load_dict(f"runs:/{run_id}/{MAPPING_ARTIFACT}"))
    except MlflowException as exc:
        raise TrackingError(f"cannot read run {run_id}: {_short(exc)}") from exc
    return (Path(source) if source else None), mapping


def _download(source: str, settings: Settings) -> Path:
    """Download a model's artifacts into the cache (atomic rename; reused when already present)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    target = (settings.home / "models" / hashlib.sha256(source.encode()).hexdigest()[:16]).resolve()
    if (target / "MLmodel").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        # runs:/ URIs land in a sub-folder named after the model; models:/ URIs in the folder itself
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging)))
        if not (local / "MLmodel").is_file():
            raise TrackingError(f"{source!r} is not an MLflow model (no MLmodel file)")
        local.rename(target)
    except MlflowException as exc:
        raise TrackingError(f"cannot download model {source!r}: {_short(exc)}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _recommender_folder(model_dir: Path) -> Path:
    """The ``recommender`` artifact folder inside a downloaded pyfunc model directory."""
    from mlflow.models import Model

    from training.pyfunc import ARTIFACT_KEY

    flavor = Model.load(str(model_dir)).flavors.get("python_function", {})
    artifact = flavor.get("artifacts", {}).get(ARTIFACT_KEY)
    if artifact is None:
        raise TrackingError(f"{model_dir} is not a Tailor model (no {ARTIFACT_KEY!r} artifact)")
    return model_dir / str(artifact["path"])


# --- browsing -------------------------------------------------------------------------------------------
KEY_METRICS: tuple[str, ...] = (
    "new_items.ndcg_at_10",
    "baseline.new_items.ndcg_at_10",
    "new_items.recall_at_10",
    "new_items.coverage_at_10",
    "new_items.ndcg_at_10_vs_oracle",
    "all_items.ndcg_at_10",
)
"""Metrics shown by ``tailor runs``: new-item quality vs the baseline, coverage, oracle ratio, repeats included."""


def runs_table(
    experiment: str | None, settings: Settings, *, metrics: Sequence[str] = KEY_METRICS, include_trials: bool = False
) -> pl.DataFrame:
    """Runs of ``experiment`` (or of every ``tailor/…`` experiment), newest first, with key params/metrics.

    Columns: ``run_id, experiment, run_name, kind, model, start_time, status`` then one column per
    requested metric present in any run. Tuning trials are left out unless ``include_trials``.
    """
    client = connect(settings)
    experiments = _experiments(client, experiment)
    if not experiments:
        return pl.DataFrame()
    runs = client.search_runs([e.experiment_id for e in experiments], order_by=["attributes.start_time DESC"])
    names = {e.experiment_id: e.name for e in experiments}
    rows = [_run_row(run, names, metrics) for run in runs if include_trials or run.data.tags.get(KIND_TAG) != "trial"]
    return pl.DataFrame(rows).select(pl.all().exclude([m for m in metrics if all(r[m] is None for r in rows)]))


def _experiments(client: MlflowClient, experiment: str | None) -> list[Any]:
    if experiment is None:
        return [e for e in client.search_experiments() if str(e.name).startswith(EXPERIMENT_PREFIX)]
    found = client.get_experiment_by_name(experiment) or client.get_experiment_by_name(experiment_name(experiment))
    if found is None:
        raise TrackingError(f"no experiment named {experiment!r} (try `tailor runs` to list all)")
    return [found]


def _run_row(run: Run, experiments: Mapping[str, str], metrics: Sequence[str]) -> dict[str, Any]:
    from datetime import UTC, datetime

    tags, data = run.data.tags, run.data
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "experiment": experiments.get(run.info.experiment_id, ""),
        "run_name": run.info.run_name,
        "kind": tags.get(KIND_TAG, ""),
        "model": data.params.get("model", tags.get(MODEL_TAG, "")),
        "start_time": datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC).replace(tzinfo=None),
        "status": run.info.status,
    }
    row.update({m: data.metrics.get(m) for m in metrics})
    return row


def registered_models(settings: Settings) -> pl.DataFrame:
    """Every registered model version: ``name, version, aliases, run_id, model, created``."""
    from datetime import UTC, datetime

    client = connect(settings)
    rows = []
    for rm in client.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for mv in client.search_model_versions(filter_string=f"name = '{rm.name}'"):
            rows.append(
                {
                    "name": rm.name,
                    "version": int(mv.version),
                    "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
                    "run_id": mv.run_id,
                    "model": client.get_run(mv.run_id).data.params.get("model", "") if mv.run_id else "",
                    "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC).replace(tzinfo=None),
                }
            )
    return pl.DataFrame(rows).sort(["name", "version"], descending=[False, True]) if rows else pl.DataFrame()


def _short(exc: Exception) -> str:
    """The first line of an MLflow error message, without its error-code prefix."""
    message = str(getattr(exc, "message", exc)).strip().splitlines()
    return message[0] if message else type(exc).__name__
