"""Training on point-in-time data: rows → preprocessor → windows → forecaster → evaluation.

Every consumer (train, backtest, later the bundle) goes through :func:`window_set`, so the
windows a model is scored on are cut exactly like the ones it is trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from skewless.bundle.bundle import forecast, model_inputs
from skewless.core.config import SkewlessConfig, SourceConfig
from skewless.core.errors import ConfigError
from skewless.core.frequency import parse_frequency
from skewless.features.facade import FeatureStoreFacade
from skewless.features.sources import read_source
from skewless.features.validation import EVENT_TS, Findings, check_duplicates, parse_rows
from skewless.models.base import Forecaster
from skewless.models.factory import create_model
from skewless.preprocessing.preprocessor import Preprocessor
from skewless.preprocessing.windows import segment_ids, window_starts, windows_at
from skewless.training.metrics import Evaluation, evaluate, naive_scale


@dataclass(frozen=True)
class WindowSet:
    """Windows of one set of rows: scaled model inputs, and raw actual targets for scoring."""

    inputs: np.ndarray  # (windows, lookback, channels), preprocessed
    targets: np.ndarray  # (windows, horizon, targets), preprocessed
    actual: np.ndarray  # (windows, horizon, targets), original units
    entities: np.ndarray  # entity of each window
    first_target: pd.DatetimeIndex  # timestamp of each window's first forecast step

    def __len__(self) -> int:
        return len(self.entities)


@dataclass(frozen=True)
class FitResult:
    preprocessor: Preprocessor
    model: Forecaster
    validation: Evaluation


def load_history(
    config: SkewlessConfig, home: Path | None = None, csv: Path | None = None
) -> pd.DataFrame:
    """Training rows in ingestion format: from the offline store, or a plain CSV for benchmarks."""
    if csv is None:
        rows = FeatureStoreFacade(config, mode="offline", home=home).load_features(None, None)
    else:
        findings = Findings()
        rows = parse_rows(read_source(SourceConfig(path=csv), config.data), config, findings)
        if not findings.errors:
            check_duplicates(rows, config, findings)
        findings.raise_if_errors(str(csv))
        rows = rows.drop(columns="row")
    return rows.sort_values([config.data.entity_key, EVENT_TS], kind="stable").reset_index(
        drop=True
    )


def check_request(config: SkewlessConfig, rows: pd.DataFrame | None = None) -> None:
    """Refuse what cannot work before any work starts: the model, its parameters, the data."""
    create_model(config.training.model, config.training.horizon, config.training.params)
    if rows is None:
        return
    named = [*config.data.variables, *config.preprocessing.categoricals.columns]
    missing = [c for c in named if c not in rows.columns]
    if missing:
        raise ConfigError(
            f"data.targets / data.covariates / preprocessing.categoricals.columns name "
            f"column(s) {missing} that the data does not have; it has "
            f"{[c for c in rows.columns if c not in ('row', EVENT_TS)]}"
        )
    longest = int(rows.groupby(config.data.entity_key).size().max()) if len(rows) else 0
    needed = config.training.lookback + config.training.horizon
    if longest < needed:
        raise ConfigError(
            f"training.lookback {config.training.lookback} + training.horizon "
            f"{config.training.horizon} = {needed} periods, but the longest entity history has "
            f"{longest}; shorten the lookback or horizon, or ingest more data"
        )


def window_set(
    config: SkewlessConfig,
    preprocessor: Preprocessor,
    rows: pd.DataFrame,
    first_target: pd.Timestamp | None = None,
    last_target: pd.Timestamp | None = None,
) -> WindowSet:
    """All windows of ``rows`` whose forecast steps lie within [first_target, last_target]."""
    training = config.training
    key, step = config.data.entity_key, parse_frequency(config.data.frequency)
    targets = len(config.data.targets)
    times = pd.DatetimeIndex(rows[EVENT_TS])
    segments = segment_ids(rows[key].to_numpy(), times, step)
    starts = window_starts(segments, training.lookback + training.horizon)
    # Choose windows by their forecast span first, so only the kept ones are ever copied.
    first = times[starts + training.lookback]
    keep = np.ones(len(starts), dtype=bool)
    if first_target is not None:
        keep &= first >= first_target
    if last_target is not None:
        keep &= times[starts + training.lookback + training.horizon - 1] <= last_target
    starts = starts[keep]
    values = preprocessor.transform(rows).to_numpy(np.float32)
    scaled = windows_at(values, starts, training.lookback, training.horizon)
    raw = rows[config.data.targets].to_numpy(np.float64)
    actual = windows_at(raw, starts, training.lookback, training.horizon)
    return WindowSet(
        inputs=scaled.inputs,
        targets=scaled.targets[:, :, :targets],
        actual=actual.targets,
        entities=rows[key].to_numpy()[starts],
        first_target=first[keep],
    )


def fit(config: SkewlessConfig, rows: pd.DataFrame) -> FitResult:
    """Fit on ``rows``: the last ``validation_fraction`` of the period validates (and selects)."""
    model = create_model(config.training.model, config.training.horizon, config.training.params)
    times = pd.DatetimeIndex(rows[EVENT_TS])
    split = times.min() + (times.max() - times.min()) * (1 - config.training.validation_fraction)
    train_rows = rows[times <= split]
    preprocessor = Preprocessor(config).fit(train_rows)
    train = window_set(config, preprocessor, train_rows)
    step = parse_frequency(config.data.frequency)
    val = window_set(config, preprocessor, rows, first_target=split + step)
    _require(train, "training", config, len(rows))
    _require(val, "validation", config, len(rows))
    targets = len(config.data.targets)
    model.fit(
        model_inputs(model, train.inputs, targets),
        train.targets,
        model_inputs(model, val.inputs, targets),
        val.targets,
    )
    scale = naive_scale(
        train_rows[config.data.entity_key].to_numpy(), train_rows[config.data.targets].to_numpy()
    )
    return FitResult(preprocessor, model, score(preprocessor, model, val, scale))


def predict(preprocessor: Preprocessor, model: Forecaster, windows: WindowSet) -> np.ndarray:
    """Forecasts of ``windows`` in original units, through the bundle's one forecast path."""
    return forecast(preprocessor, model, windows.inputs, windows.entities)


def score(
    preprocessor: Preprocessor, model: Forecaster, windows: WindowSet, scale: dict
) -> Evaluation:
    return evaluate(windows.actual, predict(preprocessor, model, windows), windows.entities, scale)


def _require(windows: WindowSet, part: str, config: SkewlessConfig, rows: int) -> None:
    if len(windows) == 0:
        training = config.training
        raise ConfigError(
            f"no complete {part} window: lookback {training.lookback} + horizon "
            f"{training.horizon} do not fit the {part} part of {rows} rows; shorten "
            "training.lookback or training.horizon, or change training.validation_fraction"
        )
