"""Hyperparameter search behind ``tailor tune``: Optuna TPE over a model's key params, the event weights
and the recency half-life, judged on a validation period cut from the end of training.

The outer test period (``--test-days``/``--cutoff``, as in ``tailor train``) is never looked at:
trials train on the training events *before* the validation period and are scored on the purchases
*in* it (:func:`features.split.validation_split`). Each trial is a nested MLflow run (tag
``tailor.kind=trial``) under one parent run (``tailor.kind=tune``) that records the best config as
params ``best.<param>``, metric ``best.<metric>`` and the artifact ``best_config.json`` — the file
``tailor train --config`` reads (also written to ``<home>/best_config_<model>.json``).

Search spaces are declared per model in :data:`SEARCH_SPACES` (trial → partial model config); the
matrix space (:func:`matrix_space`) applies to every model. Trial parameter names are the MLflow
param names (``model.factors``, ``matrix.weight.purchase``, ``matrix.half_life_days``).

Errors: :class:`TuneError` (a ``ValueError``) for a model without a search space or an unknown metric.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.columns import EventType
from features.matrix import MatrixConfig
from features.settings import Settings

if TYPE_CHECKING:
    import optuna

    from features.mapping import EventMapping
    from features.split import TemporalSplit
    from training.pipeline import Dataset

DEFAULT_METRIC = "new_items.ndcg_at_10"
_NO_DECAY = 0.0  # Optuna needs one type per parameter: 0 stands for "no half-life"


class TuneError(ValueError):
    """The search cannot run: no search space for the model, or the metric is never reported."""


@dataclass(frozen=True)
class TuneResult:
    """The parent run, the best trial and its config (``{"model": {...}, "matrix": {...}}``)."""

    run_id: str
    best_trial: int
    best_value: float
    best_config: dict[str, Any]
    config_path: Path


# --- search spaces ---------------------------------------------------------------------------------------
SearchSpace = Callable[["optuna.trial.BaseTrial"], dict[str, Any]]


def _als(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {
        "factors": trial.suggest_int("model.factors", 8, 128, log=True),
        "regularization": trial.suggest_float("model.regularization", 1e-4, 1.0, log=True),
        "alpha": trial.suggest_float("model.alpha", 0.1, 50.0, log=True),
        "iterations": trial.suggest_int("model.iterations", 5, 30),
    }


def _bpr(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {
        "factors": trial.suggest_int("model.factors", 8, 128, log=True),
        "learning_rate": trial.suggest_float("model.learning_rate", 1e-3, 0.2, log=True),
        "regularization": trial.suggest_float("model.regularization", 1e-4, 0.1, log=True),
        "iterations": trial.suggest_int("model.iterations", 20, 300, log=True),
    }


def _item_knn(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {
        "similarity": trial.suggest_categorical("model.similarity", ["cosine", "bm25", "tfidf"]),
        "neighbours": trial.suggest_int("model.neighbours", 5, 500, log=True),
    }


def _ease(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {"l2": trial.suggest_float("model.l2", 10.0, 1e6, log=True)}


def _lightfm(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {
        "no_components": trial.suggest_int("model.no_components", 8, 128, log=True),
        "learning_rate": trial.suggest_float("model.learning_rate", 1e-3, 0.2, log=True),
        "epochs": trial.suggest_int("model.epochs", 5, 50),
    }


def _popularity(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {"by": trial.suggest_categorical("model.by", ["users", "weight"])}


def _buy_again(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {"repeat_rate_weight": trial.suggest_float("model.repeat_rate_weight", 0.0, 1.0)}


def _blend(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {
        "repeat_weight": trial.suggest_float("model.repeat_weight", 0.0, 2.0),
        "buy_again": {"repeat_rate_weight": trial.suggest_float("model.buy_again.repeat_rate_weight", 0.0, 1.0)},
    }


SEARCH_SPACES: dict[str, SearchSpace] = {
    "als": _als,
    "bpr": _bpr,
    "item_knn": _item_knn,
    "ease": _ease,
    "lightfm": _lightfm,
    "popularity": _popularity,
    "buy_again": _buy_again,
    "blend": _blend,
}
"""Per-model search spaces: each returns a (partial, possibly nested) model config for one trial."""


def matrix_space(trial: optuna.trial.BaseTrial, base: MatrixConfig) -> MatrixConfig:
    """Cart and purchase weights (views keep their base weight, the unit) and an optional half-life."""
    weights = dict(base.event_weights)
    weights[EventType.ADD_TO_CART.value] = trial.suggest_float("matrix.weight.add_to_cart", 1.0, 20.0, log=True)
    weights[EventType.PURCHASE.value] = trial.suggest_float("matrix.weight.purchase", 1.0, 100.0, log=True)
    half_life = trial.suggest_categorical("matrix.half_life_days", [_NO_DECAY, 7.0, 14.0, 30.0, 60.0, 120.0])
    return base.model_copy(update={"event_weights": weights, "half_life_days": half_life or None})


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` applied; nested mappings are merged key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def search_space(model_name: str) -> SearchSpace:
    """The search space of ``model_name``; the error lists the tunable models."""
    try:
        return SEARCH_SPACES[model_name]
    except KeyError:
        raise TuneError(
            f"no search space for model {model_name!r}; tunable: {', '.join(sorted(SEARCH_SPACES))}"
        ) from None


# --- the search ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Objective:
    """One trial: fit on the validation split's training events, score the validation purchases."""

    model_name: str
    base_config: Mapping[str, Any]
    base_matrix: MatrixConfig
    split: TemporalSplit
    dataset: Dataset
    metric: str
    experiment: str
    settings: Settings

    def __call__(self, trial: optuna.trial.BaseTrial) -> float:
        from training import pipeline, tracking

        config = deep_merge(self.base_config, search_space(self.model_name)(trial))
        matrix = matrix_space(trial, self.base_matrix)
        with tracking.start_run(
            self.experiment, self.settings, run_name=f"trial-{trial.number}", kind="trial", nested=True
        ):
            tracking.log_params({"model": self.model_name, "trial": trial.number, **_trial_params(trial)})
            data = pipeline.build_train_data(
                self.split.train,
                matrix,
                catalogue=self.dataset.catalogue,
                users=self.dataset.users,
                reference_time=self.split.cutoff,
            )
            model = pipeline.fit_model(self.model_name, config, data)
            report = pipeline.evaluate_model(
                model,
                self.split,
                self.dataset,
                ks=(_metric_k(self.metric),),
                protocols=(_protocol(self.metric),),
                oracle=False,
            )
            tracking.log_metrics(report.metrics)
        value = report.metrics.get(self.metric)
        if value is None:
            raise TuneError(f"metric {self.metric!r} is not reported; e.g. {sorted(report.metrics)[:5]}")
        return 0.0 if math.isnan(value) else float(value)


def _trial_params(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {
        name: ("none" if name == "matrix.half_life_days" and v == _NO_DECAY else v) for name, v in trial.params.items()
    }


def _protocol(metric: str) -> str:
    """The evaluation protocol a metric belongs to (its first dotted part)."""
    from training.pipeline import PROTOCOLS

    protocol = metric.split(".", 1)[0]
    if protocol not in PROTOCOLS:
        raise TuneError(f"metric {metric!r} must start with one of {', '.join(PROTOCOLS)} (e.g. {DEFAULT_METRIC})")
    return protocol


def _metric_k(metric: str) -> int:
    """The cutoff in a metric name like ``new_items.ndcg_at_10`` (10 when there is none)."""
    _, sep, tail = metric.rpartition("_at_")
    digits = tail.split("_", 1)[0]
    return int(digits) if sep and digits.isdigit() else 10


def tune(
    model_name: str,
    trials: int,
    data: str | Path,
    mapping: EventMapping | None,
    settings: Settings,
    *,
    base_config: Mapping[str, Any] | None = None,
    matrix_config: MatrixConfig | None = None,
    test_days: float | None = None,
    cutoff: datetime | None = None,
    validation_days: float | None = None,
    metric: str = DEFAULT_METRIC,
    seed: int = 0,
    experiment: str | None = None,
) -> TuneResult:
    """Run ``trials`` Optuna trials (TPE, seeded) in nested runs; log and write the best config."""
    import optuna

    from features.split import validation_split
    from training import pipeline, tracking

    search_space(model_name)  # fail before loading data
    _protocol(metric)
    dataset = pipeline.load_dataset(data, mapping)
    outer = pipeline.split_events(dataset.events, test_days=test_days, cutoff=cutoff)
    split = validation_split(outer, validation_days or outer.test_days or pipeline.DEFAULT_TEST_DAYS)
    experiment = experiment or tracking.experiment_name(dataset.name)
    base_matrix = matrix_config or MatrixConfig()
    objective = _Objective(
        model_name, dict(base_config or {}), base_matrix, split, dataset, metric, experiment, settings
    )
    optuna.logging.set_verbosity(logging.WARNING)
    with tracking.start_run(experiment, settings, run_name=f"tune-{model_name}", kind="tune") as run_id:
        tracking.log_params({"model": model_name, "tune.trials": trials, "tune.metric": metric, "tune.seed": seed})
        tracking.log_params({f"validation.{k.removeprefix('split.')}": v for k, v in split.params().items()})
        tracking.log_dataset(dataset.events, source=dataset.source, name=dataset.name)
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        study.enqueue_trial(_starting_point(model_name, objective.base_config, base_matrix))
        study.optimize(objective, n_trials=trials)
        best = _best_config(study.best_trial, objective)
        tracking.log_params({f"best.{k}": v for k, v in _trial_params(study.best_trial).items()})
        tracking.log_metrics({f"best.{metric}": float(study.best_value)})
        tracking.log_json(best, "best_config.json")
    path = _write_config(best, settings, model_name)
    return TuneResult(run_id, study.best_trial.number, float(study.best_value), best, path)


def _starting_point(model_name: str, base_config: Mapping[str, Any], base_matrix: MatrixConfig) -> dict[str, Any]:
    """Trial 0 = the config you would train without tuning, so the best is never worse than the default.

    Values outside a search range are still tried (Optuna warns); keys a space does not suggest are ignored.
    """
    from training.models.base import get_model_class

    config = get_model_class(model_name).Config.model_validate(dict(base_config)).model_dump(mode="json")
    weights = base_matrix.event_weights
    return {
        **_flat("model", config),
        "matrix.weight.add_to_cart": weights.get(EventType.ADD_TO_CART.value, base_matrix.other_weight),
        "matrix.weight.purchase": weights.get(EventType.PURCHASE.value, base_matrix.other_weight),
        "matrix.half_life_days": base_matrix.half_life_days or _NO_DECAY,
    }


def _flat(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Nested config → ``{"model.a.b": value}`` with the values' own types (for Optuna)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}"
        out.update(_flat(name, value) if isinstance(value, Mapping) else {name: value})
    return out


def _best_config(trial: optuna.trial.FrozenTrial, objective: _Objective) -> dict[str, Any]:
    """Replay the best trial's suggestions to rebuild its full model config and matrix section."""
    import optuna

    fixed = optuna.trial.FixedTrial(trial.params)
    model = deep_merge(objective.base_config, search_space(objective.model_name)(fixed))
    matrix = matrix_space(fixed, objective.base_matrix)
    return {"model": model, "matrix": matrix.model_dump(mode="json")}


def _write_config(config: Mapping[str, Any], settings: Settings, model_name: str) -> Path:
    path = (settings.home / f"best_config_{model_name}.json").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path
