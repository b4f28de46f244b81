"""What monitoring looks at, gathered once: the request log of the recent period, the offline
rows the served forecasts read, and each logged forecast step next to its actual value; and,
a batch of entities at a time, the training rows each entity's drift is measured against.

Actuals come from the offline store as they are ingested or pushed, so a forecast's outcome
appears once its hour has been recorded; steps not recorded yet are simply absent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skewless.core.config import SkewlessConfig
from skewless.core.frequency import Frequency
from skewless.core.monitoring_db import monitoring_engine
from skewless.core.schema import EVENT_TS
from skewless.core.stores import request_log_url
from skewless.features.offline import offline_table
from skewless.monitoring.store import read_gaps, read_served

ENTITY, STEP, TARGET, VERSION = "entity", "step", "target", "model_version"


@dataclass(frozen=True)
class Observations:
    since: datetime
    until: datetime
    served: pd.DataFrame  # request log rows of the period: forecasts and per-entity errors
    inputs: pd.DataFrame  # offline rows inside the lookback windows of the served forecasts
    outcomes: pd.DataFrame  # per forecast step and target: forecast, bounds, actual
    levels: list[str]  # interval levels in the log, e.g. ["80", "95"]
    gaps: pd.DataFrame  # records the request log lost in the period: since, until, records, why

    @property
    def forecasts(self) -> pd.DataFrame:
        return self.served[self.served["error"].isna()]


def observe(
    config: SkewlessConfig, home: Path, lookback: int, until: datetime | None = None
) -> Observations:
    """The period ``monitoring.period`` up to ``until`` (default now); ``lookback`` is the
    served bundle's, which says how far back each forecast's inputs reach."""
    until = until or datetime.now(UTC)
    since = until - pd.Timedelta(config.monitoring.period).to_pytimedelta()
    engine = monitoring_engine(request_log_url(config, home))
    served = read_served(engine, since)
    served = served[served["served_at"] <= until.astimezone(UTC).replace(tzinfo=None)]
    gaps = read_gaps(engine, since)
    served = served.assign(entity=_typed_entities(served[ENTITY], config))
    forecasts = served[served["error"].isna()]  # Observations.forecasts, before it exists
    grid = config.data.parsed_frequency
    table = offline_table(config, home)
    inputs = _inputs(table, forecasts, grid, lookback, config.data.entity_key)
    steps, levels = _steps(forecasts, grid)
    outcomes = _with_actuals(steps, table, config)
    return Observations(since, until, served, inputs, outcomes, levels, gaps)


def training_rows(
    config: SkewlessConfig,
    home: Path,
    entities: Sequence[Any],
    until: datetime | None,
    periods: int | None,
) -> Iterator[pd.DataFrame]:
    """The rows a version's drift reference was taken from, per entity: its last ``periods``
    rows up to ``until`` (the version's last training time; None: all), read back from the
    offline store (append-only, so as training saw them) ``training.batch_entities`` at a time."""
    table, size = offline_table(config, home), config.training.batch_entities
    for first in range(0, len(entities), size):
        batch = _plain(entities[first : first + size])
        yield (
            table.history(batch, None, until)
            if periods is None
            else table.tail(periods, batch, until)
        )


def _typed_entities(entities: pd.Series, config: SkewlessConfig) -> pd.Series:
    """The log keeps entities as text; the stores keep the config's type."""
    if config.data.entity_type == "int64":
        return pd.to_numeric(entities, errors="coerce").astype("Int64")
    return entities


def _plain(entities: Any) -> list[Any]:
    """Entity ids as Python values, which the offline store's queries bind."""
    return [int(e) if isinstance(e, np.integer) else e for e in entities]


def _origins(forecasts: pd.DataFrame, grid: Frequency) -> pd.DatetimeIndex:
    """Each forecast's last input timestamp (UTC): one step before its first forecast step."""
    first_steps = pd.DatetimeIndex(pd.to_datetime(forecasts["first_step"]))
    return grid.shift(first_steps.tz_localize(UTC), -1)


def _after(grid: Frequency, origin: pd.Timestamp, horizon: int) -> pd.DatetimeIndex:
    """The ``horizon`` timestamps forecast from ``origin``."""
    steps = np.arange(1, horizon + 1)
    return pd.DatetimeIndex(grid.ahead(pd.DatetimeIndex([origin]), steps)[0]).tz_localize(UTC)


def _inputs(
    table: Any, forecasts: pd.DataFrame, grid: Frequency, lookback: int, key: str
) -> pd.DataFrame:
    """Offline rows each served entity's forecasts read: from its earliest window start to its
    latest origin."""
    if forecasts.empty:
        return pd.DataFrame()
    origins = _origins(forecasts, grid)
    spans = (
        pd.DataFrame({ENTITY: forecasts[ENTITY], "end": origins})
        .groupby(ENTITY)["end"]
        .agg(["min", "max"])
    )
    spans["min"] = grid.shift(pd.DatetimeIndex(spans["min"]), -(lookback - 1))
    rows = table.history(
        _plain(spans.index),
        spans["min"].min().to_pydatetime(),
        spans["max"].max().to_pydatetime(),
    )
    if rows.empty:
        return rows
    bounds = spans.reindex(rows[key].to_numpy())
    inside = (rows[EVENT_TS].to_numpy() >= bounds["min"].to_numpy()) & (
        rows[EVENT_TS].to_numpy() <= bounds["max"].to_numpy()
    )
    return rows[inside].reset_index(drop=True)


def _steps(forecasts: pd.DataFrame, grid: Frequency) -> tuple[pd.DataFrame, list[str]]:
    """One row per (logged forecast, horizon step, target): timestamp, forecast and bounds."""
    records: dict[str, list[Any]] = {}
    levels: list[str] = []
    origins = _origins(forecasts, grid)
    for row, origin in zip(forecasts.to_dict("records"), origins, strict=True):
        for target, values in row["forecast"].items():
            horizon = len(values)
            bounds = {
                f"{side}_{level}": row[side][target][level]
                for side in ("lower", "upper")
                for level in row[side][target]
            }
            levels = levels or sorted({name.split("_", 1)[1] for name in bounds}, key=float)
            columns = {
                "request_id": [row["request_id"]] * horizon,
                VERSION: [row[VERSION]] * horizon,
                ENTITY: [row[ENTITY]] * horizon,
                "served_at": [row["served_at"]] * horizon,
                TARGET: [target] * horizon,
                STEP: list(range(1, horizon + 1)),
                EVENT_TS: list(_after(grid, origin, horizon)),
                "forecast": values,
                **bounds,
            }
            for name, column in columns.items():
                records.setdefault(name, []).extend(column)
    return pd.DataFrame(records), levels


def _with_actuals(steps: pd.DataFrame, table: Any, config: SkewlessConfig) -> pd.DataFrame:
    """``steps`` whose actual is recorded, with it as ``actual``."""
    if steps.empty:
        return steps.assign(actual=pd.Series(dtype=np.float64))
    entities = _plain(steps[ENTITY].unique())
    stamps = pd.to_datetime(steps[EVENT_TS], utc=True)
    rows = table.history(entities, stamps.min().to_pydatetime(), stamps.max().to_pydatetime())
    if rows.empty:
        return steps.iloc[0:0].assign(actual=pd.Series(dtype=np.float64))
    key = config.data.entity_key
    actuals = rows.melt(
        id_vars=[key, EVENT_TS],
        value_vars=list(config.data.targets),
        var_name=TARGET,
        value_name="actual",
    ).rename(columns={key: ENTITY})
    actuals[ENTITY] = actuals[ENTITY].astype(steps[ENTITY].dtype)
    joined = steps.assign(**{EVENT_TS: stamps}).merge(actuals, on=[ENTITY, EVENT_TS, TARGET])
    return joined[joined["actual"].notna()].reset_index(drop=True)
