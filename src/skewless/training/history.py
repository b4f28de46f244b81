"""Training rows handed out an entity batch at a time, so memory follows the batch, not the fleet.

Every training step (preprocessor fit, model fit, backtest scoring) maps a function over a
:class:`History`'s batches (``map``) and reduces the results. A batch holds whole entities (their
rows sorted by time), so anything computed per entity (imputation, per-entity scaling, windows)
is the same as on all rows at once. The history's compute engine decides where each batch is
read and worked on: here, or in a Ray task. ``between`` narrows a history to a time range
without reading anything.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from skewless.compute.engine import Compute, LocalCompute, compute_engine
from skewless.core.config import SkewlessConfig
from skewless.core.schema import EVENT_TS
from skewless.features.offline import OfflineTable
from skewless.features.statics import StaticTable, static_table

R = TypeVar("R")


@dataclass(frozen=True, eq=False)
class History(ABC):
    """Rows of every entity within [start, end] (None: unbounded), read ``batch_entities`` at a
    time."""

    entity_key: str
    batch_entities: int
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    compute: Compute = field(default_factory=LocalCompute)

    @property
    @abstractmethod
    def columns(self) -> list[str]:
        """Every column a batch has."""

    def entities(self) -> list[Any]:
        """Every entity with rows in the range, sorted."""
        return self.row_counts().index.tolist()

    def row_counts(self) -> pd.Series:
        """Rows per entity in the range (asked of the store once per range)."""
        return self._counts

    @cached_property
    def _counts(self) -> pd.Series:
        return self._count_rows()

    @abstractmethod
    def _count_rows(self) -> pd.Series: ...

    @abstractmethod
    def rows(self, entities: Sequence[Any], columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Rows of ``entities`` in the range, sorted by entity and time."""

    def map(
        self, function: Callable[[pd.DataFrame], R], columns: Sequence[str] | None = None
    ) -> Iterator[R]:
        """``function`` of the rows of every batch of ``batch_entities`` whole entities (only
        ``columns`` if given), run where the compute engine puts it; results in batch order."""
        reader = replace(self, compute=LocalCompute())  # what a task needs to read its batch
        entities = self.entities()
        groups = [
            entities[first : first + self.batch_entities]
            for first in range(0, len(entities), self.batch_entities)
        ]
        return self.compute.map(lambda group: function(reader.rows(group, columns)), groups)

    @abstractmethod
    def bounds(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """The earliest and latest event timestamp of the rows in the range."""

    def between(
        self, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None
    ) -> History:
        """The same history narrowed to [start, end] (within its own range)."""
        if start is None or (self.start is not None and self.start > start):
            start = self.start
        if end is None or (self.end is not None and self.end < end):
            end = self.end
        return replace(self, start=start, end=end)


@dataclass(frozen=True, eq=False, kw_only=True)
class FrameHistory(History):
    """Rows already in memory (a CSV, a test's frame), sorted by entity and time."""

    frame: pd.DataFrame

    @classmethod
    def of(cls, config: SkewlessConfig, rows: pd.DataFrame) -> FrameHistory:
        key = config.data.entity_key
        ordered = rows.sort_values([key, EVENT_TS], kind="stable").reset_index(drop=True)
        return cls(
            key,
            config.training.batch_entities,
            compute=compute_engine(config.compute),
            frame=ordered,
        )

    @property
    def columns(self) -> list[str]:
        return list(self.frame.columns)

    def _count_rows(self) -> pd.Series:
        return self._selected.groupby(self.entity_key, sort=True).size()

    def rows(self, entities: Sequence[Any], columns: Sequence[str] | None = None) -> pd.DataFrame:
        positions = [self._positions[e] for e in entities if e in self._positions]
        rows = self._selected.iloc[np.concatenate(positions)] if positions else self._selected[:0]
        return rows if columns is None else rows[list(columns)]

    def bounds(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        times = self._selected[EVENT_TS]
        return times.min(), times.max()

    @cached_property
    def _selected(self) -> pd.DataFrame:
        """The rows in range, found once per history (not once per batch)."""
        if self.start is None and self.end is None:
            return self.frame
        times = self.frame[EVENT_TS]
        keep = np.ones(len(times), dtype=bool)
        if self.start is not None:
            keep &= (times >= self.start).to_numpy()
        if self.end is not None:
            keep &= (times <= self.end).to_numpy()
        return self.frame[keep]

    @cached_property
    def _positions(self) -> dict[Any, np.ndarray]:
        """Each entity's row positions in ``_selected``: a batch is read in its own size."""
        groups = self._selected.groupby(self.entity_key, sort=False).indices
        return {entity: np.asarray(rows) for entity, rows in groups.items()}


@dataclass(frozen=True, eq=False, kw_only=True)
class StoreHistory(History):
    """Rows read from the offline store, one query per entity batch."""

    table: OfflineTable
    read: tuple[str, ...]  # the columns training uses: calendar features are computed again
    statics: StaticTable | None = None  # joined to every row of its entity

    @classmethod
    def of(cls, config: SkewlessConfig, home: Path) -> StoreHistory:
        from skewless.features.repo import FeastRepo

        table = FeastRepo(config, home).offline
        stored = [table.entity_key, EVENT_TS, *table.value_columns]
        used = config.data.window_columns
        return cls(
            config.data.entity_key,
            config.training.batch_entities,
            compute=compute_engine(config.compute),
            table=table,
            read=(table.entity_key, EVENT_TS, *[c for c in used if c in stored]),
            statics=static_table(config, home),
        )

    @property
    def columns(self) -> list[str]:
        statics = self.statics.static.columns if self.statics else []
        return [*self.read, *statics]

    def _count_rows(self) -> pd.Series:
        return self.table.row_counts(_py(self.start), _py(self.end))

    def rows(self, entities: Sequence[Any], columns: Sequence[str] | None = None) -> pd.DataFrame:
        wanted = list(columns or self.columns)
        statics = self.statics.static.columns if self.statics else []
        stored = [c for c in wanted if c not in statics]
        if self.statics is None or len(stored) == len(wanted):
            return self.table.history(entities, _py(self.start), _py(self.end), stored)
        keyed = stored if self.entity_key in stored else [self.entity_key, *stored]
        rows = self.table.history(entities, _py(self.start), _py(self.end), keyed)
        return self.statics.join(rows)[wanted]

    def bounds(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        return self.table.time_range(_py(self.start), _py(self.end))


def as_history(config: SkewlessConfig, data: History | pd.DataFrame) -> History:
    """``data`` as a History: frames (CSV input, tests) are wrapped as they are."""
    return data if isinstance(data, History) else FrameHistory.of(config, data)


def _py(stamp: pd.Timestamp | None) -> datetime | None:
    return None if stamp is None else stamp.to_pydatetime()
