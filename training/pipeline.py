"""The training pipeline behind ``tailor train``: events in, an evaluated, tracked, registered model out.

    load_dataset(data, mapping)        events (+ catalogue, users, synthetic ground truth next to them)
    prepare(dataset, matrix_config, …) temporal split + TrainData (weighted matrix, purchases, features)
    fit_model(name, config, data)      a fitted Recommender from the registry of models
    evaluate_model(model, …)           metrics of both protocols (+ oracle ratio on synthetic data)
    train(…) → TrainResult             all of the above in one MLflow run, the model logged and registered

Each run also records the popularity baseline's metrics (``baseline.<metric>``) so any run can be read
at a glance against it. After evaluation the model is refitted on *all* events (``refit=True``) so
the logged model knows the freshest items and users; the metrics are those of the held-out fit.

Errors: bad data raises :class:`~features.errors.TailorDataError`; an unknown model or unusable
config raises :class:`~training.models.base.ModelError` / pydantic ``ValidationError``;
:class:`ConfigFileError` for an unreadable ``--config`` file.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from features.columns import Columns, EventType
from features.errors import TailorDataError
from features.matrix import MatrixConfig, build_matrix
from features.settings import Settings

if TYPE_CHECKING:
    from features.mapping import EventMapping
    from features.split import TemporalSplit
    from features.synth import GroundTruth
    from training.evaluation import EvaluationReport
    from training.models.base import Recommender, TrainData

DEFAULT_TEST_DAYS = 14.0
"""Default held-out period: two weeks balances a stable test set with a recent training window."""
DEFAULT_KS: tuple[int, ...] = (10, 20, 50)
PROTOCOLS: tuple[str, ...] = ("new_items", "all_items")
BASELINE = "popularity"
_TABLE_SUFFIXES = (".parquet", ".csv", ".csv.gz", ".tsv")


class ConfigFileError(ValueError):
    """A ``--config`` file is missing, unparseable, or has sections of the wrong shape."""


@dataclass(frozen=True)
class Dataset:
    """Loaded events and their companions. ``name`` names the MLflow experiment (``tailor/<name>``)."""

    name: str
    source: str
    events: pl.DataFrame
    catalogue: pl.DataFrame | None = None
    users: pl.DataFrame | None = None
    truth: GroundTruth | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    mapping: EventMapping | None = None  # how the events were read (None: Tailor's own columns)


@dataclass(frozen=True)
class RunConfig:
    """A ``--config`` file: the model's config and optional matrix overrides (event weights, half-life)."""

    model: dict[str, Any] = field(default_factory=dict)
    matrix: dict[str, Any] = field(default_factory=dict)

    def matrix_config(self, base: MatrixConfig | None = None) -> MatrixConfig:
        """``base`` (default: the standard weights) with this file's matrix section applied."""
        data = (base or MatrixConfig()).model_dump()
        return MatrixConfig.model_validate({**data, **self.matrix})


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` produced: the run, the registry version (None when not registered), and every
    metric logged (the model's, plus the popularity baseline's as ``baseline.<name>``)."""

    run_id: str
    model_version: str | None
    metrics: dict[str, float]
    experiment: str
    model_uri: str


# --- inputs ---------------------------------------------------------------------------------------------
def read_config(path: str | Path) -> RunConfig:
    """Read a JSON/TOML config: either ``{"model": {...}, "matrix": {...}}`` or a flat model config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigFileError(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigFileError(f"config file {path} must hold an object/table of keys")
    if data and set(data) <= {"model", "matrix"} and all(isinstance(v, dict) for v in data.values()):
        return RunConfig(model=data.get("model", {}), matrix=data.get("matrix", {}))
    return RunConfig(model=data)


def load_dataset(data: str | Path, mapping: EventMapping | None = None, *, name: str | None = None) -> Dataset:
    """Load events from a file or a store folder, with ``catalogue.*``, ``users.*`` and ``truth/`` beside them."""
    from features.loaders import load_events

    data = Path(data)
    if not data.exists():
        raise TailorDataError(f"data not found: {data}")
    loaded = load_events(data, mapping)
    folder = data if data.is_dir() else data.parent
    return Dataset(
        name=name or dataset_name(data),
        source=str(data.resolve()),
        events=loaded.events,
        catalogue=_load_companion(folder, "catalogue"),
        users=_load_companion(folder, "users"),
        truth=_load_truth(folder),
        validation=loaded.report.to_dict(),
        mapping=mapping,
    )


def dataset_name(data: Path) -> str:
    """``store`` for ``…/store/`` or ``…/store/events.parquet``; ``online_retail`` for ``online_retail.csv.gz``."""
    if data.is_dir():
        return data.resolve().name
    stem = data.name.split(".", 1)[0]
    return data.resolve().parent.name if stem == "events" else stem


def _load_companion(folder: Path, stem: str) -> pl.DataFrame | None:
    from features import loaders

    readers = {"catalogue": loaders.load_catalogue, "users": loaders.load_users}
    for suffix in _TABLE_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return readers[stem](path)
    return None


def _load_truth(folder: Path) -> GroundTruth | None:
    if not (folder / "truth").is_dir():
        return None
    from features.synth import GroundTruth

    return GroundTruth.load(folder / "truth")


# --- preparation and fitting -----------------------------------------------------------------------------
def build_train_data(
    events: pl.DataFrame,
    matrix_config: MatrixConfig,
    *,
    catalogue: pl.DataFrame | None = None,
    users: pl.DataFrame | None = None,
    reference_time: datetime | None = None,
) -> TrainData:
    """Weighted interactions, purchase counts and (when given) item/user features, on one set of id maps."""
    from features.feature_matrices import build_item_features, build_user_features
    from training.models.base import TrainData

    interactions = build_matrix(events, matrix_config, reference_time=reference_time)
    purchases = build_matrix(
        events.filter(pl.col(Columns.EVENT) == EventType.PURCHASE.value),
        MatrixConfig(event_weights={EventType.PURCHASE.value: 1.0}, other_weight=0.0),
        users=interactions.users,
        items=interactions.items,
    )
    return TrainData(
        interactions,
        item_features=build_item_features(catalogue, interactions.items) if catalogue is not None else None,
        user_features=build_user_features(users, interactions.users) if users is not None else None,
        purchases=purchases.matrix,
    )


def split_events(events: pl.DataFrame, *, test_days: float | None, cutoff: datetime | None) -> TemporalSplit:
    """The held-out split: an explicit ``cutoff`` wins over ``test_days`` (default two weeks)."""
    from features.split import temporal_split

    if cutoff is not None:
        return temporal_split(events, cutoff=cutoff)
    return temporal_split(events, test_days=test_days or DEFAULT_TEST_DAYS)


def fit_model(model_name: str, config: Mapping[str, Any] | None, data: TrainData) -> Recommender:
    """Build the registered model ``model_name`` from ``config`` and fit it."""
    from training.models.base import get_model_class

    model_cls = get_model_class(model_name)
    return model_cls(dict(config or {})).fit(data)


def evaluate_model(
    model: Recommender,
    split: TemporalSplit,
    dataset: Dataset,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    protocols: Sequence[str] = PROTOCOLS,
    oracle: bool = True,
) -> EvaluationReport:
    """One report over ``protocols`` with slices (and, on synthetic data, oracle ratios if ``oracle``)."""
    from training.evaluation import EvaluationReport, evaluate

    reports = [
        evaluate(
            model,
            split,
            protocol=protocol,  # type: ignore[arg-type]
            ks=tuple(ks),
            catalogue=dataset.catalogue,
            users=dataset.users,
            oracle=dataset.truth if oracle else None,
        )
        for protocol in protocols
    ]
    return EvaluationReport.combine(reports)


# --- the whole run ---------------------------------------------------------------------------------------
def train(
    model_name: str,
    config: Mapping[str, Any] | None,
    data: str | Path,
    mapping: EventMapping | None,
    settings: Settings,
    *,
    matrix_config: MatrixConfig | None = None,
    test_days: float | None = None,
    cutoff: datetime | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    register: bool = True,
    refit: bool = True,
    run_name: str | None = None,
    experiment: str | None = None,
    nested: bool = False,
    dataset: Dataset | None = None,
) -> TrainResult:
    """Load, split, fit, evaluate (model and popularity baseline) and log one MLflow run; register the model.

    ``dataset`` skips loading (e.g. when tuning already loaded it). Returns the run id, the new
    registry version (None if ``register`` is off) and the metrics.
    """
    from training import tracking

    matrix_config = matrix_config or MatrixConfig()
    dataset = dataset or load_dataset(data, mapping)
    split = split_events(dataset.events, test_days=test_days, cutoff=cutoff)
    train_data = _train_data(split.train, matrix_config, dataset, split.cutoff)
    model = fit_model(model_name, config, train_data)  # fit before the run: a bad config logs nothing
    experiment = experiment or tracking.experiment_name(dataset.name)
    with tracking.start_run(experiment, settings, run_name=run_name or model_name, nested=nested) as run_id:
        _log_inputs(model, matrix_config, split, dataset, ks, refit)
        report = evaluate_model(model, split, dataset, ks=ks)
        if refit:
            model = fit_model(model_name, config, _train_data(dataset.events, matrix_config, dataset, None))
        # Log the model before the metrics: MLflow links every metric already on the run to a newly
        # logged model one query at a time; only the headline (unsliced) metrics are linked to it.
        logged = tracking.log_recommender(model)
        _log_metrics(report.metrics, logged.model_id)
        baseline = _baseline_metrics(train_data, split, dataset, ks)
        tracking.log_metrics(baseline, "baseline.")
        _log_reports(report, dataset)
        version = tracking.register(logged, settings) if register else None
    metrics = {**report.metrics, **{f"baseline.{name}": value for name, value in baseline.items()}}
    return TrainResult(run_id, version, metrics, experiment, str(logged.model_uri))


def _log_metrics(metrics: Mapping[str, float], model_id: str) -> None:
    """Headline metrics (``<protocol>.<metric>``) linked to the logged model; slices on the run only."""
    from training import tracking

    headline = {name: value for name, value in metrics.items() if name.count(".") == 1}
    tracking.log_metrics(headline, model_id=model_id)
    tracking.log_metrics({name: value for name, value in metrics.items() if name not in headline})


def _train_data(events: pl.DataFrame, matrix_config: MatrixConfig, dataset: Dataset, ref: datetime | None) -> TrainData:
    return build_train_data(events, matrix_config, catalogue=dataset.catalogue, users=dataset.users, reference_time=ref)


def _log_inputs(
    model: Recommender,
    matrix_config: MatrixConfig,
    split: TemporalSplit,
    dataset: Dataset,
    ks: Sequence[int],
    refit: bool,
) -> None:
    import mlflow

    from training import tracking

    mlflow.set_tags({tracking.MODEL_TAG: model.name, tracking.DATASET_TAG: dataset.name})
    params: dict[str, Any] = {"model": model.name, **tracking.flatten("model", model.get_config())}
    params.update(
        tracking.matrix_params(matrix_config.event_weights, matrix_config.other_weight, matrix_config.half_life_days)
    )
    params.update(split.params())
    params.update({"eval.ks": ",".join(map(str, ks)), "train.refit": str(refit).lower()})
    tracking.log_params(params)
    tracking.log_dataset(dataset.events, source=dataset.source, name=dataset.name, mapping=dataset.mapping)


def _baseline_metrics(
    train_data: TrainData, split: TemporalSplit, dataset: Dataset, ks: Sequence[int]
) -> dict[str, float]:
    """The default popularity model on the same split and matrix (no oracle ratios: they are the model's)."""
    baseline = fit_model(BASELINE, None, train_data)
    return dict(evaluate_model(baseline, split, dataset, ks=ks, oracle=False).metrics)


def _log_reports(report: EvaluationReport, dataset: Dataset) -> None:
    """Plots (quality vs k, popularity bias, per segment), the evaluation and data validation reports."""
    from training import plots, tracking

    tracking.log_figure(plots.plot_metrics_vs_k(report), "plots/metrics_vs_k.png")
    tracking.log_figure(plots.plot_popularity_bias(report), "plots/popularity_bias.png")
    tracking.log_figure(plots.plot_segments(report), "plots/segments.png")
    tracking.log_json({"metrics": report.metrics, "n_users": report.n_users}, "reports/evaluation.json")
    if dataset.validation:
        tracking.log_json(dataset.validation, "reports/validation.json")
