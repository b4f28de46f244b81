"""Live accuracy: logged forecasts against the actuals that arrived since, beside the backtest.

Errors are in the targets' original units, as the backtest's are, so the two compare directly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from skewless.core.schema import EVENT_TS
from skewless.monitoring.observations import ENTITY, VERSION

METRICS = ("mae", "mse")


def _errors(outcomes: pd.DataFrame, levels: list[str]) -> pd.DataFrame:
    """Per forecast step: absolute and squared error, and whether each interval held."""
    error = outcomes["forecast"].to_numpy(np.float64) - outcomes["actual"].to_numpy(np.float64)
    actual = outcomes["actual"].to_numpy(np.float64)
    covered = {
        f"coverage_{level}": (outcomes[f"lower_{level}"].to_numpy() <= actual)
        & (actual <= outcomes[f"upper_{level}"].to_numpy())
        for level in levels
    }
    return outcomes.assign(mae=np.abs(error), mse=error**2, **covered)


def accuracy_by(outcomes: pd.DataFrame, levels: list[str], keys: list[str]) -> pd.DataFrame:
    """Mean errors and interval coverage per group of ``keys``, with the group's step count."""
    scores = [*METRICS, *(f"coverage_{level}" for level in levels)]
    if outcomes.empty:
        return pd.DataFrame(columns=[*keys, "steps", *scores])
    grouped = _errors(outcomes, levels).groupby(keys, sort=True)
    table = grouped[scores].mean()
    table.insert(0, "steps", grouped.size())
    return table.reset_index()


def versus_backtest(
    by_version: pd.DataFrame, backtest: dict[int, dict[str, float]]
) -> pd.DataFrame:
    """``by_version`` with each version's backtest errors and the live/backtest ratios."""
    table = by_version.copy()
    for metric in METRICS:
        expected = table[VERSION].map(lambda v, m=metric: backtest.get(int(v), {}).get(m))
        table[f"backtest_{metric}"] = expected.astype(np.float64)
        table[f"{metric}_ratio"] = table[metric] / table[f"backtest_{metric}"]
    return table


def daily_error(outcomes: pd.DataFrame, levels: list[str]) -> pd.DataFrame:
    """Errors per day of the forecast timestamps, per version and entity: error over time."""
    if outcomes.empty:
        return accuracy_by(outcomes, levels, ["day", VERSION, ENTITY])
    days = pd.to_datetime(outcomes[EVENT_TS], utc=True).dt.floor("D")
    return accuracy_by(outcomes.assign(day=days), levels, ["day", VERSION, ENTITY])
