"""Static covariates: what describes an entity rather than a moment (type, region, capacity).

They live in a table of their own, one row per entity, beside the series: ``skewless ingest``
validates and upserts them (a new row for an entity replaces its old one), training joins them
to every row of the entity, and materialize packs them into the entity's online window, so
serving reads them in the same single online read as the window itself.

Numbers are stored as float64, labels as text; a label becomes an integer code only in the
preprocessor, fitted on training data like every other learned state.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skewless.core.config import SkewlessConfig, StaticConfig
from skewless.core.errors import FeatureStoreError
from skewless.features.keyed_table import KeyedColumns, KeyedTable, keyed_table
from skewless.features.sources import describe_source, read_source
from skewless.features.validation import Findings, parse_entities, rows_text, source_rows

STATIC_TABLE = "static"


def statics_of(config: SkewlessConfig) -> StaticConfig:
    if config.data.static is None:
        raise FeatureStoreError("data.static is not configured")
    return config.data.static


def read_statics(config: SkewlessConfig) -> pd.DataFrame:
    """Every configured static source, validated: [entity, numeric..., categorical...], one row
    per entity. Anything wrong refuses the whole read, naming the rows."""
    static = statics_of(config)
    frames = []
    for source in static.sources:
        origin = f"static covariates from {describe_source(source)}"
        findings = Findings()
        frame = parse_statics(read_source(source, config.data), config, findings)
        findings.raise_if_errors(origin)
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    key = config.data.entity_key
    repeated = rows[key][rows[key].duplicated()]
    if len(repeated):
        findings = Findings(
            [f"entities {sorted(set(repeated.tolist()))[:10]} have more than one row"]
        )
        findings.raise_if_errors("the static covariates table")
    return rows


def parse_statics(raw: pd.DataFrame, config: SkewlessConfig, findings: Findings) -> pd.DataFrame:
    """Typed columns [entity, numeric..., categorical...]; problems go into ``findings``."""
    static, key = statics_of(config), config.data.entity_key
    rows = source_rows(raw, [key, *static.columns], findings)
    if rows is None:
        return pd.DataFrame()
    parsed = pd.DataFrame({key: parse_entities(raw[key], rows, config, findings)})
    for column in static.numeric:  # float64 as given; a missing one is the imputer's
        values = raw[column].reset_index(drop=True)
        numbers = pd.to_numeric(values, errors="coerce").astype(np.float64)
        _refuse_non_numeric(values, numbers, rows, column, findings)
        parsed[column] = numbers
    for column in static.categorical:
        parsed[column] = raw[column].reset_index(drop=True).astype("string")
    return parsed


def _refuse_non_numeric(
    raw: pd.Series, parsed: pd.Series, rows: np.ndarray, column: str, findings: Findings
) -> None:
    bad = (parsed.isna() & raw.notna()) | np.isinf(parsed.to_numpy())
    if bad.any():
        findings.errors.append(
            f"'{column}' must hold finite numbers but has {raw[bad].iloc[0]!r} at "
            f"{rows_text(rows[np.flatnonzero(bad)])}"
        )


class StaticTable:
    """The stored static covariates of one project: one row per entity."""

    def __init__(self, config: SkewlessConfig, table: KeyedTable) -> None:
        self.entity_key = config.data.entity_key
        self.static = statics_of(config)
        self.table = table

    def upsert(self, rows: pd.DataFrame) -> None:
        """Store ``rows`` (from :func:`read_statics`), replacing the entities' old rows."""
        self.table.upsert(rows)

    def read(self, entities: Sequence[Any] | None = None) -> pd.DataFrame:
        """[entity, numeric..., categorical...] of ``entities`` (all when None) that have a
        row; entities without one are simply absent."""
        return self.table.read(entities)

    def updated_at(self) -> datetime | None:
        """When rows were last written (None: never), for incremental materialize."""
        return self.table.updated_at()

    def join(self, rows: pd.DataFrame) -> pd.DataFrame:
        """``rows`` with their entity's static columns (missing where an entity has none)."""
        found = self.read(rows[self.entity_key].unique().tolist())
        return join_statics(rows, found, self.entity_key, self.static)


def join_statics(
    rows: pd.DataFrame, statics: pd.DataFrame, entity_key: str, static: StaticConfig
) -> pd.DataFrame:
    """``rows`` with the static columns of each row's entity, row order and index kept."""
    table = statics.set_index(entity_key)
    position = table.index.get_indexer(pd.Index(rows[entity_key]))
    joined = rows.copy()
    for column in static.numeric:
        values = table[column].to_numpy(np.float64)
        joined[column] = np.where(position >= 0, values[position], np.nan) if len(table) else np.nan
    for column in static.categorical:
        labels = table[column].astype("string")
        joined[column] = pd.array(
            [labels.iloc[p] if p >= 0 else pd.NA for p in position], dtype="string"
        )
    return joined


def static_table(config: SkewlessConfig, home: Path) -> StaticTable | None:
    """The configured static table of ``config`` under ``home`` (None: no statics)."""
    if config.data.static is None:
        return None
    static, key = config.data.static, config.data.entity_key
    layout = KeyedColumns([key], static.numeric, static.categorical)
    table = keyed_table(config, home, STATIC_TABLE, layout)
    return StaticTable(config, table)
