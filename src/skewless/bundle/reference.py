"""Reference statistics of the training data, kept in the bundle for drift monitoring."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

QUANTILES = tuple(np.linspace(0, 1, 11).round(2))  # decile edges: the bins drift scores use


@dataclass(frozen=True)
class VariableReference:
    count: int
    missing: int
    mean: float
    std: float
    quantiles: tuple[float, ...]  # at QUANTILES


def reference_statistics(rows: pd.DataFrame, variables: list[str]) -> dict[str, VariableReference]:
    """Per raw variable of the training rows: count, missing values, mean, std and deciles."""
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
