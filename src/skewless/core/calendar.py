"""Calendar features, defined once in core: ingestion writes them, the preprocessor and serving
recompute them.

They are sin/cos pairs so that 23:00 sits next to 00:00. They are computed in the
data's own time zone (``data.timezone``, UTC when unset), because "hour of day" means local hours.

Serving recomputes them for every row of every requested window, so the fields are read with
integer arithmetic on local wall-clock ``datetime64`` values and the sin/cos come from a table
per period: pandas' field accessors and per-row trigonometry cost more than the model.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import pandas as pd

from skewless.core.config import SkewlessConfig

_DAY = np.timedelta64(1, "D")


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


@cache
def _circle(period: int) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos of 2*pi*k/period for k in [0, period), as float32."""
    angle = 2.0 * np.pi * np.arange(period, dtype=np.float64) / period
    return np.sin(angle).astype(np.float32), np.cos(angle).astype(np.float32)


def engineered_columns(config: SkewlessConfig) -> list[str]:
    """Names of the engineered columns, in the order :func:`engineer` writes them."""
    return [f"{name}_{part}" for name in config.features.calendar for part in ("sin", "cos")]


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
    for name in config.features.calendar:
        period, read = _CALENDAR[name]
        sin, cos = _circle(period)
        position = read(local)[codes]
        columns[f"{name}_sin"], columns[f"{name}_cos"] = sin[position], cos[position]
    return pd.DataFrame(columns, index=index)
