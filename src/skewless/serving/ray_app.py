"""The Ray Serve server: the FastAPI routes in an ingress deployment, and the three stages in
deployments of their own (features, preprocessing, model), each with its replicas, CPU share and
autoscaling from ``serving.ray``.

Requests carry the model version the ingress chose when they started; the preprocessing and
model replicas load versions on first use and keep the last few, so a swap never mixes the
preprocessor of one version with the model of another, and never needs a broadcast.
"""

from __future__ import annotations

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
from skewless.serving.fastapi_app import create_app
from skewless.serving.service import LoadedModel, OnlineWindowFetcher, ServiceCore

APP_NAME = "skewless"
_VERSIONS_KEPT = 3


def _config(config_json: dict[str, Any]) -> SkewlessConfig:
    return SkewlessConfig.model_validate(config_json)


class _Bundles:
    """Bundles by version, loaded on first use; the last few stay."""

    def __init__(self, config: SkewlessConfig, home: Path) -> None:
        self.name = config.model_name
        self.registry = ModelRegistry(tracking_uri(config, home))
        self.loaded: OrderedDict[int, ForecastBundle] = OrderedDict()

    def get(self, version: int) -> ForecastBundle:
        if version not in self.loaded:
            self.loaded[version] = self.registry.load_bundle(self.name, version)
            while len(self.loaded) > _VERSIONS_KEPT:
                self.loaded.popitem(last=False)
        self.loaded.move_to_end(version)
        return self.loaded[version]


@serve.deployment
class Features:
    """Online windows of many entities per call."""

    def __init__(self, config_json: dict[str, Any], home: str) -> None:
        keep_freed_memory()
        self.fetcher = OnlineWindowFetcher(_config(config_json), Path(home))

    def fetch(
        self, entities: list[Any], point: datetime | None, lookback: int
    ) -> tuple[pd.DataFrame | None, dict[Any, SkewlessError]]:
        return self.fetcher.fetch(entities, point, lookback)

    def ready(self) -> bool:
        return self.fetcher.ready()

    def push(self, rows: pd.DataFrame) -> IngestReport:
        return self.fetcher.push(rows)


class _BundleStage:
    """A deployment that runs one stage of the bundle, for whichever version a request names."""

    def __init__(self, config_json: dict[str, Any], home: str) -> None:
        keep_freed_memory()
        quiet_library_notices()  # MLflow's, when it loads versions
        self.bundles = _Bundles(_config(config_json), Path(home))

    def warm(self, version: int) -> None:
        """Load ``version`` now, before requests for it arrive."""
        self.bundles.get(version)


@serve.deployment
class Preprocessing(_BundleStage):
    """The bundle's first stage: checks, preprocessing, windows."""

    def prepare(self, version: int, rows: pd.DataFrame) -> PreparedWindows:
        return self.bundles.get(version).prepare(rows)


@serve.deployment
class Model(_BundleStage):
    """The bundle's second stage: the forecaster, original units, intervals."""

    def forecasts(self, version: int, prepared: PreparedWindows) -> Forecasts:
        return self.bundles.get(version).forecasts(prepared)


class RayForecastService(ServiceCore):
    """The shared service core, with its stages behind deployment handles."""

    def __init__(
        self,
        config: SkewlessConfig,
        home: Path,
        alias: str | None,
        features: DeploymentHandle,
        preprocessing: DeploymentHandle,
        model: DeploymentHandle,
    ) -> None:
        self.features, self.preprocessing, self.model = features, preprocessing, model
        self._constructed = False
        super().__init__(config, home, alias)
        self._constructed = True

    def _load(self, version: int) -> LoadedModel:
        """Load here, then, on a reload, have a stage replica of each kind load it too before
        the swap. (The constructor runs in the replica's event loop, where waiting on a handle
        is not allowed; stage replicas load the first version on first use.)"""
        loaded = super()._load(version)
        if self._constructed:
            _result(self.preprocessing.warm.remote(version))
            _result(self.model.warm.remote(version))
        return loaded

    def feature_store_ready(self) -> bool:
        return bool(_result(self.features.ready.remote()))

    def _fetch(
        self, entities: list[Any], point: datetime | None, lookback: int
    ) -> tuple[pd.DataFrame | None, dict[Any, SkewlessError]]:
        rows, problems = _result(self.features.fetch.remote(entities, point, lookback))
        return rows, problems

    def _push(self, rows: pd.DataFrame) -> IngestReport:
        report: IngestReport = _result(self.features.push.remote(rows))
        return report

    def _predict(self, model: LoadedModel, rows: pd.DataFrame) -> Forecasts:
        prepared = self.preprocessing.prepare.remote(model.version, rows)
        forecasts: Forecasts = _result(self.model.forecasts.remote(model.version, prepared))
        return forecasts


def _result(response: DeploymentResponse | DeploymentResponseGenerator) -> Any:
    """The deployment's answer; its own exception (not Ray's wrapper) when it raised one."""
    try:
        return cast(DeploymentResponse, response).result()
    except RayTaskError as exc:
        if isinstance(exc.cause, SkewlessError):
            raise exc.cause from None
        raise


@serve.deployment
@serve.ingress()
class Ingress:
    """The HTTP entry: the same FastAPI app as the one-machine server, over Ray handles."""

    def __init__(
        self,
        config_json: dict[str, Any],
        home: str,
        alias: str | None,
        features: DeploymentHandle,
        preprocessing: DeploymentHandle,
        model: DeploymentHandle,
    ) -> None:
        quiet_library_notices()  # MLflow's, when it loads versions
        self.service = RayForecastService(
            _config(config_json), Path(home), alias, features, preprocessing, model
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.service)


def _options(scaling: DeploymentScaling) -> dict[str, Any]:
    return {
        "ray_actor_options": {"num_cpus": scaling.num_cpus},
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

    def sized(deployment: object, scaling: DeploymentScaling) -> Deployment:
        # The decorators return Deployments; type checkers still see the classes.
        return cast(Deployment, deployment).options(**_options(scaling))

    features = sized(Features, settings.features).bind(*arguments)
    preprocessing = sized(Preprocessing, settings.preprocessing).bind(*arguments)
    model = sized(Model, settings.model).bind(*arguments)
    ingress = sized(Ingress, settings.ingress).options(**_admission(config.serving.max_in_flight))
    return ingress.bind(*arguments, alias, features, preprocessing, model)


def _admission(max_in_flight: int | None) -> dict[str, Any]:
    """Ingress limits that let the app's own limit (InFlightLimit) do the shedding: Ray would
    otherwise hold requests beyond its default of 5 per replica in an unbounded proxy queue.
    Above the limit plus its refusals, the proxy answers 503 itself."""
    if max_in_flight is None:
        return {}
    return {"max_ongoing_requests": 2 * max_in_flight, "max_queued_requests": max_in_flight}
