"""The serving layer's pure logic without a server: the HTTP status of each error, the checks
on requested entities and time points, the response items, and the request schemas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from skewless.bundle.bundle import Forecasts
from skewless.core.errors import (
    BundleError,
    ConfigError,
    DataValidationError,
    FeatureStoreError,
    RegistryError,
    RequestError,
    SkewlessError,
    StaleFeaturesError,
    StoreUnavailableError,
    UnknownEntityError,
    UnservableVersionError,
)
from skewless.serving.schemas import (
    BatchRequest,
    EntityRequest,
    FailedPrediction,
    PredictionResponse,
    RowsRequest,
    status_of,
)
from skewless.serving.service import (
    LoadedModel,
    _items,
    check_entities,
    check_time_point,
    significant,
)
from tests.conftest import etth_config

NOW = datetime(2018, 6, 26, 19, tzinfo=UTC)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (StoreUnavailableError("Redis does not answer"), 503),
        (UnknownEntityError([99], "station_id"), 404),
        (StaleFeaturesError({1: NOW}, NOW + timedelta(hours=1)), 409),
        (RegistryError("no alias"), 503),
        (UnservableVersionError("lookback of 600 points"), 503),  # a RegistryError
        (BundleError("bundle.pkl is missing"), 503),
        (FeatureStoreError("no windows"), 422),  # the store answered: the request is at fault
        (RequestError("too many entities"), 422),
        (DataValidationError("bad rows", ["OT is not numeric"]), 422),
        (ConfigError("bad key"), 422),
        (SkewlessError("anything else"), 422),
    ],
)
def test_each_error_has_one_http_status(error: SkewlessError, status: int) -> None:
    assert status_of(error) == status
    failed = FailedPrediction.of(1, error)
    assert (failed.status, failed.kind, failed.error) == (status, type(error).__name__, str(error))


@pytest.fixture(scope="module")
def config() -> Any:
    return etth_config("serving.max_entities=3")


def test_entity_checks_pass_ids_in_order_with_repeats(config: Any) -> None:
    assert check_entities(config, (2, 1, 2)) == [2, 1, 2]
    assert check_entities(config, [-(2**63), 2**63 - 1]) == [-(2**63), 2**63 - 1]


@pytest.mark.parametrize(
    ("entities", "message"),
    [
        ([], "name at least one entity"),
        ([1, 2, 3, 4], "4 entities requested; at most 3 per request (serving.max_entities)"),
        ([True], "must be 64-bit integers"),  # a bool is an int to Python, not an id
        (["1"], "must be 64-bit integers"),
        ([1.0], "must be 64-bit integers"),
        ([2**63], "must be 64-bit integers"),
        ([-(2**63) - 1], "must be 64-bit integers"),
    ],
)
def test_entity_checks_refuse_with_the_reason(config: Any, entities: list, message: str) -> None:
    with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_entities(config, entities)


def test_string_ids_are_any_text() -> None:
    config = etth_config("data.entity_type=string")
    assert check_entities(config, ["site-a", "1"]) == ["site-a", "1"]


def test_time_points_are_utc_and_never_in_the_future(config: Any) -> None:
    assert check_time_point(config, "2018-06-26T19:00:00Z") == NOW
    assert check_time_point(config, "2018-06-26 21:00:00+02:00") == NOW
    assert check_time_point(config, "2018-06-26T19:00:00") == NOW  # naive: data.timezone (UTC)
    now = check_time_point(config, "now")
    assert now is not None and abs(now - datetime.now(UTC)) < timedelta(minutes=1)
    with pytest.raises(RequestError, match="is in the future"):
        check_time_point(config, (datetime.now(UTC) + timedelta(hours=2)).isoformat())
    with pytest.raises(RequestError, match="not 'now', 'latest' or an ISO 8601 timestamp"):
        check_time_point(config, "yesterday")


@pytest.mark.parametrize("text", ["latest", " Latest "])
def test_latest_names_no_time_point(config: Any, text: str) -> None:
    """No time point: the online strategy serves each entity's newest window, never stale."""
    assert check_time_point(config, text) is None


def test_a_time_point_within_one_step_ahead_is_allowed(config: Any) -> None:
    """Clocks differ by less than a step (hourly here): such a point is not the future."""
    within_a_step = datetime.now(UTC) + timedelta(minutes=30)
    assert check_time_point(config, within_a_step.isoformat()) == within_a_step


def test_response_items_nest_targets_steps_and_levels() -> None:
    entities, horizon, targets = np.array([7, 3]), 2, ["OT", "HUFL"]
    start = np.datetime64("2018-06-26T20:00:00", "ns")
    times = start + np.arange(horizon)[None, :] * np.timedelta64(1, "h") + np.zeros((2, 1), int)
    point = np.arange(2 * horizon * 2, dtype=float).reshape(2, horizon, 2)  # entity, step, target
    forecasts = Forecasts(entities, times.astype("int64"), point, {"80": (point - 1, point + 1)})
    bundle: Any = SimpleNamespace(spec=SimpleNamespace(targets=targets, entity_key="station_id"))
    items = _items(forecasts, LoadedModel("m", "production", 1, bundle))
    assert list(items) == [7, 3]
    second = items[3].model_dump()
    assert second == {
        "entity": 3,
        "timestamps": ["2018-06-26T20:00:00+00:00", "2018-06-26T21:00:00+00:00"],
        "forecast": {"OT": [4.0, 6.0], "HUFL": [5.0, 7.0]},
        "lower": {"OT": {"80": [3.0, 5.0]}, "HUFL": {"80": [4.0, 6.0]}},
        "upper": {"OT": {"80": [5.0, 7.0]}, "HUFL": {"80": [6.0, 8.0]}},
        "error": None,
    }


def test_a_response_shows_an_entitys_error_but_not_its_class_or_status() -> None:
    """FailedPrediction carries both for the server; the JSON answer keeps to the contract."""
    failed = FailedPrediction.of(99, UnknownEntityError([99], "station_id"))
    answer = PredictionResponse(
        request_id="r", model={"name": "m", "version": 1, "alias": "a"}, predictions=[failed]
    )
    (shown,) = answer.model_dump(mode="json")["predictions"]
    assert shown["entity"] == 99 and shown["forecast"] is None
    assert shown["error"].startswith("unknown station_id value(s): 99")
    assert "kind" not in shown and "status" not in shown


def test_requests_are_strict_about_ids_and_unknown_fields() -> None:
    assert EntityRequest(entity=1).time_point == "now"
    assert BatchRequest(entities=[1, "a"]).entities == [1, "a"]
    for bad in (
        {"entities": []},
        {"entities": [1.0]},
        {"entities": [True]},
        {"entities": [1], "x": 1},
    ):
        with pytest.raises(ValidationError):
            BatchRequest.model_validate(bad)
    with pytest.raises(ValidationError, match="at most 40 characters"):
        EntityRequest(entity=1, time_point="9" * 41)


def test_the_request_schema_documents_latest() -> None:
    assert BatchRequest(entities=[1], time_point="latest").time_point == "latest"
    described = EntityRequest.model_json_schema()["properties"]["time_point"]["description"]
    assert "'latest'" in described and "'now'" in described


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("inf"), "rows[0].OT: inf is not a finite number within float32"),
        (float("nan"), "rows[0].OT: nan is not a finite number within float32"),
        (1e39, "rows[0].OT: 1e+39 is not a finite number within float32"),
        (2**63, "rows[0].OT: 9223372036854775808 does not fit a 64-bit integer"),
    ],
)
def test_raw_rows_hold_only_numbers_a_model_can(value: float, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("+", r"\+")):
        RowsRequest(rows=[{"station_id": 1, "OT": value}])
    ok = RowsRequest(rows=[{"station_id": 2**63 - 1, "OT": 3.4e38, "flag": True}])
    assert ok.rows[0]["OT"] == 3.4e38


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (45.89857205766545, "45.89857"),
        (0.000123456789, "0.0001234568"),
        (-1234567.891, "-1234568.0"),
        (98765432109.0, "98765430000.0"),
        (0.0, "0.0"),
        (1e-300, "1e-300"),
    ],
)
def test_answers_carry_seven_significant_digits(value: float, shown: str) -> None:
    assert repr(significant(np.array([value])).tolist()[0]) == shown


def test_values_that_are_not_finite_pass_unchanged() -> None:
    rounded = significant(np.array([np.nan, np.inf, -np.inf, 2.0 / 3.0]))
    assert np.isnan(rounded[0]) and rounded[1:3].tolist() == [np.inf, -np.inf]
    assert rounded[3] == 0.6666667
