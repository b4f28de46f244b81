"""Adaptive conformal inference: nominal coverage when errors keep their size, recovered
coverage when they grow, and feedback only from steps already observed."""

from __future__ import annotations

import numpy as np
import pytest

from skewless.bundle.intervals import AdaptiveConformal


def scores(windows: int, horizon: int, scale: float, seed: int) -> np.ndarray:
    """Absolute errors in spread units, (windows, horizon, 1)."""
    rng = np.random.default_rng(seed)
    return np.abs(rng.normal(0, scale, (windows, horizon, 1)))


@pytest.mark.parametrize("level", [0.8, 0.95])
def test_errors_of_a_steady_size_are_covered_at_the_nominal_level(level: float) -> None:
    covered, widths = AdaptiveConformal().run(
        scores(2000, 4, 1.0, 0), scores(6000, 4, 1.0, 1), level
    )
    assert covered.mean() == pytest.approx(level, abs=0.01)
    split = np.quantile(scores(2000, 4, 1.0, 0), level, axis=0)
    assert widths.mean() == pytest.approx(float(split.mean()), rel=0.05)


def test_errors_that_grow_are_covered_again_by_wider_intervals() -> None:
    calibration, drifted = scores(2000, 4, 1.0, 0), scores(6000, 4, 2.0, 1)
    split_width = np.quantile(calibration, 0.8, axis=0)
    assert (drifted <= split_width).mean() < 0.5  # split conformal alone misses badly
    covered, widths = AdaptiveConformal().run(calibration, drifted, 0.8)
    assert covered.mean() == pytest.approx(0.8, abs=0.03)
    assert widths[-1000:].mean() > 1.8 * split_width.mean()


def test_a_step_learns_only_from_windows_whose_actual_is_known() -> None:
    """Window t learns step h's miss from window t - 1 - h: with every score far outside,
    step 0 widens from window 1 on, step 2 only from window 3 on."""
    calibration = scores(500, 3, 1.0, 0)
    far = np.full((6, 3, 1), 1e6)
    _, widths = AdaptiveConformal(gamma=0.05).run(calibration, far, 0.8)
    first = widths[0, :, 0]
    assert widths[1, 0, 0] > first[0] and widths[1, 2, 0] == first[2]
    assert widths[3, 2, 0] > first[2]
