"""Optuna tuning: tuned values reach the model, pruning, shared studies in PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from skewless.cli import app
from skewless.core.errors import ConfigError
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
