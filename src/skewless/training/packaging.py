"""From a fit and its backtest to a ``ForecastBundle``: intervals, reference stats, metadata."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import skewless
from skewless.bundle.bundle import FeatureSpec, ForecastBundle
from skewless.bundle.intervals import ConformalIntervals
from skewless.bundle.reference import reference_statistics
from skewless.core.config import SkewlessConfig
from skewless.preprocessing.running_stats import RowSample, batch_seed
from skewless.training.backtest import BacktestReport
from skewless.training.history import History, as_history
from skewless.training.pipeline import FitResult


def package(
    config: SkewlessConfig,
    data: History | pd.DataFrame,
    fitted: FitResult,
    report: BacktestReport,
) -> tuple[ForecastBundle, dict[float, float]]:
    """The bundle, and the empirical coverage of each interval level on the last fold when
    calibrated on the earlier ones (the bundle itself is calibrated on every fold)."""
    history = as_history(config, data)
    levels = tuple(config.registry.interval_levels)
    intervals = ConformalIntervals.calibrate(report.residuals.errors, levels)
    summary = summarise(config, history)
    bundle = ForecastBundle(
        spec=FeatureSpec.from_config(config),
        preprocessor=fitted.preprocessor,
        model=fitted.model,
        intervals=intervals,
        reference=reference_statistics(summary.reference, config.data.variables),
        metadata={
            "config": config.model_dump(mode="json"),
            "data_fingerprint": summary.fingerprint,
            "skewless_version": skewless.__version__,
            "git_commit": _git_commit(),
            "trained_until": str(history.bounds()[1]),
        },
    )
    return bundle, held_out_coverage(report, levels)


@dataclass(frozen=True)
class HistorySummary:
    """What packaging needs of the whole history, gathered in one walk over its batches."""

    fingerprint: str  # of every row, as :func:`fingerprint` of them all at once
    reference: pd.DataFrame  # each entity's recent rows (a uniform sample beyond SAMPLE_ROWS)


def summarise(config: SkewlessConfig, history: History) -> HistorySummary:
    variables = config.data.variables

    def summarise_rows(rows: pd.DataFrame) -> tuple[bytes, RowSample]:
        sample = RowSample(len(variables), seed=batch_seed(rows[config.data.entity_key]))
        sample.add(_reference_rows(config, rows)[variables].to_numpy(np.float64))
        return pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes(), sample

    digest, reference = hashlib.sha256(), RowSample(len(variables))
    for hashed, sample in history.map(summarise_rows):
        digest.update(hashed)  # in batch order: the digest of every row in order
        reference.merge(sample)
    return HistorySummary(digest.hexdigest(), pd.DataFrame(reference.rows, columns=variables))


def held_out_coverage(report: BacktestReport, levels: tuple[float, ...]) -> dict[float, float]:
    """Calibrate on every fold but the last, measure coverage on the last (empty: one fold)."""
    if len(report.folds) < 2:
        return {}
    residuals = report.residuals
    last = residuals.folds == report.folds[-1].number
    calibrated = ConformalIntervals.calibrate(residuals.errors[~last], levels)
    return calibrated.coverage(residuals.errors[last])


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
