"""Train, backtest, package and register: the path from history to a new registered version."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from skewless.core.config import SkewlessConfig
from skewless.core.feed import Feed
from skewless.core.schema import EVENT_TS
from skewless.core.stores import tracking_uri
from skewless.registry.pyfunc import log_bundle
from skewless.registry.registry import ModelRegistry
from skewless.training.backtest import BacktestReport, Fold, backtest, fold_bounds
from skewless.training.history import History, as_history
from skewless.training.packaging import HeldOutCoverage, package
from skewless.training.pipeline import FitResult, fit, fit_runner
from skewless.training.tracking import (
    against_naive,
    finite,
    log_backtest,
    log_evaluation,
    tracked_run,
)


@dataclass(frozen=True)
class Release:
    fitted: FitResult
    report: BacktestReport
    coverage: HeldOutCoverage  # of the last fold, calibrated without it
    run_id: str
    version: int


def train_and_register(
    config: SkewlessConfig,
    data: History | pd.DataFrame,
    home: Path,
    on_fold: Callable[[Fold], None] | None = None,
) -> Release:
    """Backtest (for metrics and interval widths), fit on all rows, log and register the bundle
    as a new version (which MLflow's alias ``latest`` then resolves to), tagged with its backtest
    metrics beside naive's, its model type and key parameters, and what it needs to be fed."""
    history = as_history(config, data)
    fold_bounds(config, history)  # impossible fold layouts fail before any fitting
    # The final fit needs nothing of the backtest: on Ray they run side by side.
    steps: list[Callable[[], Any]] = [
        partial(backtest, config, history, on_fold),
        partial(fit, config, history),
    ]
    report, fitted = fit_runner(config, history).concurrently(steps)
    bundle, coverage = package(config, history, fitted, report)
    with tracked_run(config, home, "train") as run_id:
        log_evaluation(fitted.validation, "val_")
        log_backtest(report, config)
        log_coverage(coverage)
        mlflow.set_tags({"data_fingerprint": bundle.metadata["data_fingerprint"]})
        info = log_bundle(bundle, input_example(config, history), config.model_name)
    if info.registered_model_version is None:  # only when no name was given to register under
        raise RuntimeError("MLflow did not register the logged model")
    version = int(info.registered_model_version)
    overall = report.overall.overall
    registry = ModelRegistry(tracking_uri(config, home))
    registry.record_metrics(
        config.model_name, version, finite(overall) | against_naive(overall, report.naive.overall)
    )
    registry.record_model(config.model_name, version, config.training.model, key_params(config))
    registry.record_feed(config.model_name, version, bundle.spec.feed, Feed.of_store(config))
    return Release(fitted, report, coverage, run_id, version)


def log_coverage(coverage: HeldOutCoverage) -> None:
    """Held-out coverage and mean width per level as metrics, and per entity as a table."""
    mlflow.log_metrics(
        {f"coverage_{level * 100:g}": c for level, c in coverage.overall.items()}
        | {f"width_{level * 100:g}": w for level, w in coverage.mean_widths.items()}
    )
    table = coverage.per_entity.rename(columns=lambda level: f"coverage_{level * 100:g}")
    mlflow.log_table(table.reset_index(), "coverage_per_entity.json")


def key_params(config: SkewlessConfig) -> dict[str, Any]:
    """What tells versions of one model apart at a glance: the window and the parameters the
    config sets (the model's defaults fill in the rest)."""
    training = config.training.model_dump(mode="json")
    return {"lookback": training["lookback"], "horizon": training["horizon"], **training["params"]}


def input_example(config: SkewlessConfig, data: History | pd.DataFrame) -> pd.DataFrame:
    """The last ``lookback`` rows of the first entity, in the format ``predict`` takes; with
    known-future covariates, followed by a plan: the next ``horizon`` rows with their known
    values only, as they were."""
    history = as_history(config, data)
    first = history.rows(history.entities()[:1])  # one entity read, not a batch
    columns = [
        config.data.entity_key,
        EVENT_TS,
        *config.data.window_columns,
        *config.data.static_columns,
    ]
    training = config.training
    if not config.data.known_columns:
        return first[columns].tail(training.lookback).reset_index(drop=True)
    example = first[columns].tail(training.lookback + training.horizon).reset_index(drop=True)
    unknown = [c for c in config.data.variables if c not in config.data.known_columns]
    example.loc[example.index[training.lookback :], unknown] = np.nan
    return example
