"""Synthetic entities for the benchmarks: copies of the real stations, scaled and shifted."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = ["OT", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"]


def synthetic_rows(entities: int, hours: int, first: int = 1) -> pd.DataFrame:
    """``hours`` hourly rows per entity (ids ``first`` on), derived from the real stations."""
    stations = [pd.read_csv(ROOT / "data" / f"ETTh{i}.csv").tail(hours) for i in (1, 2)]
    frames = []
    for entity in range(first, first + entities):
        rows = stations[entity % 2].copy()
        rows[VARIABLES] = rows[VARIABLES] * (1 + entity / 1000) + entity % 7
        rows["station_id"] = entity
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def write_fleet(path: Path, entities: int, hours: int, chunk: int = 50) -> None:
    """:func:`synthetic_rows` of a whole fleet into one Parquet file, ``chunk`` entities at a
    time, so that the benchmark's own memory stays small."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    for first in range(1, entities + 1, chunk):
        count = min(chunk, entities - first + 1)
        rows = synthetic_rows(count, hours, first)
        table = pa.Table.from_pandas(rows, preserve_index=False)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()
