"""The offline table: ingested rows as append-only Parquet part files, queried with DuckDB.

Append-only parts make ingestion atomic (a part appears whole, by rename, or not at all) and
cheap (old parts are never rewritten). Feast reads the same files through a glob FileSource;
skewless reads them with DuckDB for what Feast's offline API does not offer (the last W rows per
entity, the rows changed since a watermark).
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from skewless.features.validation import CREATED_TS, EVENT_TS


class OfflineTable:
    """All rows of one Feast project's series, keyed by (entity, event timestamp)."""

    def __init__(self, folder: Path, entity_key: str) -> None:
        self.folder = folder
        self.entity_key = entity_key

    @property
    def pattern(self) -> str:
        """The glob Feast's FileSource and DuckDB read."""
        return str(self.folder / "part-*.parquet")

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def is_empty(self) -> bool:
        return not self.parts()

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Serialise writers, so that two ingests cannot both add the same rows."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def append(self, rows: pd.DataFrame) -> Path:
        """Write ``rows`` as a new part, stamped with the ingestion time."""
        self.folder.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        stamped = rows.assign(**{CREATED_TS: pd.Timestamp(now)})
        table = pa.Table.from_pandas(stamped, preserve_index=False)
        name = f"part-{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
        temporary = self.folder / f".{name}.tmp"
        pq.write_table(table, temporary, coerce_timestamps="us", allow_truncated_timestamps=True)
        os.replace(temporary, self.folder / name)
        return self.folder / name

    def rows_between(self, entities: Sequence[Any], start: datetime, end: datetime) -> pd.DataFrame:
        """Stored rows of ``entities`` with start <= event timestamp <= end."""
        return self._query(
            f"SELECT * FROM rows WHERE {self._key} IN (SELECT unnest(?)) "
            f"AND {EVENT_TS} BETWEEN ? AND ? ORDER BY {self._key}, {EVENT_TS}",
            [list(entities), start, end],
        )

    def last_before(self, entities: Sequence[Any], start: datetime) -> pd.DataFrame:
        """Per entity, the latest stored event timestamp earlier than ``start``."""
        return self._query(
            f"SELECT {self._key}, max({EVENT_TS}) AS {EVENT_TS} FROM rows "
            f"WHERE {self._key} IN (SELECT unnest(?)) AND {EVENT_TS} < ? GROUP BY {self._key}",
            [list(entities), start],
        )

    def history(
        self, entities: Sequence[Any] | None, start: datetime | None, end: datetime | None
    ) -> pd.DataFrame:
        """Rows of ``entities`` (all when None) in [start, end], sorted by entity and time."""
        conditions, parameters = self._entity_filter(entities)
        if start is not None:
            conditions.append(f"{EVENT_TS} >= ?")
            parameters.append(start)
        if end is not None:
            conditions.append(f"{EVENT_TS} <= ?")
            parameters.append(end)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        return self._query(
            f"SELECT * FROM rows {where} ORDER BY {self._key}, {EVENT_TS}", parameters
        )

    def tail(self, size: int, entities: Sequence[Any] | None = None) -> pd.DataFrame:
        """The last ``size`` rows of each entity (all when None), sorted by entity and time."""
        conditions, parameters = self._entity_filter(entities)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        return self._query(
            f"SELECT * FROM rows {where} "
            f"QUALIFY row_number() OVER (PARTITION BY {self._key} ORDER BY {EVENT_TS} DESC) <= ? "
            f"ORDER BY {self._key}, {EVENT_TS}",
            [*parameters, size],
        )

    def entities(self) -> list[Any]:
        """Every entity with at least one row."""
        frame = self._query(f"SELECT DISTINCT {self._key} FROM rows ORDER BY {self._key}", [])
        return frame[self.entity_key].tolist() if not frame.empty else []

    def changed_since(self, created_after: datetime) -> tuple[list[Any], datetime | None]:
        """Entities with rows ingested after ``created_after``, and those rows' earliest time."""
        frame = self._query(
            f"SELECT {self._key}, min({EVENT_TS}) AS earliest FROM rows WHERE {CREATED_TS} > ? "
            f"GROUP BY {self._key} ORDER BY {self._key}",
            [created_after],
        )
        if frame.empty:
            return [], None
        return frame[self.entity_key].tolist(), frame["earliest"].min().to_pydatetime()

    def bounds(self) -> tuple[datetime, datetime, datetime]:
        """Earliest and latest event timestamp, and latest ingestion time."""
        frame = self._query(
            f"SELECT min({EVENT_TS}) AS lo, max({EVENT_TS}) AS hi, max({CREATED_TS}) AS created "
            "FROM rows",
            [],
        )
        row = frame.iloc[0]
        return row["lo"].to_pydatetime(), row["hi"].to_pydatetime(), row["created"].to_pydatetime()

    @property
    def _key(self) -> str:
        return f'"{self.entity_key}"'

    def _entity_filter(self, entities: Sequence[Any] | None) -> tuple[list[str], list[Any]]:
        if entities is None:
            return [], []
        return [f"{self._key} IN (SELECT unnest(?))"], [list(entities)]

    def _query(self, statement: str, parameters: list[Any]) -> pd.DataFrame:
        if self.is_empty():
            return pd.DataFrame()
        with duckdb.connect() as connection:
            connection.execute("SET TimeZone = 'UTC'")
            connection.execute(
                "CREATE VIEW rows AS SELECT * FROM "
                f"read_parquet('{self.pattern}', union_by_name=true)"
            )
            return connection.execute(statement, parameters).df()
