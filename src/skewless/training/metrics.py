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


def evaluate(
    actual: np.ndarray,
    predicted: np.ndarray,
    entities: np.ndarray,
    scale: dict[Any, float] | np.ndarray,
) -> Evaluation:
    """``actual`` and ``predicted`` are (windows, horizon, targets); ``entities`` per window.

    ``scale`` is the MASE denominator per entity, or already per window (pooled folds).
    """
    error = predicted.astype(np.float64) - actual
    per_window = (
        np.array([scale.get(e, np.nan) for e in entities]) if isinstance(scale, dict) else scale
    )
    denominators = per_window[:, None, None]
    pieces = {
        "squared": error**2,
        "absolute": np.abs(error),
        "symmetric": _symmetric(actual, predicted),
        "scaled": np.abs(error) / denominators,
    }
    overall = _summarise({k: v.reshape(-1) for k, v in pieces.items()})
    per_horizon = pd.DataFrame(
        [
            _summarise({k: v[:, h].reshape(-1) for k, v in pieces.items()})
            for h in range(error.shape[1])
        ],
        index=pd.RangeIndex(1, error.shape[1] + 1, name="step"),
    )
    per_entity = pd.DataFrame(
        {
            entity: _summarise({k: v[entities == entity].reshape(-1) for k, v in pieces.items()})
            for entity in pd.unique(entities)
        }
    ).T.rename_axis("entity")
    return Evaluation(overall, per_horizon, per_entity)


def _symmetric(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    denominator = np.abs(actual) + np.abs(predicted)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = 2 * np.abs(predicted - actual) / denominator
    return np.where(denominator == 0, 0.0, ratio)  # 0/0 is a perfect forecast; NaN stays NaN


def _summarise(pieces: dict[str, np.ndarray]) -> dict[str, float]:
    mse = float(np.nanmean(pieces["squared"]))
    return {
        "mse": mse,
        "mae": float(np.nanmean(pieces["absolute"])),
        "rmse": float(np.sqrt(mse)),
        "smape": float(100 * np.nanmean(pieces["symmetric"])),
        "mase": float(np.nanmean(pieces["scaled"]))
        if np.isfinite(pieces["scaled"]).any()
        else float("nan"),
    }
