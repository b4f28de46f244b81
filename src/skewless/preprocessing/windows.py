"""THE windowing: one function cuts (lookback, horizon) windows for training, backtests and serving.

Rows arrive sorted by entity and time. A window never crosses an entity boundary or a gap in the
series: rows are grouped into segments (a new segment starts at each new entity and after each
missing period), and a window must lie inside one segment.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd

from skewless.core.frequency import Frequency

# What a model reads over the forecast steps: nothing, the known-future covariates
# (``data.known``), or those and the calendar features of each step.
FutureInputs = Literal["none", "known", "known+calendar"]


@dataclass(frozen=True)
class Windows:
    """Windows cut from one array of rows."""

    inputs: np.ndarray  # (windows, lookback, variables)
    targets: np.ndarray  # (windows, horizon, variables); empty horizon for serving
    starts: np.ndarray  # row index of each window's first input row

    def __len__(self) -> int:
        return len(self.starts)


def segment_ids(
    entities: np.ndarray, timestamps: pd.DatetimeIndex | np.ndarray, frequency: Frequency
) -> np.ndarray:
    """Segment number of each row: it changes with the entity and after every gap (a
    timestamp that is not one step of ``frequency`` after the one before)."""
    entity_change = np.r_[True, np.asarray(entities)[1:] != np.asarray(entities)[:-1]]
    gap = np.r_[True, ~frequency.consecutive(timestamps)]
    return np.cumsum(entity_change | gap) - 1


def window_starts(segments: np.ndarray, length: int, stride: int = 1) -> np.ndarray:
    """Row indices where a window of ``length`` rows starts and stays inside one segment."""
    if length < 1 or stride < 1:
        raise ValueError("window length and stride must be at least 1")
    count = len(segments) - length + 1
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    starts = np.arange(count)
    inside = segments[starts] == segments[starts + length - 1]
    # Segments are contiguous runs, so equal ends mean the whole window is one segment.
    starts = starts[inside]
    if stride > 1:
        first_of_segment = np.searchsorted(segments, segments[starts], side="left")
        starts = starts[(starts - first_of_segment) % stride == 0]
    return starts.astype(np.int64)


def cut_windows(
    values: np.ndarray,
    lookback: int,
    horizon: int,
    segments: np.ndarray | None = None,
    stride: int = 1,
) -> Windows:
    """All (lookback → horizon) windows of ``values`` (rows x variables), stride ``stride``."""
    if lookback < 1 or horizon < 0:
        raise ValueError(f"lookback must be >= 1 and horizon >= 0 (got {lookback}, {horizon})")
    segments = np.zeros(len(values), dtype=np.int64) if segments is None else segments
    return windows_at(
        values, window_starts(segments, lookback + horizon, stride), lookback, horizon
    )


def windows_at(values: np.ndarray, starts: np.ndarray, lookback: int, horizon: int) -> Windows:
    """The windows starting at ``starts`` (from :func:`window_starts`), copied out once."""
    values = np.asarray(values)
    length = lookback + horizon
    if len(starts):
        view = np.lib.stride_tricks.sliding_window_view(values, length, axis=0)
        chosen = np.moveaxis(view[starts], -1, 1)
    else:
        chosen = np.empty((0, length, values.shape[1]), dtype=values.dtype)
    return Windows(inputs=chosen[:, :lookback], targets=chosen[:, lookback:], starts=starts)


def future_values(
    ahead: np.ndarray | None, starts: np.ndarray, lookback: int, horizon: int
) -> np.ndarray:
    """(windows, horizon, channels): each window's horizon rows of ``ahead`` (rows x channels
    known ahead: planned prices, the calendar), which a model may read; no channels when None."""
    if ahead is None:
        return np.empty((len(starts), horizon, 0), dtype=np.float32)
    return windows_at(ahead, starts + lookback, horizon, 0).inputs


@dataclass(frozen=True)
class WindowBatch:
    """The windows of one batch of rows, not yet copied out: the rows and where windows start.

    A model that can learn from sums over the series (NLinear's normal equations) reads the
    stretches of consecutive windows straight from ``values``; any other model copies the
    windows of one batch at a time with :meth:`windows`.
    """

    values: np.ndarray  # (rows, channels the model sees)
    starts: np.ndarray  # row index of each window's first input row, ascending
    lookback: int
    horizon: int
    targets: int  # the first ``targets`` channels are forecast
    statics: int = 0  # the last ``statics`` channels are static covariates (constant per entity)
    ahead: np.ndarray | None = None  # (rows, channels) known ahead, read over each horizon

    def __len__(self) -> int:
        return len(self.starts)

    def windows(self) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets): (windows, lookback, channels), (windows, horizon, targets)."""
        cut = windows_at(self.values, self.starts, self.lookback, self.horizon)
        return cut.inputs, cut.targets[:, :, : self.targets]

    def future(self) -> np.ndarray:
        """(windows, horizon, future channels): the values known ahead over each horizon."""
        return future_values(self.ahead, self.starts, self.lookback, self.horizon)

    @property
    def future_width(self) -> int:
        """How many channels a model reads over each horizon."""
        return 0 if self.ahead is None else self.ahead.shape[1]

    def chunks(self, size: int) -> Iterator[WindowBatch]:
        """This batch's windows, ``size`` at a time (a batch of long series holds millions)."""
        for at in range(0, len(self.starts), size):
            yield replace(self, starts=self.starts[at : at + size])

    def tails(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(the last ``length`` input rows of each window, its targets): for models that look
        only at the end of the lookback, a copy that is ``length / lookback`` of the windows."""
        length = min(length, self.lookback)
        cut = windows_at(self.values, self.starts + self.lookback - length, length, self.horizon)
        return cut.inputs, cut.targets[:, :, : self.targets]

    def stretches(self) -> Iterator[np.ndarray]:
        """Row blocks whose stride-1 windows are exactly this batch's windows, one per run of
        consecutive starts."""
        if not len(self.starts):
            return
        breaks = np.flatnonzero(np.diff(self.starts) != 1) + 1
        length = self.lookback + self.horizon
        for run in np.split(self.starts, breaks):
            yield self.values[run[0] : run[-1] + length]
