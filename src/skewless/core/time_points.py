"""Time points of requests: "now", "latest" or ISO 8601, parsed strictly and in bounded time.

"latest" (like None) names no time point: each entity's newest data, whatever its age. "now" is
a time point like any other, so data that does not reach it is stale.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from skewless.core.errors import FeatureStoreError

TimePoint = datetime | str | None

# The longest ISO 8601 timestamp with fractions and an offset has 35 characters.
MAX_TIME_POINT_CHARS = 40


def parse_time_point(value: TimePoint, zone: str | None) -> datetime | None:
    """UTC datetime of a time point; None for "latest" or None; naive values are read in the
    data's time zone.

    Text is "now", "latest" or ISO 8601, read by ``datetime.fromisoformat`` (linear, strict):
    free text such as "today" is refused, and so is anything longer than any timestamp can be,
    before any parsing, so no time point costs more than microseconds.
    """
    if value is None:
        return None
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "latest":
            return None
        if word == "now":
            return datetime.now(UTC)
        value = _iso_datetime(value)
    try:
        checked = pd.Timestamp(value).as_unit("ns")  # the range every later step can hold
    except (OverflowError, ValueError):
        raise FeatureStoreError(
            f"time point {value.isoformat()} is outside the supported range "
            f"{pd.Timestamp.min.ceil('D').date()} to {pd.Timestamp.max.floor('D').date()}"
        ) from None
    if checked.tzinfo is None:
        checked = checked.tz_localize(zone or "UTC")
    return checked.tz_convert("UTC").to_pydatetime()


def _iso_datetime(text: str) -> datetime:
    shown = text if len(text) <= MAX_TIME_POINT_CHARS else f"{text[:MAX_TIME_POINT_CHARS]}..."
    problem = FeatureStoreError(
        f"time point {shown!r} is not 'now', 'latest' or an ISO 8601 timestamp "
        "such as 2018-06-01T12:00:00Z"
    )
    if len(text) > MAX_TIME_POINT_CHARS:
        raise problem
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise problem from None
