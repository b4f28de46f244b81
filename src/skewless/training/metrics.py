"""Forecast errors in original units: overall, per horizon step and per entity.

All metrics ignore positions where the actual value is missing. MASE divides by the mean
absolute one-step change of each entity's training series (the in-sample naive error), so a
MASE below 1 beats repeating the last value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

METRICS = ("mse", "mae", "rmse", "smape", "mase")


@dataclass(frozen=True)
class Evaluation:
    overall: dict[str, float]
    per_horizon: pd.DataFrame  # index: horizon step 1..H
    per_entity: pd.DataFrame  # index: entity


def naive_scale(entities: np.ndarray, targets: np.ndarray) -> dict[Any, float]:
    """Per entity, the mean absolute one-step change of its (training) target series."""
    frame = pd.DataFrame(targets).assign(entity=entities)
    changes = frame.groupby("entity", sort=False).diff().abs()
    scale = changes.groupby(frame["entity"], sort=False).mean().mean(axis=1)
    return {e: float(v) if np.isfinite(v) and v > 0 else np.nan for e, v in scale.items()}


class ErrorSums:
    """Sums and counts of every error measure, added batch by batch: the metrics of all
    batches together are exact (sums, never means of means) and need no batch kept."""

    def __init__(self) -> None:
        self.per_step: np.ndarray | None = None  # (horizon, sums and counts)
        self.per_entity: dict[Any, np.ndarray] = {}

    def add(
        self,
        actual: np.ndarray,
        predicted: np.ndarray,
        entities: np.ndarray,
        scale: dict[Any, float] | np.ndarray,
    ) -> None:
        """One batch of windows: ``actual`` and ``predicted`` are (windows, horizon, targets),
        ``entities`` per window; ``scale`` is the MASE denominator per entity, or already per
        window."""
        if isinstance(scale, dict):
            scale = np.array([scale.get(e, np.nan) for e in entities], dtype=np.float64)
        error = predicted.astype(np.float64) - actual
        pieces = (
            error**2,
            np.abs(error),
            _symmetric(actual, predicted),
            np.abs(error) / scale[:, None, None],
        )
        # Per window and step: each piece's sum over targets, then how many were finite.
        sums = np.stack([np.nansum(p, axis=2) for p in pieces], axis=-1)
        counts = np.stack([np.sum(~np.isnan(p), axis=2) for p in pieces], axis=-1)
        table = np.concatenate([sums, counts], axis=-1)  # (windows, horizon, 2 x pieces)
        by_step = table.sum(axis=0)
        codes, distinct = pd.factorize(entities)
        by_entity = np.zeros((len(distinct), table.shape[-1]))
        np.add.at(by_entity, codes, table.sum(axis=1))
        added = ErrorSums()
        added.per_step = by_step
        added.per_entity = dict(zip(distinct, by_entity, strict=True))
        self.merge(added)

    def merge(self, other: ErrorSums) -> None:
        """Add the windows ``other`` has summed."""
        if other.per_step is None:
            return
        self.per_step = other.per_step if self.per_step is None else self.per_step + other.per_step
        for entity, row in other.per_entity.items():
            known = self.per_entity.get(entity)
            self.per_entity[entity] = row if known is None else known + row

    def result(self) -> Evaluation:
        if self.per_step is None:
            raise ValueError("no window was scored")
        per_horizon = pd.DataFrame(
            [_summarise(row) for row in self.per_step],
            index=pd.RangeIndex(1, len(self.per_step) + 1, name="step"),
        )
        per_entity = pd.DataFrame(
            {entity: _summarise(row) for entity, row in self.per_entity.items()}
        ).T.rename_axis("entity")
        return Evaluation(_summarise(self.per_step.sum(axis=0)), per_horizon, per_entity)


def _symmetric(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    denominator = np.abs(actual) + np.abs(predicted)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = 2 * np.abs(predicted - actual) / denominator
    return np.where(denominator == 0, 0.0, ratio)  # 0/0 is a perfect forecast; NaN stays NaN


def _summarise(sums_and_counts: np.ndarray) -> dict[str, float]:
    """Means of the four error pieces (squared, absolute, symmetric, scaled) from their sums
    and counts; a piece with no finite value has no mean."""
    sums, counts = np.split(sums_and_counts, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        squared, absolute, symmetric, scaled = np.where(counts > 0, sums / counts, np.nan)
    return {
        "mse": float(squared),
        "mae": float(absolute),
        "rmse": float(np.sqrt(squared)),
        "smape": float(100 * symmetric),
        "mase": float(scaled),
    }
