"""Retrieval strategies: one ``retrieve`` method per way of reading features.

- :class:`TimeseriesRetrievalStrategy`: the history of one or many entities up to a time point
  (training data), from the offline store.
- :class:`TabularRetrievalStrategy`: Feast's point-in-time join on entity rows (batch scoring).
- :class:`OnlineRetrievalStrategy`: the latest windows of many entities in one online call
  (serving), each cut at the time point and checked for staleness against it; with no time
  point ("latest"), each entity's newest window whatever its age.

:class:`StrategyFactory` picks one from (data type, mode).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal

import pandas as pd

from skewless.core.calendar import engineered_columns
from skewless.core.errors import (
    FeatureStoreError,
    SkewlessError,
    StaleFeaturesError,
    UnknownEntityError,
)
from skewless.core.schema import EVENT_TS, SERIES_VIEW
from skewless.features.online import WindowReader, window_reader
from skewless.features.repo import FeastRepo
from skewless.features.window_view import Window, unpack_window

DataType = Literal["timeseries", "tabular"]
Mode = Literal["offline", "online"]


class RetrievalStrategy(ABC):
    """Reads features of ``entities`` as of the strategy's time point (None: the newest data)."""

    def __init__(self, repo: FeastRepo, time_point: datetime | None) -> None:
        self.repo = repo
        self.time_point = time_point

    @abstractmethod
    def retrieve(self, entities: Sequence[Any] | None = None) -> Any: ...

    def _require_data(self) -> None:
        if self.repo.offline.is_empty():
            raise FeatureStoreError(
                f"project '{self.repo.config.project}' has no data under {self.repo.home}; "
                "run 'skewless ingest CONFIG' first"
            )

    def _check_known(self, entities: Sequence[Any]) -> None:
        unknown = sorted(set(entities) - set(self.repo.offline.entities()), key=str)
        if unknown:
            raise UnknownEntityError(unknown, self.repo.config.data.entity_key)


class TimeseriesRetrievalStrategy(RetrievalStrategy):
    """Rows of entities (all when None) from ``start`` up to the time point, sorted by time."""

    def __init__(self, repo: FeastRepo, time_point: datetime | None, start: datetime | None = None):
        super().__init__(repo, time_point)
        self.start = start

    def retrieve(self, entities: Sequence[Any] | None = None) -> pd.DataFrame:
        self._require_data()
        if entities is not None:
            self._check_known(entities)
        rows = self.repo.offline.history(entities, self.start, self.time_point)
        statics = self.repo.statics
        return rows if statics is None else statics.join(rows)


class TabularRetrievalStrategy(RetrievalStrategy):
    """Feast's point-in-time join: for each entity row, the latest values at its timestamp."""

    def retrieve(self, entities: Sequence[Any] | pd.DataFrame | None = None) -> pd.DataFrame:
        """``entities`` is a list (joined at the time point) or an entity DataFrame."""
        self._require_data()
        key = self.repo.config.data.entity_key
        if isinstance(entities, pd.DataFrame):
            entity_rows = entities
        else:
            if self.time_point is None:
                raise FeatureStoreError(
                    "a tabular retrieval of a list of entities needs a time point ('now' or a "
                    "timestamp; 'latest' names none), or pass entity rows with their timestamps"
                )
            chosen = list(entities) if entities is not None else self.repo.offline.entities()
            entity_rows = pd.DataFrame({key: chosen, EVENT_TS: pd.Timestamp(self.time_point)})
        self._check_known(entity_rows[key].unique().tolist())
        columns = [*self.repo.config.data.variables, *engineered_columns(self.repo.config)]
        job = self.repo.store.get_historical_features(
            entity_df=entity_rows, features=[f"{SERIES_VIEW}:{c}" for c in columns]
        )
        return job.to_df()


@dataclass
class OnlineWindows:
    """Windows per entity, and per-entity problems instead of silent omissions."""

    windows: dict[Any, Window] = field(default_factory=dict)
    problems: dict[Any, SkewlessError] = field(default_factory=dict)

    def raise_problems(self, entity_key: str) -> None:
        """One error that covers every entity that could not be served."""
        unknown = [e for e, p in self.problems.items() if isinstance(p, UnknownEntityError)]
        if unknown:
            raise UnknownEntityError(unknown, entity_key)
        stale = [p for p in self.problems.values() if isinstance(p, StaleFeaturesError)]
        if stale:
            ends = {e: t for p in stale for e, t in p.window_ends.items()}
            raise StaleFeaturesError(ends, stale[0].required_end)
        for problem in self.problems.values():
            raise problem


class OnlineRetrievalStrategy(RetrievalStrategy):
    """Latest windows of many entities with one online call; stale ones become problems."""

    def __init__(
        self, repo: FeastRepo, time_point: datetime | None, reader: WindowReader | None = None
    ):
        super().__init__(repo, time_point)
        self._reader = reader
        config = repo.config
        self._variables = tuple(config.data.window_columns)
        # (the time point, the latest window end that is fresh enough for it)
        self._bounds: tuple[pd.Timestamp, pd.Timestamp] | None = None
        if time_point is not None:
            grid, point = config.data.parsed_frequency, pd.Timestamp(time_point)
            stale_periods = config.feature_store.max_staleness_periods
            try:
                self._bounds = point, grid.moved(grid.floor(point), -stale_periods)
            except (OverflowError, ValueError):  # at the very edge of the datetime range
                raise FeatureStoreError(
                    f"time point {point.isoformat()} is too early to serve from the online store"
                ) from None

    def retrieve(self, entities: Sequence[Any] | None = None) -> OnlineWindows:
        if not entities:
            raise FeatureStoreError("name at least one entity to read online windows for")
        if self._reader is None:
            self._require_data()
            self._reader = window_reader(self.repo)
        result = OnlineWindows()
        key = self.repo.config.data.entity_key
        for entity, blob in zip(entities, self._reader.read(entities), strict=True):
            if blob is None:
                result.problems[entity] = UnknownEntityError([entity], key)
                continue
            served = self._as_of(unpack_window(blob, entity, self._variables))
            if isinstance(served, Window):
                result.windows[entity] = served
            else:
                result.problems[entity] = served
        return result

    def _as_of(self, window: Window) -> Window | SkewlessError:
        """The window as known at the time point, or why it cannot serve that point (compared
        in integer microseconds: a request may name a thousand entities)."""
        if self._bounds is None:
            return window
        point, required = self._bounds
        if window.times_us[0] > point.value // 1000:
            return FeatureStoreError(
                f"the online window of {window.entity!r} starts at {window.start.isoformat()}, "
                f"after the time point {point.isoformat()}; use the offline store for older points"
            )
        window = window.until(point)
        if window.times_us[-1] < required.value // 1000:
            return StaleFeaturesError(
                {window.entity: window.end.to_pydatetime()}, required.to_pydatetime()
            )
        return window


class StrategyFactory:
    """Creates the strategy for a (data type, mode) pair over one repo."""

    _STRATEGIES: ClassVar[dict[tuple[str, str], type[RetrievalStrategy]]] = {
        ("timeseries", "offline"): TimeseriesRetrievalStrategy,
        ("tabular", "offline"): TabularRetrievalStrategy,
        ("timeseries", "online"): OnlineRetrievalStrategy,
    }

    def __init__(self, repo: FeastRepo) -> None:
        self.repo = repo

    def create(
        self, data_type: DataType, mode: Mode, time_point: datetime | None
    ) -> RetrievalStrategy:
        strategy = self._STRATEGIES.get((data_type, mode))
        if strategy is None:
            allowed = ", ".join(f"{d}/{m}" for d, m in self._STRATEGIES)
            raise FeatureStoreError(
                f"no retrieval for data type '{data_type}' in mode '{mode}'; use one of {allowed}"
            )
        return strategy(self.repo, time_point)
