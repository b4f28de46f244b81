"""Reading the monitoring database: the forecasts the servers logged, the gaps where their log
lost records, the runs of scheduled jobs, and any of its tables since a moment (the tables are in
:mod:`skewless.core.monitoring_db`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Column, Table, select
from sqlalchemy.engine import Engine

from skewless.core.monitoring_db import GAPS, JOB_RUNS, SERVED, naive_utc


def read_served(engine: Engine, since: datetime | None = None) -> pd.DataFrame:
    """Logged rows served at or after ``since`` (naive or aware UTC), oldest first."""
    return read_since(engine, SERVED, SERVED.c.served_at, since)


def read_gaps(engine: Engine, since: datetime | None = None) -> pd.DataFrame:
    """Losses of the request log that lasted until ``since`` or later, oldest first."""
    return read_since(engine, GAPS, GAPS.c.until, since)


def read_job_runs(engine: Engine, config: str, since: datetime | None = None) -> pd.DataFrame:
    """Runs of the scheduled jobs of config ``config`` started at or after ``since``, oldest
    first (skipped and missed ones included)."""
    runs = read_since(engine, JOB_RUNS, JOB_RUNS.c.started_at, since)
    return runs[runs["config"] == config].reset_index(drop=True)


def read_since(
    engine: Engine, table: Table, stamp: Column[Any], since: datetime | None
) -> pd.DataFrame:
    """Rows of a monitoring table whose ``stamp`` is at or after ``since``, oldest first."""
    query = select(table).order_by(table.c.id)
    if since is not None:
        query = query.where(stamp >= naive_utc(since))
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return pd.DataFrame([dict(row) for row in rows], columns=[c.name for c in table.columns])
