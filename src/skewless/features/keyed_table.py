"""A small table of rows keyed by entity (static covariates) or by entity and time (plans of
known-future covariates), where a key's new row replaces its old one.

Two backends, as for the series: one Parquet file, rewritten whole and renamed into place (a
reader sees the old table or the new one; these tables hold one row per entity, or per entity
and planned step, not the history), or one PostgreSQL table upserted in one transaction.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from skewless.core.config import PostgresOfflineStore, SkewlessConfig
from skewless.core.errors import FeatureStoreError
from skewless.core.schema import CREATED_TS, EVENT_TS


@dataclass(frozen=True)
class KeyedColumns:
    """A keyed table's columns: ``keys`` (the entity key first), then numbers and labels."""

    keys: list[str]
    numeric: list[str]
    labels: list[str]


class KeyedTable(ABC):
    """Rows keyed by their key columns, with number and label columns."""

    def __init__(self, config: SkewlessConfig, layout: KeyedColumns) -> None:
        self.config = config
        self.entity_key = config.data.entity_key
        self.keys, self.numeric, self.labels = layout.keys, layout.numeric, layout.labels

    @property
    def columns(self) -> list[str]:
        return [*self.keys, *self.numeric, *self.labels]

    @abstractmethod
    def upsert(self, rows: pd.DataFrame) -> None:
        """Store ``rows`` (validated), each replacing the stored row of its key."""

    @abstractmethod
    def read(self, entities: Sequence[Any] | None = None) -> pd.DataFrame:
        """The rows of ``entities`` (all when None); entities without one are absent."""

    @abstractmethod
    def updated_at(self) -> datetime | None:
        """When rows were last written (None: never), for incremental materialize."""

    @abstractmethod
    def changed_since(self, written_after: datetime) -> list[Any]:
        """Entities with rows written after ``written_after``."""


class ParquetKeyedTable(KeyedTable):
    """One Parquet file, rewritten whole and renamed into place."""

    def __init__(self, config: SkewlessConfig, layout: KeyedColumns, path: Path) -> None:
        super().__init__(config, layout)
        self.path = path

    def upsert(self, rows: pd.DataFrame) -> None:
        merged = rows[self.columns].assign(**{CREATED_TS: pd.Timestamp.now(tz="UTC")})
        if self.path.exists():
            old = pd.read_parquet(self.path)
            replaced = pd.MultiIndex.from_frame(old[self.keys]).isin(
                pd.MultiIndex.from_frame(rows[self.keys])
            )
            merged = pd.concat([old[~replaced], merged], ignore_index=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        merged.to_parquet(temporary, index=False)
        os.replace(temporary, self.path)

    def read(self, entities: Sequence[Any] | None = None) -> pd.DataFrame:
        """Only the rows of ``entities`` leave the file (pyarrow filters while it reads):
        materialize reads one batch of entities at a time."""
        if not self.path.exists() or (entities is not None and not len(entities)):
            return pd.DataFrame(columns=self.columns)
        chosen = None if entities is None else [(self.entity_key, "in", list(entities))]
        frame = pd.read_parquet(self.path, columns=self.columns, filters=chosen)
        return frame.sort_values(self.keys, kind="stable").reset_index(drop=True)

    def updated_at(self) -> datetime | None:
        found = self._scalar(f"SELECT max({CREATED_TS}) FROM read_parquet(?)", [])
        return None if found is None else pd.Timestamp(found).to_pydatetime()

    def changed_since(self, written_after: datetime) -> list[Any]:
        if not self.path.exists():
            return []
        with duckdb.connect() as connection:
            found = connection.execute(
                f'SELECT DISTINCT "{self.entity_key}" FROM read_parquet(?) WHERE {CREATED_TS} > ?',
                [str(self.path), written_after],
            ).fetchall()
        return sorted(row[0] for row in found)

    def _scalar(self, statement: str, parameters: list[Any]) -> Any:
        if not self.path.exists():
            return None
        with duckdb.connect() as connection:
            found = connection.execute(statement, [str(self.path), *parameters]).fetchone()
        return None if found is None else found[0]


class PostgresKeyedTable(KeyedTable):
    """One PostgreSQL table with the keys as its primary key; an upsert is one transaction."""

    def __init__(
        self, config: SkewlessConfig, layout: KeyedColumns, store: PostgresOfflineStore, name: str
    ) -> None:
        super().__init__(config, layout)
        self.store = store
        self.name = f"{config.project}_{name}"
        self.ident = sql.Identifier(store.db_schema, self.name)

    def upsert(self, rows: pd.DataFrame) -> None:
        names = [*self.columns, CREATED_TS]
        insert = sql.SQL(
            "INSERT INTO {table} ({names}) VALUES ({values}) "
            "ON CONFLICT ({keys}) DO UPDATE SET {updates}"
        ).format(
            table=self.ident,
            names=sql.SQL(", ").join(map(sql.Identifier, names)),
            values=sql.SQL(", ").join(sql.Placeholder() * len(names)),
            keys=sql.SQL(", ").join(map(sql.Identifier, self.keys)),
            updates=sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                for c in names[len(self.keys) :]
            ),
        )
        now = pd.Timestamp.now(tz="UTC").to_pydatetime()
        records = [
            [plain(v) for v in record] + [now]
            for record in rows[self.columns].itertuples(index=False)
        ]
        with self._connect() as conn, conn.transaction():
            conn.execute(self._create_statement())
            with conn.cursor() as cursor:
                cursor.executemany(insert, records)

    def _create_statement(self) -> sql.Composed:
        entity = "bigint" if self.config.data.entity_type == "int64" else "text"
        types = {self.entity_key: entity, EVENT_TS: "timestamptz"}
        columns = [
            *[sql.SQL("{} {}").format(sql.Identifier(k), sql.SQL(types[k])) for k in self.keys],
            *[sql.SQL("{} double precision").format(sql.Identifier(c)) for c in self.numeric],
            *[sql.SQL("{} text").format(sql.Identifier(c)) for c in self.labels],
            sql.SQL("{} timestamptz NOT NULL").format(sql.Identifier(CREATED_TS)),
            sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, self.keys))),
        ]
        return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
            self.ident, sql.SQL(", ").join(columns)
        )

    def read(self, entities: Sequence[Any] | None = None) -> pd.DataFrame:
        statement = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, self.columns)), self.ident
        )
        parameters: list[Any] = []
        if entities is not None:
            statement += sql.SQL(" WHERE {} = ANY(%s)").format(sql.Identifier(self.entity_key))
            parameters.append([plain(e) for e in entities])
        statement += sql.SQL(" ORDER BY {}").format(
            sql.SQL(", ").join(map(sql.Identifier, self.keys))
        )
        with self._connect() as conn:
            if not self._exists(conn):
                return pd.DataFrame(columns=self.columns)
            rows = conn.execute(statement, parameters).fetchall()
        frame = pd.DataFrame(rows, columns=self.columns)
        for column in self.numeric:
            frame[column] = frame[column].astype(np.float64)
        if EVENT_TS in self.keys:
            frame[EVENT_TS] = pd.to_datetime(frame[EVENT_TS], utc=True)
        return frame

    def updated_at(self) -> datetime | None:
        with self._connect() as conn:
            if not self._exists(conn):
                return None
            found = conn.execute(
                sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(CREATED_TS), self.ident)
            ).fetchone()
        return None if found is None else found[0]

    def changed_since(self, written_after: datetime) -> list[Any]:
        with self._connect() as conn:
            if not self._exists(conn):
                return []
            found = conn.execute(
                sql.SQL("SELECT DISTINCT {} FROM {} WHERE {} > %s ORDER BY 1").format(
                    sql.Identifier(self.entity_key), self.ident, sql.Identifier(CREATED_TS)
                ),
                [written_after],
            ).fetchall()
        return [row[0] for row in found]

    def _exists(self, conn: psycopg.Connection[Any]) -> bool:
        found = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", [self.ident.as_string(conn)]
        ).fetchone()
        return bool(found and found[0])

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.store.dsn, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise FeatureStoreError(
                f"cannot reach the PostgreSQL offline store for table {self.name}: {exc}"
            ) from exc


def plain(value: Any) -> Any:
    """A value psycopg can adapt: numpy and pandas scalars as Python ones, NA as None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value.item() if isinstance(value, np.generic) else value


def keyed_table(config: SkewlessConfig, home: Path, name: str, layout: KeyedColumns) -> KeyedTable:
    """The table ``name`` of ``config``'s project, in its offline store's backend."""
    store = config.feature_store.offline_store
    if isinstance(store, PostgresOfflineStore):
        return PostgresKeyedTable(config, layout, store, name)
    path = home / "offline" / config.project / name / f"{name}.parquet"
    return ParquetKeyedTable(config, layout, path)
