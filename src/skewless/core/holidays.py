"""Public holidays as a calendar feature, from the maintained ``holidays`` package.

The feature of a row is how many public holidays of the configured country (and subdivision)
fall in the local days its period covers: 0 or 1 for hourly and daily data, a count for weekly
or monthly data. Holidays are known years ahead, so the feature is as known for the horizon as
the hour of day is.
"""

from __future__ import annotations

from functools import cache

import holidays
import numpy as np


def check_country(country: str, subdivision: str | None) -> None:
    """Refuse a country or subdivision the package does not know, with what it does know."""
    supported = holidays.list_supported_countries()
    if country not in supported:
        raise ValueError(
            f"no holiday calendar for country '{country}'; use an ISO 3166-1 alpha-2 code "
            f"such as US, GB, DE, FR or IN (holidays.list_supported_countries() lists all "
            f"{len(supported)})"
        )
    if subdivision is not None and subdivision not in supported[country]:
        raise ValueError(
            f"'{country}' has no subdivision '{subdivision}'; it has {supported[country]}"
        )


def holiday_days(
    first_days: np.ndarray, end_days: np.ndarray, country: str, subdivision: str | None
) -> np.ndarray:
    """Holidays in each local-day range ``[first_days, end_days)`` (``datetime64[D]``), as
    float32 counts."""
    if len(first_days) == 0:
        return np.zeros(0, dtype=np.float32)
    years = first_days.min().astype(object).year, end_days.max().astype(object).year
    dates = _holiday_dates(country, subdivision, years)
    counts = np.searchsorted(dates, end_days) - np.searchsorted(dates, first_days)
    return counts.astype(np.float32)


@cache  # serving asks per request; the calendar of a span of years never changes
def _holiday_dates(country: str, subdivision: str | None, years: tuple[int, int]) -> np.ndarray:
    """Sorted holiday dates of the years ``years[0]..years[1]``."""
    calendar = holidays.country_holidays(
        country, subdiv=subdivision, years=range(years[0], years[1] + 1)
    )
    return np.array(sorted(calendar), dtype="datetime64[D]")
