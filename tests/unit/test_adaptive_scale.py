"""Adaptive interval scale: nominal coverage when errors keep their size, recovered coverage
when they grow, and feedback only from steps already observed."""

from __future__ import annotations

import numpy as np
import pytest

from skewless.bundle.intervals import AdaptiveScale


def scores(windows: int, horizon: int, scale: float, seed: int) -> np.ndarray:
    """Absolute errors in spread units, (windows, horizon, 1)."""
    rng = np.random.default_rng(seed)
    return np.abs(rng.normal(0, scale, (windows, horizon, 1)))


def calibrated(level: float) -> np.ndarray:
    """(horizon, 1) split conformal half-widths of 2,000 windows of unit errors."""
    return np.quantile(scores(2000, 4, 1.0, 0), level, axis=0)


@pytest.mark.parametrize("level", [0.8, 0.95])
def test_errors_of_a_steady_size_are_covered_at_the_nominal_level(level: float) -> None:
    covered, widths = AdaptiveScale().run(calibrated(level), scores(6000, 4, 1.0, 1), level)
    assert covered.mean() == pytest.approx(level, abs=0.01)
    assert widths.mean() == pytest.approx(float(calibrated(level).mean()), rel=0.05)


def test_errors_that_grow_are_covered_again_by_wider_intervals() -> None:
    split_width, drifted = calibrated(0.8), scores(6000, 4, 2.0, 1)
    assert (drifted <= split_width).mean() < 0.5  # split conformal alone misses badly
    covered, widths = AdaptiveScale().run(split_width, drifted, 0.8)
    assert covered.mean() == pytest.approx(0.8, abs=0.03)
    assert widths[-1000:].mean() > 1.8 * split_width.mean()  # beyond any calibration error


def test_a_window_learns_only_from_actuals_known_before_it() -> None:
    """Window t hears of step h of window t - 1 - h: errors far outside from window 5 on
    narrow nothing before window 6, and widen every step from window 6 on (one factor)."""
    errors = np.zeros((9, 3, 1))
    errors[5:] = 1e6
    _, widths = AdaptiveScale(gamma=0.05).run(np.ones((3, 1)), errors, 0.8)
    assert np.all(widths[0] == 1.0)
    assert np.all(np.diff(widths[:6, :, 0], axis=0) < 0)  # all covered: narrower each window
    assert np.all(widths[6] > widths[5]) and np.all(widths[8] > widths[6])


def test_unknown_errors_move_nothing() -> None:
    _, widths = AdaptiveScale().run(np.ones((3, 1)), np.full((5, 3, 1), np.nan), 0.8)
    assert np.all(widths == 1.0)
