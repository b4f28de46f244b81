"""Optuna tuning: each trial is a rolling-origin backtest of one configuration.

The search space is declared in the config (``tuning.space``) as dotted keys under ``training``
(``lookback``, ``params.lags``...). A trial rebuilds the config with its values, so they reach the
model by the same path as any hand-written config, and reports every fold's error so that the
median pruner can stop hopeless trials early. The study lives in an Optuna storage (SQLite under
``SKEWLESS_HOME`` by default, PostgreSQL so that workers on several machines share one study).
The best configuration is then refitted on all rows. The study is one MLflow run, each trial
a nested run with its values and score. With ``compute.engine: ray`` trials run as Ray tasks,
``compute.workers`` at a time (see ``_optimize_on_ray``).

A trial of a configuration the study has already scored reuses its score instead of
backtesting it again (``_reuse``), and a finite space that the trials can cover is searched
exhaustively, each configuration once, stopping when all are scored (``_enqueue_grid``).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
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

logger = logging.getLogger(__name__)

# A configuration is scored once a trial of it completes, or is pruned: the pruner judged it
# hopeless against the trials before it, and the study has only got better since.
_SCORED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@dataclass(frozen=True)
class TuningReport:
    study: optuna.Study
    best_config: SkewlessConfig
    best_value: float
    refit: FitResult
    trials: int  # trials this run added to the study
    backtests: int  # of them, those that ran a backtest (the others reused a score or were refused)
    space_size: int | None  # configurations in tuning.space; None when a float range has no step
    exhausted: bool  # every configuration of the space is scored: the run stopped there


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
    size = _space_size(settings.space)
    grid = _enqueue_grid(study, settings.space, size, settings.trials)
    tally = _Tally(on_trial)

    def objective(trial: optuna.Trial) -> float:
        try:
            values, candidate = _candidate(trial, config, history)
        except ConfigError as exc:  # e.g. a lookback too long for the first fold
            raise optuna.TrialPruned(str(exc)) from exc
        value = _reuse(study, trial)

        def report(fold: Fold) -> None:
            trial.set_user_attr("model_params", _jsonable(fold.model_params))
            trial.report(fold.evaluation.overall[settings.metric], step=fold.number)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {fold.number}")

        with mlflow.start_run(run_name=f"trial {trial.number}", nested=True):
            mlflow.log_params({f"tuned.{k}": v for k, v in values.items()})
            if value is None:
                tally.backtests += 1
                result = backtest(candidate, history, on_fold=report)
                value = result.overall.overall[settings.metric]
            mlflow.log_metric(settings.metric, value)
        return value

    def finished(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        tally.finished(frozen)
        if _unscored(study, grid) == 0:
            study.stop()

    with tracked_run(config, home, f"tune {study.study_name}"):
        if isinstance(history.compute, RayCompute):
            _optimize_on_ray(study, config, history, history.compute.in_flight, grid, tally)
        elif _unscored(study, grid) != 0:
            study.optimize(objective, n_trials=settings.trials, callbacks=[finished])
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not completed:
            raise ConfigError("no tuning trial completed; widen tuning.space or add tuning.trials")
        best = trial_config(config, study.best_params)
        refit = fit(best, history)
        mlflow.log_params({f"best.{k}": v for k, v in study.best_params.items()})
        mlflow.log_metric(f"best_{settings.metric}", study.best_value)
        log_evaluation(refit.validation, "refit_val_")
    return TuningReport(
        study,
        best,
        study.best_value,
        refit,
        trials=tally.trials,
        backtests=tally.backtests,
        space_size=size,
        exhausted=_unscored(study, grid) == 0,
    )


@dataclass
class _Tally:
    """What this run did, for the report: trials finished, and backtests run."""

    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None
    trials: int = 0
    backtests: int = 0

    def finished(self, frozen: optuna.trial.FrozenTrial) -> None:
        self.trials += 1
        logger.info(
            "tuning trial %d %s: %s",
            frozen.number,
            frozen.state.name.lower(),
            "no score" if frozen.value is None else f"score {frozen.value:.4g}",
        )
        if self.on_trial is not None:
            self.on_trial(frozen)


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
    grid: set[str] | None,
    tally: _Tally,
) -> None:
    """Trials as Ray tasks, ``at_once`` at a time, by Optuna's ask-and-tell: only this process
    talks to the study's storage (SQLite stays safe; no storage has to be reachable from the
    workers), and each task backtests one configuration with its batches read locally. Folds
    are reported when a trial ends, so the pruner does not stop trials midway here. On a grid,
    no more trials are asked at once than configurations are left, so none is sampled twice."""
    settings = config.tuning
    local = replace(history, compute=LocalCompute())
    compute = history.compute

    def run(candidate: SkewlessConfig) -> _Trial:
        report = backtest(candidate, local)
        folds = [fold.evaluation.overall[settings.metric] for fold in report.folds]
        model_params = _jsonable(report.folds[-1].model_params)
        return _Trial(folds, report.overall.overall[settings.metric], model_params)

    remaining = settings.trials
    while remaining > 0 and (left := _unscored(study, grid)) != 0:
        asked = [study.ask() for _ in range(min(at_once, remaining, left or remaining))]
        remaining -= len(asked)
        runnable: list[tuple[optuna.Trial, dict[str, Any], SkewlessConfig]] = []
        scored: list[tuple[optuna.Trial, dict[str, Any], float]] = []
        for trial in asked:
            try:
                values, candidate = _candidate(trial, config, history)
                value = _reuse(study, trial)
            except (ConfigError, optuna.TrialPruned):  # cannot run, or pruned before
                _told(study, trial, tally, state=optuna.trial.TrialState.PRUNED)
                continue
            if value is None:
                runnable.append((trial, values, candidate))
            else:
                scored.append((trial, values, value))
        tally.backtests += len(runnable)
        for (trial, values, _), result in zip(
            runnable, compute.map(run, [c for _, _, c in runnable]), strict=True
        ):
            trial.set_user_attr("model_params", result.model_params)
            for step, fold_value in enumerate(result.folds, start=1):
                trial.report(fold_value, step=step)
            scored.append((trial, values, result.value))
        for trial, values, value in scored:
            with mlflow.start_run(run_name=f"trial {trial.number}", nested=True):
                mlflow.log_params({f"tuned.{k}": v for k, v in values.items()})
                mlflow.log_metric(settings.metric, value)
            _told(study, trial, tally, values=value)


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


def _told(study: optuna.Study, trial: optuna.Trial, tally: _Tally, **outcome: Any) -> None:
    tally.finished(study.tell(trial, **outcome))


def _reuse(study: optuna.Study, trial: optuna.Trial) -> float | None:
    """The score of the trial's configuration if the study has scored it already, else None.

    TPE samples a small space's points again and again, and a resumed or shared study meets
    the configurations of earlier runs. The same configuration on the same rows backtests to
    the same score, so the trial takes the first one's record (fold errors, value, user
    attributes; ``same_as`` names it) instead of a backtest: it stays a trial of the study, with
    a value the sampler learns from, at no cost. A configuration pruned before is pruned again.
    Two trials of one configuration that run at the same time (sampled together for Ray, or by
    workers sharing a study) both backtest."""
    for earlier in study.get_trials(deepcopy=False, states=_SCORED):
        if _key(earlier.params) == _key(trial.params):
            for name, attribute in {**earlier.user_attrs, "same_as": earlier.number}.items():
                trial.set_user_attr(name, attribute)
            for step, fold_value in earlier.intermediate_values.items():
                trial.report(fold_value, step)
            if earlier.value is None:
                raise optuna.TrialPruned(f"trial {earlier.number} pruned this configuration")
            return earlier.value
    return None


def _key(params: dict[str, Any]) -> str:
    """A configuration as text, to compare and collect (a categorical choice may be a list)."""
    return json.dumps(params, sort_keys=True)


def _scored(study: optuna.Study) -> set[str]:
    return {_key(t.params) for t in study.get_trials(deepcopy=False, states=_SCORED)}


def _unscored(study: optuna.Study, grid: set[str] | None) -> int | None:
    """How many configurations of the grid are left to score; None when TPE samples."""
    return None if grid is None else len(grid - _scored(study))


def _enqueue_grid(
    study: optuna.Study, space: dict[str, SearchDimension], size: int | None, trials: int
) -> set[str] | None:
    """Search exhaustively when ``trials`` can cover every configuration of ``space`` not yet
    scored: enqueue each of those (unless an interrupted run left it waiting), and return the
    whole grid, so that the run stops once it is all scored (before ``trials`` when the space is
    smaller). TPE would sample such a small space with repeats and might miss a point. None for
    a larger or continuous space: TPE samples it, and ``_reuse`` answers its repeats."""
    scored = _scored(study)
    if size is None or size > trials + len(scored):
        return None
    dimensions = list(space.values())
    grid = [
        {name: _value(d, i) for name, d, i in zip(space, dimensions, point, strict=True)}
        for point in itertools.product(*(range(_length(d) or 0) for d in dimensions))
    ]
    left = [configuration for configuration in grid if _key(configuration) not in scored]
    if len(left) > trials:
        return None
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    queued = {_key(t.system_attrs.get("fixed_params", {})) for t in waiting}
    for configuration in left:
        if _key(configuration) not in queued:
            study.enqueue_trial(configuration)
    return {_key(configuration) for configuration in grid}


def _space_size(space: dict[str, SearchDimension]) -> int | None:
    """How many configurations ``space`` holds; None when a float range has no step."""
    lengths = [_length(d) for d in space.values()]
    return None if None in lengths else math.prod(n or 0 for n in lengths)


def _length(dimension: SearchDimension) -> int | None:
    if dimension.type == "categorical":
        return len(dimension.choices or [])
    assert dimension.low is not None and dimension.high is not None
    if dimension.type == "int":
        return len(range(int(dimension.low), int(dimension.high) + 1, int(dimension.step or 1)))
    if dimension.step is None:
        return None
    span = Decimal(str(dimension.high)) - Decimal(str(dimension.low))
    return int(span // Decimal(str(dimension.step))) + 1


def _value(dimension: SearchDimension, index: int) -> Any:
    """The dimension's ``index``-th value, computed as Optuna rounds a sampled one (so that
    TPE's samples and the grid's points compare equal)."""
    if dimension.type == "categorical":
        return (dimension.choices or [])[index]
    assert dimension.low is not None and dimension.high is not None
    if dimension.type == "int":
        return int(dimension.low) + index * int(dimension.step or 1)
    assert dimension.step is not None
    return min(index * dimension.step + dimension.low, dimension.high)


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
