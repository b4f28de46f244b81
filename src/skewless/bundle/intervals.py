"""Prediction intervals by split conformal prediction on out-of-sample errors, scaled per window.

Each calibration error is divided by its window's spread: the standard deviation of the target
over the window's lookback, in original units. For each horizon step and target, the half-width
at level ``p`` is the ``ceil((n + 1) p) / n`` empirical quantile of the scaled errors of every
window (with exchangeable scaled errors it covers with probability at least ``p``; when
``(n + 1) p > n``, too few errors for that guarantee, the largest is used), and a forecast's
interval is its point forecast plus and minus that half-width times its own window's spread.
A window without spread (a flat lookback) gets the mean spread of the calibration windows.

Why the window's spread: a forecast's error grows with how much its series moves, so two
entities at levels 0.01 and 100 get widths in proportion, an entity never seen in training
brings its own scale, and a series in a calm or a wild stretch gets a narrower or wider band
than its history's average (the errors drift with the series; a scale fixed per entity does
not). Measured against one width for all and against each entity's mean error as its scale
(docs/registry.md, docs/ltsf.md): nearer the nominal coverage on the shipped config (overall and
per entity) and in 14 of the 16 ETTh1 / ETTh2 cells, narrower where one width over-covered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def lookback_spread(inputs: np.ndarray) -> np.ndarray:
    """(windows, channels): the standard deviation of each channel over each window's lookback
    of ``inputs`` (windows, lookback, channels), without copying the windows."""
    mean = inputs.mean(axis=1, dtype=np.float64)
    squares = np.einsum("wlc,wlc->wc", inputs, inputs, dtype=np.float64) / inputs.shape[1]
    return np.sqrt(np.maximum(squares - mean**2, 0.0))


@dataclass(frozen=True)
class ConformalIntervals:
    levels: tuple[float, ...]
    half_widths: np.ndarray  # (levels, horizon, targets), in units of each window's spread
    # (targets,) what a window without spread is scaled by. None: half-widths in original
    # units, one width for every window (bundles made before window spreads).
    flat_spread: np.ndarray | None = None

    @classmethod
    def calibrate(
        cls, errors: np.ndarray, levels: tuple[float, ...], spreads: np.ndarray | None = None
    ) -> ConformalIntervals:
        """From (windows, horizon, targets) absolute errors and, to scale them, each window's
        (windows, targets) spread (see :func:`lookback_spread`); missing errors (NaN) are
        ignored."""
        flat = None if spreads is None else _mean_spread(spreads)
        ranked = _in_spread_units(errors, spreads, flat)
        ranked.sort(axis=0)  # missing (NaN) sort last
        count = np.sum(np.isfinite(ranked), axis=0)  # (horizon, targets)
        if np.any(count == 0):
            raise ValueError("no backtest error to calibrate the intervals with")
        widths = []
        for level in levels:
            # The ceil((n+1)p)-th smallest error; beyond n (tiny n), the largest one.
            rank = np.minimum(np.ceil((count + 1) * level).astype(int), count) - 1
            widths.append(np.take_along_axis(ranked, rank[None], axis=0)[0])
        return cls(tuple(levels), np.stack(widths), flat)

    def bounds(
        self, point: np.ndarray, spreads: np.ndarray | None = None
    ) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        """Per level, (lower, upper) around ``point`` (windows, horizon, targets) of windows
        with ``spreads`` (windows, targets; needed unless the widths are in original units)."""
        scale = self._scale(spreads)[:, None, :]
        return {
            level: (point - width[None] * scale, point + width[None] * scale)
            for level, width in zip(self.levels, self.half_widths, strict=True)
        }

    def mean_widths(self, spreads: np.ndarray | None = None) -> dict[float, float]:
        """Per level, the mean width (upper minus lower) of the intervals of windows with
        ``spreads``, over every window, step and target, in original units."""
        scale = self._scale(spreads)
        return {
            level: float(2 * np.mean(width[None] * scale[:, None, :]))
            for level, width in zip(self.levels, self.half_widths, strict=True)
        }

    def coverage(self, errors: np.ndarray, spreads: np.ndarray | None = None) -> dict[float, float]:
        """Share of the finite absolute errors (windows, horizon, targets) of windows with
        ``spreads`` that fall inside each level's interval."""
        inside, known = self._inside(errors, spreads)
        return dict(zip(self.levels, (inside.sum(axis=1) / known.sum()).tolist(), strict=True))

    def coverage_by_entity(
        self, errors: np.ndarray, entities: np.ndarray, spreads: np.ndarray | None = None
    ) -> pd.DataFrame:
        """:meth:`coverage` of each entity's windows: one row per entity, one column per level."""
        inside, known = self._inside(errors, spreads)
        covered = pd.DataFrame(inside.T, columns=list(self.levels)).groupby(entities).sum()
        return covered.div(pd.Series(known).groupby(entities).sum(), axis=0).rename_axis("entity")

    def in_spread_units(self, errors: np.ndarray, spreads: np.ndarray | None) -> np.ndarray:
        """Absolute ``errors`` (windows, horizon, targets) in the units of the half-widths:
        divided by their windows' ``spreads``."""
        return _in_spread_units(errors, self._checked(spreads), self.flat_spread)

    def window_scale(self, spreads: np.ndarray | None) -> np.ndarray:
        """(windows, targets) what each window's half-widths are multiplied by."""
        return self._scale(spreads)

    def _inside(
        self, errors: np.ndarray, spreads: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per level and window, how many finite errors fall inside; per window, how many are
        finite."""
        scaled = self.in_spread_units(errors, spreads)
        inside = np.stack(
            [np.sum(scaled <= width[None], axis=(1, 2)) for width in self.half_widths]
        )
        return inside, np.sum(np.isfinite(scaled), axis=(1, 2))

    def _scale(self, spreads: np.ndarray | None) -> np.ndarray:
        """(windows, targets), or (1, targets) of ones when the widths are in original units."""
        return _window_scale(self._checked(spreads), self.flat_spread, self.half_widths.shape[-1])

    def _checked(self, spreads: np.ndarray | None) -> np.ndarray | None:
        """The spreads these intervals need: none for widths in original units."""
        if self.flat_spread is None:
            return None
        if spreads is None:
            raise ValueError("intervals scaled per window need each window's spread")
        return spreads


def _in_spread_units(
    errors: np.ndarray, spreads: np.ndarray | None, flat: np.ndarray | None
) -> np.ndarray:
    """A new array of ``errors`` divided by their window's scale, in the errors' precision."""
    scale = _window_scale(spreads, flat, errors.shape[-1])
    return errors / scale[:, None, :].astype(errors.dtype)


def _window_scale(spreads: np.ndarray | None, flat: np.ndarray | None, targets: int) -> np.ndarray:
    """Each window's spread, ``flat`` where it has none; (1, targets) of ones without spreads."""
    if spreads is None or flat is None:
        return np.ones((1, targets))
    return np.where(_has_spread(spreads), spreads, flat)


def _mean_spread(spreads: np.ndarray) -> np.ndarray:
    """(targets,) the mean of the windows' spreads that exist (1 where none does)."""
    usable = _has_spread(spreads)
    total, count = np.where(usable, spreads, 0.0).sum(axis=0), usable.sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), 1.0)


def _has_spread(spreads: np.ndarray) -> np.ndarray:
    """A flat lookback has no spread of its own: a zero width would never cover."""
    return np.isfinite(spreads) & (spreads > 0)


@dataclass(frozen=True)
class AdaptiveScale:
    """Conformal half-widths times one factor that follows the misses as the actuals arrive,
    so coverage holds when the errors drift (online quantile tracking, as in conformal PID
    control, Angelopoulos, Candès & Tibshirani 2023, on errors in units of the calibrated
    half-widths).

    Windows are forecast in time order. Before each forecast, every step whose actual value is
    known by then (step h of the window h + 1 forecasts back) adds its hit or miss, and the
    factor moves by ``log factor += gamma * (share missed - nominal miss rate)``. One factor for
    every step and target: step h's own feedback is h windows late (720 windows at the longest
    horizon), while the short steps report a drift at once; per-step adaptive conformal
    inference (Gibbs & Candès, 2021), which is also capped by the largest calibration error,
    fell short at ETTh2 H = 720 for wider intervals elsewhere (docs/ltsf.md). ``gamma`` trades
    how fast it follows a drift against how much the widths wobble: 0.02 kept all 32 cells of
    the paper table within 2 points of nominal; 0.01 and 0.005 fell short at ETTh2 H = 720.
    """

    gamma: float = 0.02

    def run(
        self, half_widths: np.ndarray, scores: np.ndarray, level: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(covered, half_widths), each (windows, horizon, targets), for the ``scores`` (absolute
        errors, windows in time order, NaN where unknown) of one ``level``, from the calibrated
        ``half_widths`` (horizon, targets) of that level, in the same units as the scores."""
        windows, horizon, _ = scores.shape
        miss_rate = 1.0 - level
        log_factor = 0.0
        covered = np.zeros(scores.shape, dtype=bool)
        widths = np.zeros(scores.shape)
        steps = np.arange(horizon)
        for window in range(windows):
            known = window - 1 - steps  # the window whose step h is observed by now
            fed = known >= 0
            observed = scores[known[fed], steps[fed]]
            finite = np.isfinite(observed)
            if finite.any():
                missed = observed[finite] > widths[known[fed], steps[fed]][finite]
                log_factor += self.gamma * (missed.mean() - miss_rate)
            widths[window] = half_widths * np.exp(log_factor)
            covered[window] = scores[window] <= widths[window]
        return covered, widths
