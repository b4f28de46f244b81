"""The monitoring database's tables and engines: every forecast a server answers (SQLite or
PostgreSQL), the gaps where the request log lost records, the alerts ``skewless monitor``
raises, and the runs of scheduled jobs with the leases that keep each job to one run at a time.

They sit here, below serving and monitoring, so that the servers' writer
(:mod:`skewless.serving.log_writer`) and monitoring's readers (:mod:`skewless.monitoring.store`)
share one definition without serving importing monitoring. Times are naive UTC.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

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
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

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
    Column(
        "time_point",
        DateTime,
        nullable=True,
        doc="the requested point; null for 'latest' and raw rows",
    ),
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
GAPS = Table(
    "request_log_gaps",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("since", DateTime, nullable=False, index=True, doc="the first record lost"),
    Column("until", DateTime, nullable=False, doc="the last record lost"),
    Column("records", Integer, nullable=False),
    Column("reason", String(256), nullable=False),
)

JOB_RUNS = Table(
    "job_runs",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("config", String(64), nullable=False),
    Column("job", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("scheduled_for", DateTime, nullable=False, doc="the cron time this run is for"),
    Column("started_at", DateTime, nullable=False, index=True),
    Column("finished_at", DateTime, nullable=True),
    Column(
        "outcome",
        String(16),
        nullable=False,
        doc="running, succeeded, failed, skipped (the previous run still ran), missed (later "
        "than the misfire grace), abandoned (its scheduler died while it ran)",
    ),
    Column("attempts", Integer, nullable=False),
    Column("detail", Text, nullable=True, doc="the last error, or why it was skipped"),
    Column("runner", String(256), nullable=False, doc="host:pid of the scheduler"),
    # One row per (job, cron time): the insert that claims a run fails for a second scheduler.
    UniqueConstraint("config", "job", "scheduled_for", name="one_run_per_time"),
)
JOB_LEASES = Table(
    "job_leases",
    METADATA,
    Column("config", String(64), primary_key=True),
    Column("job", String(64), primary_key=True),
    Column("holder", String(256), nullable=True, doc="the run holding the job; null: free"),
    Column("run_id", Integer, nullable=True),
    Column("expires_at", DateTime, nullable=True, doc="renewed while the run lives"),
)


def monitoring_engine(url: str) -> Engine:
    """An engine on the monitoring database, its tables created."""
    engine = writer_engine(url)
    create_racing(lambda: METADATA.create_all(engine))
    return engine


def create_racing(create: Callable[[], None], attempts: int = 5) -> None:
    """Run ``create`` (CREATE TABLE after a check), again when another process created a table
    between the check and the CREATE (two schedulers or servers starting on a new database)."""
    for attempt in range(1, attempts + 1):
        try:
            create()
            return
        except DBAPIError:
            if attempt == attempts:
                raise
            time.sleep(0.1 * attempt)


def writer_engine(url: str) -> Engine:
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


def naive_utc(moment: datetime) -> datetime:
    """How the tables keep a time: UTC without its zone (a naive time is taken as UTC)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _json(value: Any) -> str:
    return pydantic_core.to_json(value).decode()
