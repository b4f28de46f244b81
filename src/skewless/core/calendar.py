"""Calendar features, defined once in core: ingestion writes them, the preprocessor and serving
recompute them.

They are sin/cos pairs so that 23:00 sits next to 00:00. They are computed in the
data's own time zone (``data.timezone``, UTC when unset), because "hour of day" means local hours.
Which ones are computed follows the frequency: a feature whose cycle spans less than one and a
half periods (hour of day on daily data, day of week on weekly data) is constant or aliased, so
it is left out, with one logged note when the config asked for it.

With ``features.holidays`` a ``holidays`` column counts the public holidays in the local days
of each row's period (:mod:`skewless.core.holidays`): the row's own day up to daily data; for
longer periods the days from the row's timestamp to the next one, or for frequencies that label
a period by its end (weeks, month ends, quarter ends) the days since the one before.

Serving recomputes them for every row of every requested window, so the fields are read with
integer arithmetic on local wall-clock ``datetime64`` values and the sin/cos come from a table
per period: pandas' field accessors and per-row trigonometry cost more than the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache

import numpy as np
import pandas as pd
from pandas.tseries.offsets import (
    BQuarterEnd,
    BusinessMonthEnd,
    BYearEnd,
    MonthEnd,
    QuarterEnd,
    Week,
    YearEnd,
)

from skewless.core.config import HolidayCalendar, SkewlessConfig
from skewless.core.frequency import Frequency, frequency
from skewless.core.holidays import holiday_days

logger = logging.getLogger(__name__)

_DAY = np.timedelta64(1, "D")
_YEAR = pd.Timedelta(days=365.25)
# The features of ``features.calendar: null``, before those that do not fit the frequency go.
DEFAULT_FEATURES = ("hour", "day_of_week", "month")
HOLIDAYS = "holidays"
# Offsets whose timestamps name the end of their period, as pandas' resampling labels them.
_END_LABELLED = (MonthEnd, QuarterEnd, YearEnd, BusinessMonthEnd, BQuarterEnd, BYearEnd, Week)
# A feature is kept when its cycle spans at least this many periods (else it barely moves).
_PERIODS_PER_CYCLE = 1.5


def _days(t: np.ndarray, unit: str) -> np.ndarray:
    """Whole days since the start of ``t``'s month ("M") or year ("Y")."""
    return (t.astype("datetime64[D]") - t.astype(f"datetime64[{unit}]")) // _DAY


# feature -> (period, its zero-based value from local wall-clock datetime64)
_CALENDAR: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray]]] = {
    "hour": (24, lambda t: t.astype("datetime64[h]").astype(np.int64) % 24),
    # 1970-01-01 was a Thursday, day 3 when Monday is 0
    "day_of_week": (7, lambda t: (t.astype("datetime64[D]").astype(np.int64) + 3) % 7),
    "day_of_month": (31, lambda t: _days(t, "M")),
    "day_of_year": (366, lambda t: _days(t, "Y")),
    "month": (12, lambda t: t.astype("datetime64[M]").astype(np.int64) % 12),
}
# feature -> the length of its cycle in time
_CYCLE = {
    "hour": pd.Timedelta(days=1),
    "day_of_week": pd.Timedelta(days=7),
    "day_of_month": _YEAR / 12,
    "day_of_year": _YEAR,
    "month": _YEAR,
}


def calendar_features(config: SkewlessConfig) -> tuple[str, ...]:
    """The calendar features ingest, training and serving compute: ``features.calendar``
    (null: :data:`DEFAULT_FEATURES`) less those that do not fit ``data.frequency``."""
    asked = config.features.calendar
    return _fitting(None if asked is None else tuple(asked), config.data.frequency)


@cache  # once per (features, frequency): serving asks per request, the note is logged once
def _fitting(asked: tuple[str, ...] | None, alias: str) -> tuple[str, ...]:
    period = frequency(alias).nominal
    candidates = DEFAULT_FEATURES if asked is None else asked
    kept = tuple(n for n in candidates if _CYCLE[n] >= _PERIODS_PER_CYCLE * period)
    dropped = [n for n in candidates if n not in kept]
    if asked is not None and dropped:
        logger.warning(
            "calendar feature(s) %s left out: at frequency '%s' their cycle spans less than "
            "%g periods, so they are constant or aliased; remove them from features.calendar",
            dropped,
            alias,
            _PERIODS_PER_CYCLE,
        )
    return kept


@cache
def _circle(period: int) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos of 2*pi*k/period for k in [0, period), as float32."""
    angle = 2.0 * np.pi * np.arange(period, dtype=np.float64) / period
    return np.sin(angle).astype(np.float32), np.cos(angle).astype(np.float32)


def engineered_columns(config: SkewlessConfig) -> list[str]:
    """Names of the engineered columns, in the order :func:`engineer` writes them."""
    cyclic = [f"{name}_{part}" for name in calendar_features(config) for part in ("sin", "cos")]
    return cyclic + ([HOLIDAYS] if config.features.holidays is not None else [])


def engineer(timestamps: pd.Series | pd.DatetimeIndex, config: SkewlessConfig) -> pd.DataFrame:
    """Calendar features for UTC ``timestamps`` as float32 columns, index aligned with input."""
    index = timestamps.index if isinstance(timestamps, pd.Series) else None
    # A served request's entities share one set of timestamps: compute each distinct one once.
    codes, distinct = pd.factorize(pd.DatetimeIndex(timestamps), use_na_sentinel=False)
    local = (
        pd.DatetimeIndex(distinct)
        .tz_convert(config.data.timezone or "UTC")
        .tz_localize(None)
        .to_numpy()
    )
    columns: dict[str, np.ndarray] = {}
    for name in calendar_features(config):
        period, read = _CALENDAR[name]
        sin, cos = _circle(period)
        position = read(local)[codes]
        columns[f"{name}_sin"], columns[f"{name}_cos"] = sin[position], cos[position]
    if config.features.holidays is not None:
        data = config.data
        step = frequency(data.frequency, data.timezone)
        days = _period_days(pd.DatetimeIndex(distinct), local, step, data.timezone or "UTC")
        columns[HOLIDAYS] = _holidays(days, config.features.holidays)[codes]
    return pd.DataFrame(columns, index=index)


def _period_days(
    utc: pd.DatetimeIndex, local: np.ndarray, period: Frequency, zone: str
) -> tuple[np.ndarray, np.ndarray]:
    """The local days ``[first, end)`` each timestamp's period covers."""
    days = local.astype("datetime64[D]")
    if period.nominal <= pd.Timedelta(days=1):
        return days, days + 1
    end_labelled = isinstance(period.offset, _END_LABELLED)
    neighbour = pd.DatetimeIndex(period.ahead(utc, [-1 if end_labelled else 1])[:, 0], tz="UTC")
    other = neighbour.tz_convert(zone).tz_localize(None).to_numpy().astype("datetime64[D]")
    return (other + 1, days + 1) if end_labelled else (days, other)


def _holidays(days: tuple[np.ndarray, np.ndarray], calendar: HolidayCalendar) -> np.ndarray:
    return holiday_days(*days, calendar.country, calendar.subdivision)
