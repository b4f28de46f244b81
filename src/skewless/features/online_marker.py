"""A marker the online store keeps beside the windows: when the last materialization wrote them.

Materialize writes it last; a store that restarted without its data (Redis without persistence)
has lost the marker with the windows. Incremental materialization then rewrites every window
instead of trusting its watermark, and servers report the store as not ready. The marker is our
own key (a Redis string, a one-row SQLite table) beside Feast's tables, read in one cheap call.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Protocol, cast

from skewless.core.config import RedisOnlineStore
from skewless.features.online import redis_client
from skewless.features.repo import FeastRepo


class OnlineMarker(Protocol):
    def write(self, materialized_until: datetime) -> None: ...

    def read(self) -> datetime | None:
        """When the windows were last materialized up to; None when the store has no marker."""
        ...


class RedisMarker:
    def __init__(self, repo: FeastRepo) -> None:
        online = repo.config.feature_store.online_store
        assert isinstance(online, RedisOnlineStore)
        self._client = redis_client(online)
        self._key = f"skewless:{repo.config.project}:materialized_until"

    def write(self, materialized_until: datetime) -> None:
        self._client.set(self._key, materialized_until.isoformat())

    def read(self) -> datetime | None:
        value = cast(bytes | None, self._client.get(self._key))
        return None if value is None else datetime.fromisoformat(value.decode())


class SqliteMarker:
    _TABLE = "skewless_materialized"

    def __init__(self, repo: FeastRepo) -> None:
        self._path = repo.sqlite_path

    def write(self, materialized_until: datetime) -> None:
        with sqlite3.connect(self._path, timeout=30) as connection:
            connection.execute(f"CREATE TABLE IF NOT EXISTS {self._TABLE} (until TEXT NOT NULL)")
            connection.execute(f"DELETE FROM {self._TABLE}")
            connection.execute(
                f"INSERT INTO {self._TABLE} VALUES (?)", [materialized_until.isoformat()]
            )
        connection.close()

    def read(self) -> datetime | None:
        if not self._path.exists():
            return None
        connection = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, timeout=30)
        try:
            row = connection.execute(f"SELECT until FROM {self._TABLE}").fetchone()
        except sqlite3.OperationalError:  # no such table: never materialized
            return None
        finally:
            connection.close()
        return None if row is None else datetime.fromisoformat(row[0])


def online_marker(repo: FeastRepo) -> OnlineMarker:
    if isinstance(repo.config.feature_store.online_store, RedisOnlineStore):
        return RedisMarker(repo)
    return SqliteMarker(repo)
