"""``ForecastBundle``: feature spec, fitted preprocessor and forecaster, and what serving needs
beside them (interval widths, reference statistics, metadata), moved and loaded as one object.

``forecast`` is the one function that turns preprocessed windows into forecasts in original
units; training, backtests and ``ForecastBundle.predict`` all call it. ``predict`` is two stages,
``prepare`` (check, preprocess, cut windows) and ``forecasts`` (model, intervals, as arrays),
then a frame; servers run the two stages and answer from the arrays (a distributed one in
separate processes) without re-implementing either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from skewless.bundle.intervals import ConformalIntervals, lookback_spread
from skewless.bundle.reference import VariableReference
from skewless.core.config import SkewlessConfig
from skewless.core.errors import DataValidationError
from skewless.core.feed import Feed
from skewless.core.frequency import Frequency, frequency
from skewless.core.schema import EVENT_TS, SERIES_VIEW
from skewless.models.base import Forecaster
from skewless.preprocessing.preprocessor import Preprocessor
from skewless.preprocessing.windows import windows_at

FORECAST = "forecast"
TARGET = "target"
Result = TypeVar("Result")


def forecast(
    preprocessor: Preprocessor,
    model: Forecaster,
    inputs: np.ndarray,
    entities: np.ndarray,
    future: np.ndarray | None = None,
) -> np.ndarray:
    """(windows, horizon, targets) in original units from preprocessed windows (and what the
    model reads over the horizon: ``future_channels``)."""
    targets = len(preprocessor.config.data.targets)
    scaled = model.predict(model_inputs(model, inputs, targets), future)[:, :, :targets]
    return preprocessor.inverse_transform_targets(entities, scaled.astype(np.float64))


def target_spread(
    preprocessor: Preprocessor, inputs: np.ndarray, entities: np.ndarray
) -> np.ndarray:
    """(windows, targets): how much each target moves over each preprocessed window's lookback
    (its standard deviation, see ``lookback_spread``), in original units: what interval widths
    scale with. Preprocessing is affine per entity, so a spread maps back as the distance
    between the images of the spread and of zero."""
    targets = len(preprocessor.config.data.targets)
    spread = lookback_spread(inputs[:, :, :targets])[:, None, :]
    mapped = preprocessor.inverse_transform_targets(
        entities, np.concatenate([spread * 0, spread], axis=1)
    )
    return mapped[:, 1] - mapped[:, 0]


def model_inputs(model: Forecaster, inputs: np.ndarray, targets: int) -> np.ndarray:
    """The channels ``model`` sees: all of them, or only the first ``targets``."""
    return inputs if model.uses_covariates else inputs[:, :, :targets]


def future_channels(preprocessor: Preprocessor, model: Forecaster) -> tuple[int, ...]:
    """The preprocessed channels ``model`` reads over the forecast steps."""
    return preprocessor.future_channels(model.future_inputs)


@dataclass(frozen=True)
class FeatureSpec:
    """What the bundle reads: which features, at what frequency, how far back and ahead."""

    entity_key: str
    entity_type: str
    feature_refs: tuple[str, ...]
    frequency: str
    lookback: int
    horizon: int
    targets: tuple[str, ...]
    timezone: str | None = None  # of the calendar; None in bundles from before it was kept
    static_numeric: tuple[str, ...] = ()  # static covariates (data.static), one value per entity
    static_categorical: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()  # label columns of each row (data.categorical)
    known: tuple[str, ...] = ()  # covariates known ahead (data.known): needed over the horizon

    @classmethod
    def from_config(cls, config: SkewlessConfig) -> FeatureSpec:
        return cls(
            entity_key=config.data.entity_key,
            entity_type=config.data.entity_type,
            feature_refs=tuple(f"{SERIES_VIEW}:{v}" for v in config.data.variables),
            frequency=config.data.frequency,
            lookback=config.training.lookback,
            horizon=config.training.horizon,
            targets=tuple(config.data.targets),
            timezone=config.data.timezone or "UTC",
            static_numeric=tuple(config.data.static.numeric if config.data.static else ()),
            static_categorical=tuple(config.data.static.categorical if config.data.static else ()),
            categorical=tuple(config.data.categorical),
            known=tuple(config.data.known_columns),
        )

    @property
    def variables(self) -> list[str]:
        return [ref.split(":", 1)[1] for ref in self.feature_refs]

    @property
    def statics(self) -> list[str]:
        return [*self.static_numeric, *self.static_categorical]

    @property
    def input_columns(self) -> list[str]:
        return [self.entity_key, EVENT_TS, *self.variables, *self.categorical, *self.statics]

    @property
    def feed(self) -> Feed:
        """What the bundle needs of the online store."""
        return Feed(
            self.entity_key,
            self.entity_type,
            self.frequency,
            (*self.variables, *self.categorical),
            self.lookback,
            self.timezone,
            tuple(self.statics),
        )


@dataclass(frozen=True)
class PreparedWindows:
    """Preprocessed lookback windows, one per entity, between the two stages of ``predict``."""

    inputs: np.ndarray  # (entities, lookback, channels)
    entities: np.ndarray
    last_times: pd.DatetimeIndex  # each entity's last observed timestamp
    future: np.ndarray | None = None  # (entities, horizon, channels) the model reads ahead

    @classmethod
    def joined(cls, parts: list[PreparedWindows]) -> PreparedWindows:
        """The windows of several parts as one, for one model call."""
        if len(parts) == 1:
            return parts[0]
        futures = [p.future for p in parts if p.future is not None]
        return cls(
            np.concatenate([p.inputs for p in parts]),
            np.concatenate([p.entities for p in parts]),
            pd.DatetimeIndex(parts[0].last_times.append([p.last_times for p in parts[1:]])),
            np.concatenate(futures) if futures else None,
        )


@dataclass(frozen=True)
class Forecasts:
    """The second stage's output as arrays, which servers read their answers from directly."""

    entities: np.ndarray  # (windows,)
    times: np.ndarray  # (windows, horizon): UTC nanoseconds of each forecast step
    point: np.ndarray  # (windows, horizon, targets)
    bounds: dict[str, tuple[np.ndarray, np.ndarray]]  # level in percent ("80") -> lower, upper

    def frame(self, spec: FeatureSpec) -> pd.DataFrame:
        """One row per (entity, forecast timestamp, target): ``forecast`` and the bounds
        ``lower_<level>`` / ``upper_<level>``."""
        shape = self.point.shape
        frame = pd.DataFrame(
            {
                spec.entity_key: np.broadcast_to(self.entities[:, None, None], shape).ravel(),
                EVENT_TS: pd.to_datetime(
                    np.broadcast_to(self.times[:, :, None], shape).ravel(), utc=True
                ),
                TARGET: np.broadcast_to(np.array(spec.targets)[None, None], shape).ravel(),
                FORECAST: self.point.ravel(),
            }
        )
        for level, (lower, upper) in self.bounds.items():
            frame[f"lower_{level}"] = lower.ravel()
            frame[f"upper_{level}"] = upper.ravel()
        return frame


def isolated(
    call: Callable[[pd.DataFrame], Result], rows: pd.DataFrame, entity_key: str
) -> tuple[list[Result], dict[Any, DataValidationError]]:
    """``call`` on all entities' rows at once; if that is refused, on each half of the entities,
    halving down to single entities to name who failed (a few bad entities among a thousand
    cost a few dozen calls, not a thousand). Returns the results made and each refused
    entity's error."""
    try:
        return [call(rows)], {}
    except DataValidationError as exc:
        codes, uniques = pd.factorize(rows[entity_key])
        if len(uniques) == 1:
            return [], {uniques[0]: exc}
    first = codes < len(uniques) // 2
    made, refused = isolated(call, rows[first], entity_key)
    more, also = isolated(call, rows[~first], entity_key)
    return made + more, refused | also


@dataclass(frozen=True)
class ForecastBundle:
    spec: FeatureSpec
    preprocessor: Preprocessor
    model: Forecaster
    intervals: ConformalIntervals
    reference: dict[str, VariableReference]
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Forecasts after each entity's last row, from raw rows in ingestion format.

        Returns one row per (entity, forecast timestamp, target): the point forecast and the
        bounds ``lower_<level>`` / ``upper_<level>`` (level in percent) of every interval.

        With known-future covariates (``spec.known``), an entity's rows after its last row with
        a target value are its plan: their known columns over the forecast steps.
        """
        return self.forecasts(self.prepare(rows)).frame(self.spec)

    def prepare(self, rows: pd.DataFrame) -> PreparedWindows:
        """The first stage of ``predict``: checked rows, preprocessed and cut into windows."""
        history, plans = self._split_plans(self._checked(rows))
        return self._windows(history, plans)

    def forecasts(self, prepared: PreparedWindows) -> Forecasts:
        """The second stage of ``predict``: the model, original units, timestamps, intervals."""
        point = forecast(
            self.preprocessor, self.model, prepared.inputs, prepared.entities, prepared.future
        )
        spread = target_spread(self.preprocessor, prepared.inputs, prepared.entities)
        steps = np.arange(1, point.shape[1] + 1)
        return Forecasts(
            entities=prepared.entities,
            times=self.frequency.ahead(prepared.last_times, steps),
            point=point,
            bounds={
                f"{level * 100:g}": sides
                for level, sides in self.intervals.bounds(point, spread).items()
            },
        )

    @property
    def frequency(self) -> Frequency:
        """The spec's frequency, on the calendar of the data it was trained on."""
        return frequency(self.spec.frequency, self.preprocessor.config.data.timezone)

    def _checked(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Typed copies of the input columns, sorted by entity and time; every problem reported
        at once. Columns that already have their type (online windows) pass without work."""
        spec = self.spec
        missing = [c for c in spec.input_columns if c not in rows.columns]
        if missing:
            raise DataValidationError(
                "forecast input is incomplete",
                [f"missing column(s) {missing}; expected {spec.input_columns}"],
            )
        problems: list[str] = []
        columns = {
            spec.entity_key: _entities(rows[spec.entity_key], spec, problems),
            EVENT_TS: _timestamps(rows[EVENT_TS], problems),
            **{column: _numbers(rows[column], column, problems) for column in spec.variables},
            **{
                column: _numbers(rows[column], column, problems, np.float64)
                for column in spec.static_numeric
            },
            **{
                column: rows[column].astype("string")
                for column in [*spec.categorical, *spec.static_categorical]
            },
        }
        if problems:
            raise DataValidationError("forecast input has the wrong types", problems)
        typed = pd.DataFrame(columns, index=rows.index)
        keys, nanos = typed[spec.entity_key].to_numpy(), pd.DatetimeIndex(typed[EVENT_TS]).asi8
        if _in_order(keys, nanos):
            return typed
        return typed.sort_values([spec.entity_key, EVENT_TS], kind="stable")

    def _split_plans(self, typed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """(history, plan rows): each entity's rows after its last row with a target value are
        its plan, when the model reads known-future covariates."""
        if not self.spec.known:
            return typed, None
        observed = typed[list(self.spec.targets)].notna().any(axis=1).to_numpy()
        codes = pd.factorize(typed[self.spec.entity_key])[0]
        position = np.arange(len(typed))
        last = pd.Series(np.where(observed, position, -1)).groupby(codes).transform("max")
        planned = position > last.to_numpy()
        return typed[~planned], typed[planned]

    def _windows(self, history: pd.DataFrame, plans: pd.DataFrame | None) -> PreparedWindows:
        """Each entity's last ``lookback`` rows, checked, preprocessed and cut by THE windowing."""
        spec = self.spec
        keys = history[spec.entity_key].to_numpy()
        first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[first[1:], len(keys)]
        rows_to_end = np.repeat(ends, ends - first) - np.arange(len(keys))
        keep = rows_to_end <= spec.lookback
        tails = history if keep.all() else history[keep]  # served windows are cut already
        problems = self._history_problems(tails)
        if problems:
            raise DataValidationError("cannot forecast from this history", problems)
        values = self.preprocessor.transform(tails).to_numpy(np.float32)
        starts = np.arange(0, len(tails), spec.lookback)
        inputs = windows_at(values, starts, spec.lookback, 0).inputs
        entities = tails[spec.entity_key].to_numpy()[starts]
        last_times = pd.DatetimeIndex(tails[EVENT_TS].iloc[starts + spec.lookback - 1])
        future = self._future(tails.iloc[starts], last_times, plans)
        return PreparedWindows(inputs, entities, last_times.as_unit("ns"), future)

    def _future(
        self, firsts: pd.DataFrame, last_times: pd.DatetimeIndex, plans: pd.DataFrame | None
    ) -> np.ndarray | None:
        """(entities, horizon, channels): what the model reads over each entity's forecast
        steps, preprocessed like the history (None: it reads nothing ahead). ``firsts`` is
        each entity's first window row (its static covariates)."""
        channels = future_channels(self.preprocessor, self.model)
        if not channels:
            return None
        spec, horizon = self.spec, self.model.horizon
        times = self.frequency.ahead(last_times, np.arange(1, horizon + 1))
        steps = firsts.loc[firsts.index.repeat(horizon)].reset_index(drop=True)
        steps[EVENT_TS] = pd.to_datetime(times.ravel(), utc=True)
        for column in spec.variables:
            steps[column] = np.float32(np.nan)
        for column in spec.categorical:
            steps[column] = pd.NA
        if spec.known:
            self._fill_known(steps, plans)
        values = self.preprocessor.transform(steps).to_numpy(np.float32)[:, list(channels)]
        return values.reshape(len(firsts), horizon, len(channels))

    def _fill_known(self, steps: pd.DataFrame, plans: pd.DataFrame | None) -> None:
        """The known covariates of every forecast step, from the plan rows (the last row of
        an entity and time wins); an entity whose plan misses a step is refused, by name."""
        key, known = self.spec.entity_key, list(self.spec.known)
        if plans is None or plans.empty:
            found = pd.DataFrame(np.nan, index=steps.index, columns=known)
        else:
            latest = plans.drop_duplicates([key, EVENT_TS], keep="last").set_index([key, EVENT_TS])
            at = pd.MultiIndex.from_frame(steps[[key, EVENT_TS]])
            found = latest[known].reindex(at).set_axis(steps.index)
        steps[known] = found.to_numpy(np.float32)
        missing = found.isna().to_numpy()
        if not missing.any():
            return
        problems = []
        for entity, rows in steps[missing.any(axis=1)].groupby(key, sort=False):
            short = missing[rows.index.to_numpy()].any(axis=0).tolist()
            gaps = [column for column, bad in zip(known, short, strict=True) if bad]
            shown = entity.item() if isinstance(entity, np.generic) else entity
            problems.append(
                f"entity {shown!r}: no known value of {gaps} for {len(rows)} of the "
                f"{self.model.horizon} forecast steps, the first at "
                f"{rows[EVENT_TS].iloc[0].isoformat()}; send them as rows after the history, or "
                "ingest the plan (data.known.sources)"
            )
        raise DataValidationError("the known-future covariates do not cover the horizon", problems)

    def _history_problems(self, tails: pd.DataFrame) -> list[str]:
        """Per entity: too few rows, a gap or duplicate, or NaN in its lookback (vectorized:
        a serving request may name a thousand entities)."""
        spec = self.spec
        keys = tails[spec.entity_key].to_numpy()
        first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        entity_of_row = np.repeat(np.arange(len(first)), np.diff(np.r_[first, len(keys)]))
        counts = np.bincount(entity_of_row, minlength=len(first))
        nanos = pd.DatetimeIndex(tails[EVENT_TS]).as_unit("ns").asi8
        broken = np.zeros(len(first), dtype=bool)
        same_entity = entity_of_row[1:] == entity_of_row[:-1]
        broken[entity_of_row[1:][same_entity & ~self.frequency.consecutive(nanos)]] = True
        missing = tails[spec.variables].isna().to_numpy()
        has_missing = np.bincount(entity_of_row, missing.any(axis=1), minlength=len(first)) > 0
        problems = []
        for index in np.flatnonzero((counts < spec.lookback) | broken | has_missing):
            entity, rows = keys[first[index]], entity_of_row == index
            entity = entity.item() if isinstance(entity, np.generic) else entity  # 1, not int64(1)
            if counts[index] < spec.lookback:
                problems.append(
                    f"entity {entity!r}: {counts[index]} rows, but the model needs the last "
                    f"{spec.lookback} ({spec.frequency} apart)"
                )
            elif broken[index]:
                problems.append(
                    f"entity {entity!r}: the last {spec.lookback} rows are not consecutive at "
                    f"'{spec.frequency}' (duplicate or missing timestamps)"
                )
            empty = [
                c for c, bad in zip(spec.variables, missing[rows].any(axis=0), strict=True) if bad
            ]
            if empty:
                problems.append(f"entity {entity!r}: missing values (NaN) in {empty}")
        return problems


def _entities(values: pd.Series, spec: FeatureSpec, problems: list[str]) -> pd.Series:
    if spec.entity_type != "int64" or values.dtype == np.int64:
        return values
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.isna().any() or (numbers % 1 != 0).any():
        problems.append(f"'{spec.entity_key}' must hold integers")
        return values
    return numbers.astype(np.int64)


def _timestamps(values: pd.Series, problems: list[str]) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype) and str(values.dtype.tz) == "UTC":
        return values
    try:
        # cache=False: pandas' cache heuristic walks every value in Python first. ISO 8601 in
        # any mix of shapes and offsets; naive values are UTC (as MLflow hands them over).
        parsed = pd.to_datetime(values, utc=True, cache=False, format="ISO8601", errors="coerce")
    except (ValueError, TypeError):  # not text nor times at all (numbers, lists)
        parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    bad = parsed.isna() & values.notna()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        problems.append(
            f"'{EVENT_TS}' holds values that are not ISO 8601 timestamps (row {first}: "
            f"{str(values.iloc[first])[:40]!r})"
        )
        return values
    return parsed


def _numbers(
    values: pd.Series, column: str, problems: list[str], dtype: type = np.float32
) -> np.ndarray:
    """Variables as float32 (as stored), static numbers as float64 (as stored)."""
    if values.dtype == dtype:
        return values.to_numpy()
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        problems.append(f"'{column}' must be numeric but holds {values[bad].iloc[0]!r}")
    return numbers.to_numpy(dtype, na_value=np.nan)


def _in_order(keys: np.ndarray, nanos: np.ndarray) -> bool:
    """Whether rows already run by entity, then time (only numeric keys are checked)."""
    if keys.dtype.kind not in "iu":
        return False
    later_key, same_key = keys[1:] > keys[:-1], keys[1:] == keys[:-1]
    return bool(np.all(later_key | (same_key & (nanos[1:] >= nanos[:-1]))))
