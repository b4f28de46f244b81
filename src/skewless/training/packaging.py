"""From a fit and its backtest to a ``ForecastBundle``: intervals, reference stats, metadata."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

import skewless
from skewless.bundle.bundle import FeatureSpec, ForecastBundle
from skewless.bundle.intervals import ConformalIntervals
from skewless.bundle.reference import reference_statistics
from skewless.core.config import SkewlessConfig
from skewless.training.backtest import BacktestReport
from skewless.training.pipeline import FitResult


def package(
    config: SkewlessConfig, rows: pd.DataFrame, fitted: FitResult, report: BacktestReport
) -> tuple[ForecastBundle, dict[float, float]]:
    """The bundle, and the empirical coverage of each interval level on the last fold when
    calibrated on the earlier ones (the bundle itself is calibrated on every fold)."""
    levels = tuple(config.registry.interval_levels)
    forecasts = report.forecasts
    intervals = ConformalIntervals.calibrate(forecasts.actual, forecasts.predicted, levels)
    bundle = ForecastBundle(
        spec=FeatureSpec.from_config(config),
        preprocessor=fitted.preprocessor,
        model=fitted.model,
        intervals=intervals,
        reference=reference_statistics(_reference_rows(config, rows), config.data.variables),
        metadata={
            "config": config.model_dump(mode="json"),
            "data_fingerprint": fingerprint(rows),
            "skewless_version": skewless.__version__,
            "git_commit": _git_commit(),
            "trained_until": str(rows["event_timestamp"].max()),
        },
    )
    return bundle, held_out_coverage(report, levels)


def held_out_coverage(report: BacktestReport, levels: tuple[float, ...]) -> dict[float, float]:
    """Calibrate on every fold but the last, measure coverage on the last (empty: one fold)."""
    if len(report.folds) < 2:
        return {}
    forecasts = report.forecasts
    last = np.asarray(forecasts.first_target >= report.folds[-1].test_start)
    calibrated = ConformalIntervals.calibrate(
        forecasts.actual[~last], forecasts.predicted[~last], levels
    )
    return calibrated.coverage(forecasts.actual[last], forecasts.predicted[last])


def fingerprint(rows: pd.DataFrame) -> str:
    """SHA-256 over the rows' values and index: equal data, equal fingerprint."""
    hashed = pd.util.hash_pandas_object(rows, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()


def _git_commit() -> str | None:
    """The source tree's commit when it is a git checkout (an installed wheel has none)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def _reference_rows(config: SkewlessConfig, rows: pd.DataFrame) -> pd.DataFrame:
    """The rows drift is measured against: each entity's last ``monitoring.reference_periods``
    (the recent past, which serving should resemble; all of history drifts with the seasons)."""
    periods = config.monitoring.reference_periods
    if periods is None:
        return rows
    return rows.groupby(config.data.entity_key, sort=False).tail(periods)
