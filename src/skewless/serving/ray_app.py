"""The Ray Serve server: the FastAPI routes in an ingress deployment over the three stages
(features, preprocessing, model), either in deployments of their own, each with its replicas,
CPU share and autoscaling from ``serving.ray`` (``topology: staged``: the ingress asks the model
deployment, which asks preprocessing, which asks features, so each stage's output travels once,
to the stage that needs it), or together in one deployment, one hop from the ingress
(``topology: fused``).

Requests carry the model version the ingress chose when they started; the preprocessing and
model replicas load versions on first use and keep the last few, so a swap never mixes the
preprocessor of one version with the model of another, and never needs a broadcast.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pandas as pd
from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve import Deployment
from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator

from skewless.bundle.bundle import ForecastBundle, Forecasts, PreparedWindows
from skewless.core.config import DeploymentScaling, SkewlessConfig
from skewless.core.errors import SkewlessError
from skewless.core.library_notices import quiet_library_notices
from skewless.core.stores import tracking_uri
from skewless.features.ingest import IngestReport
from skewless.registry.registry import ModelRegistry
from skewless.serving.allocator import keep_freed_memory
from skewless.serving.fastapi_app import ADMIN_TOKEN_ENV, create_app
from skewless.serving.service import LoadedModel, ServiceCore
from skewless.serving.stages import (
    Fetched,
    Forecasted,
    LocalStages,
    OnlineWindowFetcher,
    Plan,
    Prepared,
    forecast_prepared,
    prepare_fetched,
)

_VERSIONS_KEPT = 3


def _config(config_json: dict[str, Any]) -> SkewlessConfig:
    return SkewlessConfig.model_validate(config_json)


class _Bundles:
    """Bundles by version, loaded on first use; the last few stay. Thread-safe: Ray Serve runs
    a replica's plain methods in a thread pool."""

    def __init__(self, config: SkewlessConfig, home: Path) -> None:
        self.name = config.model_name
        self.registry = ModelRegistry(tracking_uri(config, home))
        self.loaded: OrderedDict[int, ForecastBundle] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version: int) -> ForecastBundle:
        with self._lock:
            if version not in self.loaded:
                self.loaded[version] = self.registry.load_bundle(self.name, version)
                while len(self.loaded) > _VERSIONS_KEPT:
                    self.loaded.popitem(last=False)
            self.loaded.move_to_end(version)
            return self.loaded[version]

    async def of(self, version: int) -> ForecastBundle:
        """``get`` from a coroutine: a version already here at once, a load in a worker thread
        (it takes seconds, which the replica's event loop must not wait)."""
        with self._lock:
            bundle = self.loaded.get(version)
        return bundle if bundle is not None else await asyncio.to_thread(self.get, version)


@serve.deployment
class Features:
    """Online windows of many entities per call."""

    def __init__(self, config_json: dict[str, Any], home: str) -> None:
        keep_freed_memory()
        self.fetcher = OnlineWindowFetcher(_config(config_json), Path(home))

    def fetch(self, entities: list[Any], point: datetime | None, lookback: int) -> Fetched:
        return self.fetcher.fetch(entities, point, lookback)

    def ready(self) -> bool:
        return self.fetcher.ready()

    def push(self, rows: pd.DataFrame) -> IngestReport:
        return self.fetcher.push(rows)


class _BundleStage:
    """A deployment that runs bundle stages, for whichever version a request names."""

    def __init__(self, config_json: dict[str, Any], home: str) -> None:
        keep_freed_memory()
        quiet_library_notices()  # MLflow's, when it loads versions
        self.bundles = _Bundles(_config(config_json), Path(home))

    def warm(self, version: int) -> None:
        """Load ``version`` now, before requests for it arrive."""
        self.bundles.get(version)


@serve.deployment
class Preprocessing(_BundleStage):
    """The bundle's first stage: checks, preprocessing, windows; of the rows a request sent,
    or of its entities' online windows, which it asks the features deployment for."""

    def __init__(self, config_json: dict[str, Any], home: str, features: DeploymentHandle) -> None:
        super().__init__(config_json, home)
        self.features = features

    def prepare(self, version: int, rows: pd.DataFrame) -> PreparedWindows:
        return self.bundles.get(version).prepare(rows)

    async def prepare_entities(
        self, version: int, entities: list[Any], point: datetime | None, plan: Plan
    ) -> Prepared:
        # The bundle's work runs in this coroutine: it is CPU-bound, and under the GIL a worker
        # thread would only add a hand-off.
        bundle = await self.bundles.of(version)
        fetch = self.features.fetch.remote(entities, point, bundle.spec.lookback)
        return prepare_fetched(bundle, await _answer(fetch), plan)


@serve.deployment
class Model(_BundleStage):
    """The bundle's second stage: the forecaster, original units, intervals; on the windows
    a request's rows made, or on its entities' windows, which it asks preprocessing for."""

    def __init__(
        self, config_json: dict[str, Any], home: str, preprocessing: DeploymentHandle
    ) -> None:
        super().__init__(config_json, home)
        self.preprocessing = preprocessing

    def forecasts(self, version: int, prepared: PreparedWindows) -> Forecasts:
        return self.bundles.get(version).forecasts(prepared)

    async def forecast_entities(
        self, version: int, entities: list[Any], point: datetime | None, plan: Plan
    ) -> Forecasted:
        prepare = self.preprocessing.prepare_entities.remote(version, entities, point, plan)
        prepared: Prepared = await _answer(prepare)
        return forecast_prepared(await self.bundles.of(version), prepared)


@serve.deployment
class Fused(_BundleStage):
    """All three stages in one deployment (``topology: fused``): one hop from the ingress, as
    the one-machine server runs them."""

    def __init__(self, config_json: dict[str, Any], home: str) -> None:
        super().__init__(config_json, home)
        self.stages = LocalStages(_config(config_json), Path(home))

    async def forecast_entities(
        self, version: int, entities: list[Any], point: datetime | None, plan: Plan
    ) -> Forecasted:
        bundle = await self.bundles.of(version)
        return await self.stages.forecast_entities(bundle, entities, point, plan)

    async def predict(self, version: int, rows: pd.DataFrame) -> Forecasts:
        return await self.stages.predict(await self.bundles.of(version), rows)

    async def ready(self) -> bool:
        return await self.stages.ready()

    def push(self, rows: pd.DataFrame) -> IngestReport:
        return self.stages.push(rows)


class _RayService(ServiceCore):
    """The shared service core with its stages behind deployment handles: requests await
    them; a reload (from the alias poller's thread or a worker thread) waits on them."""

    def __init__(
        self,
        config: SkewlessConfig,
        home: Path,
        alias: str | None,
        store: DeploymentHandle,
        loaders: tuple[DeploymentHandle, ...],
    ) -> None:
        self.store, self.loaders = store, loaders
        self._constructed = False
        super().__init__(config, home, alias)
        self._constructed = True

    def _load(self, version: int) -> LoadedModel:
        """Load here, then, on a reload, have a replica of each deployment that runs bundle
        stages load it too before the swap. (The constructor runs in the replica's event loop,
        where waiting on a handle is not allowed; those replicas load the first version on
        first use.)"""
        loaded = super()._load(version)
        if self._constructed:
            for loader in self.loaders:
                _result(loader.warm.remote(version))
        return loaded

    async def feature_store_ready(self) -> bool:
        return bool(await _answer(self.store.ready.remote()))

    def _push(self, rows: pd.DataFrame) -> IngestReport:
        report: IngestReport = _result(self.store.push.remote(rows))
        return report


class StagedService(_RayService):
    """Features, preprocessing and model in deployments of their own (``topology: staged``)."""

    def __init__(
        self,
        config: SkewlessConfig,
        home: Path,
        alias: str | None,
        features: DeploymentHandle,
        preprocessing: DeploymentHandle,
        model: DeploymentHandle,
    ) -> None:
        self.preprocessing, self.model = preprocessing, model
        super().__init__(config, home, alias, features, (preprocessing, model))

    async def _forecast_entities(
        self, model: LoadedModel, entities: list[Any], point: datetime | None, plan: Plan
    ) -> Forecasted:
        # The model replica asks preprocessing, which asks features: each stage's output goes
        # once, straight to the stage that needs it, and only the forecasts come back here.
        forecast = self.model.forecast_entities.remote(model.version, entities, point, plan)
        done: Forecasted = await _answer(forecast)
        return done

    async def _predict(self, model: LoadedModel, rows: pd.DataFrame) -> Forecasts:
        # The prepared windows go from the preprocessing replica to the model replica directly.
        prepared = self.preprocessing.prepare.remote(model.version, rows)
        forecasts: Forecasts = await _answer(self.model.forecasts.remote(model.version, prepared))
        return forecasts


class FusedService(_RayService):
    """The three stages in one deployment, one hop away (``topology: fused``)."""

    def __init__(
        self, config: SkewlessConfig, home: Path, alias: str | None, fused: DeploymentHandle
    ) -> None:
        self.fused = fused
        super().__init__(config, home, alias, fused, (fused,))

    async def _forecast_entities(
        self, model: LoadedModel, entities: list[Any], point: datetime | None, plan: Plan
    ) -> Forecasted:
        done: Forecasted = await _answer(
            self.fused.forecast_entities.remote(model.version, entities, point, plan)
        )
        return done

    async def _predict(self, model: LoadedModel, rows: pd.DataFrame) -> Forecasts:
        forecasts: Forecasts = await _answer(self.fused.predict.remote(model.version, rows))
        return forecasts


def _ray_service(
    config: SkewlessConfig, home: Path, alias: str | None, stages: tuple[DeploymentHandle, ...]
) -> _RayService:
    """The service of ``serving.ray.topology`` over the handles ``build_application`` bound."""
    if config.serving.ray.topology == "fused":
        (fused,) = stages
        return FusedService(config, home, alias, fused)
    features, preprocessing, model = stages
    return StagedService(config, home, alias, features, preprocessing, model)


# What ``handle.method.remote`` is typed to return; ours are all unary (DeploymentResponse).
_Call = DeploymentResponse | DeploymentResponseGenerator


async def _answer(response: _Call) -> Any:
    """The deployment's answer, awaited; its own exception when it raised one."""
    try:
        return await cast(DeploymentResponse, response)
    except RayTaskError as exc:
        raise _own(exc) from None


def _result(response: _Call) -> Any:
    """The deployment's answer, waited for (outside the event loop); its own exception when it
    raised one."""
    try:
        return cast(DeploymentResponse, response).result()
    except RayTaskError as exc:
        raise _own(exc) from None


def _own(exc: RayTaskError) -> BaseException:
    """Our error that a deployment raised, rather than Ray's wrappers (one more per stage it
    went through); else the wrapper."""
    cause = exc.cause
    while isinstance(cause, RayTaskError):
        cause = cause.cause
    return cause if isinstance(cause, SkewlessError) else exc


@serve.deployment
@serve.ingress()
class Ingress:
    """The HTTP entry: the same FastAPI app as the one-machine server, over Ray handles."""

    def __init__(
        self,
        config_json: dict[str, Any],
        home: str,
        alias: str | None,
        *stages: DeploymentHandle,
    ) -> None:
        quiet_library_notices()  # MLflow's, when it loads versions
        self.service = _ray_service(_config(config_json), Path(home), alias, stages)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.service)


def _options(scaling: DeploymentScaling, **actor: Any) -> dict[str, Any]:
    return {
        "ray_actor_options": {"num_cpus": scaling.num_cpus, **actor},
        "autoscaling_config": {
            "min_replicas": scaling.min_replicas,
            "initial_replicas": max(scaling.min_replicas, 1),
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
        },
    }


def build_application(config: SkewlessConfig, home: Path, alias: str | None) -> Any:
    """The bound Serve application, its deployments sized from ``serving.ray``."""
    settings = config.serving.ray
    arguments = (config.model_dump(mode="json"), str(home))

    def sized(deployment: object, scaling: DeploymentScaling, **actor: Any) -> Deployment:
        # The decorators return Deployments; type checkers still see the classes.
        return cast(Deployment, deployment).options(**_options(scaling, **actor))

    if settings.topology == "fused":  # sized as the model stage, its heaviest part
        stages = [sized(Fused, settings.model).bind(*arguments)]
    else:
        features = sized(Features, settings.features).bind(*arguments)
        preprocessing = sized(Preprocessing, settings.preprocessing).bind(*arguments, features)
        model = sized(Model, settings.model).bind(*arguments, preprocessing)
        stages = [features, preprocessing, model]
    ingress = sized(Ingress, settings.ingress, **_environment()).options(
        **_admission(config.serving.max_in_flight)
    )
    return ingress.bind(*arguments, alias, *stages)


def _environment() -> dict[str, Any]:
    """The admin token of the server deploying the application, for its ingress: replicas
    have their node's environment, which on a cluster the server joined is not the server's."""
    token = os.environ.get(ADMIN_TOKEN_ENV)
    return {"runtime_env": {"env_vars": {ADMIN_TOKEN_ENV: token}}} if token else {}


def _admission(max_in_flight: int | None) -> dict[str, Any]:
    """Ingress limits that let the app's own limit (InFlightLimit) do the shedding: Ray would
    otherwise hold requests beyond its default of 5 per replica in an unbounded proxy queue.
    Above the limit plus its refusals, the proxy answers 503 itself."""
    if max_in_flight is None:
        return {}
    return {"max_ongoing_requests": 2 * max_in_flight, "max_queued_requests": max_in_flight}
