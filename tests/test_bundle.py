"""The forecast bundle: one forecast path for backtests and serving, intervals, and input checks."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skewless.bundle.bundle import FORECAST, ForecastBundle
from skewless.bundle.intervals import ConformalIntervals
from skewless.core.config import SkewlessConfig
from skewless.core.errors import DataValidationError
from skewless.core.schema import EVENT_TS
from skewless.training.backtest import BacktestReport, backtest
from skewless.training.packaging import fingerprint, held_out_coverage, package
from skewless.training.pipeline import fit, load_history
from tests.conftest import etth_config, raw_rows

LOOKBACK, HORIZON = 24, 6


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[SkewlessConfig, pd.DataFrame, object]:
    raw = pd.concat([raw_rows(1, "2020-01-01", 500), raw_rows(2, "2020-01-01", 500, seed=3)])
    return backtested(raw, tmp_path_factory.mktemp("bundle"), test_periods=48)


def backtested(
    raw: pd.DataFrame, folder: Path, test_periods: int
) -> tuple[SkewlessConfig, pd.DataFrame, BacktestReport]:
    """The raw rows read as a CSV, and their 3-fold backtest with the small window."""
    raw.to_csv(folder / "history.csv", index=False)
    config = etth_config(
        f"training.lookback={LOOKBACK}",
        f"training.horizon={HORIZON}",
        "backtest.folds=3",
        f"backtest.test_periods={test_periods}",
    )
    rows = load_history(config, csv=folder / "history.csv")
    return config, rows, backtest(config, rows)


@pytest.fixture(scope="module")
def bundle(trained: tuple) -> ForecastBundle:
    config, rows, report = trained
    made, _ = package(config, rows, fit(config, rows), report)
    return made


def request(rows: pd.DataFrame, entity: int, until: pd.Timestamp | None = None) -> pd.DataFrame:
    """An entity's raw rows up to ``until``, as ingestion stores them."""
    chosen = rows[rows["station_id"] == entity]
    if until is not None:
        chosen = chosen[chosen[EVENT_TS] <= until]
    return chosen.reset_index(drop=True)


def test_backtest_forecasts_are_the_bundles_forecasts(trained: tuple) -> None:
    """A backtest number is a serving number: the fold's model through ``predict`` agrees."""
    config, rows, report = trained
    last_fold = report.folds[-1]
    train_rows = rows[rows[EVENT_TS] <= last_fold.train_end]
    fold_bundle, _ = package(config, train_rows, fit(config, train_rows), report)
    forecasts = report.forecasts
    chosen = np.flatnonzero(forecasts.first_target >= last_fold.test_start)[[0, 7, -1]]
    step = pd.Timedelta(hours=1)
    for index in chosen:
        entity = forecasts.entities[index]
        origin = forecasts.first_target[index] - step
        served = fold_bundle.predict(request(rows, entity, origin))
        np.testing.assert_allclose(served["forecast"], forecasts.predicted[index, :, 0], rtol=1e-12)
        assert served[EVENT_TS].iloc[0] == forecasts.first_target[index]


def test_predict_returns_timestamps_point_and_ordered_bounds(
    bundle: ForecastBundle, trained: tuple
) -> None:
    _, rows, _ = trained
    both = pd.concat([request(rows, 1), request(rows, 2)])
    out = bundle.predict(both.sample(frac=1, random_state=0))  # order of rows does not matter
    assert len(out) == 2 * HORIZON
    assert list(out.columns) == [
        "station_id",
        EVENT_TS,
        "target",
        "forecast",
        "lower_80",
        "upper_80",
        "lower_95",
        "upper_95",
    ]
    first = out[out["station_id"] == 1]
    assert first[EVENT_TS].iloc[0] == rows[rows["station_id"] == 1][EVENT_TS].max() + pd.Timedelta(
        hours=1
    )
    assert (first["lower_95"] <= first["lower_80"]).all() and (
        first["lower_80"] <= first["forecast"]
    ).all()
    assert (first["forecast"] <= first["upper_80"]).all() and (
        first["upper_80"] <= first["upper_95"]
    ).all()
    again = pickle.loads(pickle.dumps(bundle)).predict(both)
    pd.testing.assert_frame_equal(again, bundle.predict(both))


def test_bundle_carries_spec_reference_statistics_and_metadata(
    bundle: ForecastBundle, trained: tuple
) -> None:
    _, rows, _ = trained
    assert bundle.spec.feature_refs[0] == "series:OT" and bundle.spec.lookback == LOOKBACK
    recent = rows.groupby("station_id").tail(720)  # monitoring.reference_periods
    assert bundle.reference["OT"].count == len(recent)
    assert abs(bundle.reference["OT"].mean - recent["OT"].mean()) < 1e-4
    assert len(bundle.reference["OT"].quantiles) == 101
    assert bundle.metadata["data_fingerprint"] == fingerprint(rows)
    assert bundle.metadata["config"]["training"]["horizon"] == HORIZON
    assert bundle.intervals.half_widths.shape == (2, HORIZON, 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.drop(columns="HUFL"), r"missing column\(s\) \['HUFL'\]"),
        (
            lambda r: r.assign(OT=r["OT"].astype(object).where(r.index != 3, "hot")),
            "'OT' must be numeric",
        ),
        (
            lambda r: r.assign(HULL=r["HULL"].where(r.index != len(r) - 2)),
            r"entity 1: missing values \(NaN\) in \['HULL'\]",
        ),
        (
            lambda r: r.tail(LOOKBACK - 5),
            f"entity 1: {LOOKBACK - 5} rows, but the model needs the last {LOOKBACK}",
        ),
        (lambda r: r.drop(index=len(r) - 4), "not consecutive"),
        (lambda r: r.assign(station_id="one"), "'station_id' must hold integers"),
    ],
)
def test_bad_input_is_explained_per_entity(
    bundle: ForecastBundle, trained: tuple, change, message: str
) -> None:
    _, rows, _ = trained
    with pytest.raises(DataValidationError, match=message):
        bundle.predict(change(request(rows, 1)))


def test_conformal_widths_cover_at_least_the_nominal_share() -> None:
    rng = np.random.default_rng(0)
    actual = rng.normal(size=(2000, 3, 1))
    predicted = np.zeros_like(actual)
    errors = np.abs(actual - predicted)
    intervals = ConformalIntervals.calibrate(errors[:1000], (0.8, 0.95))
    np.testing.assert_allclose(intervals.half_widths[:, 0, 0], [1.2816, 1.96], atol=0.12)
    coverage = intervals.coverage(errors[1000:])
    assert abs(coverage[0.8] - 0.8) < 0.04 and abs(coverage[0.95] - 0.95) < 0.03


def test_held_out_coverage_is_measured_on_the_last_fold_overall_and_per_entity(
    trained: tuple,
) -> None:
    _, _, report = trained
    coverage = held_out_coverage(report, (0.8, 0.95))
    assert set(coverage.overall) == set(coverage.mean_widths) == {0.8, 0.95}
    assert 0.5 < coverage.overall[0.8] <= coverage.overall[0.95] <= 1.0
    assert list(coverage.per_entity.index) == [1, 2]
    assert (coverage.per_entity[0.8] <= coverage.per_entity[0.95]).all()
    assert 0 < coverage.mean_widths[0.8] < coverage.mean_widths[0.95]


@pytest.fixture(scope="module")
def far_apart(tmp_path_factory: pytest.TempPathFactory) -> tuple[ForecastBundle, pd.DataFrame]:
    """Two entities of one shape at levels 0.01 and 100, trained and packaged together."""
    folder = tmp_path_factory.mktemp("far_apart")
    parts = [raw_rows(1, "2020-01-01", 800), raw_rows(2, "2020-01-01", 800, seed=3)]
    for part, factor in zip(parts, (0.001, 10.0), strict=True):
        variables = part.columns.drop(["date", "station_id"])
        part[variables] *= factor
    config, rows, report = backtested(pd.concat(parts), folder, test_periods=96)
    made, coverage = package(config, rows, fit(config, rows), report)
    assert coverage.per_entity.index.tolist() == [1, 2]
    for level in (0.8, 0.95):  # each entity's own held-out coverage is near nominal
        np.testing.assert_allclose(coverage.per_entity[level], level, atol=0.08)
    return made, rows


def _widths(forecasts: pd.DataFrame, level: str = "80") -> np.ndarray:
    return (forecasts[f"upper_{level}"] - forecasts[f"lower_{level}"]).to_numpy()


def test_interval_widths_follow_each_entitys_scale(far_apart: tuple) -> None:
    bundle, rows = far_apart
    small, large = (_widths(bundle.predict(request(rows, entity))) for entity in (1, 2))
    ratio = np.mean(large) / np.mean(small)
    assert 2_000 < ratio < 50_000  # levels 10,000 apart; one width for all would give 1
    unseen = bundle.predict(request(rows, 1).assign(station_id=9))  # never seen in training
    np.testing.assert_allclose(_widths(unseen), small, rtol=1e-4)


def test_a_flat_window_gets_the_mean_spread_of_the_calibration_windows() -> None:
    errors = np.abs(np.random.default_rng(0).normal(size=(400, 2, 1)))
    spreads = np.full((400, 1), 2.0)
    intervals = ConformalIntervals.calibrate(errors, (0.8,), spreads)
    ((lower, upper),) = intervals.bounds(np.zeros((2, 2, 1)), np.array([[2.0], [0.0]])).values()
    np.testing.assert_allclose(upper[1], upper[0])  # spread 0: scaled by the mean, 2.0
    np.testing.assert_allclose(lower, -upper)


def test_a_bundle_pickled_before_window_spreads_still_serves_its_widths(
    bundle: ForecastBundle, trained: tuple
) -> None:
    """Bundles registered before ``flat_spread`` existed: one width in original units."""
    _, rows, _ = trained
    old = ConformalIntervals(bundle.intervals.levels, np.full((2, HORIZON, 1), [[[1.5]], [[3.0]]]))
    del old.__dict__["flat_spread"]  # as the older class pickled it: no such field
    loaded = pickle.loads(pickle.dumps(dataclasses.replace(bundle, intervals=old)))
    assert loaded.intervals.flat_spread is None
    served = loaded.predict(request(rows, 2))
    np.testing.assert_allclose(served["upper_80"] - served[FORECAST], 1.5)
    np.testing.assert_allclose(served[FORECAST] - served["lower_95"], 3.0)


def test_errors_survive_pickling_with_their_message_and_details() -> None:
    """Errors cross process boundaries (Ray Serve deployments) and must arrive intact."""
    from datetime import UTC, datetime

    from skewless.core.errors import StaleFeaturesError, UnknownEntityError

    errors = [
        DataValidationError("cannot forecast", ["entity 1: too short"]),
        UnknownEntityError([7, 8], "station_id"),
        StaleFeaturesError(
            {1: datetime(2018, 6, 26, tzinfo=UTC)}, datetime(2026, 1, 1, tzinfo=UTC)
        ),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
    assert pickle.loads(pickle.dumps(errors[1])).entities == [7, 8]
