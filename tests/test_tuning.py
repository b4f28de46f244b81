"""Optuna tuning: tuned values reach the model, pruning, no configuration scored twice, shared
studies in PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from skewless.cli import app
from skewless.core.config import SkewlessConfig
from skewless.core.errors import ConfigError
from skewless.core.stores import tuning_storage
from skewless.training import tuning
from skewless.training.backtest import BacktestReport, backtest
from skewless.training.history import History
from skewless.training.pipeline import load_history
from skewless.training.tuning import trial_config, tune
from tests.conftest import ETTH_CONFIG, etth_config, raw_rows
from tests.services import POSTGRES_DSN

BASE = [
    "training.horizon=6",
    "training.lookback=24",
    "backtest.folds=2",
    "backtest.test_periods=24",
    "tuning.space={lookback: {type: int, low: 12, high: 48, step: 12}, "
    "params.individual: {type: categorical, choices: [true, false]}}",
]


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    folder = tmp_path_factory.mktemp("tune")
    raw = pd.concat([raw_rows(1, "2020-01-01", 500), raw_rows(2, "2020-01-01", 500, seed=7)])
    raw.to_csv(folder / "history.csv", index=False)
    return load_history(etth_config(), csv=folder / "history.csv")


@pytest.mark.slow
def test_every_tuned_value_reaches_the_model(rows: pd.DataFrame, tmp_path: Path) -> None:
    report = tune(etth_config(*BASE, "tuning.trials=5"), rows, tmp_path)
    completed = [t for t in report.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert completed
    for trial in completed:
        assert trial.user_attrs["model_params"]["individual"] == trial.params["params.individual"]
    best = report.study.best_params
    assert report.best_config.training.lookback == best["lookback"]
    assert report.refit.model.get_params()["individual"] == best["params.individual"]
    assert (tmp_path / "optuna.db").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("etth").experiment_id])
    trial_runs = [r for r in runs if (r.info.run_name or "").startswith("trial ")]
    parents = {r.data.tags.get("mlflow.parentRunId") for r in trial_runs}
    assert len(trial_runs) == 5 and len(parents) == 1  # every trial, nested under the study run
    assert {f"tuned.{k}" for k in report.study.trials[0].params} <= set(trial_runs[0].data.params)
    distinct = {str(t.params) for t in report.study.trials}  # 8 points: TPE samples, may repeat
    assert report.trials == 5 and report.backtests == len(distinct) and not report.exhausted


@pytest.mark.slow
def test_a_small_space_is_searched_once_each(
    rows: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = (
        "tuning.space={lookback: {type: int, low: 12, high: 24, step: 12}, "
        "params.individual: {type: categorical, choices: [true, false]}}"
    )
    config = etth_config(*BASE[:4], space, "tuning.trials=10")
    backtested: list[tuple[int, object]] = []

    def counted(candidate: SkewlessConfig, history: History, **kwargs: Any) -> BacktestReport:
        training = candidate.training
        backtested.append((training.lookback, training.params["individual"]))
        return backtest(candidate, history, **kwargs)

    monkeypatch.setattr(tuning, "backtest", counted)
    report = tune(config, rows, tmp_path)
    assert sorted(backtested) == [(12, False), (12, True), (24, False), (24, True)]
    assert (report.trials, report.backtests, report.space_size) == (4, 4, 4) and report.exhausted
    exhaustive = {
        (lookback, individual): backtest(
            trial_config(config, {"lookback": lookback, "params.individual": individual}), rows
        ).overall.overall["mse"]
        for lookback, individual in backtested
    }
    best = exhaustive[tuple(report.study.best_params.values())]  # points may tie
    assert best == pytest.approx(min(exhaustive.values()), rel=1e-9)
    assert report.best_value == pytest.approx(best, rel=1e-9)

    again = tune(config, rows, tmp_path)  # the stored study is already complete
    assert (again.trials, again.backtests) == (0, 0) and len(again.study.trials) == 4
    assert again.study.best_params == report.study.best_params


@pytest.mark.slow
def test_a_configuration_sampled_again_reuses_its_score(rows: pd.DataFrame, tmp_path: Path) -> None:
    config = etth_config(*BASE, "tuning.trials=2", "tuning.study_name=repeat")
    study = optuna.create_study(study_name="repeat", storage=tuning_storage(config, tmp_path))
    for _ in range(2):  # as if the sampler drew one point twice
        study.enqueue_trial({"lookback": 24, "params.individual": True})
    report = tune(config, rows, tmp_path)
    first, second = report.study.trials
    assert (report.trials, report.backtests) == (2, 1) and second.user_attrs["same_as"] == 0
    assert second.value == first.value and second.intermediate_values == first.intermediate_values


def test_bad_spaces_fail_before_any_trial(rows: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tuning.space is empty"):
        tune(etth_config("training.horizon=6", "tuning.space={}"), rows, tmp_path)
    with pytest.raises(ConfigError, match=r"\['depth'\] are not parameters of 'nlinear'"):
        tune(
            etth_config(*BASE[:4], "tuning.space={params.depth: {type: int, low: 1, high: 3}}"),
            rows,
            tmp_path,
        )
    with pytest.raises(ConfigError, match="needs low <= high"):
        etth_config("tuning.space={lookback: {type: int, low: 9, high: 3}}")
    assert trial_config(etth_config(), {"params.lags": 7}).training.params == {"lags": 7}


@pytest.mark.postgres
def test_workers_share_one_study_in_postgresql(rows: pd.DataFrame, tmp_path: Path) -> None:
    storage = POSTGRES_DSN.replace("postgresql://", "postgresql+psycopg://")
    name = f"shared-{uuid.uuid4().hex[:8]}"
    config = etth_config(
        *BASE, "tuning.trials=2", f"tuning.storage={storage}", f"tuning.study_name={name}"
    )
    try:
        tune(config, rows, tmp_path)  # worker one
        report = tune(config, rows, tmp_path)  # worker two joins the same study
        assert len(report.study.trials) == 4
    finally:
        optuna.delete_study(study_name=name, storage=storage)


@pytest.mark.slow
def test_cli_tune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path / "home"))
    raw = pd.concat([raw_rows(1, "2020-01-01", 300), raw_rows(2, "2020-01-01", 300, seed=7)])
    raw.to_csv(tmp_path / "history.csv", index=False)
    args = ["tune", str(ETTH_CONFIG), "--csv", str(tmp_path / "history.csv"), "--trials", "2"]
    for override in BASE:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "best mse" in result.output and "COMPLETE" in result.output
    assert "this run: 2 trials" in result.output
