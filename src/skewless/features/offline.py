"""The offline table: every ingested row, keyed by (entity, event timestamp).

Two backends behind one set of queries:

- :class:`ParquetOfflineTable` (default): append-only Parquet part files, queried with DuckDB.
  A part appears whole, by rename, or not at all; old parts are never rewritten. Feast reads the
  same files through a glob FileSource and its DuckDB offline store.
- :class:`PostgresOfflineTable`: one PostgreSQL table, appended to with COPY inside a
  transaction. Feast reads it through its PostgreSQL offline store.

The queries are written once, in SQL both engines accept, for what Feast's offline API does not
offer: the last W rows per entity, the rows ingested since a watermark, stored rows to compare a
new batch with.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import duckdb
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FileSource
from feast.data_format import ParquetFormat
from feast.data_source import DataSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
    PostgreSQLSource,
)
from psycopg import sql

from skewless.core.calendar import engineered_columns
from skewless.core.config import PostgresOfflineStore, SkewlessConfig
from skewless.core.errors import FeatureStoreError
from skewless.core.schema import CREATED_TS, EVENT_TS
from skewless.features.validation import VALUE_DTYPE

SERIES_TABLE = "series"
# DuckDB's own memory while compacting; beyond it, it spills to disk.
COMPACTION_MEMORY = "1GB"


class OfflineTable(ABC):
    """All rows of one Feast project's series, and the queries skewless runs on them."""

    def __init__(self, config: SkewlessConfig) -> None:
        self.entity_key = config.data.entity_key
        self.number_columns = [*config.data.variables, *engineered_columns(config)]
        self.label_columns = config.data.categorical  # text
        self.value_columns = [*self.number_columns, *self.label_columns]

    @abstractmethod
    def is_empty(self) -> bool: ...

    @abstractmethod
    def write_lock(self) -> Any:
        """A context manager that serialises writers, so two ingests never add the same rows."""

    @abstractmethod
    def appender(self) -> Any:
        """A context manager yielding ``write(rows)``: every batch written inside it becomes
        visible at once when it exits, stamped with one ingestion time, or none of them if it
        raises. Returns where the rows went as the context value's ``where``."""

    def compact(self) -> int:
        """Merge the stored parts into one, sorted by entity and time; returns how many parts
        there were (0: nothing to do). Callers hold ``write_lock``."""
        return 0

    def parts(self) -> int:
        """How many stored pieces a read has to open."""
        return 1

    def append(self, rows: pd.DataFrame) -> str:
        """Store ``rows`` atomically, stamped with the ingestion time; returns where they went."""
        with self.appender() as batches:
            batches.write(rows)
        return batches.where

    @abstractmethod
    def feast_source(self, name: str) -> DataSource:
        """The Feast data source that reads this table."""

    @abstractmethod
    def feast_offline_store(self) -> dict[str, Any]:
        """The ``offline_store`` block of feature_store.yaml."""

    @abstractmethod
    def _fetch(self, statement: str, parameters: list[Any]) -> pd.DataFrame:
        """Run ``statement`` (``{rows}`` names the table, ``?`` the parameters)."""

    def rows_between(self, entities: Sequence[Any], start: datetime, end: datetime) -> pd.DataFrame:
        """Stored rows of ``entities`` with start <= event timestamp <= end."""
        return self._query(
            f"SELECT * FROM {{rows}} WHERE {self._key} = ANY(?) "
            f"AND {EVENT_TS} BETWEEN ? AND ? ORDER BY {self._key}, {EVENT_TS}",
            [list(entities), start, end],
        )

    def last_before(self, entities: Sequence[Any], start: datetime) -> pd.DataFrame:
        """Per entity, the latest stored event timestamp earlier than ``start``."""
        return self._query(
            f"SELECT {self._key}, max({EVENT_TS}) AS {EVENT_TS} FROM {{rows}} "
            f"WHERE {self._key} = ANY(?) AND {EVENT_TS} < ? GROUP BY {self._key}",
            [list(entities), start],
        )

    def history(
        self,
        entities: Sequence[Any] | None,
        start: datetime | None,
        end: datetime | None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Rows of ``entities`` (all when None) in [start, end], sorted by entity and time;
        only ``columns`` when given (a narrow read is a cheap read)."""
        conditions, parameters = self._time_filter(start, end, *self._entity_filter(entities))
        chosen = "*" if columns is None else ", ".join(f'"{c}"' for c in columns)
        return self._query(
            f"SELECT {chosen} FROM {{rows}} {_where(conditions)} ORDER BY {self._key}, {EVENT_TS}",
            parameters,
        )

    def time_range(
        self, start: datetime | None, end: datetime | None
    ) -> tuple[pd.Timestamp, pd.Timestamp]:
        """The earliest and latest event timestamp in [start, end]."""
        conditions, parameters = self._time_filter(start, end, [], [])
        frame = self._query(
            f"SELECT min({EVENT_TS}) AS {EVENT_TS}, max({EVENT_TS}) AS latest FROM {{rows}} "
            f"{_where(conditions)}",
            parameters,
        )
        if frame.empty or pd.isna(frame[EVENT_TS].iloc[0]):
            raise FeatureStoreError("the offline store has no rows in the requested time range")
        return frame[EVENT_TS].iloc[0], frame["latest"].iloc[0]

    def row_counts(self, start: datetime | None, end: datetime | None) -> pd.Series:
        """Rows per entity in [start, end], indexed by entity."""
        conditions, parameters = self._time_filter(start, end, [], [])
        frame = self._query(
            f"SELECT {self._key}, count(*) AS rows FROM {{rows}} {_where(conditions)} "
            f"GROUP BY {self._key} ORDER BY {self._key}",
            parameters,
        )
        if frame.empty:
            return pd.Series(dtype=np.int64)
        return frame.set_index(self.entity_key)["rows"].astype(np.int64)

    def tail(
        self, size: int, entities: Sequence[Any] | None = None, until: datetime | None = None
    ) -> pd.DataFrame:
        """The last ``size`` rows up to ``until`` (None: the newest) of each entity (all when
        None), sorted by entity and time."""
        conditions, parameters = self._time_filter(None, until, *self._entity_filter(entities))
        columns = ", ".join(f'"{c}"' for c in self._columns)
        return self._query(
            f"SELECT {columns} FROM (SELECT *, row_number() OVER "
            f"(PARTITION BY {self._key} ORDER BY {EVENT_TS} DESC) AS recency "
            f"FROM {{rows}} {_where(conditions)}) AS ranked WHERE recency <= ? "
            f"ORDER BY {self._key}, {EVENT_TS}",
            [*parameters, size],
        )

    def entities(self) -> list[Any]:
        """Every entity with at least one row."""
        frame = self._query(f"SELECT DISTINCT {self._key} FROM {{rows}} ORDER BY {self._key}", [])
        return frame[self.entity_key].tolist() if not frame.empty else []

    def changed_since(self, created_after: datetime) -> tuple[list[Any], datetime | None]:
        """Entities with rows ingested after ``created_after``, and those rows' earliest time."""
        frame = self._query(
            f"SELECT {self._key}, min({EVENT_TS}) AS {EVENT_TS} FROM {{rows}} "
            f"WHERE {CREATED_TS} > ? GROUP BY {self._key} ORDER BY {self._key}",
            [created_after],
        )
        if frame.empty:
            return [], None
        return frame[self.entity_key].tolist(), frame[EVENT_TS].min().to_pydatetime()

    def bounds(self) -> tuple[datetime, datetime, datetime]:
        """Earliest and latest event timestamp, and latest ingestion time."""
        frame = self._query(
            f"SELECT min({EVENT_TS}) AS {EVENT_TS}, max({EVENT_TS}) AS latest, "
            f"max({CREATED_TS}) AS {CREATED_TS} FROM {{rows}}",
            [],
        )
        row = frame.iloc[0]
        return (
            row[EVENT_TS].to_pydatetime(),
            row["latest"].to_pydatetime(),
            row[CREATED_TS].to_pydatetime(),
        )

    @property
    def _key(self) -> str:
        return f'"{self.entity_key}"'

    @property
    def _columns(self) -> list[str]:
        return [self.entity_key, EVENT_TS, *self.value_columns, CREATED_TS]

    def _entity_filter(self, entities: Sequence[Any] | None) -> tuple[list[str], list[Any]]:
        """The entities, and their range as well: a range reaches Parquet's row-group statistics
        (batches of neighbouring entities then skip most of the file), a list does not."""
        if entities is None:
            return [], []
        chosen = list(entities)
        if not chosen:
            return [f"{self._key} = ANY(?)"], [chosen]
        return [f"{self._key} = ANY(?)", f"{self._key} BETWEEN ? AND ?"], [
            chosen,
            min(chosen),
            max(chosen),
        ]

    @staticmethod
    def _time_filter(
        start: datetime | None, end: datetime | None, conditions: list[str], parameters: list[Any]
    ) -> tuple[list[str], list[Any]]:
        if start is not None:
            conditions.append(f"{EVENT_TS} >= ?")
            parameters.append(start)
        if end is not None:
            conditions.append(f"{EVENT_TS} <= ?")
            parameters.append(end)
        return conditions, parameters

    def _query(self, statement: str, parameters: list[Any]) -> pd.DataFrame:
        if self.is_empty():
            return pd.DataFrame()
        frame = self._fetch(statement, parameters)
        for column in frame.columns:
            if column in self.number_columns:
                frame[column] = frame[column].astype(VALUE_DTYPE)
            elif column in self.label_columns:
                frame[column] = frame[column].astype("string")
            elif column in (EVENT_TS, CREATED_TS, "latest"):
                frame[column] = pd.to_datetime(frame[column], utc=True)
        return frame


class ParquetOfflineTable(OfflineTable):
    """Append-only Parquet parts in one folder."""

    def __init__(self, config: SkewlessConfig, folder: Path) -> None:
        super().__init__(config)
        self.folder = folder

    @property
    def pattern(self) -> str:
        """The glob Feast's FileSource and DuckDB read."""
        return str(self.folder / "part-*.parquet")

    def is_empty(self) -> bool:
        return not any(self.folder.glob("part-*.parquet"))

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Writers lock the folder itself, so no lock file is left behind; the folders this
        call had to make go again if nothing was written into them, so a refused ingest leaves
        the home as it found it."""
        made: list[Path] = []
        handle = self._lock_folder(made)
        try:
            yield
        finally:
            _remove_empty(made)  # still locked: a waiter finds the folder gone and makes it anew
            os.close(handle)

    def _lock_folder(self, made: list[Path]) -> int:
        """An exclusive lock on the folder, made first if missing (what was made is added to
        ``made``); a folder removed while this call waited is made and locked anew."""
        while True:
            try:
                _make_folders(self.folder, made)
                handle = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:  # a parent went between making and opening: again
                continue
            fcntl.flock(handle, fcntl.LOCK_EX)
            if _is_open_at(handle, self.folder):
                return handle
            os.close(handle)

    @contextmanager
    def appender(self) -> Iterator[ParquetAppend]:
        self.folder.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        name = f"part-{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
        append = ParquetAppend(self.folder / f".{name}.tmp", pd.Timestamp(now))
        try:
            yield append
        except BaseException:
            append.close()
            append.path.unlink(missing_ok=True)
            raise
        if append.close():
            os.replace(append.path, self.folder / name)  # the part appears whole, or not at all
            append.where = str(self.folder / name)

    def parts(self) -> int:
        return len(list(self.folder.glob("part-*.parquet")))

    def compact(self) -> int:
        """Rewrite every part as one, by DuckDB (which spills rather than holding them), renamed
        into place before the old parts go. A reader that lists the parts in the instant between
        the two sees some rows twice: compact when no training reads (``skewless compact``, or
        automatically after a push once ``feature_store.compact_after_parts`` pile up)."""
        old = sorted(self.folder.glob("part-*.parquet"))
        if len(old) < 2:
            return 0
        name = f"part-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
        temporary = self.folder / f".{name}.tmp"
        with duckdb.connect() as connection:
            connection.execute(f"SET memory_limit = '{COMPACTION_MEMORY}'")
            connection.execute(f"SET temp_directory = '{self.folder / '.compaction'}'")
            connection.execute(
                f"COPY (SELECT * FROM read_parquet(?, union_by_name=true) "
                f"ORDER BY {self._key}, {EVENT_TS}) TO '{temporary}' (FORMAT parquet)",
                [[str(part) for part in old]],
            )
        os.replace(temporary, self.folder / name)
        for part in old:
            part.unlink()
        return len(old)

    def feast_source(self, name: str) -> DataSource:
        return FileSource(
            name=name,
            path=self.pattern,
            file_format=ParquetFormat(),
            timestamp_field=EVENT_TS,
            created_timestamp_column=CREATED_TS,
        )

    def feast_offline_store(self) -> dict[str, Any]:
        return {"type": "duckdb"}

    def _fetch(self, statement: str, parameters: list[Any]) -> pd.DataFrame:
        with duckdb.connect() as connection:
            connection.execute("SET TimeZone = 'UTC'")
            connection.execute(
                "CREATE VIEW series AS SELECT * FROM "
                f"read_parquet('{self.pattern}', union_by_name=true)"
            )
            return connection.execute(statement.format(rows="series"), parameters).df()


class PostgresOfflineTable(OfflineTable):
    """One PostgreSQL table; each append is one transaction."""

    def __init__(self, config: SkewlessConfig, store: PostgresOfflineStore) -> None:
        super().__init__(config)
        self.store = store
        self.table = f"{config.project}_{SERIES_TABLE}"
        self._entity_sql = "bigint" if config.data.entity_type == "int64" else "text"

    def is_empty(self) -> bool:
        with self._connect() as conn:
            exists = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", [self._qualified]
            ).fetchone()
            if not exists or not exists[0]:
                return True
            row = conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(self._ident))
            found = row.fetchone()
            return bool(found and found[0])

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        with self._connect() as conn:
            conn.execute("SELECT pg_advisory_lock(hashtext(%s))", [self._qualified])
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", [self._qualified])

    @contextmanager
    def appender(self) -> Iterator[PostgresAppend]:
        with self._connect() as conn, conn.transaction():
            conn.execute(self._create_statement())
            columns = [self.entity_key, EVENT_TS, *self.value_columns, CREATED_TS]
            yield PostgresAppend(
                conn, self._ident, columns, pd.Timestamp.now(tz="UTC"), self._qualified
            )

    def feast_source(self, name: str) -> DataSource:
        return PostgreSQLSource(
            name=name,
            table=self._qualified,
            timestamp_field=EVENT_TS,
            created_timestamp_column=CREATED_TS,
        )

    def feast_offline_store(self) -> dict[str, Any]:
        url = urlparse(self.store.dsn)
        return {
            "type": "postgres",
            "host": url.hostname or "127.0.0.1",
            "port": url.port or 5432,
            "database": url.path.lstrip("/") or "postgres",
            "db_schema": self.store.db_schema,
            "user": unquote(url.username or "postgres"),
            "password": unquote(url.password or ""),
            "sslmode": self.store.sslmode,
        }

    def _fetch(self, statement: str, parameters: list[Any]) -> pd.DataFrame:
        text = statement.format(rows=self._qualified).replace("?", "%s")
        with self._connect() as conn, conn.cursor() as cursor:
            cursor.execute(text, parameters)  # built from constants; values are parameters
            columns = [c.name for c in cursor.description or []]
            return pd.DataFrame(cursor.fetchall(), columns=columns)

    @property
    def _qualified(self) -> str:
        return f'"{self.store.db_schema}"."{self.table}"'

    @property
    def _ident(self) -> sql.Identifier:
        return sql.Identifier(self.store.db_schema, self.table)

    def _create_statement(self) -> sql.Composed:
        values = sql.SQL(", ").join(
            [
                *(sql.SQL("{} real").format(sql.Identifier(c)) for c in self.number_columns),
                *(sql.SQL("{} text").format(sql.Identifier(c)) for c in self.label_columns),
            ]
        )
        return sql.SQL(
            "CREATE TABLE IF NOT EXISTS {table} ({key} {key_type} NOT NULL, "
            "{event} timestamptz NOT NULL, {values}, {created} timestamptz NOT NULL, "
            "PRIMARY KEY ({key}, {event}))"
        ).format(
            table=self._ident,
            key=sql.Identifier(self.entity_key),
            key_type=sql.SQL(self._entity_sql),
            event=sql.Identifier(EVENT_TS),
            values=values,
            created=sql.Identifier(CREATED_TS),
        )

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.store.dsn, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise FeatureStoreError(
                f"cannot reach the PostgreSQL offline store: {exc}; check "
                "feature_store.offline_store.dsn"
            ) from exc
        conn.execute("SET TIME ZONE 'UTC'")
        return conn


class ParquetAppend:
    """Batches into one hidden Parquet file (one row group each), renamed into place at the end."""

    def __init__(self, path: Path, created: pd.Timestamp) -> None:
        self.path, self.created, self.where = path, created, ""
        self._writer: pq.ParquetWriter | None = None

    def write(self, rows: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(
            rows.assign(**{CREATED_TS: self.created}), preserve_index=False
        )
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self.path, table.schema, coerce_timestamps="us", allow_truncated_timestamps=True
            )
        self._writer.write_table(table.cast(self._writer.schema))

    def close(self) -> bool:
        """Finish the file; False if nothing was written."""
        if self._writer is None:
            return False
        self._writer.close()
        self._writer = None
        return True


class PostgresAppend:
    """Batches copied into the table inside one transaction."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        table: sql.Identifier,
        columns: list[str],
        created: pd.Timestamp,
        where: str,
    ) -> None:
        self.conn, self.table, self.columns, self.created, self.where = (
            conn,
            table,
            columns,
            created,
            where,
        )

    def write(self, rows: pd.DataFrame) -> None:
        stamped = rows.assign(**{CREATED_TS: self.created})[self.columns]
        records = stamped.astype(object).where(stamped.notna(), None).itertuples(index=False)
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            self.table, sql.SQL(", ").join(map(sql.Identifier, self.columns))
        )
        with self.conn.cursor().copy(statement) as copy:
            for record in records:
                copy.write_row(record)


def offline_table(config: SkewlessConfig, home: Path) -> OfflineTable:
    """The configured offline table of ``config`` under ``home``."""
    store = config.feature_store.offline_store
    if isinstance(store, PostgresOfflineStore):
        return PostgresOfflineTable(config, store)
    return ParquetOfflineTable(config, home / "offline" / config.project / SERIES_TABLE)


def _make_folders(folder: Path, made: list[Path]) -> None:
    """Make ``folder`` and its missing parents, outermost first, adding each to ``made`` as
    soon as it exists (those another writer made meanwhile are not ours to remove)."""
    for path in [p for p in (folder, *folder.parents) if not p.exists()][::-1]:
        with suppress(FileExistsError):
            path.mkdir()
            made.append(path)


def _remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (outermost first) that are still empty, innermost first."""
    for folder in reversed(folders):
        with suppress(OSError):  # not empty (another writer's rows), or already gone
            folder.rmdir()


def _is_open_at(handle: int, folder: Path) -> bool:
    """Whether ``handle`` is still the folder at ``folder`` (not one removed meanwhile)."""
    try:
        return os.path.samestat(os.fstat(handle), os.stat(folder))
    except FileNotFoundError:
        return False


def _where(conditions: list[str]) -> str:
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""
