"""Calendar frequencies from ingest to a served forecast: weekly (Sundays) and monthly (month
starts in Berlin) series of three entities, one with a gap, ingested, materialized, trained,
served over HTTP by the FastAPI server, and checked for skew; business days, whose weekends
are no gap.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from skewless.cli import app
from skewless.core.calendar import calendar_features
from skewless.core.config import load_config
from skewless.features.ingest import ingest
from skewless.features.repo import FeastRepo
from skewless.monitoring.observations import observe
from tests.conftest import free_port, wait_for, wait_until_healthy

pytestmark = pytest.mark.integration  # Feast stores, MLflow and a live server

ENTITIES = (1, 2, 3)


@dataclass(frozen=True)
class Calendar:
    """One calendar case: its frequency, zone, length and window shape (durations or counts)."""

    frequency: str
    timezone: str
    periods: int
    lookback: str | int
    horizon: str | int
    test_periods: str | int
    holidays: dict[str, str] | None = None  # features.holidays


WEEKLY = Calendar("W-SUN", "UTC", 160, "26W", "28D", "12W", {"country": "US"})
MONTHLY = Calendar("MS", "Europe/Berlin", 120, "2Y", 3, 6, {"country": "DE", "subdivision": "BY"})


def series(calendar: Calendar, seed: int = 0) -> pd.DataFrame:
    """Seasonal noisy series in local wall-clock time; entity 3 misses five periods."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2012-01-01", periods=calendar.periods, freq=calendar.frequency)
    parts = []
    for entity in ENTITIES:
        season = np.sin(2 * np.pi * dates.dayofyear / 365.25)
        frame = pd.DataFrame(
            {
                "date": dates.strftime("%Y-%m-%d"),
                "sales": 100 * entity + 10 * season + rng.normal(0, 1, len(dates)),
                "price": rng.normal(5, 0.5, len(dates)),
                "store": entity,
            }
        )
        parts.append(frame.drop(index=range(40, 45)) if entity == 3 else frame)
    return pd.concat(parts, ignore_index=True)


def write_config(folder: Path, calendar: Calendar) -> Path:
    """A config of the calendar's own data, stores and registry under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    series(calendar).to_csv(folder / "sales.csv", index=False)
    raw = {
        "name": "sales",
        "data": {
            "sources": [{"path": str(folder / "sales.csv")}],
            "entity_key": "store",
            "timestamp_column": "date",
            "timezone": calendar.timezone,
            "frequency": calendar.frequency,
            "targets": ["sales"],
            "covariates": ["price"],
        },
        "features": {"holidays": calendar.holidays},
        "feature_store": {"project": f"t{uuid.uuid4().hex[:10]}", "window_size": 64},
        "training": {
            "model": "nlinear",
            "lookback": calendar.lookback,
            "horizon": calendar.horizon,
        },
        "backtest": {"folds": 2, "test_periods": calendar.test_periods},
        "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}"},
        "serving": {"alias": "latest"},
    }
    path = folder / "sales.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run(*arguments: str) -> str:
    """A skewless command in this process; its output, after checking it succeeded."""
    result = CliRunner().invoke(app, list(arguments))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module", params=[WEEKLY, MONTHLY], ids=["weekly", "monthly"])
def released(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Calendar, str]]:
    """The calendar's data ingested, materialized and trained; a FastAPI server on it."""
    calendar: Calendar = request.param
    folder = tmp_path_factory.mktemp(calendar.frequency)
    config = write_config(folder, calendar)
    with released_server(config, folder / "home") as (ingested, url):
        assert "1 gap(s)" in ingested and "(5 missing points)" in ingested  # on the calendar
        yield config, calendar, url


@contextmanager
def released_server(config: Path, home: Path) -> Iterator[tuple[str, str]]:
    """``config`` ingested, materialized and trained under ``home`` and a FastAPI server on it,
    stopped on exit: (what ingest printed, the server's URL)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKEWLESS_HOME", str(home))
        ingested = run("ingest", str(config))
        run("materialize", str(config))
        run("train", str(config))
        server, url = serve(config, home)
        try:
            yield ingested, url
        finally:
            server.terminate()
            server.wait(timeout=60)


def serve(config: Path, home: Path) -> tuple[subprocess.Popen, str]:
    """``skewless serve`` (FastAPI) on a free port, once it answers /health."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "skewless"), "serve", str(config)]
    log = home.parent / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [*command, "--port", str(port)],
            env={**os.environ, "SKEWLESS_HOME": str(home)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(server, url, log, 180)
    return server, url


def in_utc(calendar: Calendar, first: str, periods: int) -> pd.DatetimeIndex:
    """``periods`` local dates of the calendar from ``first`` on, in UTC."""
    local = pd.date_range(first, periods=periods, freq=calendar.frequency)
    return local.tz_localize(calendar.timezone).tz_convert("UTC")


def last_period(calendar: Calendar) -> pd.Timestamp:
    """The series' last timestamp, in UTC."""
    return in_utc(calendar, "2012-01-01", calendar.periods)[-1]


def expected_starts(calendar: Calendar) -> pd.DatetimeIndex:
    """The first three forecast timestamps after the last period, on the calendar, in UTC."""
    last = last_period(calendar).tz_convert(calendar.timezone).tz_localize(None)
    return in_utc(calendar, str(last), 4)[1:]


def test_served_forecasts_lie_on_the_calendar(released: tuple[Path, Calendar, str]) -> None:
    config_path, calendar, url = released
    config = load_config(config_path, environ={})
    answer = httpx.post(
        f"{url}/predict/feast/batch",
        json={"entities": list(ENTITIES), "time_point": "latest"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    horizon = config.training.horizon
    for item in answer.json()["predictions"]:
        times = pd.DatetimeIndex(item["timestamps"])
        assert len(times) == horizon == len(item["forecast"]["sales"])
        assert list(times[:3]) == list(expected_starts(calendar))
        local = times.tz_convert(calendar.timezone)
        assert (local == local.normalize()).all()  # local midnight
        if calendar.frequency == "MS":
            assert (local.day == 1).all()
        else:
            assert (local.day_name() == "Sunday").all()
    assert calendar_features(config) == ("month",)  # hour and day of week are constant


def test_holidays_are_stored_as_their_calendar_counts_them(
    released: tuple[Path, Calendar, str],
) -> None:
    """US weeks ending on Sunday: the one of 4 July holds one; Bavarian months: January holds
    New Year and Epiphany, December Christmas and Boxing Day."""
    config_path, calendar, _ = released
    config = load_config(config_path, environ={})
    rows = FeastRepo(config, config_path.parent / "home").offline.history([1], None, None)
    local = pd.DatetimeIndex(rows["event_timestamp"]).tz_convert(calendar.timezone)
    held = pd.Series(rows["holidays"].to_numpy(), index=local.strftime("%Y-%m-%d"))
    expected = (
        {"2012-07-08": 1, "2012-07-15": 0, "2012-12-30": 1}
        if calendar.frequency == "W-SUN"
        else {"2012-01-01": 2, "2012-02-01": 0, "2012-12-01": 2}
    )
    assert held[list(expected)].to_dict() == expected


def test_the_skew_check_finds_no_difference(released: tuple[Path, Calendar, str]) -> None:
    config_path, _, _ = released
    checked = run("verify-skew", str(config_path), "--alias", "latest", "--samples", "10")
    assert "10 pairs compared, 0 differ; largest absolute difference 0" in checked


def test_durations_were_counted_in_periods(released: tuple[Path, Calendar, str]) -> None:
    config_path, calendar, _ = released
    training = load_config(config_path, environ={}).training
    expected = {"W-SUN": (26, 4), "MS": (24, 3)}[calendar.frequency]
    assert (training.lookback, training.horizon) == expected


def test_monitoring_meets_served_steps_with_their_actuals(
    released: tuple[Path, Calendar, str],
) -> None:
    """A forecast served from six periods back: monitoring finds each step's actual, and the
    inputs it read, by calendar steps."""
    config_path, calendar, url = released
    config = load_config(config_path, environ={})
    dates = in_utc(calendar, "2012-01-01", calendar.periods)
    at = dates[-7]
    answer = httpx.post(
        f"{url}/predict/feast", json={"entity": 2, "time_point": at.isoformat()}, timeout=120
    )
    assert answer.status_code == 200, answer.text
    home, lookback = config_path.parent / "home", config.training.lookback
    # Only this forecast has actuals: the others start after the series ends.
    wait_for(lambda: len(observe(config, home, lookback).outcomes), "the request log")
    observed = observe(config, home, lookback)
    steps = observed.outcomes.sort_values("step")
    ahead = dates[-6:][: config.training.horizon]
    assert list(pd.to_datetime(steps["event_timestamp"], utc=True)) == list(ahead)
    sales = series(calendar)
    actual = sales[sales["store"] == 2]["sales"].to_numpy()[-6:][: len(ahead)]
    np.testing.assert_allclose(steps["actual"], actual, rtol=1e-6)
    inputs = observed.inputs
    assert pd.Timestamp(inputs["event_timestamp"].min()) == dates[-7 - lookback + 1]


def test_a_weekend_is_no_gap_for_business_days(tmp_path: Path) -> None:
    """Business days skip weekends without a gap; entity 3's five missing days are one gap."""
    business = Calendar("B", "UTC", 60, 10, 2, 5)
    repo = FeastRepo(load_config(write_config(tmp_path, business), environ={}), tmp_path / "home")
    (report,) = ingest(repo)
    gaps = [warning for warning in report.warnings if "gap" in warning]
    assert len(gaps) == 1 and "1 gap(s)" in gaps[0] and "(5 missing points)" in gaps[0]
    assert "store 3 after 2012-02-24T00:00:00+00:00 until 2012-03-05T00:00:00+00:00" in gaps[0]


def test_staleness_counts_calendar_steps(released: tuple[Path, Calendar, str]) -> None:
    """A window is fresh until one calendar step past the last grid point before the time."""
    config_path, calendar, url = released
    nominal = load_config(config_path, environ={}).data.parsed_frequency.nominal
    last = last_period(calendar)
    answers = {
        periods: httpx.post(
            f"{url}/predict/feast",
            json={"entity": 1, "time_point": (last + periods * nominal).isoformat()},
            timeout=120,
        )
        for periods in (1.4, 2.5)
    }
    assert answers[1.4].status_code == 200, answers[1.4].text
    assert answers[2.5].status_code == 409 and "stale online windows" in answers[2.5].text
