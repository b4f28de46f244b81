"""``ForecastService``: online windows → bundle → response items, with no web framework inside.

``ServiceCore`` holds what every server shares: request checks, the response items (typed: a
``Prediction``, or a ``FailedPrediction`` that carries the entity's error as data), and model
versions. Its forecasts are coroutines: the stages (``serving.stages``, which also isolate each
entity's error) are awaited, so a server's event loop never waits on them. ``ForecastService``
runs them in this process (``LocalStages``, in worker threads: the FastAPI server); the Ray Serve
server runs the same core with the stages behind deployment handles, and its fused deployment
runs ``LocalStages`` too.

Every answered request is measured (``ServingMetrics``) and appended to the request log here,
once for both servers.

It holds one loaded model version at a time, as one immutable object:
a request takes the current one when it starts and finishes on it, and a reload swaps the
reference only after the new version loaded, so a failed load leaves the old one serving.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skewless.bundle.bundle import FeatureSpec, ForecastBundle, Forecasts
from skewless.bundle.reference import DECILES
from skewless.core.config import SkewlessConfig
from skewless.core.errors import (
    DataValidationError,
    RequestError,
    SkewlessError,
    StoreUnavailableError,
    UnservableVersionError,
)
from skewless.core.feed import Feed, feeding_problems
from skewless.core.schema import EVENT_TS
from skewless.core.stores import tracking_uri
from skewless.core.time_points import parse_time_point
from skewless.features.ingest import IngestReport
from skewless.features.validation import SOURCE_ROW, Findings, parse_rows
from skewless.registry.registry import ModelRegistry
from skewless.serving.allocator import keep_freed_memory
from skewless.serving.log_writer import open_request_log, served_records
from skewless.serving.metrics import ServingMetrics
from skewless.serving.schemas import FailedPrediction, Prediction
from skewless.serving.stages import Forecasted, LocalStages, Plan

logger = logging.getLogger(__name__)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
SIGNIFICANT_DIGITS = 7  # what a float32 model computes: answers carry no more
ROWS_EXPLAINED = 50  # rows of a refused push whose own problems are listed one by one
# How long a push waits for the one before it (in this process) to finish before a 503.
_PUSH_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class LoadedModel:
    name: str
    alias: str
    version: int
    bundle: ForecastBundle
    metrics: dict[str, float] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "alias": self.alias}


@dataclass(frozen=True)
class Served:
    """One answered request: its id (also in the request log), the version, the items."""

    request_id: str
    model: LoadedModel
    items: list[Prediction]


class ServiceCore(ABC):
    """Everything but where the stages run: fetching windows and predicting are abstract."""

    def __init__(self, config: SkewlessConfig, home: Path, alias: str | None = None) -> None:
        keep_freed_memory()
        self.config = config
        self.home = home
        self.alias = alias or config.serving.alias
        self.registry = ModelRegistry(tracking_uri(config, home))
        self.last_reload_error: str | None = None
        self._reload_lock = threading.Lock()
        self._push_lock = threading.Lock()
        self.current = self._load(self.registry.version_of(config.model_name, self.alias))
        self.metrics = ServingMetrics(_target_deciles(self.current.bundle))
        self.metrics.model_version.set(self.current.version)
        self.request_log = open_request_log(
            config, home, lambda outcome, count: self.metrics.request_log.labels(outcome).inc(count)
        )

    def close(self) -> None:
        """Flush the request log."""
        if self.request_log is not None:
            self.request_log.close()

    @abstractmethod
    async def feature_store_ready(self) -> bool:
        """Raise if the online store does not answer."""

    @abstractmethod
    async def _forecast_entities(
        self, model: LoadedModel, entities: list[Any], point: datetime | None, plan: Plan
    ) -> Forecasted:
        """``forecast_entities`` over the stages, wherever they run."""

    @abstractmethod
    async def _predict(self, model: LoadedModel, rows: pd.DataFrame) -> Forecasts:
        """The bundle's two stages on ``rows``, wherever they run."""

    @abstractmethod
    def _push(self, rows: pd.DataFrame) -> IngestReport:
        """Validate and store raw rows in both stores, wherever the feature store is held.
        (Blocking: pushes are rare admin writes, run in a worker thread of the server.)"""

    # -- pushed rows ---------------------------------------------------------------------------

    def push(self, rows: pd.DataFrame) -> IngestReport:
        """Validate raw rows (the source's column names) and append the new ones to the offline
        store, then rewrite their entities' online windows: the path of ``skewless push``. Rows
        refused by validation raise DataValidationError and write nothing; pushes run one at a
        time per server process, a push that waits too long for the one before is a 503."""
        if not self._push_lock.acquire(timeout=_PUSH_WAIT_SECONDS):
            raise StoreUnavailableError(
                f"another push has been writing for over {_PUSH_WAIT_SECONDS:.0f} s; retry "
                "shortly (rows already stored are recognised and not written twice)"
            )
        try:
            report = self._push(rows)
        except DataValidationError:
            self.metrics.pushed_rows.labels("refused").inc(len(rows))
            raise
        finally:
            self._push_lock.release()
        self.metrics.pushed_rows.labels("written").inc(report.rows_written)
        self.metrics.pushed_rows.labels("already_stored").inc(report.rows_already_stored)
        return report

    # -- model versions ------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Load the version the alias points at now, if it moved; True when it swapped."""
        with self._reload_lock:
            try:
                version = self.registry.version_of(self.config.model_name, self.alias)
                if version == self.current.version:
                    self.last_reload_error = None
                    return False
                loaded = self._load(version)
            except Exception as exc:  # whatever failed, the old version keeps serving
                error = f"{type(exc).__name__}: {exc}"
                if error != self.last_reload_error:  # once, not at every poll
                    logger.error(
                        "reload of %s@%s failed, still serving version %d: %s",
                        self.config.model_name,
                        self.alias,
                        self.current.version,
                        exc,
                    )
                self.last_reload_error = error
                raise
            self.current, self.last_reload_error = loaded, None
            logger.info("now serving %s version %d", loaded.name, loaded.version)
            return True

    def _load(self, version: int) -> LoadedModel:
        """The version, loaded, if this server's online store can feed it."""
        loaded = load_model(self.registry, self.config.model_name, self.alias, version)
        problems = feeding_problems(loaded.bundle.spec.feed, Feed.of_store(self.config))
        if problems:
            raise UnservableVersionError(
                f"version {version} of {loaded.name} cannot be served from this online store: "
                + "; ".join(problems)
            )
        return loaded

    # -- forecasts -----------------------------------------------------------------------------

    async def predict_rows(self, rows: pd.DataFrame, endpoint: str = "/predict") -> Served:
        """Forecasts after each entity's last row; bad rows raise for the whole request."""
        started, model = time.perf_counter(), self.current
        items = list(_items(await self._predict(model, rows), model).values())
        return self._served(endpoint, model, items, None, started)

    async def predict_entities(
        self,
        entities: Sequence[Any],
        time_point: str = "now",
        endpoint: str = "/predict/feast/batch",
        known: list[dict[str, Any]] | None = None,
    ) -> Served:
        """One item per requested entity, in order: a forecast, or that entity's own error;
        ``known`` is the request's plan of known-future covariates, if it sends one."""
        started, model = time.perf_counter(), self.current
        entities = check_entities(self.config, entities)
        point = check_time_point(self.config, time_point)
        plan = check_plan(model.bundle.spec, known)
        self.metrics.entities.observe(len(entities))
        done = await self._forecast_entities(model, list(dict.fromkeys(entities)), point, plan)
        for stage, seconds in done.seconds.items():
            self.metrics.stages.labels(stage).observe(seconds)
        made = {} if done.forecasts is None else _items(done.forecasts, model)
        items = [
            made[entity] if entity in made else FailedPrediction.of(entity, done.problems[entity])
            for entity in entities
        ]
        return self._served(endpoint, model, items, point, started)

    def _served(
        self,
        endpoint: str,
        model: LoadedModel,
        items: list[Prediction],
        point: datetime | None,
        started: float,
    ) -> Served:
        """Count the answer in the metrics and queue it for the request log."""
        request_id = str(uuid.uuid4())
        for item in items:
            if isinstance(item, FailedPrediction):
                self.metrics.errors.labels(item.kind, "entity").inc()
                continue
            for target, values in (item.forecast or {}).items():
                self.metrics.forecasts.labels(target).observe(sum(values) / len(values))
        if self.request_log is not None:
            latency = time.perf_counter() - started
            self.request_log.append(
                served_records(request_id, endpoint, model.describe(), items, point, latency)
            )
        return Served(request_id, model, items)


class ForecastService(ServiceCore):
    """Every stage in this process: the FastAPI server."""

    def __init__(self, config: SkewlessConfig, home: Path, alias: str | None = None) -> None:
        super().__init__(config, home, alias)
        self.stages = LocalStages(config, home)

    async def feature_store_ready(self) -> bool:
        return await self.stages.ready()

    async def _forecast_entities(
        self, model: LoadedModel, entities: list[Any], point: datetime | None, plan: Plan
    ) -> Forecasted:
        return await self.stages.forecast_entities(model.bundle, entities, point, plan)

    async def _predict(self, model: LoadedModel, rows: pd.DataFrame) -> Forecasts:
        return await self.stages.predict(model.bundle, rows)

    def _push(self, rows: pd.DataFrame) -> IngestReport:
        return self.stages.push(rows)


def load_model(registry: ModelRegistry, name: str, alias: str, version: int) -> LoadedModel:
    """One registered version, loaded whole, with its backtest metrics."""
    bundle = registry.load_bundle(name, version)
    metrics = next(v.metrics for v in registry.versions(name) if v.version == version)
    return LoadedModel(name, alias, version, bundle, metrics)


def row_problems(
    config: SkewlessConfig, rows: pd.DataFrame, limit: int = ROWS_EXPLAINED
) -> list[tuple[int, list[str]]]:
    """(row number from 1, reasons) of the first ``limit`` rows that validation's own parser
    refuses on their own values, found by halving (a part that parses is skipped whole, so a
    few bad rows among many cost a few dozen parses). Empty when a column is missing
    altogether: that is one reason for every row, already said once."""
    data = config.data
    if any(
        c not in rows.columns
        for c in [data.entity_key, data.timestamp_column, *data.window_columns]
    ):
        return []
    found: list[tuple[int, list[str]]] = []

    def visit(part: pd.DataFrame) -> None:
        if len(found) >= limit or part.empty:
            return
        findings = Findings()
        parse_rows(part, config, findings)
        if not findings.errors:
            return
        if len(part) == 1:
            found.append((int(part[SOURCE_ROW].iloc[0]), findings.errors))
            return
        visit(part.iloc[: len(part) // 2])
        visit(part.iloc[len(part) // 2 :])

    visit(rows.assign(**{SOURCE_ROW: np.arange(1, len(rows) + 1)}))
    return found


def check_entities(config: SkewlessConfig, entities: Sequence[Any]) -> list[Any]:
    """The requested ids, or a RequestError: none, too many, or of the wrong type."""
    cap = config.serving.max_entities
    if not entities:
        raise RequestError("name at least one entity")
    if len(entities) > cap:
        raise RequestError(
            f"{len(entities)} entities requested; at most {cap} per request (serving.max_entities)"
        )
    if config.data.entity_type == "int64":
        wrong = [
            e
            for e in entities
            if isinstance(e, bool) or not isinstance(e, int) or not _INT64_MIN <= e <= _INT64_MAX
        ]
        if wrong:
            raise RequestError(
                f"entity ids must be 64-bit integers (data.entity_type is int64); got {wrong[:5]}"
            )
    return list(entities)


def check_plan(spec: FeatureSpec, known: list[dict[str, Any]] | None) -> Plan:
    """A request's plan as typed rows (entity, event_timestamp, the known columns), or a
    RequestError naming what is wrong with it."""
    if known is None:
        return None
    if not spec.known:
        raise RequestError("'known' was sent, but this model reads no known-future covariates")
    rows = pd.DataFrame.from_records(known)
    columns = [spec.entity_key, EVENT_TS, *spec.known]
    if sorted(rows.columns) != sorted(columns):
        raise RequestError(f"'known' rows must hold exactly {columns}; got {list(rows.columns)}")
    times = pd.to_datetime(rows[EVENT_TS], utc=True, format="ISO8601", errors="coerce")
    numbers = rows[list(spec.known)].apply(pd.to_numeric, errors="coerce")
    entities = pd.to_numeric(rows[spec.entity_key], errors="coerce")
    bad = times.isna() | numbers.isna().any(axis=1)
    if spec.entity_type == "int64":
        bad |= entities.isna() | (entities % 1 != 0)
    if bad.any():
        raise RequestError(
            f"'known' rows {np.flatnonzero(bad)[:10].tolist()} need an entity id, an ISO 8601 "
            f"event_timestamp and a number for each of {list(spec.known)}"
        )
    plan = rows[columns].assign(**{EVENT_TS: times})
    plan[list(spec.known)] = numbers.to_numpy(np.float32)
    if spec.entity_type == "int64":
        plan[spec.entity_key] = entities.astype(np.int64)
    return plan


def check_time_point(config: SkewlessConfig, time_point: str) -> datetime | None:
    """The UTC time point (None for "latest": each entity's newest window, never stale), or a
    RequestError: not a timestamp, or in the future."""
    try:
        point = parse_time_point(time_point, config.data.timezone)
    except SkewlessError as exc:
        raise RequestError(str(exc)) from None
    if point is not None and point > datetime.now(UTC) + config.data.parsed_frequency.nominal:
        raise RequestError(
            f"time_point {point.isoformat()} is in the future; forecasts start from data "
            "that exists, so use 'now', 'latest' or a past timestamp"
        )
    return point


def _target_deciles(bundle: ForecastBundle) -> list[float]:
    """The training deciles of every target: bucket edges for the forecast-value histogram."""
    references = [bundle.reference[t] for t in bundle.spec.targets if t in bundle.reference]
    return [float(q) for reference in references for q in reference.at(DECILES)]


def significant(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to SIGNIFICANT_DIGITS, so that each prints as short as the precision
    it has (a float32 model's 45.89857 is 45.89857205766545 once in float64): a response 40 %
    smaller, written and read in half the time. Rounding by a power of ten, then dividing by
    it, gives the double nearest the rounded decimal, which prints as that decimal."""
    values = np.asarray(values, np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        magnitude = np.floor(np.log10(np.abs(values)))
        decimals = np.where(np.isfinite(magnitude), SIGNIFICANT_DIGITS - 1 - magnitude, 0)
        scale = 10.0 ** np.abs(decimals)
        rounded = np.where(
            decimals >= 0, np.round(values * scale) / scale, np.round(values / scale) * scale
        )
    return np.where(np.isfinite(rounded), rounded, values)


def _items(forecasts: Forecasts, model: LoadedModel) -> dict[Any, Prediction]:
    """Response items by entity, read straight from the bundle's arrays; each array becomes
    nested lists in one call, and the items are built without validating what was just made."""
    targets = model.bundle.spec.targets

    def lists(values: np.ndarray) -> list[list[list[float]]]:
        """[entity][target][step] from (entity, step, target)"""
        return significant(values).transpose(0, 2, 1).tolist()

    stamps = np.datetime_as_string(forecasts.times.astype("datetime64[ns]"), unit="s")
    times = (stamps.astype(object) + "+00:00").tolist()
    point = lists(forecasts.point)
    lower, upper = (
        {level: lists(pair[side]) for level, pair in forecasts.bounds.items()} for side in (0, 1)
    )

    def by_target(i: int, by_level: dict[str, list[list[list[float]]]]) -> dict[str, Any]:
        """{target: {level: [steps]}} of entity ``i``"""
        return {
            t: {level: values[i][k] for level, values in by_level.items()}
            for k, t in enumerate(targets)
        }

    return {
        entity: Prediction.model_construct(
            entity=entity,
            timestamps=times[i],
            forecast={t: point[i][k] for k, t in enumerate(targets)},
            lower=by_target(i, lower),
            upper=by_target(i, upper),
        )
        for i, entity in enumerate(forecasts.entities.tolist())
    }
