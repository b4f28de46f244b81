"""Frequencies on the calendar: grid positions, gaps, moving by steps, durations as counts, and
the calendar features that fit a frequency."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from skewless.core.calendar import calendar_features, engineer, engineered_columns
from skewless.core.config import SkewlessConfig, validate_config
from skewless.core.frequency import frequency


def utc(*times: str) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(list(times), tz="UTC")


def config(
    frequency: str, calendar: list[str] | None = None, zone: str | None = None
) -> SkewlessConfig:
    raw: dict = {"name": "t", "data": {"targets": ["y"], "frequency": frequency, "timezone": zone}}
    if calendar is not None:
        raw["features"] = {"calendar": calendar}
    return validate_config(raw)


def test_weekly_steps_follow_sundays() -> None:
    weekly = frequency("W-SUN")
    times = utc("2024-01-07", "2024-01-14", "2024-01-28", "2024-02-04")
    assert list(np.diff(weekly.positions(times))) == [1, 2, 1]
    assert list(weekly.consecutive(times)) == [True, False, True]
    assert weekly.on_grid(
        utc("2024-01-07", "2024-01-08"), utc("2024-01-07", "2024-01-07")
    ).tolist() == [
        True,
        False,
    ]
    ahead = pd.to_datetime(weekly.ahead(utc("2024-02-04"), [1, 2])[0], utc=True)
    assert list(ahead) == list(utc("2024-02-11", "2024-02-18"))


def test_month_starts_are_local_midnights_in_the_data_zone() -> None:
    monthly = frequency("MS", "Europe/Berlin")
    # Local midnight of 1 March is 23:00 UTC the day before; of 1 April (summer time) 22:00.
    end = utc("2024-02-29 23:00")
    ahead = pd.to_datetime(monthly.ahead(end, [1, 2])[0], utc=True)
    assert list(ahead) == list(utc("2024-03-31 22:00", "2024-04-30 22:00"))
    assert monthly.moved(ahead[1], -3) == pd.Timestamp("2024-01-31 23:00", tz="UTC")
    assert monthly.consecutive(utc("2024-02-29 23:00", "2024-03-31 22:00")).tolist() == [True]
    # Midnight UTC on the 1st is 01:00 in Berlin: not a month start there.
    assert not monthly.on_grid(utc("2024-03-01"), utc("2024-03-01")).any()
    assert monthly.floor(pd.Timestamp("2024-03-20", tz="UTC")) == end[0]


def test_a_weekend_is_no_gap_for_business_days() -> None:
    business = frequency("B")
    friday_monday = utc("2024-01-05", "2024-01-08", "2024-01-10")
    assert business.consecutive(friday_monday).tolist() == [True, False]
    assert business.moved(pd.Timestamp("2024-01-05", tz="UTC"), 1).day_name() == "Monday"


def test_a_multiple_of_a_calendar_step_keeps_its_series_phase() -> None:
    fortnight = frequency("2W")
    times = utc("2024-01-07", "2024-01-21", "2024-02-11")
    assert fortnight.consecutive(times).tolist() == [True, False]
    anchors = utc("2024-01-07", "2024-01-07", "2024-01-07")
    assert fortnight.on_grid(times, anchors).tolist() == [True, True, False]


def test_fixed_steps_are_plain_arithmetic() -> None:
    hourly = frequency("h")
    times = utc("2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 03:00")
    assert hourly.step == pd.Timedelta("1h")
    assert hourly.consecutive(times).tolist() == [True, False]
    ahead = pd.to_datetime(hourly.ahead(times[:1], [1, 2])[0], utc=True)
    assert list(ahead) == list(utc("2024-01-01 01:00", "2024-01-01 02:00"))
    # A fixed step's grid runs through each series' first timestamp.
    quarter = frequency("15min")
    assert quarter.on_grid(utc("2024-01-01 00:20"), utc("2024-01-01 00:05")).all()


def test_whole_days_in_a_zone_count_local_midnights_across_clock_changes() -> None:
    """Summer time starts on 31 March 2024 in Berlin: that day has 23 hours."""
    daily = frequency("D", "Europe/Berlin")
    midnights = utc("2024-03-29 23:00", "2024-03-30 23:00", "2024-03-31 22:00")
    assert daily.consecutive(midnights).tolist() == [True, True]
    assert daily.on_grid(midnights, midnights[[0, 0, 0]]).all()
    ahead = pd.to_datetime(daily.ahead(midnights[:1], [1, 2, 3])[0], utc=True)
    assert list(ahead) == [*midnights[1:], pd.Timestamp("2024-04-01 22:00", tz="UTC")]
    assert daily.floor(pd.Timestamp("2024-03-31 12:00", tz="UTC")) == midnights[1]
    # UTC midnights are 24 hours apart, so across the change they are not local days.
    assert not daily.consecutive(utc("2024-03-31", "2024-04-01")).any()
    assert frequency("D").consecutive(utc("2024-03-31", "2024-04-01")).all()


@pytest.mark.parametrize(("old", "new"), [("M", "ME"), ("Q", "QE"), ("Y", "YE")])
def test_deprecated_pandas_aliases_mean_what_pandas_reads(old: str, new: str) -> None:
    assert frequency(old).offset == frequency(new).offset


@pytest.mark.parametrize(
    ("alias", "message"), [("fortnightly", "not a pandas frequency alias"), ("bh", "not supported")]
)
def test_nonsense_frequencies_are_refused_with_examples(alias: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        frequency(alias)
    assert "'15min'" in str(error.value) and "'W-SUN'" in str(error.value)


@pytest.mark.parametrize(
    ("alias", "duration", "count"),
    [
        ("W-SUN", "52W", 52),
        ("MS", "1Y", 12),
        ("MS", "365D", 12),
        ("ME", "6M", 6),
        ("QS", "2Y", 8),
        ("B", "4W", 20),
        ("h", "14D", 336),
        ("15min", "336h", 1344),
    ],
)
def test_durations_count_periods_on_the_calendar(alias: str, duration: str, count: int) -> None:
    assert frequency(alias).periods(duration) == count


@pytest.mark.parametrize(
    ("alias", "duration", "message"),
    [
        ("W-SUN", "30D", "nearest: 4 and 5"),
        ("MS", "52W", "nearest: 11 and 12"),
        ("h", "90min", "nearest: 1 and 2"),
        ("D", "soon", "not a count nor a duration"),
        ("D", "-2D", "must be positive"),
    ],
)
def test_durations_that_are_not_whole_periods_are_refused(
    alias: str, duration: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        frequency(alias).periods(duration)


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("h", ("hour", "day_of_week", "month")),
        ("D", ("day_of_week", "month")),
        ("B", ("day_of_week", "month")),
        ("W-SUN", ("month",)),
        ("MS", ("month",)),
        ("YS", ()),
    ],
)
def test_default_calendar_features_follow_the_frequency(alias: str, expected: tuple) -> None:
    assert calendar_features(config(alias)) == expected


def test_calendar_features_constant_for_the_frequency_are_dropped_with_one_note(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monthly = config("MS", ["hour", "day_of_month", "day_of_year", "month"])
    with caplog.at_level(logging.INFO, logger="skewless.core.calendar"):
        columns = engineered_columns(monthly)
        engineered = engineer(pd.date_range("2024-01-01", periods=3, freq="MS", tz="UTC"), monthly)
    assert (
        columns
        == list(engineered.columns)
        == [
            "day_of_year_sin",
            "day_of_year_cos",
            "month_sin",
            "month_cos",
        ]
    )
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "['hour', 'day_of_month']" in notes[0] and "'MS'" in notes[0]
