"""A store that stops answering: one clear error per request, one log line per outage."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

import redis

from skewless.core.config import RedisOnlineStore, SkewlessConfig
from skewless.core.errors import StoreUnavailableError

logger = logging.getLogger(__name__)

# What a store that is down, unreachable or too slow raises (OSError covers refused and reset
# connections and socket timeouts).
STORE_FAILURES = (redis.RedisError, sqlite3.Error, OSError)


def describe_online_store(config: SkewlessConfig) -> str:
    """The online store as an operator knows it, without credentials."""
    online = config.feature_store.online_store
    if isinstance(online, RedisOnlineStore):
        parsed = urlparse(online.url)
        return f"Redis at {parsed.hostname}:{parsed.port or 6379}"
    return f"SQLite at {online.path}" if online.path else "the embedded SQLite online store"


class Outage:
    """Turns a store's failures into StoreUnavailableError and logs each outage's start and
    end (how long, how many failed calls) instead of every failed call."""

    def __init__(self, store: str) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._since: float | None = None
        self._failed = 0

    @contextmanager
    def guard(self) -> Iterator[None]:
        try:
            yield
        except STORE_FAILURES as exc:
            self._record_failure(exc)
            raise StoreUnavailableError(
                f"the online store ({self.store}) does not answer: {type(exc).__name__}: "
                f"{str(exc)[:200]}; retry shortly"
            ) from None
        self._record_success()

    def _record_failure(self, exc: BaseException) -> None:
        with self._lock:
            self._failed += 1
            if self._since is not None:
                return
            self._since = time.monotonic()
        logger.error(
            "online store %s stopped answering: %s: %s", self.store, type(exc).__name__, exc
        )

    def _record_success(self) -> None:
        if self._since is None:  # the common case costs one attribute read
            return
        with self._lock:
            if self._since is None:
                return
            lasted, failed = time.monotonic() - self._since, self._failed
            self._since, self._failed = None, 0
        logger.warning(
            "online store %s answers again after %.1f s (%d calls failed)",
            self.store,
            lasted,
            failed,
        )
