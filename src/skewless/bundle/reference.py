"""Reference statistics of the training data, kept in the bundle for drift monitoring."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Percentiles: the CDF the KS statistic compares with; PSI bins on the deciles among them.
QUANTILES = tuple(np.linspace(0, 1, 101).round(2))
DECILES = tuple(np.linspace(0, 1, 11).round(2))


@dataclass(frozen=True)
class VariableReference:
    count: int
    missing: int
    mean: float
    std: float
    quantiles: tuple[float, ...]  # at QUANTILES (bundles before percentiles: at DECILES)

    def cdf(self, points: np.ndarray) -> np.ndarray:
        """The training CDF at ``points``: linear between distinct percentiles, with a step
        where percentiles tie (a value that holds many of them is a point mass)."""
        values = np.asarray(self.quantiles, dtype=np.float64)
        levels = np.linspace(0.0, 1.0, len(values))
        edges, first = np.unique(values, return_index=True)
        last = len(values) - 1 - np.unique(values[::-1], return_index=True)[1]
        # Each distinct value twice: the CDF just below it, then at it.
        knots = np.repeat(edges, 2)
        steps = np.column_stack([levels[first], levels[last]]).ravel()
        steps[0] = 0.0  # nothing lies below the training minimum
        return np.interp(points, knots, steps, left=0.0, right=1.0)

    def at(self, levels: tuple[float, ...]) -> np.ndarray:
        """The training quantiles at ``levels``, read off the stored ones."""
        stored = np.linspace(0.0, 1.0, len(self.quantiles))
        return np.interp(levels, stored, np.asarray(self.quantiles, dtype=np.float64))


def reference_statistics(rows: pd.DataFrame, variables: list[str]) -> dict[str, VariableReference]:
    """Per raw variable of the training rows: count, missing values, mean, std, percentiles."""
    stats = {}
    for name in variables:
        values = rows[name].to_numpy(np.float64)
        finite = values[np.isfinite(values)]
        stats[name] = VariableReference(
            count=len(values),
            missing=int(len(values) - len(finite)),
            mean=float(finite.mean()) if len(finite) else float("nan"),
            std=float(finite.std()) if len(finite) else float("nan"),
            quantiles=tuple(float(q) for q in np.quantile(finite, QUANTILES))
            if len(finite)
            else (),
        )
    return stats
