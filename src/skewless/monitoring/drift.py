"""Drift of served inputs against the training data, per variable and per (entity, variable):
PSI and the KS statistic.

The bundle keeps each variable's training percentiles (``bundle/reference.py``), not the
training rows, so both statistics are measured against the distribution they describe: PSI over
the ten decile bins (a bin's expected share is its probability mass, 10% unless deciles tie), KS
against the CDF that runs linearly between the percentiles.

Per entity, the statistics compare an entity's served rows with its own training rows (the rows
the bundle's pooled reference was taken from), summarised the same way; the caller hands those
rows over a batch of entities at a time, so memory follows the batch, and only the table of
results (a row per entity and variable) is kept.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from skewless.bundle.reference import DECILES, VariableReference, reference_statistics
from skewless.monitoring.observations import ENTITY

_FLOOR = 1e-4  # share given to empty bins, so that log(actual / expected) stays finite
_COLUMNS = ["variable", "count", "mean", "training_mean", "psi", "ks"]
SHOWN = 20  # rows of the per-entity table the CLI and the report show, of entities x variables


def psi(reference: VariableReference, values: np.ndarray) -> float:
    """Population stability index of ``values`` over the training decile bins."""
    inner = np.unique(reference.at(DECILES)[1:-1])
    expected = np.diff(np.r_[0.0, reference.cdf(np.nextafter(inner, np.inf)), 1.0])
    counts = np.bincount(np.searchsorted(inner, values, side="left"), minlength=len(inner) + 1)
    actual = counts / max(len(values), 1)
    expected, actual = np.clip(expected, _FLOOR, None), np.clip(actual, _FLOOR, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks(reference: VariableReference, values: np.ndarray) -> float:
    """Largest distance between the empirical CDF of ``values`` and the training CDF, checked
    at and just below every served value and every training percentile."""
    ordered = np.sort(values)
    points = np.unique(np.r_[ordered, reference.quantiles])
    served_at = np.searchsorted(ordered, points, side="right") / len(ordered)
    served_below = np.searchsorted(ordered, points, side="left") / len(ordered)
    training_at = reference.cdf(np.nextafter(points, np.inf))
    training_below = reference.cdf(np.nextafter(points, -np.inf))
    return float(
        max(np.max(np.abs(served_at - training_at)), np.max(np.abs(served_below - training_below)))
    )


def drift_table(reference: dict[str, VariableReference], rows: pd.DataFrame) -> pd.DataFrame:
    """Per variable in both: served count and mean, training mean, PSI and KS."""
    return pd.DataFrame(_records(reference, rows), columns=_COLUMNS)


def entity_drift_table(
    training: Iterable[pd.DataFrame], rows: pd.DataFrame, key: str, variables: list[str]
) -> pd.DataFrame:
    """Per served entity and variable, what ``drift_table`` measures: the entity's served
    ``rows`` against statistics of its own ``training`` rows, which come a batch of entities at
    a time."""
    served = rows.groupby(key, sort=False).indices if len(rows) else {}  # positions, no copies
    records = [
        {ENTITY: entity, **record}
        for batch in training
        for entity, own in batch.groupby(key, sort=False)
        if entity in served
        for record in _records(reference_statistics(own, variables), rows.iloc[served[entity]])
    ]
    return pd.DataFrame(records, columns=[ENTITY, *_COLUMNS])


def _records(reference: dict[str, VariableReference], rows: pd.DataFrame) -> list[dict]:
    records = []
    for variable, stats in reference.items():
        if variable not in rows.columns or not stats.quantiles:
            continue
        values = rows[variable].to_numpy(np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        records.append(
            {
                "variable": variable,
                "count": len(values),
                "mean": float(values.mean()),
                "training_mean": stats.mean,
                "psi": psi(stats, values),
                "ks": ks(stats, values),
            }
        )
    return records


def most_moved(entity_drift: pd.DataFrame, count: int = SHOWN) -> pd.DataFrame:
    """The ``count`` (entity, variable) rows of largest PSI: what a person reads of a fleet."""
    return entity_drift.sort_values("psi", ascending=False).head(count)
