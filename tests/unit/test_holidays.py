"""Public holidays as a calendar feature: counted in each row's local period."""

from __future__ import annotations

import pandas as pd
import pytest

from skewless.core.calendar import engineer, engineered_columns
from skewless.core.config import SkewlessConfig, validate_config
from skewless.core.errors import ConfigError


def config(frequency: str, **holidays: str) -> SkewlessConfig:
    return validate_config(
        {
            "name": "shop",
            "data": {"targets": ["sales"], "frequency": frequency, "timezone": "Europe/Berlin"},
            "features": {"holidays": {"country": "DE", **holidays}},
        }
    )


def holidays_at(frequency: str, start: str, periods: int, **calendar: str) -> list[float]:
    local = pd.date_range(start, periods=periods, freq=frequency, tz="Europe/Berlin")
    return engineer(local.tz_convert("UTC"), config(frequency, **calendar))["holidays"].tolist()


def test_hourly_and_daily_rows_flag_their_local_day() -> None:
    # Christmas Day starts at local midnight, 23:00 UTC the day before
    assert holidays_at("h", "2024-12-24 22:00", 4) == [0, 0, 1, 1]
    assert holidays_at("D", "2024-12-24", 4) == [0, 1, 1, 0]


def test_longer_periods_count_the_days_they_cover() -> None:
    # weeks ending on Sunday: 23-29 Dec holds Christmas and Boxing Day, 30 Dec-5 Jan New Year
    assert holidays_at("W-SUN", "2024-12-22", 3) == [0, 2, 1]
    # month starts label the month that follows; month ends the month that ends
    assert holidays_at("MS", "2025-03-01", 3) == [0, 2, 2]  # Easter in April, May Day, Ascension
    assert holidays_at("ME", "2025-03-31", 3) == [0, 2, 2]


def test_a_subdivision_adds_its_own_holidays() -> None:
    epiphany = "2025-01-06"
    assert holidays_at("D", epiphany, 1) == [0]
    assert holidays_at("D", epiphany, 1, subdivision="BY") == [1]


def test_the_column_is_engineered_only_when_asked() -> None:
    assert engineered_columns(config("D"))[-1] == "holidays"
    plain = validate_config({"name": "shop", "data": {"targets": ["sales"], "frequency": "D"}})
    assert "holidays" not in engineered_columns(plain)


@pytest.mark.parametrize(
    ("calendar", "message"),
    [
        ({"country": "XX"}, "no holiday calendar for country 'XX'"),
        ({"country": "DE", "subdivision": "ZZ"}, "'DE' has no subdivision 'ZZ'"),
    ],
)
def test_an_unknown_calendar_is_refused_with_what_exists(
    calendar: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(
            {"name": "shop", "data": {"targets": ["sales"]}, "features": {"holidays": calendar}}
        )
