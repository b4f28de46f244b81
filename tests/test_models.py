"""Forecasters: the contract, the naive baseline, NLinear's two solvers and XGBoost."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from skewless.core.errors import NotFittedError
from skewless.models.naive import NaiveForecaster
from skewless.models.nlinear import NLinear
from skewless.preprocessing.windows import cut_windows


def series(rows: int = 600, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Seasonal channels with noise: something a linear map can learn."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]
    phases = rng.uniform(0, 2 * np.pi, channels)
    return (np.sin(2 * np.pi * t / 24 + phases) + 0.1 * rng.normal(size=(rows, channels))).astype(
        np.float32
    )


def test_naive_repeats_the_last_value() -> None:
    windows = cut_windows(series(50), 8, 4)
    model = NaiveForecaster(4).fit(windows.inputs, windows.targets)
    predicted = model.predict(windows.inputs)
    assert predicted.shape == windows.targets.shape
    np.testing.assert_array_equal(predicted[:, 2, :], windows.inputs[:, -1, :])


def test_predict_before_fit_and_bad_shapes_are_explained() -> None:
    windows = cut_windows(series(50), 8, 4)
    with pytest.raises(NotFittedError, match="call fit first"):
        NLinear(4).predict(windows.inputs)
    with pytest.raises(ValueError, match="targets must be"):
        NLinear(5).fit(windows.inputs, windows.targets)
    with pytest.raises(ValueError, match="horizon must be at least 1"):
        NLinear(0)


def test_closed_form_reaches_the_least_squares_optimum() -> None:
    windows = cut_windows(series(), 24, 6)
    model = NLinear(6, alphas=(0.0,)).fit(windows.inputs, windows.targets)
    # Reference: one stacked float64 regression over every (window, channel) pair.
    last = windows.inputs[:, -1:, :]
    design = np.moveaxis(windows.inputs - last, 2, 1).reshape(-1, 24).astype(np.float64)
    design = np.hstack([design, np.ones((len(design), 1))])
    response = np.moveaxis(windows.targets - last, 2, 1).reshape(-1, 6).astype(np.float64)
    reference = np.linalg.lstsq(design, response, rcond=None)[0]
    optimum = np.mean((design @ reference - response) ** 2)
    achieved = np.mean((model.predict(windows.inputs) - windows.targets) ** 2)
    assert optimum <= achieved <= optimum * (1 + 1e-4)


def test_ridge_penalty_is_chosen_on_validation() -> None:
    data = series(900)
    train, val = cut_windows(data[:600], 48, 12), cut_windows(data[600:], 48, 12)
    model = NLinear(12, alphas=(0.0, 1e-2, 1e3)).fit(
        train.inputs, train.targets, val.inputs, val.targets
    )
    assert model.alpha_ in (0.0, 1e-2)  # an absurd penalty never wins
    errors = {
        a: np.mean(
            (
                NLinear(12, alphas=(a,)).fit(train.inputs, train.targets).predict(val.inputs)
                - val.targets
            )
            ** 2
        )
        for a in (0.0, 1e-2, 1e3)
    }
    assert model.alpha_ == min(errors, key=lambda a: errors[a])


def test_individual_fits_one_map_per_channel() -> None:
    windows = cut_windows(series(), 24, 6)
    model = NLinear(6, individual=True).fit(windows.inputs, windows.targets)
    assert model.weight_.shape == (3, 24, 6) and model.bias_.shape == (3, 6)
    assert model.predict(windows.inputs[:5]).shape == (5, 6, 3)


@pytest.mark.slow
def test_gradient_solver_learns_towards_the_closed_form() -> None:
    data = series(900)
    train, val = cut_windows(data[:600], 24, 6), cut_windows(data[600:], 24, 6)
    closed = NLinear(6).fit(train.inputs, train.targets, val.inputs, val.targets)
    trained = NLinear(6, solver="gradient", epochs=5, seed=1).fit(
        train.inputs, train.targets, val.inputs, val.targets
    )
    naive = NaiveForecaster(6).fit(train.inputs, train.targets)

    def mse(model) -> float:
        return float(np.mean((model.predict(val.inputs) - val.targets) ** 2))

    assert mse(closed) <= mse(trained) < mse(naive)
    again = NLinear(6, solver="gradient", epochs=5, seed=1).fit(
        train.inputs, train.targets, val.inputs, val.targets
    )
    np.testing.assert_array_equal(again.weight_, trained.weight_)  # seeded: reproducible


@pytest.mark.parametrize("individual", [False, True])
def test_lagged_product_path_equals_the_matrix_path(individual: bool) -> None:
    from skewless.models import normal_equations as ne

    windows = cut_windows(series(300, channels=4), 30, 10)
    fast = ne.normal_equations(windows.inputs, windows.targets, individual)
    slow = ne._from_windows(windows.inputs, windows.targets, individual)
    assert ne.as_series(windows.inputs, windows.targets) is not None
    for name in ("gram", "cross", "squares"):
        np.testing.assert_allclose(getattr(fast, name), getattr(slow, name), rtol=1e-5, atol=1e-3)
    assert fast.count == slow.count
    shuffled = windows.inputs[::-1].copy(), windows.targets[::-1].copy()
    assert ne.as_series(*shuffled) is None  # not stride-1 windows: the matrix path is used


@pytest.mark.slow
def test_xgboost_learns_from_covariates_and_stops_early() -> None:
    from skewless.models.xgboost import XGBoostForecaster

    rng = np.random.default_rng(0)
    driver = rng.normal(size=1200).astype(np.float32)
    target = np.roll(driver, 1) * 2 + 0.05 * rng.normal(size=1200).astype(np.float32)
    data = np.stack([target, driver], axis=1)  # channel 0: target, channel 1: covariate
    train, val = cut_windows(data[:900], 16, 1), cut_windows(data[900:], 16, 1)
    model = XGBoostForecaster(1, lags=8, covariate_lags=2, n_estimators=200, seed=0).fit(
        train.inputs, train.targets[:, :, :1], val.inputs, val.targets[:, :, :1]
    )
    predicted = model.predict(val.inputs)
    assert predicted.shape == (len(val), 1, 1)
    error = np.mean((predicted - val.targets[:, :, :1]) ** 2)
    naive = np.mean((val.inputs[:, -1:, :1] - val.targets[:, :, :1]) ** 2)
    assert error < 0.1 * naive  # only the covariate explains the target
    assert model.trees_.rounds in range(1, 201)  # early stopping may end before the last round
    with pytest.raises(ValueError, match="subsample must be in"):
        XGBoostForecaster(1, subsample=0).validate_params()


@pytest.mark.slow
def test_long_fits_report_progress_to_a_listener() -> None:
    from skewless.core.progress import listening
    from skewless.models.xgboost import XGBoostForecaster

    windows = cut_windows(series(300), 24, 6)
    seen: list[tuple[str, int, int]] = []
    with listening(lambda what, done, total: seen.append((what, done, total))):
        NLinear(6, solver="gradient", epochs=2).fit(windows.inputs, windows.targets)
        XGBoostForecaster(6, n_estimators=3).fit(windows.inputs, windows.targets)
    assert ("NLinear epochs", 2, 2) in seen and ("XGBoost rounds", 3, 3) in seen
    NLinear(6, solver="gradient", epochs=1).fit(windows.inputs, windows.targets)  # nobody listens
    assert len(seen) == 5


@pytest.mark.slow
def test_xgboost_compressed_horizon_is_as_accurate_as_one_output_per_step() -> None:
    """With 6 label components the trees predict 6 numbers per window, not 12 x 3."""
    from skewless.models.xgboost import XGBoostForecaster

    data = series(1200)
    train, val = cut_windows(data[:900], 48, 12), cut_windows(data[900:], 48, 12)

    def error(components: int | None) -> float:
        model = XGBoostForecaster(
            12, lags=24, n_estimators=60, learning_rate=0.15, horizon_components=components
        ).fit(train.inputs, train.targets, val.inputs, val.targets)
        assert (model.trees_.basis is None) == (components is None)
        return float(np.mean((model.predict(val.inputs) - val.targets) ** 2))

    compressed = error(6)
    naive = np.mean((val.inputs[:, -1:] - val.targets) ** 2)
    assert compressed < 0.5 * naive
    assert compressed < 1.05 * error(None)


def weekly_ili_like(rows: int = 966, channels: int = 7, seed: int = 0) -> np.ndarray:
    """Standardised weekly channels shaped like ILI: yearly seasons of random height, a trend."""
    rng = np.random.default_rng(seed)
    week = np.arange(rows)[:, None]
    heights = rng.uniform(1, 3, size=(rows // 52 + 1, channels)).repeat(52, axis=0)[:rows]
    season = heights * np.exp(-0.5 * (((week % 52) - 20) / 4) ** 2)
    values = season + week / rows + 0.1 * rng.normal(size=(rows, channels))
    return ((values - values.mean(0)) / values.std(0)).astype(np.float32)


@pytest.mark.slow
def test_xgboost_defaults_fit_ili_shaped_data() -> None:
    """The shape that ran for 27 minutes (issue 17): 7 targets, lookback 104, horizon 24."""
    from skewless.models.xgboost import XGBoostForecaster

    data = weekly_ili_like()
    train, val = cut_windows(data[:780], 104, 24), cut_windows(data[780 - 104 :], 104, 24)
    model = XGBoostForecaster(24).fit(train.inputs, train.targets, val.inputs, val.targets)
    assert model.trees_.basis is not None and model.trees_.basis.axes.shape == (8, 24 * 7)
    assert model.trees_.rounds in range(1, model.n_estimators + 1)
    assert model.trees_.booster.num_boosted_rounds() <= model.n_estimators
    error = np.mean((model.predict(val.inputs) - val.targets) ** 2)
    naive = np.mean((val.inputs[:, -1:] - val.targets) ** 2)
    assert error < 0.5 * naive


@pytest.mark.slow
def test_long_fits_log_progress_lines(caplog: pytest.LogCaptureFixture) -> None:
    """A batch job's log shows rounds and epochs as they happen, not only at the end."""
    from skewless.models.xgboost import XGBoostForecaster

    windows = cut_windows(series(300), 24, 6)
    with caplog.at_level(logging.INFO, logger="skewless.models"):
        XGBoostForecaster(6, n_estimators=100).fit(windows.inputs, windows.targets)
        NLinear(6, solver="gradient", epochs=2).fit(windows.inputs, windows.targets)
    lines = caplog.messages
    assert [line.split(" (")[0] for line in lines if line.startswith("XGBoost")] == [
        "XGBoost round 50/100",
        "XGBoost round 100/100",
    ]
    assert any(line.startswith("NLinear epoch 2/2") for line in lines)
    caplog.clear()
    train, val = cut_windows(series(300), 24, 6), cut_windows(series(200, seed=1), 24, 6)
    with caplog.at_level(logging.INFO, logger="skewless.models"):
        model = XGBoostForecaster(6, n_estimators=1000, early_stopping_rounds=5).fit(
            train.inputs, train.targets, val.inputs, val.targets
        )
    stopped, kept = model.trees_.booster.num_boosted_rounds(), model.trees_.rounds
    assert stopped < 1000
    assert f"XGBoost stopped early after round {stopped}/1000, keeping {kept} rounds" in (
        caplog.messages
    )
