"""Batch forecasts of a whole fleet from the online store, an entity batch at a time.

The same path as a served request (online windows → the bundle's two stages), written as rows
to a Parquet file or a PostgreSQL table: one row per entity, forecast step and target with the
bounds, the model version and the time point; an entity that cannot be forecast (unknown, stale,
too short) is one row with its error, never a crash. Memory holds one batch per worker; with
``compute.engine: ray`` the batches are Ray tasks (plain tasks rather than Ray Data: the rows
must come back to one writer anyway, and a worker keeps its store connection between batches).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from skewless.bundle.bundle import FORECAST, TARGET
from skewless.compute.engine import compute_engine
from skewless.core.config import SkewlessConfig
from skewless.core.errors import ConfigError, OutputError
from skewless.core.schema import EVENT_TS
from skewless.core.stores import tracking_uri
from skewless.features.facade import FeatureStoreFacade
from skewless.registry.pyfunc import naive_utc
from skewless.registry.registry import ModelRegistry
from skewless.serving.service import LoadedModel, load_model
from skewless.serving.stages import OnlineWindowFetcher, forecast_fetched

MODEL_NAME, MODEL_VERSION, ALIAS, TIME_POINT, ERROR = (
    "model_name",
    "model_version",
    "alias",
    "time_point",
    "error",
)


@dataclass(frozen=True)
class FleetSummary:
    entities: int
    forecast: int  # entities with a forecast
    failed: dict[Any, str]  # entity -> its error


def load_alias(config: SkewlessConfig, home: Path, alias: str) -> LoadedModel:
    """The version of the configured model that ``alias`` points at, loaded."""
    registry = ModelRegistry(tracking_uri(config, home))
    name = config.model_name
    return load_model(registry, name, alias, registry.version_of(name, alias))


def latest_forecasts(
    config: SkewlessConfig, home: Path, model: LoadedModel, entities: Sequence[Any]
) -> pd.DataFrame:
    """Forecasts of a few entities from their latest online windows (one read), in one frame
    with naive UTC times: what a terminal shows."""
    key = config.data.entity_key
    windows = FeatureStoreFacade(config, "online", home=home).load_features(None, entities).windows
    rows = pd.concat([w.to_frame(key) for w in windows.values()], ignore_index=True)
    return naive_utc(model.bundle.predict(rows))


def output_schema(config: SkewlessConfig, model: LoadedModel) -> pa.Schema:
    """The columns every batch is written with, whatever it holds."""
    stamp = pa.timestamp("us", tz="UTC")
    key = pa.int64() if config.data.entity_type == "int64" else pa.string()
    bounds = [
        pa.field(f"{side}_{level * 100:g}", pa.float64())
        for level in model.bundle.intervals.levels
        for side in ("lower", "upper")
    ]
    return pa.schema(
        [
            pa.field(config.data.entity_key, key),
            pa.field(EVENT_TS, stamp),
            pa.field(TARGET, pa.string()),
            pa.field(FORECAST, pa.float64()),
            *bounds,
            pa.field(MODEL_NAME, pa.string()),
            pa.field(MODEL_VERSION, pa.int64()),
            pa.field(ALIAS, pa.string()),
            pa.field(TIME_POINT, stamp),
            pa.field(ERROR, pa.string()),
        ]
    )


class ForecastSink(ABC):
    """Where batches of forecast rows go; opened before any work, so a bad target fails first."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema

    @abstractmethod
    def write(self, table: pa.Table) -> None: ...

    @abstractmethod
    def commit(self) -> None:
        """Make every written batch visible at once."""

    @abstractmethod
    def abort(self) -> None:
        """Leave nothing behind."""


class ParquetSink(ForecastSink):
    """One Parquet file, written to a hidden temporary beside it and renamed into place."""

    def __init__(self, schema: pa.Schema, path: Path) -> None:
        super().__init__(schema)
        self.path = path
        self._temporary = path.with_name(f".{path.name}.tmp")
        try:
            self._writer = pq.ParquetWriter(self._temporary, schema)
        except OSError as exc:
            raise ConfigError(f"cannot write --out {path}: {exc.strerror or exc}") from None

    def write(self, table: pa.Table) -> None:
        try:
            self._writer.write_table(table)
        except OSError as exc:  # a full disk, a folder gone
            raise OutputError(f"writing {self.path} failed: {exc}") from exc

    def commit(self) -> None:
        try:
            self._writer.close()
            os.replace(self._temporary, self.path)
        except OSError as exc:
            raise OutputError(f"writing {self.path} failed: {exc}") from exc

    def abort(self) -> None:
        self._writer.close()
        self._temporary.unlink(missing_ok=True)


class PostgresSink(ForecastSink):
    """Rows appended to one PostgreSQL table (created if missing) in one transaction."""

    def __init__(self, schema: pa.Schema, url: str) -> None:
        import sqlalchemy

        super().__init__(schema)
        database, _, self.table = url.rstrip("/").rpartition("/")
        if not self.table or "/" not in database.split("://", 1)[-1]:
            raise ConfigError(
                f"--out {url!r}: name the table after the database, "
                "e.g. postgresql+psycopg://user@host:5432/database/forecasts"
            )
        try:
            self._connection = sqlalchemy.create_engine(database).connect()
            self._transaction = self._connection.begin()
            schema.empty_table().to_pandas().to_sql(
                self.table, self._connection, if_exists="append", index=False
            )
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise ConfigError(f"cannot write --out {database}/{self.table}: {exc}") from None

    def write(self, table: pa.Table) -> None:
        import sqlalchemy

        try:
            table.to_pandas().to_sql(self.table, self._connection, if_exists="append", index=False)
        except sqlalchemy.exc.SQLAlchemyError as exc:  # the database gone, a clashing table
            raise OutputError(f"writing table {self.table} failed: {exc}") from exc

    def commit(self) -> None:
        import sqlalchemy

        try:
            self._transaction.commit()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise OutputError(f"committing table {self.table} failed: {exc}") from exc
        self._connection.close()

    def abort(self) -> None:
        self._transaction.rollback()
        self._connection.close()


def open_sink(out: str, schema: pa.Schema) -> ForecastSink:
    """A PostgreSQL table for ``postgresql...://.../database/table``, else a Parquet file."""
    if out.startswith("postgresql"):
        return PostgresSink(schema, out)
    return ParquetSink(schema, Path(out))


def forecast_fleet(
    config: SkewlessConfig,
    home: Path,
    model: LoadedModel,
    entities: Sequence[Any],
    sink: ForecastSink,
    on_batch: Callable[[int], None] | None = None,
) -> FleetSummary:
    """Forecast ``entities`` ``serving.max_entities`` at a time into ``sink``, each batch where
    ``compute`` puts it (here, or a Ray task whose worker keeps its store connection); the
    batches' rows come back here to be written. ``on_batch`` hears how many entities each batch
    held. The sink is committed only if every batch was written, and aborted otherwise."""
    size = config.serving.max_entities
    unique = list(dict.fromkeys(entities))
    batches = [unique[first : first + size] for first in range(0, len(unique), size)]
    work = partial(_forecast_batch, config, home, model, datetime.now(UTC), sink.schema)
    failed: dict[Any, str] = {}
    try:
        for table, errors, count in compute_engine(config.compute).map(work, batches):
            sink.write(table)
            failed |= errors
            if on_batch is not None:
                on_batch(count)
    except BaseException:
        with suppress(Exception):  # the first failure is the one to report
            sink.abort()
        raise
    sink.commit()
    return FleetSummary(len(unique), len(unique) - len(failed), failed)


# Per process (a Ray worker serves many batches): the online store reader, opened once.
_FETCHERS: dict[tuple[str, Path], OnlineWindowFetcher] = {}


def _forecast_batch(
    config: SkewlessConfig,
    home: Path,
    model: LoadedModel,
    time_point: datetime,
    schema: pa.Schema,
    entities: list[Any],
) -> tuple[pa.Table, dict[Any, str], int]:
    """One batch's rows: forecasts, then one row per entity that could not be forecast."""
    bundle, key = model.bundle, config.data.entity_key
    opened = (config.project, home)
    if opened not in _FETCHERS:
        _FETCHERS[opened] = OnlineWindowFetcher(config, home)
    fetched = _FETCHERS[opened].fetch(entities, None, bundle.spec.lookback)
    done = forecast_fetched(bundle, fetched)
    frames = [] if done.forecasts is None else [done.forecasts.frame(bundle.spec)]
    errors = {entity: str(error) for entity, error in done.problems.items()}
    if errors:
        frames.append(pd.DataFrame({key: list(errors), ERROR: list(errors.values())}))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({key: []})
    frame[MODEL_NAME], frame[MODEL_VERSION], frame[ALIAS] = model.name, model.version, model.alias
    frame[TIME_POINT] = pd.Timestamp(time_point)
    for column in schema.names:
        if column not in frame:
            frame[column] = None
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    return table, errors, len(entities)
