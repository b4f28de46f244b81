"""Ingestion: read raw sources, validate them, append what is new to the offline store.

All sources of one call are validated before any is written, so a bad file never leaves half an
ingest behind. Re-ingesting rows that are already stored adds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from skewless.core.config import SourceConfig
from skewless.core.errors import ConfigError
from skewless.features.engineering import engineer
from skewless.features.repo import FeastRepo
from skewless.features.sources import describe_source, read_source
from skewless.features.validation import (
    ENTITY_ROW,
    EVENT_TS,
    Findings,
    check_against_history,
    check_duplicates,
    parse_rows,
)

logger = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What one source contributed."""

    origin: str
    rows_read: int
    rows_written: int = 0
    rows_already_stored: int = 0
    entities: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Batch:
    report: IngestReport
    rows: pd.DataFrame


def ingest(repo: FeastRepo, sources: Sequence[SourceConfig] | None = None) -> list[IngestReport]:
    """Ingest ``sources`` (the config's when None) and register the Feast objects."""
    chosen = list(sources) if sources is not None else repo.config.data.sources
    if not chosen:
        raise ConfigError("no sources to ingest: list them under data.sources or pass --source")
    frames = [(describe_source(s), read_source(s, repo.config.data)) for s in chosen]
    reports = ingest_frames(repo, frames)
    repo.apply()
    return reports


def ingest_frames(
    repo: FeastRepo, frames: Sequence[tuple[str, pd.DataFrame]]
) -> list[IngestReport]:
    """Validate every (origin, raw rows) pair, then append the new rows of all of them."""
    with repo.offline.write_lock():
        batches = [_validate(repo, origin, raw) for origin, raw in frames]
        new_rows = pd.concat([b.rows for b in batches], ignore_index=True)
        _refuse_overlaps(repo, new_rows, [b.report.origin for b in batches])
        if not new_rows.empty:
            stored = new_rows.drop(columns=ENTITY_ROW)
            stored[repo.config.data.entity_key] = _storage_entities(stored, repo)
            stored = pd.concat(
                [
                    stored.reset_index(drop=True),
                    engineer(stored[EVENT_TS], repo.config).reset_index(drop=True),
                ],
                axis=1,
            )
            part = repo.offline.append(stored)
            logger.info("wrote %d rows to %s", len(stored), part)
    return [b.report for b in batches]


def _validate(repo: FeastRepo, origin: str, raw: pd.DataFrame) -> _Batch:
    config, findings = repo.config, Findings()
    parsed = parse_rows(raw, config, findings)
    findings.raise_if_errors(origin)
    check_duplicates(parsed, config, findings)
    findings.raise_if_errors(origin)
    key = config.data.entity_key
    entities = parsed[key].unique().tolist()
    start, end = parsed[EVENT_TS].min(), parsed[EVENT_TS].max()
    stored = repo.offline.rows_between(entities, start, end)
    previous = repo.offline.last_before(entities, start)
    if stored.empty:
        stored = parsed.iloc[0:0].drop(columns=ENTITY_ROW)
    if previous.empty:
        previous = parsed.iloc[0:0][[key, EVENT_TS]]
    fresh = check_against_history(parsed, stored, previous, config, findings)
    findings.raise_if_errors(origin)
    report = IngestReport(
        origin=origin,
        rows_read=len(raw),
        rows_written=len(fresh),
        rows_already_stored=len(parsed) - len(fresh),
        entities=entities,
        warnings=findings.warnings,
    )
    for warning in findings.warnings:
        logger.warning("%s: %s", origin, warning)
    return _Batch(report, fresh)


def _refuse_overlaps(repo: FeastRepo, rows: pd.DataFrame, origins: list[str]) -> None:
    if len(origins) < 2 or rows.empty:
        return
    findings = Findings()
    check_duplicates(rows, repo.config, findings)
    findings.raise_if_errors(" + ".join(origins) + " (together)")


def _storage_entities(rows: pd.DataFrame, repo: FeastRepo) -> pd.Series:
    """Entity ids in the plain dtype Feast and Parquet expect."""
    column = rows[repo.config.data.entity_key]
    return column.astype("int64") if repo.config.data.entity_type == "int64" else column.astype(str)


def source_from_path(path: Path, entity: int | str | None) -> SourceConfig:
    """A source given on the command line instead of in the config."""
    return SourceConfig(path=path.resolve(), entity=entity)
