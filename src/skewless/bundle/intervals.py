"""Prediction intervals by split conformal prediction on backtest residuals.

For each horizon step and target, the interval at level ``p`` is the point forecast plus and
minus the ``ceil((n + 1) p) / n`` empirical quantile of the absolute backtest errors at that
step: with exchangeable errors it covers the truth with probability at least ``p`` (when
``(n + 1) p > n``, too few errors for that guarantee, the largest error is used).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ConformalIntervals:
    levels: tuple[float, ...]
    half_widths: np.ndarray  # (levels, horizon, targets)

    @classmethod
    def calibrate(cls, errors: np.ndarray, levels: tuple[float, ...]) -> ConformalIntervals:
        """From (windows, horizon, targets) absolute errors; missing ones (NaN) are ignored."""
        errors = np.sort(errors, axis=0)  # missing (NaN) sort last
        count = np.sum(np.isfinite(errors), axis=0)  # (horizon, targets)
        if np.any(count == 0):
            raise ValueError("no backtest error to calibrate the intervals with")
        widths = []
        for level in levels:
            # The ceil((n+1)p)-th smallest error; beyond n (tiny n), the largest one.
            rank = np.minimum(np.ceil((count + 1) * level).astype(int), count) - 1
            widths.append(np.take_along_axis(errors, rank[None], axis=0)[0])
        return cls(tuple(levels), np.stack(widths))

    def bounds(self, point: np.ndarray) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        """Per level, (lower, upper) around ``point`` (windows, horizon, targets)."""
        return {
            level: (point - width[None], point + width[None])
            for level, width in zip(self.levels, self.half_widths, strict=True)
        }

    def coverage(self, errors: np.ndarray) -> dict[float, float]:
        """Share of the finite absolute errors (windows, horizon, targets) that fall inside
        each level's interval."""
        known = np.isfinite(errors)
        return {
            level: float(np.mean((errors <= width[None])[known]))
            for level, width in zip(self.levels, self.half_widths, strict=True)
        }
