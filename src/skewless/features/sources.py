"""Reading raw rows from CSV, Parquet and PostgreSQL as they are; validation comes next."""

from __future__ import annotations

import logging

import pandas as pd
import psycopg
from psycopg import sql

from skewless.core.config import DataConfig, SourceConfig
from skewless.core.errors import SourceError

logger = logging.getLogger(__name__)


def describe_source(source: SourceConfig) -> str:
    """A short human name for a source, for messages and progress."""
    if source.path is not None:
        return str(source.path)
    assert source.postgres is not None
    return f"postgres {source.postgres.table or 'query'}"


def read_source(source: SourceConfig, data: DataConfig) -> pd.DataFrame:
    """Raw rows of one source; a constant ``entity`` fills a missing entity column."""
    frame = _read_file(source, data) if source.path is not None else _read_postgres(source)
    if source.entity is not None:
        if data.entity_key in frame.columns:
            raise SourceError(
                f"{describe_source(source)} already has a '{data.entity_key}' column; "
                "drop 'entity' from the source (or --entity) to use it"
            )
        frame[data.entity_key] = source.entity
    logger.info("read %d rows from %s", len(frame), describe_source(source))
    return frame


def _read_file(source: SourceConfig, data: DataConfig) -> pd.DataFrame:
    assert source.path is not None
    if not source.path.is_file():
        raise SourceError(f"source file '{source.path}' does not exist")
    try:
        if source.path.suffix.lower() == ".csv":
            # Timestamps stay text here so that validation can report unparseable ones by row.
            return pd.read_csv(source.path, dtype={data.timestamp_column: str})
        return pd.read_parquet(source.path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise SourceError(f"cannot read '{source.path}': {exc}") from exc


def _read_postgres(source: SourceConfig) -> pd.DataFrame:
    assert source.postgres is not None
    pg = source.postgres
    statement: sql.Composable
    if pg.table is not None:
        statement = sql.SQL("SELECT * FROM {}").format(sql.Identifier(*pg.table.split(".")))
    else:
        assert pg.query is not None
        statement = sql.SQL(pg.query)  # the user's own query, by design
    try:
        with psycopg.connect(pg.dsn, connect_timeout=10) as conn, conn.cursor() as cursor:
            cursor.execute(statement)
            columns = [column.name for column in cursor.description or []]
            return pd.DataFrame(cursor.fetchall(), columns=columns)
    except psycopg.Error as exc:
        raise SourceError(
            f"cannot read from PostgreSQL ({describe_source(source)}): {exc}"
        ) from exc
