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
from skewless.training.pipeline import FitResult, WindowErrors


def package(
    config: SkewlessConfig,
    data: History | pd.DataFrame,
    fitted: FitResult,
    report: BacktestReport,
) -> tuple[ForecastBundle, HeldOutCoverage]:
    """The bundle, and its intervals' coverage of the last fold when calibrated without it
    (see :func:`held_out_coverage`; the bundle's own are calibrated on every fold's windows
    and the final fit's validation windows)."""
    history = as_history(config, data)
    levels = tuple(config.registry.interval_levels)
    intervals = calibrated([report.residuals.of_folds(), fitted.validation_errors], levels)
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


@dataclass(frozen=True)
class HeldOutCoverage:
    """How the intervals did on windows they were not calibrated on."""

    overall: dict[float, float]  # level -> share of errors inside
    per_entity: pd.DataFrame  # one row per entity, one column per level
    mean_widths: dict[float, float]  # level -> mean width (upper - lower), original units


def held_out_coverage(report: BacktestReport, levels: tuple[float, ...]) -> HeldOutCoverage:
    """Coverage of the last fold's test windows by intervals calibrated as the bundle's are,
    on what came before them: the earlier folds' test windows and the last fold's fit's
    validation windows."""
    residuals = report.residuals
    last = residuals.folds == report.folds[-1].number
    intervals = calibrated([residuals.of_folds(~last), report.last_validation], levels)
    held_out = residuals.of_folds(last)
    return HeldOutCoverage(
        intervals.coverage(held_out.errors, held_out.spreads),
        intervals.coverage_by_entity(held_out.errors, held_out.entities, held_out.spreads),
        intervals.mean_widths(held_out.spreads),
    )


def calibrated(parts: list[WindowErrors], levels: tuple[float, ...]) -> ConformalIntervals:
    """Intervals scaled per window, calibrated on every window of ``parts``."""
    errors = WindowErrors.concatenate(parts)
    return ConformalIntervals.calibrate(errors.errors, levels, errors.spreads)


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
