"""Ingestion: read raw sources, validate them, append what is new to the offline store.

Sources are read ``feature_store.ingest_batch_entities`` entities at a time (every source's rows
of those entities together, so rows of one entity in two sources are still compared), validated
and written batch by batch into one pending part that appears only when every batch passed: a
bad row anywhere leaves nothing behind, and memory holds one batch. Re-ingesting rows that are
already stored adds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skewless.core.calendar import engineer
from skewless.core.config import DataConfig, MeltConfig, SourceConfig
from skewless.core.errors import ConfigError, SourceError
from skewless.core.schema import EVENT_TS
from skewless.features.keyed_table import KeyedTable
from skewless.features.plans import read_plans
from skewless.features.repo import FeastRepo
from skewless.features.sources import SourceReader, file_columns
from skewless.features.statics import read_statics
from skewless.features.validation import (
    ENTITY_ROW,
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

    def add(self, batch: IngestReport) -> None:
        """Count in what one more batch of the same source contributed."""
        self.rows_read += batch.rows_read
        self.rows_written += batch.rows_written
        self.rows_already_stored += batch.rows_already_stored
        self.entities += batch.entities
        self.warnings += batch.warnings


@dataclass
class _Batch:
    report: IngestReport
    rows: pd.DataFrame


def ingest(
    repo: FeastRepo,
    sources: Sequence[SourceConfig] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[IngestReport]:
    """Ingest ``sources`` (the config's when None) and register the Feast objects;
    ``progress`` hears (entities done, entities in total)."""
    chosen = list(sources) if sources is not None else repo.config.data.sources
    if not chosen:
        raise ConfigError("no sources to ingest: list them under data.sources or pass --source")
    # Read and checked first: refused static covariates or plans leave the series unwritten.
    statics = read_statics(repo.config) if sources is None and repo.statics else None
    plans = read_plans(repo.config) if sources is None and repo.plans else None
    with ExitStack() as stack:
        readers = [stack.enter_context(SourceReader(s, repo.config.data)) for s in chosen]
        found = {reader.origin: reader.entities() for reader in readers}
        empty = [origin for origin, entities in found.items() if not entities]
        if empty:
            raise SourceError(f"{', '.join(empty)}: the source has no rows")
        entities = _in_order({e for entities in found.values() for e in entities})
        size = repo.config.feature_store.ingest_batch_entities
        reports = {reader.origin: IngestReport(reader.origin, 0) for reader in readers}
        with repo.offline.write_lock(), repo.offline.appender() as part:
            for first in range(0, len(entities), size):
                chosen_entities = entities[first : first + size]
                frames = [(reader.origin, reader.rows(chosen_entities)) for reader in readers]
                for report in ingest_batch(repo, [f for f in frames if len(f[1])], part.write):
                    reports[report.origin].add(report)
                if progress is not None:
                    progress(min(first + size, len(entities)), len(entities))
    if part.where:
        logger.info(
            "wrote %d rows to %s", sum(r.rows_written for r in reports.values()), part.where
        )
    if statics is not None:
        reports["static covariates"] = _store_statics(repo, statics)
    if plans is not None:
        reports["known-future plans"] = _store_plans(repo, plans)
    repo.apply()
    return list(reports.values())


def _store_statics(repo: FeastRepo, statics: pd.DataFrame) -> IngestReport:
    """Upsert validated static covariates: an entity's new row replaces its old one."""
    assert repo.statics is not None
    return _upsert(repo, repo.statics.table, statics, "static covariates")


def _store_plans(repo: FeastRepo, plans: pd.DataFrame) -> IngestReport:
    """Upsert validated plans: a revised (entity, time) row replaces the one it revises."""
    assert repo.plans is not None
    return _upsert(repo, repo.plans, plans, "known-future plans")


def _upsert(repo: FeastRepo, table: KeyedTable, rows: pd.DataFrame, what: str) -> IngestReport:
    """Write the rows of ``rows`` that differ from the stored ones (re-ingesting adds nothing)."""
    key = repo.config.data.entity_key
    stored = table.read(rows[key].unique().tolist())
    changed = rows[~_stored_unchanged(rows, stored, table.keys)]
    if len(changed):
        with repo.offline.write_lock():
            table.upsert(changed)
    logger.info("wrote %d rows of %s", len(changed), what)
    return IngestReport(
        what, len(rows), len(changed), len(rows) - len(changed), rows[key].unique().tolist()
    )


def _stored_unchanged(new: pd.DataFrame, stored: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """Whether each row of ``new`` is already stored exactly so."""
    if stored.empty:
        return np.zeros(len(new), dtype=bool)
    both = new.reset_index(drop=True).merge(
        stored, on=keys, how="left", suffixes=("", "_stored"), indicator=True
    )
    same = (both["_merge"] == "both").to_numpy()
    for column in new.columns.drop(keys):
        left, right = both[column].astype(object), both[f"{column}_stored"].astype(object)
        equal = (left == right).fillna(False).astype(bool) | (left.isna() & right.isna())
        same &= equal.to_numpy()
    return same


def ingest_frames(
    repo: FeastRepo, frames: Sequence[tuple[str, pd.DataFrame]]
) -> list[IngestReport]:
    """Validate every (origin, raw rows) pair held in memory, then append the new rows of all
    of them (pushed rows)."""
    with repo.offline.write_lock(), repo.offline.appender() as part:
        reports = ingest_batch(repo, frames, part.write)
    return reports


def validate_frame(repo: FeastRepo, origin: str, raw: pd.DataFrame) -> IngestReport:
    """Validate raw rows exactly as ingest and push do, against what is stored now, and write
    nothing; raises :class:`DataValidationError` with every problem found."""
    return _validate(repo, origin, raw).report


def ingest_batch(
    repo: FeastRepo,
    frames: Sequence[tuple[str, pd.DataFrame]],
    write: Callable[[pd.DataFrame], None],
) -> list[IngestReport]:
    """Validate (origin, raw rows) pairs of the same entities, then hand the new rows, as
    stored, to ``write``: the one path of ingest and push, so that a pushed row is checked
    and stored exactly as an ingested one."""
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
        write(stored)
    return [b.report for b in batches]


def _in_order(entities: set[Any]) -> list[Any]:
    """Entities sorted (numbers as numbers); a missing entity (None) last."""
    known = [e for e in entities if e is not None and not pd.isna(e)]
    try:
        ordered = sorted(known)
    except TypeError:  # mixed types: validation will refuse them; any order will do
        ordered = sorted(known, key=str)
    return ordered + [None] * (len(known) < len(entities))


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


def source_from_path(
    path: Path, entity: int | str | None, data: DataConfig | None = None
) -> SourceConfig:
    """A source given on the command line instead of in the config. A file without the entity
    key column, given no entity, is wide like the config's melted sources when they all melt
    alike (new rows of a wide table come wide); otherwise it is read as long rows."""
    path = path.resolve()
    if entity is None and data is not None and path.is_file():
        melt = _shared_melt(data)
        if melt is not None and data.entity_key not in file_columns(path):
            return SourceConfig(path=path, melt=melt)
    return SourceConfig(path=path, entity=entity)


def _shared_melt(data: DataConfig) -> MeltConfig | None:
    """The one way the config's sources melt, if they all melt and alike."""
    melts = [source.melt for source in data.sources]
    first = melts[0] if melts else None
    return first if all(melt == first for melt in melts) else None
