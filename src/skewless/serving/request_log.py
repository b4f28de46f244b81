"""The request log's tables: every forecast a server answers (SQLite or PostgreSQL), the gaps
where records were lost, and the alerts ``skewless monitor`` raises; and how to read them.

One row per (request, entity): a forecast or the entity's error. Times are naive UTC. The
writer process that appends to it is in :mod:`skewless.serving.log_writer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
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
    select,
)
from sqlalchemy.engine import Engine

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
GAPS = Table(
    "request_log_gaps",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("since", DateTime, nullable=False, index=True, doc="the first record lost"),
    Column("until", DateTime, nullable=False, doc="the last record lost"),
    Column("records", Integer, nullable=False),
    Column("reason", String(256), nullable=False),
)


def monitoring_engine(url: str) -> Engine:
    """An engine on the monitoring database, its tables created."""
    engine = writer_engine(url)
    METADATA.create_all(engine)
    return engine


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
