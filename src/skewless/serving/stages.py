"""The three stages of a forecast from the online store, as plain steps that pass one value on:
``OnlineWindowFetcher.fetch`` (``Fetched``), ``prepare_fetched`` (``Prepared``) and
``forecast_prepared`` (``Forecasted``), each carrying how long every stage so far took, timed
where it ran. Each stage needs only the one before it, so a server runs them where it likes:
one after the other in this process (``LocalStages``: the FastAPI server, Ray's fused
deployment, batch scoring), or one deployment each, each stage's output going straight to the
next replica rather than back through the ingress (Ray's staged topology).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg

from skewless.bundle.bundle import ForecastBundle, Forecasts, PreparedWindows, isolated
from skewless.core.config import SkewlessConfig
from skewless.core.errors import FeatureStoreError, SkewlessError, StoreUnavailableError
from skewless.features.ingest import IngestReport
from skewless.features.materialize import materialize, push
from skewless.features.online import WindowReader, window_reader
from skewless.features.online_marker import online_marker
from skewless.features.repo import FeastRepo
from skewless.features.strategies import OnlineRetrievalStrategy
from skewless.features.window_view import Window, windows_frame
from skewless.serving.outage import STORE_FAILURES, Outage, describe_online_store

logger = logging.getLogger(__name__)

PUSH_ORIGIN = "POST /push"

Plan = pd.DataFrame | None  # a request's own plan of known-future covariates
StageSeconds = Mapping[str, float]  # stage ("fetch", "prepare", "forecast") -> seconds it took


@dataclass(frozen=True)
class Fetched:
    """The online windows of a request's entities: those that have one, each cut to the
    lookback, the problem of each that has not, and how long reading them took (the stages
    may run where the request's metrics are not). Windows are a few arrays each, which pass
    between processes several times faster than the frame of their rows."""

    windows: list[Window]
    problems: dict[Any, SkewlessError]
    seconds: StageSeconds


@dataclass(frozen=True)
class Prepared:
    """The windows the bundle's first stage prepared, and every entity's problem so far."""

    windows: PreparedWindows | None
    problems: dict[Any, SkewlessError]
    seconds: StageSeconds


@dataclass(frozen=True)
class Forecasted:
    """The forecasts of a request's entities, and the problem of each entity without one."""

    forecasts: Forecasts | None
    problems: dict[Any, SkewlessError]
    seconds: StageSeconds


def prepare_fetched(bundle: ForecastBundle, fetched: Fetched, plan: Plan = None) -> Prepared:
    """The bundle's first stage on the fetched windows, each entity it refuses named with its
    error. A request's ``plan`` follows the windows' rows, so it wins over the stored one."""
    if not fetched.windows:
        return Prepared(None, fetched.problems, fetched.seconds)
    started = time.perf_counter()
    key = bundle.spec.entity_key
    rows = windows_frame(fetched.windows, key)
    if plan is not None:
        rows = pd.concat([rows, plan[plan[key].isin(rows[key])]], ignore_index=True)
    made, refused = isolated(bundle.prepare, rows, key)
    windows = PreparedWindows.joined(made) if made else None
    seconds = {**fetched.seconds, "prepare": time.perf_counter() - started}
    return Prepared(windows, {**fetched.problems, **refused}, seconds)


def forecast_prepared(bundle: ForecastBundle, prepared: Prepared) -> Forecasted:
    """The bundle's second stage on the prepared windows, in one model call."""
    if prepared.windows is None:
        return Forecasted(None, prepared.problems, prepared.seconds)
    started = time.perf_counter()
    forecasts = bundle.forecasts(prepared.windows)
    seconds = {**prepared.seconds, "forecast": time.perf_counter() - started}
    return Forecasted(forecasts, prepared.problems, seconds)


def forecast_fetched(bundle: ForecastBundle, fetched: Fetched, plan: Plan = None) -> Forecasted:
    """Both bundle stages on the fetched windows, in this process."""
    return forecast_prepared(bundle, prepare_fetched(bundle, fetched, plan))


class OnlineWindowFetcher:
    """Online windows of many entities with one call; keeps its reader warm.

    A store that does not answer is a StoreUnavailableError (a 503 naming the store), logged
    once when the outage starts and once when it ends, never once per request.
    """

    def __init__(self, config: SkewlessConfig, home: Path) -> None:
        self.repo = FeastRepo(config, home)
        self._reader: WindowReader = window_reader(self.repo)
        self._outage = Outage(describe_online_store(config))
        self._marker = online_marker(self.repo)
        self.ready()  # the first online call is slow: pay it before traffic

    def ready(self) -> bool:
        """One online read of an id no entity has (proves the store answers), and its
        materialization marker (proves it still holds the windows)."""
        string_ids = self.repo.config.data.entity_type == "string"
        with self._outage.guard():
            self._reader.read(["__readiness_probe__" if string_ids else -1])
            marked = self._marker.read()
        if marked is None:
            raise FeatureStoreError(
                f"the online store ({self._outage.store}) holds no materialized windows (its "
                "marker is gone: restarted without its data?); run skewless materialize"
            )
        return True

    def fetch(self, entities: list[Any], point: datetime | None, lookback: int) -> Fetched:
        """The last ``lookback`` rows at the time point of each entity that has them, as one
        frame, and the problem of each that has not."""
        started = time.perf_counter()
        with self._outage.guard():
            windows = OnlineRetrievalStrategy(self.repo, point, reader=self._reader).retrieve(
                entities
            )
        found = [window.last(lookback) for window in windows.windows.values()]
        return Fetched(found, windows.problems, {"fetch": time.perf_counter() - started})

    def push(self, rows: pd.DataFrame) -> IngestReport:
        """Raw rows into the offline store and the online windows (``materialize.push``); a
        store that does not answer is a StoreUnavailableError."""
        try:
            report = push(self.repo, rows, origin=PUSH_ORIGIN)
            if report.rows_already_stored and not report.rows_written:
                # Sent again after a push that stopped between the offline append and the
                # online update: bring the windows up now (nothing to do when they are).
                materialize(self.repo, incremental=True)
            return report
        except (*STORE_FAILURES, psycopg.Error) as exc:
            logger.error("a push failed in the feature store: %s: %s", type(exc).__name__, exc)
            raise StoreUnavailableError(
                f"the feature store did not take the pushed rows ({type(exc).__name__}: "
                f"{str(exc)[:200]}); push the rows again: those already stored are not written "
                "twice, and their windows are brought online"
            ) from None


class LocalStages:
    """The three stages in this process, in one worker thread per request: reading windows
    waits on the online store, and the bundle's work would hold up every other request of the
    event loop (health checks and refusals included)."""

    def __init__(self, config: SkewlessConfig, home: Path) -> None:
        self.windows = OnlineWindowFetcher(config, home)

    async def ready(self) -> bool:
        return await asyncio.to_thread(self.windows.ready)

    async def predict(self, bundle: ForecastBundle, rows: pd.DataFrame) -> Forecasts:
        return await asyncio.to_thread(lambda: bundle.forecasts(bundle.prepare(rows)))

    async def forecast_entities(
        self, bundle: ForecastBundle, entities: list[Any], point: datetime | None, plan: Plan
    ) -> Forecasted:
        def forecasted() -> Forecasted:
            fetched = self.windows.fetch(entities, point, bundle.spec.lookback)
            return forecast_fetched(bundle, fetched, plan)

        return await asyncio.to_thread(forecasted)

    def push(self, rows: pd.DataFrame) -> IngestReport:
        return self.windows.push(rows)
