"""Optuna tuning: each trial is a rolling-origin backtest of one configuration.

The search space is declared in the config (``tuning.space``) as dotted keys under ``training``
(``lookback``, ``params.lags``...). A trial rebuilds the config with its values, so they reach the
model by the same path as any hand-written config, and reports every fold's error so that the
median pruner can stop hopeless trials early. The study lives in an Optuna storage (SQLite under
``SKEWLESS_HOME`` by default, PostgreSQL so that workers on several machines share one study).
The best configuration is then refitted on all rows. The study is one MLflow run, each trial
a nested run with its values and score. With ``compute.engine: ray`` trials run as Ray tasks,
``compute.workers`` at a time (see ``_optimize_on_ray``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pandas as pd

from skewless.compute.engine import LocalCompute, RayCompute
from skewless.core.config import SearchDimension, SkewlessConfig, validate_config
from skewless.core.errors import ConfigError
from skewless.core.stores import tuning_storage
from skewless.training.backtest import Fold, backtest, fold_bounds
from skewless.training.history import History, as_history
from skewless.training.pipeline import FitResult, check_request, fit
from skewless.training.tracking import log_evaluation, tracked_run


@dataclass(frozen=True)
class TuningReport:
    study: optuna.Study
    best_config: SkewlessConfig
    best_value: float
    refit: FitResult


def trial_config(config: SkewlessConfig, values: dict[str, Any]) -> SkewlessConfig:
    """``config`` with ``values`` (dotted keys under training) applied and validated again."""
    raw = config.model_dump(mode="json")
    for dotted, value in values.items():
        node = raw["training"]
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return validate_config(raw, origin="a tuning trial's config")


def tune(
    config: SkewlessConfig,
    data: History | pd.DataFrame,
    home: Path,
    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None,
) -> TuningReport:
    history = as_history(config, data)
    settings = config.tuning
    if not settings.space:
        raise ConfigError("tuning.space is empty: declare at least one dimension to search")
    for dotted in settings.space:  # a bad key or range fails here, before any trial runs
        check_request(trial_config(config, {dotted: _example(settings.space[dotted])}), history)
    fold_bounds(config, history)
    study = optuna.create_study(
        study_name=settings.study_name or f"{config.name}-{config.training.model}",
        storage=tuning_storage(config, home),
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=settings.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )

    def objective(trial: optuna.Trial) -> float:
        try:
            values, candidate = _candidate(trial, config, history)
        except ConfigError as exc:  # e.g. a lookback too long for the first fold
            raise optuna.TrialPruned(str(exc)) from exc

        def report(fold: Fold) -> None:
            trial.set_user_attr("model_params", _jsonable(fold.model_params))
            trial.report(fold.evaluation.overall[settings.metric], step=fold.number)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {fold.number}")

        with mlflow.start_run(run_name=f"trial {trial.number}", nested=True):
            mlflow.log_params({f"tuned.{k}": v for k, v in values.items()})
            result = backtest(candidate, history, on_fold=report)
            value = result.overall.overall[settings.metric]
            mlflow.log_metric(settings.metric, value)
        return value

    callbacks = [] if on_trial is None else [lambda _study, frozen: on_trial(frozen)]
    with tracked_run(config, home, f"tune {study.study_name}"):
        if isinstance(history.compute, RayCompute):
            _optimize_on_ray(study, config, history, history.compute.in_flight, on_trial)
        else:
            study.optimize(objective, n_trials=settings.trials, callbacks=callbacks)
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not completed:
            raise ConfigError("no tuning trial completed; widen tuning.space or add tuning.trials")
        best = trial_config(config, study.best_params)
        refit = fit(best, history)
        mlflow.log_params({f"best.{k}": v for k, v in study.best_params.items()})
        mlflow.log_metric(f"best_{settings.metric}", study.best_value)
        log_evaluation(refit.validation, "refit_val_")
    return TuningReport(study, best, study.best_value, refit)


@dataclass(frozen=True)
class _Trial:
    """What one trial's backtest, run in a Ray task, sends back."""

    folds: list[float]
    value: float
    model_params: dict[str, object]


def _optimize_on_ray(
    study: optuna.Study,
    config: SkewlessConfig,
    history: History,
    at_once: int,
    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None,
) -> None:
    """Trials as Ray tasks, ``at_once`` at a time, by Optuna's ask-and-tell: only this process
    talks to the study's storage (SQLite stays safe; no storage has to be reachable from the
    workers), and each task backtests one configuration with its batches read locally. Folds
    are reported when a trial ends, so the pruner does not stop trials midway here."""
    settings = config.tuning
    local = replace(history, compute=LocalCompute())
    compute = history.compute

    def run(candidate: SkewlessConfig) -> _Trial:
        report = backtest(candidate, local)
        folds = [fold.evaluation.overall[settings.metric] for fold in report.folds]
        model_params = _jsonable(report.folds[-1].model_params)
        return _Trial(folds, report.overall.overall[settings.metric], model_params)

    remaining = settings.trials
    while remaining > 0:
        asked = [study.ask() for _ in range(min(at_once, remaining))]
        remaining -= len(asked)
        runnable: list[tuple[optuna.Trial, dict[str, Any], SkewlessConfig]] = []
        for trial in asked:
            try:
                values, candidate = _candidate(trial, config, history)
            except ConfigError:  # e.g. a lookback too long for the first fold
                _told(study, trial, on_trial, state=optuna.trial.TrialState.PRUNED)
                continue
            runnable.append((trial, values, candidate))
        for (trial, values, _), result in zip(
            runnable, compute.map(run, [c for _, _, c in runnable]), strict=True
        ):
            trial.set_user_attr("model_params", result.model_params)
            for step, fold_value in enumerate(result.folds, start=1):
                trial.report(fold_value, step=step)
            with mlflow.start_run(run_name=f"trial {trial.number}", nested=True):
                mlflow.log_params({f"tuned.{k}": v for k, v in values.items()})
                mlflow.log_metric(settings.metric, result.value)
            _told(study, trial, on_trial, values=result.value)


def _candidate(
    trial: optuna.Trial, config: SkewlessConfig, history: History
) -> tuple[dict[str, Any], SkewlessConfig]:
    """The trial's values and the config they make, checked against the data (ConfigError:
    the configuration cannot run, and the trial is pruned)."""
    values = {k: _suggest(trial, k, d) for k, d in config.tuning.space.items()}
    candidate = trial_config(config, values)
    check_request(candidate, history)
    fold_bounds(candidate, history)
    return values, candidate


def _told(
    study: optuna.Study,
    trial: optuna.Trial,
    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None,
    **outcome: Any,
) -> None:
    frozen = study.tell(trial, **outcome)
    if on_trial is not None:
        on_trial(frozen)


def _suggest(trial: optuna.Trial, name: str, dimension: SearchDimension) -> Any:
    if dimension.type == "categorical":
        return trial.suggest_categorical(name, dimension.choices or [])
    assert dimension.low is not None and dimension.high is not None
    if dimension.type == "int":
        return trial.suggest_int(
            name,
            int(dimension.low),
            int(dimension.high),
            step=int(dimension.step or 1),
            log=dimension.log,
        )
    return trial.suggest_float(
        name, dimension.low, dimension.high, step=dimension.step, log=dimension.log
    )


def _example(dimension: SearchDimension) -> Any:
    if dimension.type == "categorical":
        return (dimension.choices or [None])[0]
    return int(dimension.low or 0) if dimension.type == "int" else dimension.low


def _jsonable(params: dict[str, object]) -> dict[str, object]:
    return {
        k: v if isinstance(v, str | int | float | bool | type(None)) else repr(v)
        for k, v in params.items()
    }
