"""The request log: every forecast a server answers, appended to SQLite or PostgreSQL.

Requests only put their records on a queue; a writer process inserts them in batches, so the
request path pays for building and pickling a few dicts, and the JSON encoding and inserts never
hold the server's GIL. When the database is down or slower than the traffic, the queue fills to
``monitoring.request_log.max_pending`` requests and further records are dropped and counted
(``skewless_request_log_records_total{outcome="dropped"}``): serving never waits on its log.

One row per (request, entity): a forecast or the entity's error. Times are naive UTC. The same
database holds the ``alerts`` table that ``skewless monitor`` appends to.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from multiprocessing.queues import Queue, SimpleQueue
from pathlib import Path
from typing import Any

import pandas as pd
import pydantic_core
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Engine

from skewless.core.config import SkewlessConfig

logger = logging.getLogger(__name__)

METADATA = MetaData()
SERVED = Table(
    "served_forecasts",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(36), nullable=False, index=True),
    Column("served_at", DateTime, nullable=False, index=True),
    Column("endpoint", String(64), nullable=False),
    Column("model_name", String(256), nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("alias", String(64), nullable=False),
    Column("entity", String(256), nullable=False),
    Column("time_point", DateTime, nullable=True, doc="the requested point; null for 'now'"),
    Column("first_step", DateTime, nullable=True, doc="timestamp of the first forecast step"),
    Column("forecast", JSON, nullable=True, doc="{target: [values]}"),
    Column("lower", JSON, nullable=True, doc="{target: {level: [values]}}"),
    Column("upper", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("latency_ms", Float, nullable=False, doc="the whole request, inside the server"),
)
ALERTS = Table(
    "alerts",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("raised_at", DateTime, nullable=False, index=True),
    Column("config", String(256), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("value", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("message", Text, nullable=False),
)
_STOP = None  # on the queue: write what came before, then exit
_ORPHAN_SECONDS = 5.0  # how long a writer whose server died goes on writing what it has


def request_log_url(config: SkewlessConfig, home: Path) -> str:
    """``monitoring.request_log.url``, else SQLite under the home."""
    if config.monitoring.request_log.url:
        return config.monitoring.request_log.url
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'monitoring.db'}"


def monitoring_engine(url: str) -> Engine:
    """An engine on the monitoring database, its tables created."""
    engine = _engine(url)
    METADATA.create_all(engine)
    return engine


def _engine(url: str) -> Engine:
    """An engine on the monitoring database; SQLite in WAL mode so that several server
    processes and the monitor can use one file at once."""
    # pydantic's JSON encoder (Rust): the stdlib one took 6 of every 9 ms a 100-entity request
    # cost the writer.
    engine = create_engine(url, pool_pre_ping=True, json_serializer=_json)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    return engine


def served_records(
    request_id: str,
    endpoint: str,
    model: dict[str, Any],
    items: Sequence[dict[str, Any]],
    time_point: datetime | None,
    latency_s: float,
) -> list[dict[str, Any]]:
    """The log rows of one answered request (items as the service returns them)."""
    served_at = datetime.now(UTC).replace(tzinfo=None)
    point = None if time_point is None else time_point.astimezone(UTC).replace(tzinfo=None)
    common = {
        "request_id": request_id,
        "served_at": served_at,
        "endpoint": endpoint,
        "model_name": model["name"],
        "model_version": model["version"],
        "alias": model["alias"],
        "time_point": point,
        "latency_ms": 1000 * latency_s,
    }
    records = []
    for item in items:
        error = item.get("error")
        stamps = item.get("timestamps")
        records.append(
            {
                **common,
                "entity": str(item["entity"]),
                "first_step": _naive_utc(datetime.fromisoformat(stamps[0])) if stamps else None,
                "forecast": item.get("forecast"),
                "lower": item.get("lower"),
                "upper": item.get("upper"),
                "error": None if error is None else f"{type(error).__name__}: {error}",
            }
        )
    return records


class RequestLog:
    """Appends records from any thread; a writer process inserts them, and a thread here
    passes its outcomes (written, failed) on to ``on_outcome``."""

    def __init__(
        self,
        url: str,
        max_pending: int = 100_000,
        on_outcome: Callable[[str, int], None] | None = None,
    ) -> None:
        monitoring_engine(url).dispose()  # tables now, and a bad URL fails the server's start
        # spawn: forking a process that runs uvicorn's or Ray's threads is not safe.
        context = multiprocessing.get_context("spawn")
        self._pending: Queue[list[dict[str, Any]] | None] = context.Queue(maxsize=max_pending)
        self._outcomes: SimpleQueue[tuple[str, int] | None] = context.SimpleQueue()
        self._on_outcome = on_outcome or (lambda outcome, count: None)
        self._writer = context.Process(
            target=_write_forever,
            args=(url, self._pending, self._outcomes),
            name="skewless-request-log",
            daemon=True,
        )
        with _importable_from_here():
            self._writer.start()
        self._writer_lost = False
        self._relay = threading.Thread(
            target=self._relay_outcomes, daemon=True, name="request-log-outcomes"
        )
        self._relay.start()

    def append(self, records: list[dict[str, Any]]) -> None:
        """Queue one request's records; never blocks (a full queue, or a dead writer, drops
        them, counted)."""
        if self._writer.is_alive():
            try:
                self._pending.put_nowait(records)
                return
            except queue.Full:
                pass
        elif not self._writer_lost:
            self._writer_lost = True
            logger.error("request log: the writer exited (%s)", self._writer.exitcode)
        self._on_outcome("dropped", len(records))

    @property
    def pending(self) -> int:
        """Requests queued and not yet taken by the writer (not available on macOS)."""
        return self._pending.qsize()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer."""
        with suppress(queue.Full):  # full, with a dead writer: nothing left to stop
            self._pending.put(_STOP, timeout=timeout)
        self._writer.join(timeout)
        if self._writer.is_alive():
            logger.error("request log: the writer did not finish within %.0f s", timeout)
            self._writer.terminate()
        if self._writer.exitcode != 0:  # records nobody will read must not hold up our exit
            self._pending.cancel_join_thread()
        self._outcomes.put(None)  # the relay's stop, should the writer have died without one
        self._relay.join(timeout)

    def _relay_outcomes(self) -> None:
        while (outcome := self._outcomes.get()) is not None:
            self._on_outcome(*outcome)


@contextmanager
def _importable_from_here() -> Iterator[None]:
    """Have a spawned process import skewless from where this one did: spawn hands the child
    this process's sys.path, and a loaded model has put first on it the copy of skewless it was
    saved with (its MLflow code path), which may be another version."""
    here = str(Path(__file__).parents[2])
    sys.path.insert(0, here)
    try:
        yield
    finally:
        sys.path.remove(here)


def _write_forever(
    url: str,
    pending: Queue[list[dict[str, Any]] | None],
    outcomes: SimpleQueue[tuple[str, int] | None],
) -> None:
    """The writer process: insert batches until told to stop, or soon after the server is
    gone."""
    # Ctrl-C or a stop signal to the whole process group must not lose queued records: the
    # server's close() stops the writer after the last request.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_after_server, daemon=True).start()
    engine = _engine(url)
    stop = False
    while not stop:
        batch, stop = _drain(pending, pending.get())
        if batch:
            outcomes.put(_insert(engine, batch))
    engine.dispose()
    outcomes.put(None)


def _exit_after_server() -> None:
    """Exit a while after the server has gone without stopping the writer: killed in the middle
    of sending records, it leaves half a message in the pipe, on which the writer would wait
    forever. The while is for inserting what did arrive whole."""
    server = multiprocessing.parent_process()
    assert server is not None, "the writer runs in a process of its own"
    server.join()
    time.sleep(_ORPHAN_SECONDS)
    os._exit(0)


def _drain(
    pending: Queue[list[dict[str, Any]] | None], first: list[dict[str, Any]] | None
) -> tuple[list[dict[str, Any]], bool]:
    """Everything queued now, as one batch; and whether the stop marker was among it."""
    batch: list[dict[str, Any]] = []
    item = first
    while True:
        if item is _STOP:
            return batch, True
        batch.extend(item)
        try:
            item = pending.get_nowait()
        except queue.Empty:
            return batch, False


def _insert(engine: Engine, batch: list[dict[str, Any]]) -> tuple[str, int]:
    """Insert one batch; its outcome and size."""
    try:
        with engine.begin() as connection:
            connection.execute(insert(SERVED), batch)
    except Exception as exc:  # a log outage must not stop the writer, nor serving
        logger.error("request log: %d records not written: %s", len(batch), exc)
        return "failed", len(batch)
    return "written", len(batch)


def open_request_log(
    config: SkewlessConfig, home: Path, on_outcome: Callable[[str, int], None]
) -> RequestLog | None:
    """The configured request log, or None when ``monitoring.request_log.enabled`` is false."""
    settings = config.monitoring.request_log
    if not settings.enabled:
        return None
    url = request_log_url(config, home)
    return RequestLog(url, settings.max_pending, on_outcome)


def read_served(engine: Engine, since: datetime | None = None) -> pd.DataFrame:
    """Logged rows served at or after ``since`` (naive or aware UTC), oldest first."""
    return read_since(engine, SERVED, SERVED.c.served_at, since)


def read_since(
    engine: Engine, table: Table, stamp: Column[Any], since: datetime | None
) -> pd.DataFrame:
    """Rows of a monitoring table whose ``stamp`` is at or after ``since``, oldest first."""
    query = select(table).order_by(table.c.id)
    if since is not None:
        query = query.where(stamp >= _naive_utc(since))
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return pd.DataFrame([dict(row) for row in rows], columns=[c.name for c in table.columns])


def _json(value: Any) -> str:
    return pydantic_core.to_json(value).decode()


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
