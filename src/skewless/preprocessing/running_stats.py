"""Column statistics gathered batch by batch, equal to computing them on all rows at once.

Means, standard deviations, minima and maxima merge exactly (Chan et al.'s pairwise update for
the variance). Medians and quartiles do not merge; they come from a uniform sample of at most
``SAMPLE_ROWS`` rows (bottom-k by random key, so batches merge), which is every row, and so the
exact answer, for any history up to that size.
"""

from __future__ import annotations

import numpy as np

SAMPLE_ROWS = 1_000_000


class Moments:
    """NaN-ignoring count, mean, sum of squared deviations, minimum and maximum per column."""

    def __init__(self, columns: int) -> None:
        self.count = np.zeros(columns)
        self.mean = np.zeros(columns)
        self.squares = np.zeros(columns)
        self.low = np.full(columns, np.inf)
        self.high = np.full(columns, -np.inf)

    def add(self, values: np.ndarray) -> None:
        finite = ~np.isnan(values)
        count = finite.sum(axis=0).astype(np.float64)
        seen = count > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(seen, np.nansum(values, axis=0) / count, 0.0)
        squares = np.nansum((values - mean) ** 2, axis=0)
        total = self.count + count
        delta = mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean = np.where(total > 0, self.mean + delta * count / total, 0.0)
            self.squares = np.where(
                total > 0, self.squares + squares + delta**2 * self.count * count / total, 0.0
            )
        self.count = total
        if seen.any():
            self.low = np.fmin(self.low, np.nanmin(np.where(finite, values, np.inf), axis=0))
            self.high = np.fmax(self.high, np.nanmax(np.where(finite, values, -np.inf), axis=0))

    def means(self) -> np.ndarray:
        return np.where(self.count > 0, self.mean, np.nan)

    def stds(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, np.sqrt(self.squares / self.count), np.nan)

    def minima(self) -> np.ndarray:
        return np.where(self.count > 0, self.low, np.nan)

    def maxima(self) -> np.ndarray:
        return np.where(self.count > 0, self.high, np.nan)


class RowSample:
    """A uniform sample of at most ``size`` rows, mergeable batch by batch (bottom-k keys)."""

    def __init__(self, columns: int, size: int = SAMPLE_ROWS, seed: int = 0) -> None:
        self.size = size
        self.keys = np.empty(0)
        self.rows = np.empty((0, columns))
        self._random = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        keys = np.concatenate([self.keys, self._random.random(len(values))])
        rows = np.concatenate([self.rows, values])
        if len(keys) > self.size:
            kept = np.argpartition(keys, self.size - 1)[: self.size]
            keys, rows = keys[kept], rows[kept]
        self.keys, self.rows = keys, rows
