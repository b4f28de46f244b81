"""Rolling-origin backtests: refit on the past, forecast the next test period, repeat.

The last ``folds`` x ``test_periods`` periods of the data are cut into consecutive test periods.
For each, the preprocessor and model are fitted only on rows that end ``gap`` periods before it
(all earlier rows for an expanding window, the last ``train_periods`` for a sliding one), and
every window whose whole horizon lies inside the test period is forecast and scored, and so is
the naive forecast (the last value repeated) of the same windows: the skill against it says at a
glance whether the model is worth anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from skewless.core.config import SkewlessConfig
from skewless.core.errors import ConfigError
from skewless.training.history import History, as_history
from skewless.training.metrics import ErrorSums, Evaluation
from skewless.training.pipeline import (
    WindowErrors,
    fit,
    fit_runner,
    naive_scales,
    score_batches,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    number: int
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    windows: int
    evaluation: Evaluation
    naive: Evaluation  # the last value repeated, on the same windows
    model_params: dict[str, object]  # what the fitted model was actually built with


@dataclass(frozen=True)
class Residuals:
    """Absolute errors of every scored window (float32, what the intervals are calibrated on),
    with each window's fold, entity and target spread (see ``WindowErrors``)."""

    errors: np.ndarray  # (windows, horizon, targets), NaN where the actual is missing
    folds: np.ndarray  # (windows,) fold number
    entities: np.ndarray  # (windows,) entity key
    spreads: np.ndarray  # (windows, targets)

    def of_folds(self, chosen: np.ndarray | slice = slice(None)) -> WindowErrors:
        """The errors of the ``chosen`` windows (a (windows,) mask of folds; all by default)."""
        return WindowErrors(self.errors[chosen], self.entities[chosen], self.spreads[chosen])


@dataclass(frozen=True)
class Forecasts:
    """Scored windows of the first ``PLOTTED_ENTITIES`` entities, for the forecast plot."""

    first_target: pd.DatetimeIndex
    entities: np.ndarray
    actual: np.ndarray  # (windows, horizon, targets), original units
    predicted: np.ndarray


@dataclass(frozen=True)
class BacktestReport:
    folds: list[Fold]
    overall: Evaluation  # every test window of every fold, pooled
    naive: Evaluation  # the naive forecast of the same windows, pooled
    residuals: Residuals
    forecasts: Forecasts
    # The last fold's fit's validation errors: what the held-out check calibrates on beside the
    # earlier folds, as the bundle does with the final fit's.
    last_validation: WindowErrors


def skill(model: dict[str, float], naive: dict[str, float]) -> dict[str, float]:
    """Per error metric, 1 - model / naive on the same windows: above 0 beats repeating the
    last value, 1 is a perfect forecast; NaN where naive's error is 0 or unknown."""
    return {
        metric: 1 - error / naive[metric] if naive.get(metric) else float("nan")
        for metric, error in model.items()
    }


# A plot of a thousand entities helps no one; the first few show how the model behaves.
PLOTTED_ENTITIES = 4


def fold_bounds(
    config: SkewlessConfig, data: History | pd.DataFrame
) -> list[tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]]:
    """(train end, first test step, last test step) per fold, checked before any fitting."""
    settings, grid = config.backtest, config.data.parsed_frequency
    first, last = as_history(config, data).bounds()
    bounds = []
    for fold in range(settings.folds):
        test_end = grid.moved(last, -(settings.folds - 1 - fold) * settings.test_periods)
        test_start = grid.moved(test_end, -(settings.test_periods - 1))
        train_end = grid.moved(test_start, -(settings.gap + 1))
        bounds.append((train_end, test_start, test_end))
    needed = config.training.lookback + config.training.horizon
    available = grid.count(first, bounds[0][0]) + 1
    if available < 2 * needed or settings.test_periods < config.training.horizon:
        raise ConfigError(
            f"too few rows for {settings.folds} folds of {settings.test_periods} periods: the "
            f"first fold would train on {max(available, 0)} periods, and training plus validation "
            f"need at least {2 * needed} (lookback + horizon each); each test period must hold one "
            f"horizon ({config.training.horizon}). Lower backtest.folds or backtest.test_periods, "
            "or shorten training.lookback"
        )
    return bounds


def backtest(
    config: SkewlessConfig,
    data: History | pd.DataFrame,
    on_fold: Callable[[Fold], None] | None = None,
) -> BacktestReport:
    """Run every fold; ``on_fold`` sees each in order as it finishes (and may raise to stop).

    Each fold fits on its past and scores its test period an entity batch at a time; metrics
    are sums over every batch and fold, so they equal scoring everything at once. On Ray the
    folds run side by side when the model allows it (see ``fit_runner``).
    """
    history = as_history(config, data)
    shown = history.entities()[:PLOTTED_ENTITIES]
    runs = fit_runner(config, history).concurrently(
        [
            partial(_run_fold, config, history, number, bounds, shown)
            for number, bounds in enumerate(fold_bounds(config, history), start=1)
        ]
    )
    folds, pooled, naive = [], ErrorSums(), ErrorSums()
    residuals: list[tuple[WindowErrors, int]] = []
    plotted: list[tuple[pd.DatetimeIndex, np.ndarray, np.ndarray, np.ndarray]] = []
    for run in runs:
        pooled.merge(run.errors)
        naive.merge(run.naive)
        residuals += [(part, run.fold.number) for part in run.residuals]
        plotted += run.shown
        last_validation = run.validation  # only the last fold's is kept
        _log_fold(run.fold, config.backtest.folds)
        if on_fold is not None:
            on_fold(run.fold)
        folds.append(run.fold)
    return BacktestReport(
        folds,
        pooled.result(),
        naive.result(),
        Residuals(
            np.concatenate([part.errors for part, _ in residuals]),
            np.concatenate([np.full(len(part.entities), n) for part, n in residuals]),
            np.concatenate([part.entities for part, _ in residuals]),
            np.concatenate([part.spreads for part, _ in residuals]),
        ),
        _forecasts(plotted),
        last_validation,
    )


@dataclass(frozen=True)
class _FoldRun:
    fold: Fold
    errors: ErrorSums
    naive: ErrorSums
    residuals: list[WindowErrors]  # per scored batch
    validation: WindowErrors  # the fold's fit's
    shown: list[tuple[pd.DatetimeIndex, np.ndarray, np.ndarray, np.ndarray]]


def _run_fold(
    config: SkewlessConfig,
    history: History,
    number: int,
    bounds: tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp],
    shown: Sequence[Any],
) -> _FoldRun:
    """Fit one fold on its past and score its test period."""
    settings, grid = config.backtest, config.data.parsed_frequency
    train_end, test_start, test_end = bounds
    train = history.between(end=train_end)
    if settings.window == "sliding":
        assert settings.train_periods is not None
        train = train.between(start=grid.moved(train_end, -(settings.train_periods - 1)))
    result = fit(config, train)
    test = history.between(grid.moved(test_start, -config.training.lookback), test_end)
    errors, naive, windows = ErrorSums(), ErrorSums(), 0
    residuals: list[WindowErrors] = []
    plotted: list[tuple[pd.DatetimeIndex, np.ndarray, np.ndarray, np.ndarray]] = []
    for part in score_batches(
        config,
        result.preprocessor,
        result.model,
        test,
        naive_scales(config, train),
        test_start,
        test_end,
        residuals=True,
        shown=shown,
        naive=True,
    ):
        errors.merge(part.errors)
        naive.merge(part.naive)
        windows += part.windows
        if part.residuals is not None:
            residuals.append(part.residuals)
        plotted += part.shown
    fold = Fold(
        number,
        train_end,
        test_start,
        test_end,
        windows,
        errors.result(),
        naive.result(),
        result.model.get_params(),
    )
    return _FoldRun(fold, errors, naive, residuals, result.validation_errors, plotted)


def _forecasts(
    parts: list[tuple[pd.DatetimeIndex, np.ndarray, np.ndarray, np.ndarray]],
) -> Forecasts:
    times, entities, actual, predicted = zip(*parts, strict=True)
    return Forecasts(
        pd.DatetimeIndex(times[0].append(list(times[1:]))),
        np.concatenate(entities),
        np.concatenate(actual),
        np.concatenate(predicted),
    )


def _log_fold(fold: Fold, folds: int) -> None:
    """A progress line per fold, for the logs of batch jobs (the CLI shows them there)."""
    logger.info(
        "backtest fold %d of %d (test %s to %s, %d windows): mse %.4g, naive %.4g",
        fold.number,
        folds,
        fold.test_start.isoformat(),
        fold.test_end.isoformat(),
        fold.windows,
        fold.evaluation.overall["mse"],
        fold.naive.overall["mse"],
    )
