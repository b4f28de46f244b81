"""Static covariates: what describes an entity rather than a moment (type, region, capacity).

They live in a table of their own, one row per entity, beside the series: ``skewless ingest``
validates and upserts them (a new row for an entity replaces its old one), training joins them
to every row of the entity, and materialize packs them into the entity's online window, so
serving reads them in the same single online read as the window itself.

Numbers are stored as float64, labels as text; a label becomes an integer code only in the
preprocessor, fitted on training data like every other learned state.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from skewless.core.config import PostgresOfflineStore, SkewlessConfig, StaticConfig
from skewless.core.errors import FeatureStoreError
from skewless.core.schema import CREATED_TS
from skewless.features.sources import describe_source, read_source
from skewless.features.validation import SOURCE_ROW, Findings, parse_entities, rows_text

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
    missing = [c for c in [key, *static.columns] if c not in raw.columns]
    if missing:
        findings.errors.append(
            f"missing column(s) {missing}; the source has "
            f"{[c for c in raw.columns if c != SOURCE_ROW]}"
        )
        return pd.DataFrame()
    if raw.empty:
        findings.errors.append("the source has no rows")
        return pd.DataFrame()
    rows = raw[SOURCE_ROW].to_numpy(np.int64) if SOURCE_ROW in raw else np.arange(1, len(raw) + 1)
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


class StaticTable(ABC):
    """The stored static covariates of one project."""

    def __init__(self, config: SkewlessConfig) -> None:
        self.config = config
        self.entity_key = config.data.entity_key
        self.static = statics_of(config)

    @abstractmethod
    def upsert(self, rows: pd.DataFrame) -> None:
        """Store ``rows`` (from :func:`read_statics`), replacing the entities' old rows."""

    @abstractmethod
    def read(self, entities: Sequence[Any] | None = None) -> pd.DataFrame:
        """[entity, numeric..., categorical...] of ``entities`` (all when None) that have a
        row; entities without one are simply absent."""

    @abstractmethod
    def updated_at(self) -> datetime | None:
        """When rows were last written (None: never), for incremental materialize."""

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


class ParquetStaticTable(StaticTable):
    """One Parquet file, rewritten whole (statics are one row per entity: small) and renamed
    into place, so a reader sees the old table or the new one."""

    def __init__(self, config: SkewlessConfig, path: Path) -> None:
        super().__init__(config)
        self.path = path

    def upsert(self, rows: pd.DataFrame) -> None:
        merged = rows.assign(**{CREATED_TS: pd.Timestamp.now(tz="UTC")})
        if self.path.exists():
            old = pd.read_parquet(self.path)
            kept = old[~old[self.entity_key].isin(rows[self.entity_key])]
            merged = pd.concat([kept, merged], ignore_index=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        merged.to_parquet(temporary, index=False)
        os.replace(temporary, self.path)

    def read(self, entities: Sequence[Any] | None = None) -> pd.DataFrame:
        columns = [self.entity_key, *self.static.columns]
        if not self.path.exists():
            return pd.DataFrame(columns=columns)
        frame = pd.read_parquet(self.path, columns=columns)
        return frame if entities is None else frame[frame[self.entity_key].isin(entities)]

    def updated_at(self) -> datetime | None:
        if not self.path.exists():
            return None
        with duckdb.connect() as connection:
            found = connection.execute(
                f"SELECT max({CREATED_TS}) FROM read_parquet(?)", [str(self.path)]
            ).fetchone()
        return None if found is None or found[0] is None else pd.Timestamp(found[0]).to_pydatetime()


class PostgresStaticTable(StaticTable):
    """One PostgreSQL table keyed by entity; an upsert is one transaction."""

    def __init__(self, config: SkewlessConfig, store: PostgresOfflineStore) -> None:
        super().__init__(config)
        self.store = store
        self.ident = sql.Identifier(store.db_schema, f"{config.project}_{STATIC_TABLE}")

    def upsert(self, rows: pd.DataFrame) -> None:
        key = "bigint" if self.config.data.entity_type == "int64" else "text"
        columns = [
            sql.SQL("{} {} PRIMARY KEY").format(sql.Identifier(self.entity_key), sql.SQL(key)),
            *[
                sql.SQL("{} double precision").format(sql.Identifier(c))
                for c in self.static.numeric
            ],
            *[sql.SQL("{} text").format(sql.Identifier(c)) for c in self.static.categorical],
            sql.SQL("{} timestamptz NOT NULL").format(sql.Identifier(CREATED_TS)),
        ]
        names = [self.entity_key, *self.static.columns, CREATED_TS]
        insert = sql.SQL(
            "INSERT INTO {table} ({names}) VALUES ({values}) "
            "ON CONFLICT ({key}) DO UPDATE SET {updates}"
        ).format(
            table=self.ident,
            names=sql.SQL(", ").join(map(sql.Identifier, names)),
            values=sql.SQL(", ").join(sql.Placeholder() * len(names)),
            key=sql.Identifier(self.entity_key),
            updates=sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in names[1:]
            ),
        )
        now = pd.Timestamp.now(tz="UTC").to_pydatetime()
        records = [
            [_plain(v) for v in record] + [now]
            for record in rows[[self.entity_key, *self.static.columns]].itertuples(index=False)
        ]
        with self._connect() as conn, conn.transaction():
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                    self.ident, sql.SQL(", ").join(columns)
                )
            )
            with conn.cursor() as cursor:
                cursor.executemany(insert, records)

    def read(self, entities: Sequence[Any] | None = None) -> pd.DataFrame:
        names = [self.entity_key, *self.static.columns]
        statement = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, names)), self.ident
        )
        parameters: list[Any] = []
        if entities is not None:
            statement += sql.SQL(" WHERE {} = ANY(%s)").format(sql.Identifier(self.entity_key))
            parameters.append([_plain(e) for e in entities])
        with self._connect() as conn:
            if not self._exists(conn):
                return pd.DataFrame(columns=names)
            frame = pd.DataFrame(conn.execute(statement, parameters).fetchall(), columns=names)
        for column in self.static.numeric:
            frame[column] = frame[column].astype(np.float64)
        return frame

    def updated_at(self) -> datetime | None:
        with self._connect() as conn:
            if not self._exists(conn):
                return None
            found = conn.execute(
                sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(CREATED_TS), self.ident)
            ).fetchone()
        return None if found is None else found[0]

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
                f"cannot reach the PostgreSQL offline store for static covariates: {exc}"
            ) from exc


def _plain(value: Any) -> Any:
    """A value psycopg can adapt: numpy and pandas scalars as Python ones, NA as None."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def static_table(config: SkewlessConfig, home: Path) -> StaticTable | None:
    """The configured static table of ``config`` under ``home`` (None: no statics)."""
    if config.data.static is None:
        return None
    store = config.feature_store.offline_store
    if isinstance(store, PostgresOfflineStore):
        return PostgresStaticTable(config, store)
    return ParquetStaticTable(
        config, home / "offline" / config.project / STATIC_TABLE / "static.parquet"
    )
