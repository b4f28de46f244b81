"""Engineered features, defined once: ingestion writes them, serving recomputes them.

Calendar features are sin/cos pairs so that 23:00 sits next to 00:00. They are computed in the
data's own time zone (``data.timezone``, UTC when unset), because "hour of day" means local hours.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from skewless.core.config import SkewlessConfig

# feature -> (period, how to read it from a DatetimeIndex, zero-based)
_CALENDAR = {
    "hour": (24, lambda t: t.hour),
    "day_of_week": (7, lambda t: t.dayofweek),
    "day_of_month": (31, lambda t: t.day - 1),
    "day_of_year": (366, lambda t: t.dayofyear - 1),
    "month": (12, lambda t: t.month - 1),
}


def engineered_columns(config: SkewlessConfig) -> list[str]:
    """Names of the engineered columns, in the order :func:`engineer` writes them."""
    return [f"{name}_{part}" for name in config.features.calendar for part in ("sin", "cos")]


def engineer(timestamps: pd.Series | pd.DatetimeIndex, config: SkewlessConfig) -> pd.DataFrame:
    """Calendar features for UTC ``timestamps`` as float32 columns, index aligned with input."""
    index = timestamps.index if isinstance(timestamps, pd.Series) else None
    local = pd.DatetimeIndex(timestamps).tz_convert(config.data.timezone or "UTC")
    columns: dict[str, np.ndarray] = {}
    for name in config.features.calendar:
        period, read = _CALENDAR[name]
        angle = 2.0 * np.pi * np.asarray(read(local), dtype=np.float64) / period
        columns[f"{name}_sin"] = np.sin(angle).astype(np.float32)
        columns[f"{name}_cos"] = np.cos(angle).astype(np.float32)
    return pd.DataFrame(columns, index=index)
