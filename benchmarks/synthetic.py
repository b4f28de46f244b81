"""Synthetic entities for the benchmarks: copies of the real stations, scaled and shifted."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = ["OT", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"]


def synthetic_rows(entities: int, hours: int) -> pd.DataFrame:
    """``hours`` hourly rows per entity, derived from the real stations."""
    stations = [pd.read_csv(ROOT / "data" / f"ETTh{i}.csv").tail(hours) for i in (1, 2)]
    frames = []
    for entity in range(1, entities + 1):
        rows = stations[entity % 2].copy()
        rows[VARIABLES] = rows[VARIABLES] * (1 + entity / 1000) + entity % 7
        rows["station_id"] = entity
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)
