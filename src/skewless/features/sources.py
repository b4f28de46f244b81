"""Reading raw rows from CSV, Parquet and PostgreSQL as they are; validation comes next.

:func:`read_source` reads a whole source (pushed files, small data). :class:`SourceReader`
hands a source out a batch of entities at a time, so ingesting a fleet holds one batch: files
are staged once in an on-disk DuckDB database (which spills rather than grows), PostgreSQL is
queried per batch. Either way each row keeps its number in the source for messages.

A melted source (``melt``) is a wide table whose columns are series: a batch reads only the
columns of its entities and turns each into rows of the entity (a LATERAL VALUES join, the same
SQL for DuckDB and PostgreSQL), so a batch still holds only its own entities' rows.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import psycopg
from psycopg import sql

from skewless.core.config import DataConfig, MeltConfig, SourceConfig
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


def file_columns(path: Path) -> list[str]:
    """A CSV or Parquet file's column names, from its header or schema."""
    reader = "read_csv(?, header = true)" if path.suffix.lower() == ".csv" else "read_parquet(?)"
    try:
        with duckdb.connect() as database:
            described = database.execute(f"DESCRIBE SELECT * FROM {reader}", [str(path)])
            return [row[0] for row in described.fetchall()]
    except duckdb.Error as exc:
        raise SourceError(f"cannot read '{path}': {exc}") from None


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
        if self.source.melt is not None:
            return list(self._series)
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
        if self.source.melt is not None:
            return self._melted_rows(wanted)
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

    @cached_property
    def _series(self) -> dict[Any, str]:
        """A melted source's entities, each with the column that holds its numbers; the
        columns are checked here, before any row is read."""
        assert self.source.melt is not None
        types = self._types
        columns = _melted_columns(self.source.melt, self.data, list(types), self.origin)
        series = _series_entities(columns, self.data, self.origin)
        found = [self._not_numeric(c, types[c]) for c in columns if not _numeric(types[c])]
        problems = [problem for problem in found if problem is not None]
        if problems:
            raise SourceError(
                f"{self.origin}: melted columns must hold numbers, but {'; '.join(problems)}"
            )
        return series

    def _melted_rows(self, entities: Sequence[Any]) -> pd.DataFrame:
        series = {e: self._series[e] for e in entities if e in self._series}
        if not series:
            return pd.DataFrame()
        if self._db is not None:
            statement = self._melt(sql.SQL("SELECT * FROM source"), series)
            ordered = sql.SQL("{} ORDER BY {}").format(statement, sql.Identifier(SOURCE_ROW))
            return self._db.execute(ordered.as_string()).df()
        return self._postgres(self._melt(self._statement(), series), [])

    def _melt(self, wide: sql.SQL | sql.Composed, series: dict[Any, str]) -> sql.Composed:
        """One row per (wide row, entity of ``series``): the columns not melted, the entity
        and its number; columns of entities outside ``series`` are not read."""
        assert self.source.melt is not None
        key, value = self.data.entity_key, self.source.melt.value
        melted = set(self._series.values())
        kept = [sql.Identifier("source", c) for c in self._types if c not in melted]
        pairs = sql.SQL(", ").join(
            sql.SQL("({}, CAST({} AS DOUBLE PRECISION))").format(
                sql.Literal(entity), sql.Identifier("source", column)
            )
            for entity, column in series.items()
        )
        return sql.SQL(
            "SELECT {} FROM ({}) AS source CROSS JOIN LATERAL (VALUES {}) AS melted({}, {})"
        ).format(
            sql.SQL(", ").join(
                [*kept, sql.Identifier("melted", key), sql.Identifier("melted", value)]
            ),
            wide,
            pairs,
            sql.Identifier(key),
            sql.Identifier(value),
        )

    @cached_property
    def _types(self) -> dict[str, str]:
        """The source's columns and their SQL types, as the source has them."""
        if self._db is not None:
            return {row[0]: row[1] for row in self._db.execute("DESCRIBE source").fetchall()}
        statement = sql.SQL("SELECT * FROM ({}) AS source LIMIT 0").format(self._statement())
        with self._postgres_cursor() as cursor:
            cursor.execute(statement)
            return {column.name: column.type_display for column in cursor.description or []}

    def _not_numeric(self, column: str, sql_type: str) -> str | None:
        """Why a column of a non-numeric type cannot be melted: its type, or for a text column
        of a file its first value that is not a number (text with none, such as a CSV column of
        empty cells only, is fine)."""
        if self._db is None or sql_type != "VARCHAR":
            return f"'{column}' is {sql_type}"
        found = self._db.execute(
            sql.SQL(
                "SELECT {column}, {row} FROM source WHERE {column} IS NOT NULL "
                "AND TRY_CAST({column} AS DOUBLE) IS NULL ORDER BY {row} LIMIT 1"
            )
            .format(column=sql.Identifier(column), row=sql.Identifier(SOURCE_ROW))
            .as_string()
        ).fetchone()
        return None if found is None else f"'{column}' has {found[0]!r} at row {found[1]}"

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
                reader = self._csv_reader(path)
            database.execute(
                f'CREATE TABLE source AS SELECT *, row_number() OVER () AS "{SOURCE_ROW}" '
                f"FROM {reader}",
                [str(path)],
            )
        except duckdb.Error as exc:
            database.close()
            raise SourceError(f"cannot read '{path}': {exc}") from None
        return database

    def _csv_reader(self, path: Path) -> str:
        """DuckDB's CSV reader, with the timestamp column kept as text (when the file has it)
        so that validation can report unparseable timestamps by row."""
        column = self.data.timestamp_column
        if column not in file_columns(path):
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
        with self._postgres_cursor() as cursor:
            cursor.execute(statement, parameters)
            columns = [column.name for column in cursor.description or []]
            return pd.DataFrame(cursor.fetchall(), columns=columns)

    @contextmanager
    def _postgres_cursor(self) -> Iterator[psycopg.Cursor[Any]]:
        assert self.source.postgres is not None
        try:
            with (
                psycopg.connect(self.source.postgres.dsn, connect_timeout=10) as conn,
                conn.cursor() as cursor,
            ):
                yield cursor
        except psycopg.Error as exc:
            raise SourceError(f"cannot read from PostgreSQL ({self.origin}): {exc}") from exc


_NUMERIC_TYPES = {
    # DuckDB
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
    "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE",
    # PostgreSQL (psycopg's names)
    "int2", "int4", "int8", "float4", "float8",
}  # fmt: skip


def _numeric(sql_type: str) -> bool:
    return sql_type in _NUMERIC_TYPES or sql_type.lower().startswith(("decimal", "numeric"))


def _melted_columns(
    melt: MeltConfig, data: DataConfig, columns: list[str], origin: str
) -> list[str]:
    """The columns ``melt`` turns into entities, in the source's order, after the checks that
    make the wide table unambiguous (no entity key column, no column named like the variable
    the numbers go to, every listed column present and a series)."""
    present = [c for c in columns if c != SOURCE_ROW]
    for taken in (data.entity_key, melt.value):
        if taken in present:
            raise SourceError(
                f"{origin} is melted into '{data.entity_key}' and '{melt.value}' but already "
                f"has a '{taken}' column; rename or drop it, or drop 'melt' from the source"
            )
    not_series = [data.timestamp_column, *data.variables]
    if melt.columns == "all":
        chosen = [c for c in present if c not in not_series]
        if not chosen:
            raise SourceError(
                f"{origin}: 'melt.columns: all' finds no columns besides the timestamp and the "
                f"declared variables; the source has {present}"
            )
        return chosen
    missing = [c for c in melt.columns if c not in present]
    if missing:
        raise SourceError(f"{origin} has no column(s) {missing} to melt; the source has {present}")
    declared = [c for c in melt.columns if c in not_series]
    if declared:
        raise SourceError(
            f"{origin}: melt.columns lists {declared}, the timestamp column or declared "
            "variables; list only the columns that are series"
        )
    return [c for c in present if c in melt.columns]


def _series_entities(columns: list[str], data: DataConfig, origin: str) -> dict[Any, str]:
    """Each melted column's entity id: its name, as an integer when ``entity_type`` is int64."""
    if data.entity_type == "string":
        return {column: column for column in columns}
    series: dict[Any, str] = {}
    for column in columns:
        try:
            entity = int(column)
        except ValueError:
            raise SourceError(
                f"{origin}: melted column '{column}' must be named by an integer entity id "
                "(data.entity_type is int64); rename the column or set data.entity_type: string"
            ) from None
        if entity in series:
            raise SourceError(
                f"{origin}: melted columns '{series[entity]}' and '{column}' both name entity "
                f"{entity}"
            )
        series[entity] = column
    return series
