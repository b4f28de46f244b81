"""Training on point-in-time data: rows → preprocessor → windows → forecaster → evaluation.

Rows come from a :class:`History`, one batch of whole entities at a time; every consumer (fit,
validation, backtests) cuts its windows with :func:`window_starts` through
:func:`window_batch` or :func:`window_sets`, so the windows a model is scored on are cut exactly
like the ones it is trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skewless.bundle.bundle import forecast, future_channels, target_spread
from skewless.compute.batches import Mapped
from skewless.compute.engine import Compute, LocalCompute
from skewless.core.config import SkewlessConfig, skewless_home
from skewless.core.errors import ConfigError
from skewless.core.schema import CREATED_TS, EVENT_TS
from skewless.features.facade import FeatureStoreFacade
from skewless.features.ingest import source_from_path
from skewless.features.sources import read_source
from skewless.features.statics import join_statics, read_statics
from skewless.features.validation import Findings, check_duplicates, parse_rows
from skewless.models.base import Forecaster
from skewless.models.factory import create_model
from skewless.preprocessing.preprocessor import Preprocessor
from skewless.preprocessing.windows import (
    WindowBatch,
    future_values,
    segment_ids,
    window_starts,
    windows_at,
)
from skewless.training.history import FrameHistory, History, StoreHistory, as_history
from skewless.training.metrics import ErrorSums, Evaluation, naive_scale

# How many window values (float32) scoring copies out at once: about 100 MB.
SCORED_VALUES = 25_000_000


@dataclass(frozen=True)
class WindowSet:
    """Windows of one set of rows: scaled model inputs, and raw actual targets for scoring."""

    inputs: np.ndarray  # (windows, lookback, channels), preprocessed
    targets: np.ndarray  # (windows, horizon, targets), preprocessed
    actual: np.ndarray  # (windows, horizon, targets), original units
    entities: np.ndarray  # entity of each window
    first_target: pd.DatetimeIndex  # timestamp of each window's first forecast step
    future: np.ndarray  # (windows, horizon, channels): what the model reads over the horizon

    def __len__(self) -> int:
        return len(self.entities)


@dataclass(frozen=True)
class WindowErrors:
    """Absolute errors of scored windows (float32: what intervals are calibrated on), with each
    window's entity and target spread (what interval widths scale with)."""

    errors: np.ndarray  # (windows, horizon, targets), NaN where the actual is missing
    entities: np.ndarray  # (windows,)
    spreads: np.ndarray  # (windows, targets) float32, see ``target_spread``

    @classmethod
    def concatenate(cls, parts: Sequence[WindowErrors]) -> WindowErrors:
        return cls(
            np.concatenate([p.errors for p in parts]),
            np.concatenate([p.entities for p in parts]),
            np.concatenate([p.spreads for p in parts]),
        )


@dataclass(frozen=True)
class FitResult:
    preprocessor: Preprocessor
    model: Forecaster
    validation: Evaluation
    validation_errors: WindowErrors  # of every validation window: more errors to calibrate on


def open_history(
    config: SkewlessConfig, home: Path | None = None, csv: Path | None = None
) -> History:
    """Training rows, read an entity batch at a time from the offline store (or a CSV's rows)."""
    if csv is None:
        return StoreHistory.of(config, home or skewless_home())
    return FrameHistory.of(config, load_history(config, home, csv))


def load_history(
    config: SkewlessConfig, home: Path | None = None, csv: Path | None = None
) -> pd.DataFrame:
    """All training rows in one frame, in ingestion format: from the offline store, or a plain
    CSV for benchmarks. For small data and tests; training itself reads :func:`open_history`."""
    if csv is None:
        rows = FeatureStoreFacade(config, mode="offline", home=home).load_features(None, None)
    else:
        findings = Findings()
        source = source_from_path(csv, None, config.data)  # wide like the config's sources
        rows = parse_rows(read_source(source, config.data), config, findings)
        if not findings.errors:
            check_duplicates(rows, config, findings)
        findings.raise_if_errors(str(csv))
        rows = rows.drop(columns="row")
        if config.data.static is not None:
            rows = join_statics(
                rows, read_statics(config), config.data.entity_key, config.data.static
            )
    return rows.sort_values([config.data.entity_key, EVENT_TS], kind="stable").reset_index(
        drop=True
    )


def check_request(config: SkewlessConfig, data: History | pd.DataFrame | None = None) -> None:
    """Refuse what cannot work before any work starts: the model, its parameters, the data."""
    create_model(config.training.model, config.training.horizon, config.training.params)
    if data is None:
        return
    history = as_history(config, data)
    named = [*config.data.window_columns, *config.data.static_columns]
    columns = history.columns
    missing = [c for c in named if c not in columns]
    if missing:
        raise ConfigError(
            "data.targets / data.covariates / data.categorical / data.static name "
            f"column(s) {missing} that the data does not have; it has "
            f"{[c for c in columns if c not in ('row', EVENT_TS, CREATED_TS)]}"
        )
    counts = history.row_counts()
    longest = int(counts.max()) if len(counts) else 0
    needed = config.training.lookback + config.training.horizon
    if longest < needed:
        raise ConfigError(
            f"training.lookback {config.training.lookback} + training.horizon "
            f"{config.training.horizon} = {needed} periods, but the longest entity history has "
            f"{longest}; shorten the lookback or horizon, or ingest more data"
        )


def window_sets(
    config: SkewlessConfig,
    preprocessor: Preprocessor,
    rows: pd.DataFrame,
    first_target: pd.Timestamp | None = None,
    last_target: pd.Timestamp | None = None,
    size: int | None = None,
    channels: int | None = None,
    ahead_channels: tuple[int, ...] = (),
) -> Iterator[WindowSet]:
    """The windows of ``rows`` whose forecast steps lie within [first_target, last_target],
    copied out ``size`` at a time (all at once when None): a
    batch of a hundred long series holds millions of windows, but scoring needs a few at once.
    Only the first ``channels`` input channels are copied when given (a model that sees only
    the targets needs no more), and ``ahead_channels`` over each horizon. Always yields at
    least one (possibly empty) set."""
    training = config.training
    starts, first = _starts(config, rows, first_target, last_target)
    every = preprocessor.transform(rows).to_numpy(np.float32)
    values = every[:, :channels]
    ahead = every[:, list(ahead_channels)] if ahead_channels else None
    raw = rows[config.data.targets].to_numpy(np.float64)
    keys = rows[config.data.entity_key].to_numpy()
    size = size or max(len(starts), 1)
    for at in range(0, max(len(starts), 1), size):
        chosen = starts[at : at + size]
        scaled = windows_at(values, chosen, training.lookback, training.horizon)
        actual = windows_at(raw, chosen, training.lookback, training.horizon)
        yield WindowSet(
            inputs=scaled.inputs,
            targets=scaled.targets[:, :, : len(config.data.targets)],
            actual=actual.targets,
            entities=keys[chosen],
            first_target=first[at : at + size],
            future=future_values(ahead, chosen, training.lookback, training.horizon),
        )


def window_batch(
    config: SkewlessConfig,
    preprocessor: Preprocessor,
    model: Forecaster,
    rows: pd.DataFrame,
    first_target: pd.Timestamp | None = None,
    last_target: pd.Timestamp | None = None,
) -> WindowBatch:
    """The windows of ``rows`` that ``model`` learns from, uncopied: its channels and starts."""
    targets = len(config.data.targets)
    starts, _ = _starts(config, rows, first_target, last_target)
    values = preprocessor.transform(rows).to_numpy(np.float32)
    read_ahead = future_channels(preprocessor, model)
    return WindowBatch(
        values=values if model.uses_covariates else values[:, :targets],
        starts=starts,
        lookback=config.training.lookback,
        horizon=config.training.horizon,
        targets=targets,
        statics=preprocessor.static_channels if model.uses_covariates else 0,
        ahead=values[:, list(read_ahead)] if read_ahead else None,
    )


def count_windows(
    config: SkewlessConfig,
    history: History,
    *spans: tuple[pd.Timestamp | None, pd.Timestamp | None],
) -> list[int]:
    """How many windows with forecast steps in each (first target, last target) span
    :func:`window_batch` would cut, counted in one read of keys and timestamps."""
    columns = [config.data.entity_key, EVENT_TS]
    counts = [0] * len(spans)
    for part in history.map(
        lambda rows: [len(_starts(config, rows, first, last)[0]) for first, last in spans], columns
    ):
        counts = [total + count for total, count in zip(counts, part, strict=True)]
    return counts


def fit(config: SkewlessConfig, data: History | pd.DataFrame) -> FitResult:
    """Fit on ``data``: the last ``validation_fraction`` of the period validates (and selects).

    Every step maps over the history's entity batches (here or on Ray) and reduces; only
    models that cannot learn from batches (see ``Forecaster.fit_batches``) gather all windows.
    """
    history = as_history(config, data)
    model = create_model(config.training.model, config.training.horizon, config.training.params)
    first, last = history.bounds()
    split = first + (last - first) * (1 - config.training.validation_fraction)
    after = config.data.parsed_frequency.moved(split, 1)  # the first validation target
    train_rows = history.between(end=split)
    validation = _validation_rows(config, history, after)
    trainable, checkable = count_windows(config, history, (None, split), (after, None))
    _require(trainable, "training", config)
    _require(checkable, "validation", config)
    preprocessor = Preprocessor(config).fit_batches(train_rows)
    model.fit_batches(
        Mapped(train_rows, lambda rows: window_batch(config, preprocessor, model, rows)),
        Mapped(validation, lambda rows: window_batch(config, preprocessor, model, rows, after)),
    )
    scale = naive_scales(config, train_rows)
    scores = list(
        score_batches(config, preprocessor, model, validation, scale, after, residuals=True)
    )
    errors = WindowErrors.concatenate([s.residuals for s in scores if s.residuals is not None])
    return FitResult(preprocessor, model, evaluation(scores), errors)


def fit_runner(config: SkewlessConfig, history: History) -> Compute:
    """Where several fits of one config run: side by side on the history's engine when the
    model's fits may share a process (each fit's waits are filled by the others' work), else
    one after another."""
    model = create_model(config.training.model, config.training.horizon, config.training.params)
    return history.compute if model.fits_side_by_side else LocalCompute()


def naive_scales(config: SkewlessConfig, history: History) -> dict[Any, float]:
    """MASE denominators per entity of ``history`` (see :func:`naive_scale`)."""
    key, targets = config.data.entity_key, config.data.targets
    scales: dict[Any, float] = {}
    for part in history.map(
        lambda rows: naive_scale(rows[key].to_numpy(), rows[targets].to_numpy()),
        [key, EVENT_TS, *targets],
    ):
        scales |= part
    return scales


def predict(preprocessor: Preprocessor, model: Forecaster, windows: WindowSet) -> np.ndarray:
    """Forecasts of ``windows`` in original units, through the bundle's one forecast path."""
    return forecast(preprocessor, model, windows.inputs, windows.entities, windows.future)


def naive_forecaster(config: SkewlessConfig) -> Forecaster:
    """The naive forecaster (last value repeated), ready to predict: it learns nothing, so it
    is fitted on no windows at all."""
    horizon, targets = config.training.horizon, len(config.data.targets)
    naive = create_model("naive", horizon, {})
    return naive.fit(np.empty((0, 1, targets)), np.empty((0, horizon, targets)))


@dataclass
class BatchScore:
    """What scoring one entity batch leaves: error sums, and on request the naive forecast's
    error sums on the same windows, the absolute errors with each window's entity and the
    windows of a few entities to plot."""

    errors: ErrorSums
    naive: ErrorSums
    windows: int
    residuals: WindowErrors | None
    shown: list[tuple[pd.DatetimeIndex, np.ndarray, np.ndarray, np.ndarray]]


def score_batches(
    config: SkewlessConfig,
    preprocessor: Preprocessor,
    model: Forecaster,
    history: History,
    scale: dict[Any, float],
    first_target: pd.Timestamp | None = None,
    last_target: pd.Timestamp | None = None,
    residuals: bool = False,
    shown: Sequence[Any] = (),
    naive: bool = False,
) -> Iterator[BatchScore]:
    """Per entity batch, the score of its windows in [first_target, last_target] (run where
    the batch is read; windows are copied ``SCORED_VALUES`` values at a time), and with
    ``naive`` the naive forecast's score of the same windows, through the same forecast path."""
    length = config.training.lookback + config.training.horizon
    channels = len(preprocessor.output_columns if model.uses_covariates else config.data.targets)
    size = max(1, SCORED_VALUES // (length * channels))
    baseline = naive_forecaster(config) if naive else None

    def score_rows(rows: pd.DataFrame) -> BatchScore:
        result = BatchScore(ErrorSums(), ErrorSums(), 0, None, [])
        kept: list[WindowErrors] = []
        for windows in window_sets(
            config,
            preprocessor,
            rows,
            first_target,
            last_target,
            size,
            channels,
            future_channels(preprocessor, model),
        ):
            if not len(windows):
                continue
            predicted = predict(preprocessor, model, windows)
            result.errors.add(windows.actual, predicted, windows.entities, scale)
            if baseline is not None:
                repeated = predict(preprocessor, baseline, windows)
                result.naive.add(windows.actual, repeated, windows.entities, scale)
            result.windows += len(windows)
            if residuals:
                errors = np.abs(windows.actual - predicted).astype(np.float32)
                spreads = target_spread(preprocessor, windows.inputs, windows.entities)
                kept.append(WindowErrors(errors, windows.entities, spreads.astype(np.float32)))
            mine = np.isin(windows.entities, list(shown))
            if mine.any():
                result.shown.append(
                    (
                        windows.first_target[mine],
                        windows.entities[mine],
                        windows.actual[mine],
                        predicted[mine],
                    )
                )
        if kept:
            result.residuals = WindowErrors.concatenate(kept)
        return result

    return history.map(score_rows)


def evaluation(parts: Iterable[BatchScore]) -> Evaluation:
    """The metrics of every batch's windows together (sums, never means of means)."""
    errors = ErrorSums()
    for part in parts:
        errors.merge(part.errors)
    return errors.result()


def _validation_rows(
    config: SkewlessConfig, history: History, first_target: pd.Timestamp
) -> History:
    """The rows windows forecasting from ``first_target`` on need: their lookback and after."""
    lookback = config.training.lookback
    return history.between(start=config.data.parsed_frequency.moved(first_target, -lookback))


def _starts(
    config: SkewlessConfig,
    rows: pd.DataFrame,
    first_target: pd.Timestamp | None,
    last_target: pd.Timestamp | None,
) -> tuple[np.ndarray, pd.DatetimeIndex]:
    """Start rows of the windows whose forecast steps lie in range, and their first target."""
    training = config.training
    times = pd.DatetimeIndex(rows[EVENT_TS])
    segments = segment_ids(
        rows[config.data.entity_key].to_numpy(), times, config.data.parsed_frequency
    )
    starts = window_starts(segments, training.lookback + training.horizon)
    first = times[starts + training.lookback]
    keep = np.ones(len(starts), dtype=bool)
    if first_target is not None:
        keep &= first >= first_target
    if last_target is not None:
        keep &= times[starts + training.lookback + training.horizon - 1] <= last_target
    return starts[keep], first[keep]


def _require(windows: int, part: str, config: SkewlessConfig) -> None:
    if windows == 0:
        training = config.training
        raise ConfigError(
            f"no complete {part} window: lookback {training.lookback} + horizon "
            f"{training.horizon} do not fit the {part} part of the data; shorten "
            "training.lookback or training.horizon, or change training.validation_fraction"
        )
