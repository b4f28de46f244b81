"""The hybrid forecaster: lookbacks, sharing and penalty chosen on validation, residual trees,
batched fits, parameter checks, and `skewless train` with it through to a served forecast."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from skewless.cli import app
from skewless.compute.batches import InMemory
from skewless.core.errors import ConfigError
from skewless.core.schema import EVENT_TS
from skewless.models.factory import create_model
from skewless.models.hybrid import Hybrid, _averaged_mse, _Candidate
from skewless.models.nlinear import NLinear
from skewless.models.normal_equations import normal_equations, ridge_path, solve_ridge
from skewless.preprocessing.windows import WindowBatch, cut_windows
from skewless.training.tuning import trial_config
from tests.conftest import ETTH_CONFIG, VARIABLES, etth_config, raw_rows
from tests.test_models import series

LOOKBACK, HORIZON = 48, 12


def split(rows: int = 900, channels: int = 3) -> tuple:
    data = series(rows, channels)
    cut = int(rows * 0.7)
    return (
        data[:cut],
        data[cut - LOOKBACK :],
        cut_windows(data[:cut], LOOKBACK, HORIZON),
        cut_windows(data[cut - LOOKBACK :], LOOKBACK, HORIZON),
    )


def batches(rows: np.ndarray, parts: int) -> InMemory[WindowBatch]:
    """The windows of ``rows`` as ``parts`` batches of consecutive starts."""
    starts = np.arange(len(rows) - LOOKBACK - HORIZON + 1)
    return InMemory(
        *(
            WindowBatch(rows, chunk, LOOKBACK, HORIZON, rows.shape[1])
            for chunk in np.array_split(starts, parts)
        )
    )


def test_fit_and_predict_shapes_with_and_without_trees() -> None:
    _, _, train, val = split()
    for rounds in (0, 20):
        model = Hybrid(HORIZON, (12, 24, 48), top=2, boost_rounds=rounds, boost_lags=8)
        model.fit(train.inputs, train.targets, val.inputs, val.targets)
        predicted = model.predict(val.inputs)
        assert predicted.shape == val.targets.shape and predicted.dtype == val.inputs.dtype
        assert len(model.maps_) == 2 and {m.lookback for m in model.maps_} <= {12, 24, 48}
    assert model.trees_.rounds <= 20


def test_one_lookback_shared_unpenalised_is_nlinear() -> None:
    _, _, train, val = split()
    mine = Hybrid(HORIZON, (LOOKBACK,), individual=False, alphas=(1e-3,), refit=False)
    theirs = NLinear(HORIZON, alphas=(1e-3,))
    for model in (mine, theirs):
        model.fit(train.inputs, train.targets, val.inputs, val.targets)
    np.testing.assert_allclose(mine.predict(val.inputs), theirs.predict(val.inputs), rtol=1e-5)


def test_the_best_lookback_on_validation_is_kept_first() -> None:
    _, _, train, val = split()
    model = Hybrid(HORIZON, lookbacks=(4, 24, 48), top=3, refit=False).fit(
        train.inputs, train.targets, val.inputs, val.targets
    )
    scores = [m.validation_mse for m in model.maps_]
    assert scores == sorted(scores)
    for kept in model.maps_:  # each score is that map's own validation MSE
        alone = Hybrid(
            HORIZON,
            lookbacks=(kept.lookback,),
            individual=kept.weight.shape[0] > 1,
            alphas=(kept.alpha,),
            refit=False,
        ).fit(train.inputs, train.targets, val.inputs, val.targets)
        error = np.mean((alone.predict(val.inputs).astype(np.float64) - val.targets) ** 2)
        assert kept.validation_mse == pytest.approx(error, rel=1e-4)


def test_auto_top_averages_as_many_maps_as_forecast_validation_best() -> None:
    """The count is chosen on the validation MSE of the averaged forecast, computed from the
    equations (maps of different lookbacks and sharing), as the windows would give it."""
    _, _, train, val = split()
    params = {"lookbacks": (4, 12, 24, 48), "individual": None, "refit": False}
    every = Hybrid(HORIZON, top=4, **params).fit(
        train.inputs, train.targets, val.inputs, val.targets
    )
    forecasts = [m.predict(val.inputs) for m in every.maps_]
    averaged = [
        np.mean((np.mean(forecasts[:count], axis=0) - val.targets) ** 2) for count in (1, 2, 3, 4)
    ]
    auto = Hybrid(HORIZON, top="auto", **params).fit(
        train.inputs, train.targets, val.inputs, val.targets
    )
    assert len(auto.maps_) == 1 + int(np.argmin(averaged))
    assert [m.lookback for m in auto.maps_] == [m.lookback for m in every.maps_[: len(auto.maps_)]]
    val_equations = {
        L: normal_equations(val.inputs[:, -L:], val.targets, individual=True)
        for L in (4, 12, 24, 48)
    }
    candidates = [
        _Candidate(m.validation_mse, m.lookback, m.weight.shape[0] > 1, m.alpha, m.weight, m.bias)
        for m in every.maps_
    ]
    for count, direct in zip((1, 2, 3, 4), averaged, strict=True):
        assert _averaged_mse(candidates[:count], val_equations) == pytest.approx(direct, rel=1e-4)


def test_a_shorter_lookback_learns_from_every_training_window_of_its_length() -> None:
    train_rows, _, train, _ = split()
    mine = Hybrid(HORIZON, (24,), alphas=(1e-3,), refit=False).fit(train.inputs, train.targets)
    shorter = cut_windows(train_rows, 24, HORIZON)  # 24 more windows than the 48-step ones
    theirs = NLinear(HORIZON, alphas=(1e-3,)).fit(shorter.inputs, shorter.targets)
    np.testing.assert_allclose(mine.maps_[0].weight, theirs.weight_, rtol=1e-9, atol=1e-12)


def test_refit_solves_on_training_and_validation_windows() -> None:
    _, _, train, val = split()
    refitted = Hybrid(HORIZON, lookbacks=(LOOKBACK,), individual=False, refit=True)
    refitted.fit(train.inputs, train.targets, val.inputs, val.targets)
    both = np.concatenate([train.inputs, val.inputs]), np.concatenate([train.targets, val.targets])
    alpha = refitted.maps_[0].alpha
    reference = Hybrid(HORIZON, lookbacks=(LOOKBACK,), individual=False, alphas=(alpha,))
    reference.fit(*both)  # windows that are not one series: float32 products
    np.testing.assert_allclose(
        refitted.predict(val.inputs), reference.predict(val.inputs), rtol=1e-4, atol=1e-4
    )


def test_batched_fit_equals_the_fit_on_all_windows() -> None:
    train_rows, val_rows, train, val = split()
    params = {"lookbacks": (12, 24, 48), "top": 3, "boost_rounds": 15, "boost_lags": 8}
    whole = Hybrid(HORIZON, **params).fit(train.inputs, train.targets, val.inputs, val.targets)
    # One batch each (batches are whole entities, so never share rows).
    batched = Hybrid(HORIZON, **params).fit_batches(batches(train_rows, 1), batches(val_rows, 1))
    for a, b in zip(whole.maps_, batched.maps_, strict=True):
        assert (a.lookback, a.alpha) == (b.lookback, b.alpha)
        np.testing.assert_allclose(a.weight, b.weight, rtol=1e-9, atol=1e-12)
    # The trees see the same rows (a sample as large as every window keeps them all), in
    # another order: their forecasts agree to the trees' own float32 precision.
    np.testing.assert_allclose(
        whole.predict(val.inputs), batched.predict(val.inputs), rtol=1e-3, atol=1e-3
    )


def test_runs_of_one_batch_count_each_shorter_window_once() -> None:
    rows = series(300)
    starts = np.r_[0:100, 105:200]  # two runs whose shorter windows would overlap
    batch = WindowBatch(rows, starts, LOOKBACK, HORIZON, rows.shape[1])
    model = Hybrid(HORIZON, (24,), alphas=(1e-3,), refit=False).fit_batches(InMemory(batch))
    every = cut_windows(rows[: 199 + LOOKBACK + HORIZON], 24, HORIZON)
    reference = NLinear(HORIZON, alphas=(1e-3,)).fit(every.inputs, every.targets)
    np.testing.assert_allclose(model.maps_[0].weight, reference.weight_, rtol=1e-9, atol=1e-12)


def test_auto_refits_when_the_first_validation_half_helps_forecast_the_second() -> None:
    # The series changes its season after training: newer rows help, and auto sees it.
    rng = np.random.default_rng(1)
    t = np.arange(900)[:, None]
    period = np.where(t < 500, 24, 12)
    rows = (np.sin(2 * np.pi * t / period) + 0.1 * rng.normal(size=(900, 2))).astype(np.float32)
    train, val = cut_windows(rows[:630], 48, 12), cut_windows(rows[630 - 48 :], 48, 12)
    fits = {
        refit: Hybrid(12, (48,), refit=refit).fit(
            train.inputs, train.targets, val.inputs, val.targets
        )
        for refit in ("auto", False, True)
    }
    assert fits["auto"].maps_[0].refitted and not fits[False].maps_[0].refitted
    np.testing.assert_allclose(fits["auto"].maps_[0].weight, fits[True].maps_[0].weight)
    # The decision, made by hand: train (+ first half) -> second half.
    first, second = np.array_split(np.arange(len(val)), 2)
    alpha = fits["auto"].maps_[0].alpha
    errors = []
    for extra in (first[:0], first):
        inputs = np.concatenate([train.inputs, val.inputs[extra]])
        targets = np.concatenate([train.targets, val.targets[extra]])
        model = Hybrid(12, (48,), alphas=(alpha,), refit=False).fit(inputs, targets)
        errors.append(np.mean((model.predict(val.inputs[second]) - val.targets[second]) ** 2))
    assert errors[1] < errors[0]


def test_predicting_needs_the_lookback_it_was_fitted_on() -> None:
    _, _, train, val = split()
    model = Hybrid(HORIZON, lookbacks=(48,)).fit(train.inputs, train.targets)
    with pytest.raises(ValueError, match="fitted on 48"):
        model.predict(val.inputs[:, -24:])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lookbacks": []}, "lookbacks must be"),
        ({"lookbacks": [0, 24]}, "lookbacks must be"),
        ({"alphas": [-1.0]}, "alphas must be"),
        ({"top": 0}, "top must be at least 1 or auto"),
        ({"individual": "yes"}, "individual must be true or false or null"),
        ({"refit": "maybe"}, "refit must be true, false or auto"),
        ({"boost_rounds": -1}, "boost_rounds must be at least 0"),
        ({"learning_rate": 0}, r"learning_rate must be in \(0, 1\]"),
        ({"n_jobs": 0}, "n_jobs must be at least 1 or null"),
        ({"depth": 3}, "not parameters of 'hybrid'"),
    ],
)
def test_bad_parameters_are_refused_by_name(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_model("hybrid", HORIZON, params)


def test_a_tuning_trial_reaches_the_hybrid_through_its_config() -> None:
    config = etth_config("training.model=hybrid", "training.params={lookbacks: [96, 336]}")
    trial = trial_config(config, {"params.top": 1, "params.refit": True})
    training = trial.training
    model = create_model(training.model, training.horizon, training.params)
    assert isinstance(model, Hybrid)
    assert (model.lookbacks, model.top, model.refit) == ([96, 336], 1, True)


@pytest.mark.slow
def test_cli_trains_the_hybrid_and_the_registered_version_forecasts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path / "home"))
    raw = pd.concat([raw_rows(1, "2020-01-01", 400), raw_rows(2, "2020-01-01", 400, seed=3)])
    raw.to_csv(tmp_path / "history.csv", index=False)
    trained = CliRunner().invoke(
        app,
        [
            "train",
            str(ETTH_CONFIG),
            "--csv",
            str(tmp_path / "history.csv"),
            *("--set", "training.lookback=48", "--set", "training.horizon=6"),
            *("--set", "backtest.test_periods=24", "--set", "backtest.folds=2"),
            *("--set", "training.model=hybrid"),
            *("--set", "training.params={lookbacks: [12, 24, 48], boost_rounds: 10}"),
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "registered etth_forecaster version 1" in trained.output
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/etth_forecaster/1")
    rows = raw.tail(48).astype(dict.fromkeys(VARIABLES, np.float32))  # entity 2, as ingested
    rows[EVENT_TS] = pd.to_datetime(rows.pop("date"), utc=True)
    forecast = served.predict(rows)
    assert len(forecast) == 6 and np.isfinite(forecast["forecast"]).all()
    assert (forecast["lower_80"] <= forecast["forecast"]).all()


def test_the_ridge_path_solves_as_each_penalty_alone() -> None:
    _, _, train, _ = split()
    for individual in (False, True):
        equations = normal_equations(train.inputs, train.targets, individual)
        alphas = (0.0, 1e-4, 1.0)
        for alpha, (weight, bias) in zip(alphas, ridge_path(equations, alphas), strict=True):
            expected_weight, expected_bias = solve_ridge(equations, alpha)
            np.testing.assert_allclose(weight, expected_weight, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(bias, expected_bias, rtol=1e-6, atol=1e-9)
