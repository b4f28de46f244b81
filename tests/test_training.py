"""Training and rolling-origin backtests on point-in-time data from the real offline store."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from skewless.cli import app
from skewless.core.config import load_config
from skewless.core.errors import ConfigError
from skewless.features.repo import FeastRepo
from skewless.training.backtest import backtest, fold_bounds, skill
from skewless.training.metrics import METRICS, ErrorSums, naive_scale
from skewless.training.pipeline import check_request, fit, load_history, window_sets
from tests.conftest import ETTH_CONFIG, etth_config, raw_rows

SMALL = ["training.lookback=48", "training.horizon=12", "backtest.test_periods=48"]


@pytest.fixture(scope="module")
def history(etth_sqlite: FeastRepo) -> pd.DataFrame:
    return load_history(etth_sqlite.config, etth_sqlite.home)


def test_metrics_by_hand() -> None:
    actual = np.array([[[1.0], [2.0]], [[4.0], [np.nan]]])
    predicted = np.array([[[2.0], [2.0]], [[2.0], [9.0]]])
    sums = ErrorSums()
    sums.add(actual, predicted, np.array([1, 2]), {1: 1.0, 2: 2.0})
    result = sums.result()
    errors = np.array([1.0, 0.0, -2.0])  # the missing actual is ignored
    assert result.overall["mse"] == pytest.approx(np.mean(errors**2))
    assert result.overall["mae"] == pytest.approx(1.0)
    assert result.overall["rmse"] == pytest.approx(np.sqrt(5 / 3))
    assert result.overall["smape"] == pytest.approx(100 * np.mean([2 / 3, 0, 2 / 3]))
    assert result.overall["mase"] == pytest.approx(np.mean([1 / 1, 0 / 1, 2 / 2]))
    assert list(result.per_horizon.index) == [1, 2] and list(result.per_entity.index) == [1, 2]
    assert result.per_entity.loc[2, "mae"] == pytest.approx(2.0)
    assert naive_scale(
        np.array([1, 1, 1, 2, 2]), np.array([[1.0], [3.0], [4.0], [5.0], [5.0]])
    ) == {
        1: 1.5,
        2: pytest.approx(np.nan, nan_ok=True),
    }


def test_windows_score_against_the_raw_rows(history: pd.DataFrame) -> None:
    config = etth_config(*SMALL)
    result = fit(config, history)
    windows = next(
        window_sets(
            config, result.preprocessor, history, first_target=pd.Timestamp("2018-01-01", tz="UTC")
        )
    )
    assert (windows.first_target >= pd.Timestamp("2018-01-01", tz="UTC")).all()
    first = windows.first_target[0]
    entity = windows.entities[0]
    rows = history[(history["station_id"] == entity) & (history["event_timestamp"] >= first)]
    np.testing.assert_array_equal(windows.actual[0, :, 0], rows["OT"].to_numpy()[:12])


def test_nlinear_beats_naive_on_validation(history: pd.DataFrame) -> None:
    nlinear = fit(etth_config(*SMALL), history).validation.overall
    naive = fit(etth_config(*SMALL, "training.model=naive"), history).validation.overall
    assert nlinear["mse"] < naive["mse"] and nlinear["mase"] < naive["mase"]


def test_backtest_folds_refit_on_the_past_only(
    history: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    config = etth_config(*SMALL, "backtest.folds=2", "backtest.gap=3")
    with caplog.at_level(logging.INFO, logger="skewless.training.backtest"):
        report = backtest(config, history)
    progress = [r.getMessage() for r in caplog.records if "backtest fold" in r.getMessage()]
    assert [line.split(" (")[0] for line in progress] == [
        "backtest fold 1 of 2",
        "backtest fold 2 of 2",
    ]  # a batch job's log shows each fold as it is scored
    step = pd.Timedelta("1h")
    assert [f.number for f in report.folds] == [1, 2]
    first, second = report.folds
    assert second.test_start == first.test_end + step
    assert second.test_end == history["event_timestamp"].max()
    for fold in report.folds:
        assert fold.train_end == fold.test_start - 4 * step  # gap of 3 periods
        assert fold.windows == 2 * (48 - 12 + 1)  # two stations, every window inside the period
    pooled = sum(f.windows for f in report.folds)
    assert report.overall.per_entity.shape[0] == 2 and pooled == 148
    assert len(report.overall.per_horizon) == 12


def test_a_backtest_scores_naive_on_the_same_windows_as_a_naive_backtest_would(
    history: pd.DataFrame,
) -> None:
    folds = [*SMALL, "backtest.folds=2"]
    report = backtest(etth_config(*folds), history)
    naive = backtest(etth_config(*folds, "training.model=naive"), history)
    assert report.naive.overall == naive.overall.overall  # to the last bit
    assert [f.naive.overall for f in report.folds] == [f.evaluation.overall for f in naive.folds]
    scores = skill(report.overall.overall, report.naive.overall)
    assert scores["mse"] == 1 - report.overall.overall["mse"] / naive.overall.overall["mse"]
    assert scores["mse"] > 0  # NLinear beats repeating the last value
    assert skill(naive.overall.overall, naive.naive.overall) == dict.fromkeys(METRICS, 0.0)
    assert np.isnan(skill({"mse": 1.0}, {"mse": 0.0})["mse"])  # naive perfect: no ratio


def test_sliding_window_and_bad_fold_layouts(history: pd.DataFrame) -> None:
    sliding = etth_config(
        *SMALL, "backtest.folds=1", "backtest.window=sliding", "backtest.train_periods=400"
    )
    assert backtest(sliding, history).folds[0].windows == 74
    with pytest.raises(ConfigError, match="too few rows for 500 folds"):
        fold_bounds(etth_config(*SMALL, "backtest.folds=500"), history)
    with pytest.raises(ConfigError, match="each test period must hold one horizon"):
        fold_bounds(etth_config(*SMALL, "backtest.test_periods=6"), history)
    with pytest.raises(ConfigError, match="sliding window needs train_periods"):
        etth_config("backtest.window=sliding")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["training.model=prophet"],
            "unknown model 'prophet'; available: ['hybrid', 'naive', 'nlinear', 'tft', 'xgboost']",
        ),
        (["training.params={depth: 3}"], "['depth'] are not parameters of 'nlinear'"),
        (["training.params={solver: magic}"], "unknown solver 'magic'"),
        (["training.lookback=20000"], "the longest entity history has 17420"),
    ],
)
def test_bad_requests_fail_before_any_work(
    history: pd.DataFrame, overrides: list[str], message: str
) -> None:
    config = etth_config(*overrides)
    with pytest.raises(ConfigError) as error:
        check_request(config, history)
    assert message in str(error.value)


def test_horizon_zero_and_unknown_targets_are_refused(history: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="training.horizon"):
        etth_config("training.horizon=0")
    with pytest.raises(ConfigError, match=r"column\(s\) \['TEMP'\] that the data does not have"):
        check_request(etth_config("data.targets=[TEMP]"), history)
    with pytest.raises(ConfigError, match=r"data.static name column\(s\) \['kind'\]"):
        check_request(etth_config("data.categorical=[kind]"), history)


@pytest.mark.slow
def test_cli_train_and_backtest_from_a_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path / "home"))
    raw = pd.concat([raw_rows(1, "2020-01-01", 400), raw_rows(2, "2020-01-01", 400, seed=3)])
    raw.to_csv(tmp_path / "history.csv", index=False)
    common = [
        str(ETTH_CONFIG),
        "--csv",
        str(tmp_path / "history.csv"),
        "--set",
        "training.lookback=24",
        "--set",
        "training.horizon=6",
        "--set",
        "backtest.test_periods=24",
        "--set",
        "backtest.folds=2",
    ]
    trained = CliRunner().invoke(app, ["train", *common])
    assert trained.exit_code == 0, trained.output
    assert "backtest (all folds) and validation" in trained.output and "MASE" in trained.output
    assert "naive, same windows" in trained.output and "skill vs naive" in trained.output
    assert "beats naive" in " ".join(trained.output.split())
    assert "registered etth_forecaster version 1" in trained.output
    assert "of the last fold covered, mean width" in trained.output
    assert "per entity from" in " ".join(trained.output.split())
    tested = CliRunner().invoke(app, ["backtest", *common])
    assert tested.exit_code == 0, tested.output
    assert "all folds, per horizon step" in tested.output
    assert tested.output.count("naive, same windows") == 3  # each fold and all folds
    client = MlflowClient(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("etth")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert runs["train"].data.metrics["val_mse"] > 0 and runs["train"].data.metrics["mse"] > 0
    assert 0 < runs["train"].data.metrics["coverage_80"] <= 1
    assert 0 < runs["train"].data.metrics["width_80"] < runs["train"].data.metrics["width_95"]
    artifacts = [a.path for a in client.list_artifacts(runs["train"].info.run_id)]
    assert "coverage_per_entity.json" in artifacts
    assert runs["train"].data.params["training.lookback"] == "24"
    tested_run = runs["backtest"]
    assert [m.step for m in client.get_metric_history(tested_run.info.run_id, "fold_mse")] == [1, 2]
    naive_folds = client.get_metric_history(tested_run.info.run_id, "fold_naive_mse")
    assert [m.step for m in naive_folds] == [1, 2]
    assert tested_run.data.metrics["skill_mse"] == pytest.approx(
        1 - tested_run.data.metrics["mse"] / tested_run.data.metrics["naive_mse"]
    )
    assert len(client.get_metric_history(tested_run.info.run_id, "mse_by_step")) == 6
    artifacts = {a.path for a in client.list_artifacts(tested_run.info.run_id)}
    assert {"forecast_vs_actual.png", "backtest_folds.json", "config.json"} <= artifacts
    refused = CliRunner().invoke(app, ["train", *common, "--set", "training.model=arima"])
    assert refused.exit_code == 1 and "unknown model 'arima'" in refused.output

    narrow = CliRunner().invoke(app, ["train", *common, "--set", "feature_store.window_size=12"])
    assert narrow.exit_code == 0, narrow.output
    said = " ".join(narrow.output.split())  # the console wraps long lines
    assert "warning: the online store cannot feed this model: its lookback of 24 points" in said
    promote = ["models", "promote", "etth_forecaster", "latest", "--alias", "production"]
    forced = CliRunner().invoke(app, [*promote, "--force"])
    assert forced.exit_code == 1 and "exceeds the online window of 12" in forced.output
    wider = CliRunner().invoke(app, [*promote, "--config", str(ETTH_CONFIG)])  # window 512
    assert wider.exit_code == 0, wider.output
    assert load_config(ETTH_CONFIG, environ={}).training.model == "nlinear"
