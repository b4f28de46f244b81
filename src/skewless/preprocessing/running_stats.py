"""Column statistics gathered batch by batch, equal to computing them on all rows at once.

Means, standard deviations, minima and maxima merge exactly (Chan et al.'s pairwise update for
the variance). Medians and quartiles do not merge; they come from a uniform sample of at most
``SAMPLE_ROWS`` rows (bottom-k by random key, so batches merge), which is every row, and so the
exact answer, for any history up to that size.
"""

from __future__ import annotations

import zlib
from typing import Any

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
        self.merge(Moments.of(values))

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        moments = cls(values.shape[1])
        finite = ~np.isnan(values)
        moments.count = finite.sum(axis=0).astype(np.float64)
        seen = moments.count > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            moments.mean = np.where(seen, np.nansum(values, axis=0) / moments.count, 0.0)
        moments.squares = np.nansum((values - moments.mean) ** 2, axis=0)
        if seen.any():
            moments.low = np.min(np.where(finite, values, np.inf), axis=0)
            moments.high = np.max(np.where(finite, values, -np.inf), axis=0)
        return moments

    def merge(self, other: Moments) -> None:
        """Add ``other``'s rows (Chan et al.'s pairwise update)."""
        total = self.count + other.count
        delta = other.mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean = np.where(total > 0, self.mean + delta * other.count / total, 0.0)
            self.squares = np.where(
                total > 0,
                self.squares + other.squares + delta**2 * self.count * other.count / total,
                0.0,
            )
        self.count = total
        self.low = np.fmin(self.low, other.low)
        self.high = np.fmax(self.high, other.high)

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

    def __init__(self, columns: int, size: int = SAMPLE_ROWS, seed: int | list[int] = 0) -> None:
        self.size = size
        self.keys = np.empty(0)
        self.rows = np.empty((0, columns))
        self._random = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        self._keep(self._random.random(len(values)), values)

    def merge(self, other: RowSample) -> None:
        """Add ``other``'s sample (rows after this one's, while both are whole)."""
        self._keep(other.keys, other.rows)

    def _keep(self, keys: np.ndarray, rows: np.ndarray) -> None:
        keys = np.concatenate([self.keys, keys])
        rows = np.concatenate([self.rows, rows])
        if len(keys) > self.size:
            kept = np.argpartition(keys, self.size - 1)[: self.size]
            keys, rows = keys[kept], rows[kept]
        self.keys, self.rows = keys, rows


def batch_seed(entities: Any) -> list[int]:
    """A batch's sample seed from its first entity, so a sample does not depend on where the
    batch ran (Ray or here) or in which order batches finished."""
    first = str(entities.iloc[0]) if len(entities) else ""
    return [zlib.crc32(first.encode())]
