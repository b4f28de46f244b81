"""The series frequency: a fixed step ('h', '15min', 'D', '7D') or a calendar one ('W-SUN',
'MS', 'QE', 'B', ...), with the few operations every layer needs: where timestamps sit on the
grid (so "consecutive" and "gap" mean one step), whether they lie on it, and moving n steps.

Fixed steps are plain nanosecond arithmetic in UTC: serving calls them on every request.
Calendar steps follow pandas' offsets on local wall-clock time in ``data.timezone`` (a month
starts at local midnight), through a grid of the offset built for the span at hand; so do
whole days ('D', '7D') in a zone other than UTC, as nanoseconds of the local clock.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np
import pandas as pd
from pandas.tseries.offsets import BaseOffset, BusinessHour, CustomBusinessHour, DateOffset, Tick

_EXAMPLES = (
    "a fixed step such as '15min', 'h', 'D' or '7D', or a calendar one such as 'W-SUN', "
    "'MS', 'ME', 'QS' or 'B'"
)
_DAY = pd.Timedelta(days=1)
# Where durations are counted from: the first grid point of 2001 (not a leap year).
_DURATION_ORIGIN = pd.Timestamp("2001-01-01")
# A calendar span in months: "1Y", "2QS", "18M"; any other duration is a pandas Timedelta.
_MONTHS = {"Y": 12, "YS": 12, "YE": 12, "Q": 3, "QS": 3, "QE": 3, "M": 1, "MS": 1, "ME": 1}
_CALENDAR_SPAN = re.compile(r"^\s*(\d+)\s*(" + "|".join(_MONTHS) + r")\s*$")


@dataclass(frozen=True)
class Frequency:
    """One parsed ``data.frequency`` in the data's time zone (see the module docstring).

    Positions are comparable within one call only: they count steps from a grid point
    before the earliest timestamp given.
    """

    alias: str
    offset: BaseOffset
    timezone: str

    @cached_property  # read on every request
    def step(self) -> pd.Timedelta | None:
        """The fixed step in nanoseconds, or None for a calendar frequency."""
        if not isinstance(self.offset, Tick):
            return None
        # In nanoseconds: pandas 2.3 adds a Timedelta of unit "s" to a datetime as nothing.
        return pd.Timedelta(self.offset).as_unit("ns")

    @cached_property
    def _local_days(self) -> bool:
        """Whole days in a zone other than UTC: steps of the local wall clock, since a day
        there lasts 23 or 25 hours across a clock change (pandas 3 reads 'D' so too)."""
        return (
            self.step is not None
            and self.step % _DAY == pd.Timedelta(0)
            and (self.timezone != "UTC")
        )

    @cached_property
    def nominal(self) -> pd.Timedelta:
        """A typical step's length (a calendar month: about 30.4 days), for tolerances."""
        if self.step is not None:
            return self.step
        first = self.offset.rollforward(_DURATION_ORIGIN)
        return (first + 400 * self.offset - first) / 400

    def positions(self, times: pd.DatetimeIndex | np.ndarray) -> np.ndarray:
        """Each timestamp's step number: that of the last grid point at or before it."""
        if self.step is not None:
            return self._clock(times) // self.step.value
        local = self._local(times)
        if not len(local):
            return np.empty(0, dtype=np.int64)
        grid = self._grid(local.min(), local.max())
        return self._base_positions(grid, local) // self.offset.n

    def consecutive(self, times: pd.DatetimeIndex | np.ndarray) -> np.ndarray:
        """Whether each timestamp is exactly one step after the one before it (one fewer
        than ``times``): where windows may run on without a gap."""
        if self.step is not None:
            return np.diff(self._clock(times)) == self.step.value
        local = self._local(times)
        if not len(local):
            return np.empty(0, dtype=bool)
        grid = self._grid(local.min(), local.max())
        at = self._base_positions(grid, local)
        exact = grid[at] == local
        return (np.diff(at) == self.offset.n) & exact[1:] & exact[:-1]

    def on_grid(
        self, times: pd.DatetimeIndex | np.ndarray, anchors: pd.DatetimeIndex | np.ndarray
    ) -> np.ndarray:
        """Whether each timestamp lies on the grid that runs through its series' first
        timestamp (``anchors``, one per timestamp): a calendar's own points, and for a
        multiple of a step ('2W', '15min') the phase its series started on."""
        if self.step is not None:
            return (self._clock(times) - self._clock(anchors)) % self.step.value == 0
        local, start = self._local(times), self._local(anchors)
        if not len(local):
            return np.empty(0, dtype=bool)
        grid = self._grid(min(local.min(), start.min()), local.max())
        at, origin = self._base_positions(grid, local), self._base_positions(grid, start)
        return (grid[at] == local) & ((at - origin) % self.offset.n == 0)

    def shift(self, times: pd.DatetimeIndex, steps: int) -> pd.DatetimeIndex:
        """Each timestamp moved ``steps`` steps (negative: back); a calendar frequency moves
        from the last grid point at or before it."""
        return pd.DatetimeIndex(self.ahead(times, [steps])[:, 0]).tz_localize("UTC")

    def moved(self, time: pd.Timestamp, steps: int) -> pd.Timestamp:
        """One timestamp moved ``steps`` steps (see :meth:`shift`); past the datetime range,
        an OverflowError or ValueError."""
        if self.step is not None and not self._local_days:
            return time + steps * self.step
        return self.shift(pd.DatetimeIndex([time]), steps)[0]

    def floor(self, time: pd.Timestamp) -> pd.Timestamp:
        """The last grid point at or before ``time`` (a fixed step: a multiple since 1970)."""
        if self.step is None:
            return self.moved(time, 0)
        if not self._local_days:
            return time.floor(self.step)
        local = self._local(pd.DatetimeIndex([time])).floor(self.step)
        return pd.Timestamp(self._utc(local)[0], tz="UTC")

    def ahead(self, times: pd.DatetimeIndex, steps: np.ndarray | list[int]) -> np.ndarray:
        """(times, steps) UTC nanoseconds: each timestamp moved by each of ``steps``."""
        steps = np.asarray(steps, dtype=np.int64)
        if self.step is not None:
            moved = self._clock(times)[:, None] + steps[None, :] * self.step.value
            if not self._local_days:
                return moved
            return self._utc(pd.DatetimeIndex(moved.ravel())).reshape(moved.shape)
        local = self._local(times)
        if not len(local):
            return np.empty((0, len(steps)), dtype=np.int64)
        reach = int(np.abs(steps).max()) * self.offset.n
        grid = self._grid(local.min(), local.max(), reach)
        moved = self._base_positions(grid, local)[:, None] + steps[None, :] * self.offset.n
        return self._utc(grid[moved.ravel()]).reshape(moved.shape)

    def count(self, first: pd.Timestamp, last: pd.Timestamp) -> int:
        """Steps from ``first`` to ``last`` (both on the grid)."""
        start, end = self.positions(pd.DatetimeIndex([first, last]))
        return int(end - start)

    def periods(self, duration: str) -> int:
        """How many steps ``duration`` ('30D', '52W', '336h', '1Y', '3MS') spans, counted on
        the calendar from the first step of 2001; refused unless it is a whole number."""
        start = self.offset.rollforward(_DURATION_ORIGIN) if self.step is None else _DURATION_ORIGIN
        end = start + _span(duration)
        if self.step is not None:
            whole, fits = (end - start) // self.step, (end - start) % self.step == pd.Timedelta(0)
        else:
            grid = self._grid(start, end)
            position = int(self._base_positions(grid, pd.DatetimeIndex([end]))[0])
            whole, fits = position // self.offset.n, bool(grid[position] == end)
            fits &= position % self.offset.n == 0
        if not fits or whole < 1:
            nearest = " and ".join(str(n) for n in (whole, whole + 1) if n >= 1)
            raise ValueError(
                f"'{duration}' is not a whole number of '{self.alias}' periods (the nearest: "
                f"{nearest}); give a count or a duration that fits"
            )
        return int(whole)

    def _clock(self, times: pd.DatetimeIndex | np.ndarray) -> np.ndarray:
        """Nanoseconds that fixed steps count on: UTC, or the local wall clock for days."""
        return self._local(times).asi8 if self._local_days else _nanos(times)

    def _local(self, times: pd.DatetimeIndex | np.ndarray) -> pd.DatetimeIndex:
        """Naive local wall-clock times of UTC ``times`` (naive ones are taken as UTC)."""
        index = pd.DatetimeIndex(times)
        index = index.tz_localize("UTC") if index.tz is None else index
        return index.tz_convert(self.timezone).tz_localize(None).as_unit("ns")

    def _utc(self, local: pd.DatetimeIndex) -> np.ndarray:
        """UTC nanoseconds of naive local times: a midnight that a clock change skips moves
        forward, one it repeats is the first."""
        aware = local.tz_localize(
            self.timezone, ambiguous=np.ones(len(local), dtype=bool), nonexistent="shift_forward"
        )
        return aware.tz_convert("UTC").as_unit("ns").asi8

    def _grid(self, first: pd.Timestamp, last: pd.Timestamp, reach: int = 0) -> pd.DatetimeIndex:
        """The base offset's points (a calendar step of one) from the last one at or before
        ``first`` (local midnight) to past ``last``, ``reach`` more points either side."""
        base = self.offset.base
        start = base.rollback(first.normalize()) - reach * base
        end = last + (reach + 1) * base
        return pd.date_range(start, end, freq=base).as_unit("ns")

    def _base_positions(self, grid: pd.DatetimeIndex, local: pd.DatetimeIndex) -> np.ndarray:
        """Index of the last point of ``grid`` at or before each of ``local``."""
        return grid.searchsorted(local, side="right").astype(np.int64) - 1


@cache  # called on every request with the config's frequency; pandas parses in ~0.2 ms
def frequency(alias: str, timezone: str | None = None) -> Frequency:
    """Parse a pandas frequency alias; calendar ones are read in ``timezone`` (UTC if None).

    Deprecated pandas aliases ('M', 'Q', 'Y') are accepted as pandas reads them. Business
    hours are refused: their grid closes overnight in a way a step count cannot follow.
    """
    try:
        with warnings.catch_warnings():  # deprecated aliases warn; they still mean one thing
            warnings.simplefilter("ignore", FutureWarning)
            offset = pd.tseries.frequencies.to_offset(alias)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"'{alias}' is not a pandas frequency alias; use {_EXAMPLES}") from exc
    if isinstance(offset, BusinessHour | CustomBusinessHour) or offset.n < 1:
        raise ValueError(f"frequency '{alias}' is not supported; use {_EXAMPLES}")
    return Frequency(alias, offset, timezone or "UTC")


def _span(duration: str) -> pd.Timedelta | DateOffset:
    """A duration: months or years on the calendar ('1Y', '6MS'), else a fixed length."""
    months = _CALENDAR_SPAN.match(duration)
    if months:
        return DateOffset(months=int(months[1]) * _MONTHS[months[2]])
    try:
        length = pd.Timedelta(duration)
    except ValueError:
        raise ValueError(
            f"'{duration}' is not a count nor a duration such as '30D', '52W', '336h' or '1Y'"
        ) from None
    if length <= pd.Timedelta(0):
        raise ValueError(f"duration '{duration}' must be positive")
    return length


def _nanos(times: pd.DatetimeIndex | np.ndarray) -> np.ndarray:
    """Int64 nanoseconds since the epoch (UTC) of ``times``."""
    if isinstance(times, np.ndarray) and times.dtype == np.int64:
        return times
    index = times if isinstance(times, pd.DatetimeIndex) else pd.DatetimeIndex(times)
    return index.asi8 if index.unit == "ns" else index.as_unit("ns").asi8
