"""Reading raw rows from CSV, Parquet and PostgreSQL as they are; validation comes next.

:func:`read_source` reads a whole source (pushed files, small data). :class:`SourceReader`
hands a source out a batch of entities at a time, so ingesting a fleet holds one batch: files
are staged once in an on-disk DuckDB database (which spills rather than grows), PostgreSQL is
queried per batch. Either way each row keeps its number in the source for messages.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import psycopg
from psycopg import sql

from skewless.core.config import DataConfig, SourceConfig
from skewless.core.errors import SourceError
from skewless.features.validation import SOURCE_ROW

logger = logging.getLogger(__name__)


def describe_source(source: SourceConfig) -> str:
    """A short human name for a source, for messages and progress."""
    if source.path is not None:
        return str(source.path)
    assert source.postgres is not None
    return f"postgres {source.postgres.table or 'query'}"


def read_source(source: SourceConfig, data: DataConfig) -> pd.DataFrame:
    """Raw rows of one whole source; a constant ``entity`` fills a missing entity column."""
    with SourceReader(source, data) as reader:
        frame = reader.rows(reader.entities())
    logger.info("read %d rows from %s", len(frame), describe_source(source))
    return frame


# DuckDB's own memory while staging and reading a source; beyond it, it spills to disk.
STAGING_MEMORY = "1GB"


class SourceReader:
    """One source, read ``entities`` at a time; a context manager (its staging is removed)."""

    def __init__(self, source: SourceConfig, data: DataConfig) -> None:
        self.source, self.data = source, data
        self.origin = describe_source(source)
        self._folder = tempfile.TemporaryDirectory(prefix="skewless-source-")
        self._db: duckdb.DuckDBPyConnection | None = None
        if source.path is not None:
            self._db = self._stage(source.path)

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(self, *_: object) -> None:
        if self._db is not None:
            self._db.close()
        self._folder.cleanup()

    def entities(self) -> list[Any]:
        """Every entity of the source (None stands for rows without one)."""
        if self.source.entity is not None:
            return [self.source.entity]
        key = self.data.entity_key
        if self._db is not None:
            self._require_key(self._columns())
            found = self._db.execute(f'SELECT DISTINCT "{key}" FROM source').fetchall()
            return [row[0] for row in found]
        distinct = self._postgres(
            sql.SQL("SELECT DISTINCT {} FROM ({}) AS source").format(
                sql.Identifier(key), self._statement()
            ),
            [],
        )
        return distinct.iloc[:, 0].tolist()

    def rows(self, entities: Sequence[Any]) -> pd.DataFrame:
        """Raw rows of ``entities`` in source order, with their row numbers (SOURCE_ROW)."""
        wanted = [e for e in entities if e is not None and not pd.isna(e)]
        with_null = len(wanted) < len(entities)
        if self.source.entity is not None:
            rows = self._all() if self.source.entity in wanted else pd.DataFrame()
            return rows.assign(**{self.data.entity_key: self.source.entity})
        key = self.data.entity_key
        if self._db is not None:
            return self._db.execute(
                f'SELECT * FROM source WHERE "{key}" IN (SELECT unnest(?)) '
                f'OR (? AND "{key}" IS NULL) ORDER BY "{SOURCE_ROW}"',
                [wanted, with_null],
            ).df()
        frame = self._postgres(
            sql.SQL(
                "SELECT * FROM ({}) AS source WHERE {} = ANY(%s) OR (%s AND {} IS NULL)"
            ).format(self._statement(), sql.Identifier(key), sql.Identifier(key)),
            [wanted, with_null],
        )
        return frame

    def _all(self) -> pd.DataFrame:
        if self._db is not None:
            self._refuse_key(self._columns())
            return self._db.execute(f'SELECT * FROM source ORDER BY "{SOURCE_ROW}"').df()
        frame = self._postgres(self._statement(), [])
        self._refuse_key(list(frame.columns))
        return frame

    def _stage(self, path: Path) -> duckdb.DuckDBPyConnection:
        if not path.is_file():
            raise SourceError(f"source file '{path}' does not exist")
        database = duckdb.connect(str(Path(self._folder.name) / "source.duckdb"))
        database.execute(f"SET memory_limit = '{STAGING_MEMORY}'")
        database.execute("SET preserve_insertion_order = true")
        reader = "read_parquet(?)"
        try:
            if path.suffix.lower() == ".csv":
                reader = self._csv_reader(database, path)
            database.execute(
                f'CREATE TABLE source AS SELECT *, row_number() OVER () AS "{SOURCE_ROW}" '
                f"FROM {reader}",
                [str(path)],
            )
        except duckdb.Error as exc:
            database.close()
            raise SourceError(f"cannot read '{path}': {exc}") from None
        return database

    def _csv_reader(self, database: duckdb.DuckDBPyConnection, path: Path) -> str:
        """DuckDB's CSV reader, with the timestamp column kept as text (when the file has it)
        so that validation can report unparseable timestamps by row."""
        header = database.execute(
            "DESCRIBE SELECT * FROM read_csv(?, header = true)", [str(path)]
        ).fetchall()
        column = self.data.timestamp_column
        if column not in [row[0] for row in header]:
            return "read_csv(?, header = true)"  # validation names the missing column
        quoted = column.replace("'", "''")
        return "read_csv(?, header = true, types = {'" + quoted + "': 'VARCHAR'})"

    def _columns(self) -> list[str]:
        assert self._db is not None
        return [row[0] for row in self._db.execute("DESCRIBE source").fetchall()]

    def _require_key(self, columns: list[str]) -> None:
        if self.data.entity_key not in columns:
            raise SourceError(
                f"{self.origin} has no '{self.data.entity_key}' column; add it, or give the "
                "source a constant 'entity' (--entity on the command line)"
            )

    def _refuse_key(self, columns: list[str]) -> None:
        if self.data.entity_key in columns:
            raise SourceError(
                f"{self.origin} already has a '{self.data.entity_key}' column; "
                "drop 'entity' from the source (or --entity) to use it"
            )

    def _statement(self) -> sql.SQL | sql.Composed:
        pg = self.source.postgres
        assert pg is not None
        if pg.table is not None:
            return sql.SQL("SELECT * FROM {}").format(sql.Identifier(*pg.table.split(".")))
        assert pg.query is not None
        return sql.SQL(pg.query)  # the user's own query, by design

    def _postgres(self, statement: sql.SQL | sql.Composed, parameters: list[Any]) -> pd.DataFrame:
        assert self.source.postgres is not None
        try:
            with (
                psycopg.connect(self.source.postgres.dsn, connect_timeout=10) as conn,
                conn.cursor() as cursor,
            ):
                cursor.execute(statement, parameters)
                columns = [column.name for column in cursor.description or []]
                return pd.DataFrame(cursor.fetchall(), columns=columns)
        except psycopg.Error as exc:
            raise SourceError(f"cannot read from PostgreSQL ({self.origin}): {exc}") from exc
