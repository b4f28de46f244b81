"""MLflow tracking of training, backtests and tuning trials: params, metrics, tables, plots.

Runs go to ``tracking.uri``, by default an SQLite store under
``SKEWLESS_HOME`` with artifacts beside it, in the experiment ``tracking.experiment`` (default:
the config's name).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # the object API: no pyplot state, no display needed

from skewless.core.config import SkewlessConfig
from skewless.core.frequency import Frequency
from skewless.core.stores import tracking_uri
from skewless.registry.registry import NAIVE_PREFIX, SKILL_PREFIX
from skewless.training.backtest import BacktestReport, skill
from skewless.training.metrics import METRICS, Evaluation


@contextmanager
def tracked_run(
    config: SkewlessConfig, home: Path, name: str, nested: bool = False
) -> Iterator[str]:
    """An MLflow run with the config logged; yields its id."""
    if not nested:
        uri = tracking_uri(config, home)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)  # registration goes where the run goes
        experiment = config.tracking.experiment or config.name
        if mlflow.get_experiment_by_name(experiment) is None:
            mlflow.create_experiment(
                experiment, artifact_location=(home / "mlruns").resolve().as_uri()
            )
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=name, nested=nested) as run:
        mlflow.log_params(
            _flat(config.model_dump(mode="json", include={"training", "backtest", "preprocessing"}))
        )
        mlflow.log_dict(config.model_dump(mode="json"), "config.json")
        yield run.info.run_id


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics that have a value: one with no finite error (or no naive error to divide
    by) is left out, not recorded as NaN."""
    return {k: v for k, v in metrics.items() if np.isfinite(v)}


def against_naive(model: dict[str, float], naive: dict[str, float]) -> dict[str, float]:
    """Naive's metrics on the same windows (``naive_mse``...) and the model's skill against
    it (``skill_mse``...): what runs and registered versions record beside the model's own."""
    return finite(
        {f"{NAIVE_PREFIX}{k}": v for k, v in naive.items()}
        | {f"{SKILL_PREFIX}{k}": v for k, v in skill(model, naive).items()}
    )


def log_evaluation(evaluation: Evaluation, prefix: str = "") -> None:
    """Overall metrics, metrics by horizon step (as steps), and the per-entity table."""
    mlflow.log_metrics(finite({f"{prefix}{k}": v for k, v in evaluation.overall.items()}))
    for step in evaluation.per_horizon.index:
        row = evaluation.per_horizon.loc[step]
        mlflow.log_metrics(
            {f"{prefix}{m}_by_step": row[m] for m in METRICS if np.isfinite(row[m])}, step=int(step)
        )
    table = evaluation.per_entity.reset_index()
    table["entity"] = table["entity"].astype(str)
    mlflow.log_table(table, f"{prefix or 'overall_'}per_entity.json")


def log_forecast_plot(
    times: pd.DatetimeIndex,
    entities: np.ndarray,
    actual: np.ndarray,
    predicted: np.ndarray,
    target: str,
    name: str,
    frequency: Frequency,
) -> None:
    """Per entity: the actual series and the forecasts made 1 and H steps ahead of each time."""
    shown = list(pd.unique(entities))
    figure = Figure(figsize=(11, 3 * len(shown)))
    axes = figure.subplots(len(shown), 1, squeeze=False)
    horizon = actual.shape[1]
    for axis, entity in zip(axes[:, 0], shown, strict=True):
        mask = entities == entity
        first = times[mask]
        axis.plot(first, actual[mask, 0, 0], color="black", label="actual")
        axis.plot(first, predicted[mask, 0, 0], label="forecast, 1 step ahead")
        if horizon > 1:
            last = frequency.shift(first, horizon - 1)
            axis.plot(last, predicted[mask, -1, 0], label=f"forecast, {horizon} steps ahead")
        axis.set_title(f"{target}, entity {entity}")
        axis.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.png"
        figure.savefig(path, dpi=90)
        mlflow.log_artifact(str(path))


def log_backtest(report: BacktestReport, config: SkewlessConfig) -> None:
    """Fold metrics (fold number as the step), pooled metrics and tables, each beside naive's
    on the same windows and the skill against it, and the forecast plot."""
    for fold in report.folds:
        model = fold.evaluation.overall
        scores = model | against_naive(model, fold.naive.overall)
        mlflow.log_metrics(finite({f"fold_{k}": v for k, v in scores.items()}), step=fold.number)
    log_evaluation(report.overall)
    mlflow.log_metrics(against_naive(report.overall.overall, report.naive.overall))
    folds = [
        {
            "fold": f.number,
            "train_end": f.train_end,
            "test_start": f.test_start,
            "test_end": f.test_end,
            "windows": f.windows,
            **f.evaluation.overall,
            **against_naive(f.evaluation.overall, f.naive.overall),
        }
        for f in report.folds
    ]
    mlflow.log_dict(json.loads(json.dumps(folds, default=str)), "backtest_folds.json")
    forecasts = report.forecasts
    log_forecast_plot(
        forecasts.first_target,
        forecasts.entities,
        forecasts.actual,
        forecasts.predicted,
        config.data.targets[0],
        "forecast_vs_actual",
        config.data.parsed_frequency,
    )


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
