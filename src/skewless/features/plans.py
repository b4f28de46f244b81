"""Plans: values of the known-future covariates (``data.known``) for times after the series
ends, such as next week's promotions or a price list that takes effect on Monday.

They live in a table of their own keyed by (entity, time), where a revised row replaces the
one it revises: ``skewless ingest`` validates and upserts them, and materialize packs each
entity's rows after its window into the online window, so serving reads them in the same
single online read as the window. A request may send its own (see the serving docs). The
covariates' past values arrive with the series, like any covariate's.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skewless.core.config import KnownConfig, SkewlessConfig
from skewless.core.errors import FeatureStoreError
from skewless.core.schema import EVENT_TS
from skewless.features.keyed_table import KeyedColumns, KeyedTable, keyed_table
from skewless.features.sources import describe_source, read_source
from skewless.features.validation import (
    Findings,
    parse_entities,
    parse_numbers,
    parse_timestamps,
    source_rows,
)

PLAN_TABLE = "plan"


def known_of(config: SkewlessConfig) -> KnownConfig:
    if config.data.known is None:
        raise FeatureStoreError("data.known is not configured")
    return config.data.known


def plan_table(config: SkewlessConfig, home: Path) -> KeyedTable | None:
    """The stored plans of ``config`` under ``home`` (None: no plan sources configured)."""
    known = config.data.known
    if known is None or not known.sources:
        return None
    layout = KeyedColumns([config.data.entity_key, EVENT_TS], known.columns, [])
    return keyed_table(config, home, PLAN_TABLE, layout)


def read_plans(config: SkewlessConfig) -> pd.DataFrame:
    """Every configured plan source, validated: [entity, event_timestamp, known...], one row
    per entity and time. Anything wrong refuses the whole read, naming the rows."""
    frames = []
    for source in known_of(config).sources:
        findings = Findings()
        frame = parse_plan(read_source(source, config.data), config, findings)
        findings.raise_if_errors(f"known-future plans from {describe_source(source)}")
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    keys = [config.data.entity_key, EVENT_TS]
    repeated = rows[rows.duplicated(keys, keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        Findings(
            [
                f"{len(repeated)} rows share an entity and time, the first "
                f"({first[keys[0]]!r}, {first[EVENT_TS].isoformat()}): which one is the plan?"
            ]
        ).raise_if_errors("the known-future plans")
    return rows


def parse_plan(raw: pd.DataFrame, config: SkewlessConfig, findings: Findings) -> pd.DataFrame:
    """Typed columns [entity, event_timestamp, known...]; problems go into ``findings``."""
    data, columns = config.data, known_of(config).columns
    rows = source_rows(raw, [data.entity_key, data.timestamp_column, *columns], findings)
    if rows is None:
        return pd.DataFrame()
    parsed = pd.DataFrame(
        {data.entity_key: parse_entities(raw[data.entity_key], rows, config, findings)}
    )
    parsed[EVENT_TS] = parse_timestamps(raw[data.timestamp_column], rows, config, findings)
    for column in columns:
        parsed[column] = parse_numbers(raw[column], rows, column, config, findings)
    return parsed
