"""Reading packed windows of many entities from the online store in one call.

Four readers return the same blobs, in request order (None for unknown entities):

- ``get_online_features``: Feast's public API; converts every value to response protos.
- ``online_read``: Feast's online-store layer, one level down, for any online store.
- ``redis_hash``: for Redis, one pipelined HGET per entity on the keys and fields Feast's Redis
  store writes, with the encoded entity keys cached; no per-call proto work besides one parse.
- ``sqlite_table``: for SQLite, one SELECT of the window feature on the table Feast's SQLite
  store writes, on Feast's own connection, with the encoded entity keys cached.

``benchmarks/online_read.py`` measures them side by side; :func:`window_reader` picks the
fastest one that the configured store supports. Everything below Feast's public API goes
through the adapters :mod:`~skewless.features.feast_online`,
:mod:`~skewless.features.feast_sqlite` and :mod:`~skewless.features.feast_redis`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Protocol

import redis

from skewless.core.config import RedisOnlineStore
from skewless.features.feast_online import EntityKeys, OnlineReadFeature
from skewless.features.feast_redis import RedisFeatureLayout
from skewless.features.feast_sqlite import SqliteFeatureTable
from skewless.features.repo import WINDOW_FEATURE, WINDOW_VIEW, FeastRepo

_COMMAND_CACHE_SIZE = 1 << 17


class WindowReader(Protocol):
    def read(self, entities: Sequence[Any]) -> list[bytes | None]:
        """Packed windows of ``entities``, in order; None where an entity has none."""
        ...


def entity_keys(repo: FeastRepo) -> EntityKeys:
    """How the online store keys the config's entities."""
    return EntityKeys.of(repo.store, repo.config.data.entity_key, repo.config.data.entity_type)


class GetOnlineFeaturesReader:
    """Feast's public online API."""

    def __init__(self, repo: FeastRepo) -> None:
        self._store = repo.store
        self._key = repo.config.data.entity_key
        self._feature = f"{WINDOW_VIEW}:{WINDOW_FEATURE}"

    def read(self, entities: Sequence[Any]) -> list[bytes | None]:
        response = self._store.get_online_features(
            features=[self._feature], entity_rows=[{self._key: e} for e in entities]
        )
        return [blob or None for blob in response.to_dict()[WINDOW_FEATURE]]


def online_read_reader(repo: FeastRepo) -> WindowReader:
    """Feast's online-store layer, which skips the response protos; works for every store."""
    return OnlineReadFeature(repo.store, WINDOW_VIEW, WINDOW_FEATURE, entity_keys(repo))


def redis_client(online: RedisOnlineStore) -> redis.Redis:
    """A client of the online store that gives up after ``timeout_seconds``, never hangs."""
    return redis.Redis.from_url(
        online.url,
        socket_timeout=online.timeout_seconds,
        socket_connect_timeout=online.timeout_seconds,
    )


class RedisHashReader:
    """Redis only: read the hash fields Feast's Redis store wrote, in one round trip.

    The HGET of each entity is encoded once and cached; a read sends the cached commands in one
    write on a pooled redis-py connection and reads the replies back, skipping the pipeline's
    per-command bookkeeping, which costs as much as the transfer itself (benchmarks/).
    """

    def __init__(self, repo: FeastRepo) -> None:
        online = repo.config.feature_store.online_store
        assert isinstance(online, RedisOnlineStore)
        self.client = redis_client(online)
        self._layout = RedisFeatureLayout(repo.store, WINDOW_VIEW, WINDOW_FEATURE)
        self.field = self._layout.field
        serialized = entity_keys(repo).serializer()
        pack = self.client.connection_pool.connection_class().pack_command

        def redis_key(entity: Any) -> bytes:
            return self._layout.key(serialized(entity))

        @lru_cache(maxsize=_COMMAND_CACHE_SIZE)
        def command(entity: Any) -> bytes:
            return b"".join(pack("HGET", redis_key(entity), self.field))

        self.redis_key = redis_key
        self._command = command

    def read(self, entities: Sequence[Any]) -> list[bytes | None]:
        replies = self.fetch(entities)
        return [None if reply is None else self._layout.value(reply) for reply in replies]

    def fetch(self, entities: Sequence[Any]) -> list[bytes | None]:
        """The serialized values, as Redis returns them."""
        payload = b"".join([self._command(entity) for entity in entities])
        pool = self.client.connection_pool
        for attempt in (1, 2):  # a pooled connection may have gone stale: one fresh retry
            connection = pool.get_connection()
            try:
                connection.send_packed_command([payload], check_health=False)
                return [connection.read_response() for _ in entities]
            except redis.ConnectionError:
                connection.disconnect()
                if attempt == 2:
                    raise
            except BaseException:
                connection.disconnect()  # replies left unread would corrupt the next call
                raise
            finally:
                pool.release(connection)
        raise AssertionError("unreachable")


class SqliteTableReader:
    """SQLite only: one SELECT of the window feature on the table Feast's SQLite store wrote,
    on Feast's own connection, keys from a cache and no timestamp parsed: 2.5x faster than
    ``online_read`` at 100 entities (benchmarks/online_read.py)."""

    def __init__(self, repo: FeastRepo) -> None:
        self._table = SqliteFeatureTable(repo.store, WINDOW_VIEW, WINDOW_FEATURE)
        self._key = entity_keys(repo).serializer()

    def read(self, entities: Sequence[Any]) -> list[bytes | None]:
        return self._table.read([self._key(entity) for entity in entities])


READERS: dict[str, Callable[[FeastRepo], WindowReader]] = {
    "get_online_features": GetOnlineFeaturesReader,
    "online_read": online_read_reader,
    "redis_hash": RedisHashReader,
    "sqlite_table": SqliteTableReader,
}
# online_store.type -> the reader that works on that store only, and is the fastest there
STORE_READERS = {"redis": "redis_hash", "sqlite": "sqlite_table"}


def readers_for(store: str) -> list[str]:
    """The readers that work on an online store of type ``store``."""
    return [m for m in READERS if m not in STORE_READERS.values() or STORE_READERS[store] == m]


def window_reader(repo: FeastRepo, method: str | None = None) -> WindowReader:
    """The named reader, or the fastest one the configured online store supports."""
    store = repo.config.feature_store.online_store.type
    method = method or STORE_READERS[store]
    for needed, only_there in STORE_READERS.items():
        if method == only_there and store != needed:
            raise ValueError(f"the {method} reader needs feature_store.online_store.type: {needed}")
    return READERS[method](repo)
