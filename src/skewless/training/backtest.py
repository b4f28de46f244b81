"""Rolling-origin backtests: refit on the past, forecast the next test period, repeat.

The last ``folds`` x ``test_periods`` periods of the data are cut into consecutive test periods.
For each, the preprocessor and model are fitted only on rows that end ``gap`` periods before it
(all earlier rows for an expanding window, the last ``train_periods`` for a sliding one), and
every window whose whole horizon lies inside the test period is forecast and scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from skewless.core.config import SkewlessConfig
from skewless.core.errors import ConfigError
from skewless.core.frequency import parse_frequency
from skewless.features.validation import EVENT_TS
from skewless.training.metrics import Evaluation, evaluate, naive_scale
from skewless.training.pipeline import fit, predict, window_set


@dataclass(frozen=True)
class Fold:
    number: int
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    windows: int
    evaluation: Evaluation
    model_params: dict[str, object]  # what the fitted model was actually built with


@dataclass(frozen=True)
class Forecasts:
    """Every scored window of a backtest: when its forecast starts, whose, actual and forecast."""

    first_target: pd.DatetimeIndex
    entities: np.ndarray
    actual: np.ndarray  # (windows, horizon, targets), original units
    predicted: np.ndarray


@dataclass(frozen=True)
class BacktestReport:
    folds: list[Fold]
    overall: Evaluation  # every test window of every fold, pooled
    forecasts: Forecasts


def fold_bounds(
    config: SkewlessConfig, rows: pd.DataFrame
) -> list[tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]]:
    """(train end, first test step, last test step) per fold, checked before any fitting."""
    settings, step = config.backtest, parse_frequency(config.data.frequency)
    first, last = rows[EVENT_TS].min(), rows[EVENT_TS].max()
    bounds = []
    for fold in range(settings.folds):
        test_end = last - (settings.folds - 1 - fold) * settings.test_periods * step
        test_start = test_end - (settings.test_periods - 1) * step
        train_end = test_start - (settings.gap + 1) * step
        bounds.append((train_end, test_start, test_end))
    needed = config.training.lookback + config.training.horizon
    available = int((bounds[0][0] - first) / step) + 1
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
    rows: pd.DataFrame,
    on_fold: Callable[[Fold], None] | None = None,
) -> BacktestReport:
    """Run every fold; ``on_fold`` sees each as it finishes (and may raise to stop early)."""
    settings, step = config.backtest, parse_frequency(config.data.frequency)
    times, key = rows[EVENT_TS], config.data.entity_key
    folds, pooled, starts = [], [], []
    for number, (train_end, test_start, test_end) in enumerate(fold_bounds(config, rows), start=1):
        in_train = times <= train_end
        if settings.window == "sliding":
            assert settings.train_periods is not None
            in_train &= times > train_end - settings.train_periods * step
        train_rows = rows[in_train]
        result = fit(config, train_rows)
        windows = window_set(
            config, result.preprocessor, rows[times <= test_end], test_start, test_end
        )
        predicted = predict(result.preprocessor, result.model, windows)
        scale = naive_scale(train_rows[key].to_numpy(), train_rows[config.data.targets].to_numpy())
        fold = Fold(
            number,
            train_end,
            test_start,
            test_end,
            len(windows),
            evaluate(windows.actual, predicted, windows.entities, scale),
            result.model.get_params(),
        )
        denominators = np.array([scale.get(e, np.nan) for e in windows.entities])
        pooled.append((windows.actual, predicted, windows.entities, denominators))
        starts.append(windows.first_target)
        if on_fold is not None:
            on_fold(fold)
        folds.append(fold)
    actual, predicted, entities, denominators = (
        np.concatenate(parts) for parts in zip(*pooled, strict=True)
    )
    forecasts = Forecasts(
        pd.DatetimeIndex(starts[0].append(starts[1:])), entities, actual, predicted
    )
    return BacktestReport(folds, evaluate(actual, predicted, entities, denominators), forecasts)
