"""The FastAPI server: routes over ``ServiceCore``, one error handler, alias polling."""

from __future__ import annotations

import gc
import hmac
import logging
import os
import reprlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from skewless.core.errors import (
    DataValidationError,
    RequestError,
    SkewlessError,
    StoreUnavailableError,
    UnservableVersionError,
)
from skewless.serving.admission import InFlightLimit
from skewless.serving.body_limit import BodyLimit
from skewless.serving.metrics import ServingMetrics
from skewless.serving.request_metrics import RequestMetrics
from skewless.serving.schemas import (
    BatchRequest,
    EntityRequest,
    ErrorResponse,
    FailedPrediction,
    ModelInfo,
    PredictionResponse,
    PushRefusal,
    PushRequest,
    PushResponse,
    RowProblems,
    RowsRequest,
    status_of,
)
from skewless.serving.service import Served, ServiceCore, row_problems
from skewless.serving.stages import PUSH_ORIGIN
from skewless.serving.workers import ReloadSignal

logger = logging.getLogger(__name__)

ADMIN_TOKEN_ENV = "SKEWLESS_ADMIN_TOKEN"
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (404, 409, 422, 503)
}


def create_app(service: ServiceCore, reloads: ReloadSignal | None = None) -> FastAPI:
    """The app, which checks the alias every ``serving.poll_seconds`` while it runs, and at
    once when ``reloads`` (a signal shared by the workers of one server) is raised."""
    metrics = service.metrics
    interval = service.config.serving.poll_seconds

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # What startup built (model, Feast, MLflow) lives as long as the server: frozen, the
        # collector stops rescanning it, which otherwise shows as pauses in the p99 latency.
        gc.collect()
        gc.freeze()
        stop = threading.Event()
        poller = threading.Thread(
            target=_poll,
            args=(service, metrics, interval, stop, reloads),
            daemon=True,
            name="alias-poller",
        )
        poller.start()
        yield
        stop.set()
        poller.join(timeout=5)
        service.close()
        metrics.close()

    app = FastAPI(
        title="skewless",
        summary="Forecasts from the registered bundle, with features from the online store.",
        lifespan=lifespan,
    )
    app.state.service, app.state.metrics, app.state.reloads = service, metrics, reloads

    @app.exception_handler(SkewlessError)
    async def skewless_error(request: Request, exc: SkewlessError) -> JSONResponse:
        return _refusal(metrics, type(exc).__name__, str(exc), status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.labels(type(exc).__name__, "request").inc()
        return JSONResponse({"detail": [_excerpt(error) for error in exc.errors()]}, 422)

    app.add_middleware(BodyLimit, limit=service.config.serving.body_limit)

    app.add_middleware(RequestMetrics, metrics=metrics, serving=lambda: service.current.version)

    def shed(endpoint: str) -> None:
        metrics.errors.labels("Overloaded", "request").inc()
        metrics.requests.labels(endpoint, "503", str(service.current.version)).inc()

    predictions = _predictions_router()
    # Outermost: a shed request costs nothing more than its refusal (and is counted by shed).
    app.add_middleware(
        InFlightLimit,
        limit=service.config.serving.max_in_flight,
        routes=[getattr(route, "path", "") for route in predictions.routes],
        on_shed=shed,
    )
    app.include_router(predictions)
    app.include_router(_operations_router())
    return app


# What of a refused input an error shows: enough to find it, never the whole of a huge body
# (reprlib stops walking at its limits, so a huge input costs no more than a small one).
_EXCERPT = reprlib.Repr()
_EXCERPT.maxstring = _EXCERPT.maxother = 80


def _excerpt(error: Any) -> dict[str, Any]:
    """A validation error with its input cut to an excerpt."""
    return {
        "type": error["type"],
        "loc": list(error["loc"]),
        "msg": _EXCERPT.repr(error["msg"]).strip("'\""),
        "input": _EXCERPT.repr(error.get("input")),
    }


# Coroutines: FastAPI would run a plain function dependency in a worker thread.
async def _service(request: Request) -> ServiceCore:
    service: ServiceCore = request.app.state.service
    return service


async def _metrics(request: Request) -> ServingMetrics:
    metrics: ServingMetrics = request.app.state.metrics
    return metrics


Service = Annotated[ServiceCore, Depends(_service)]
Metrics = Annotated[ServingMetrics, Depends(_metrics)]


def _predictions_router() -> APIRouter:
    router = APIRouter(tags=["predictions"], responses=_ERRORS)

    @router.post("/predict", response_model=PredictionResponse)
    async def predict_rows(body: RowsRequest, service: Service, request: Request) -> Response:
        """Forecast after each entity's last row, from raw rows sent in the request."""
        served = await service.predict_rows(pd.DataFrame.from_records(body.rows))
        return _response(served, request)

    @router.post("/predict/feast", response_model=PredictionResponse)
    async def predict_entity(
        body: EntityRequest, service: Service, metrics: Metrics, request: Request
    ) -> Response:
        """Forecast one entity from its online window; its error is the response's status."""
        _check_key(service, body.entity_key)
        served = await service.predict_entities(
            [body.entity], body.time_point, "/predict/feast", body.known
        )
        item = served.items[0]
        if isinstance(item, FailedPrediction):
            request.state.model_version = served.model.version
            return _refusal(metrics, item.kind, item.error, item.status)
        return _response(served, request)

    @router.post("/predict/feast/batch", response_model=PredictionResponse)
    async def predict_batch(body: BatchRequest, service: Service, request: Request) -> Response:
        """Forecast many entities; each succeeds or carries its own error, in request order."""
        _check_key(service, body.entity_key)
        served = await service.predict_entities(body.entities, body.time_point, known=body.known)
        return _response(served, request)

    return router


def _operations_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health")
    def health() -> dict[str, str]:
        """The process is alive."""
        return {"status": "alive"}

    @router.get("/ready", responses={503: {"model": ErrorResponse}})
    async def ready(service: Service) -> JSONResponse:
        """A model is loaded and the online store answers (else 503). "degraded" (still 200,
        for a load balancer to ignore or act on): the request log lost records lately or its
        writer is restarting. A failed or refused reload is reported too."""
        log = service.request_log.status() if service.request_log is not None else None
        body: dict[str, Any] = {
            "model": service.current.describe(),
            "reload_error": service.last_reload_error,
            "request_log": log,
        }
        try:
            await service.feature_store_ready()
        except Exception as exc:  # any failure of the store means not ready
            reachable = isinstance(exc, SkewlessError) and not isinstance(
                exc, StoreUnavailableError
            )
            status = "feature store not ready" if reachable else "feature store unreachable"
            return JSONResponse({**body, "status": status, "detail": str(exc)}, 503)
        return JSONResponse({**body, "status": "degraded" if log and log["degraded"] else "ready"})

    @router.get("/model")
    def model(service: Service) -> dict[str, Any]:
        """Name, version, alias and backtest metrics of the version being served."""
        current = service.current
        return {
            **current.describe(),
            "metrics": current.metrics,
            "trained_until": current.bundle.metadata.get("trained_until"),
            "reload_error": service.last_reload_error,
            "worker_pid": os.getpid(),  # which worker answered, under serve --workers N
        }

    @router.get("/metrics")
    def prometheus(metrics: Metrics) -> Response:
        """Prometheus text format."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @router.post(
        "/admin/reload",
        responses={
            401: {"model": ErrorResponse},
            403: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
    )
    def reload(
        service: Service,
        metrics: Metrics,
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Load the version the alias points at now. Needs ``Authorization: Bearer <token>``
        with the token from SKEWLESS_ADMIN_TOKEN (unset: reloads over HTTP are disabled)."""
        refused = _refuse_unauthorized(authorization, "reload")
        if refused is not None:
            return refused
        try:
            swapped = _reload(service, metrics)
        except Exception as exc:  # the registry down, a version that cannot load: old one kept
            return JSONResponse(
                {"detail": f"reload failed, still serving the old version: {exc}"[:500]}, 503
            )
        if request.app.state.reloads is not None:
            request.app.state.reloads.raise_signal()  # the other workers follow within 0.5 s
        return JSONResponse({"swapped": swapped, "model": service.current.describe()})

    @router.post(
        "/push",
        response_model=PushResponse,
        responses={
            401: {"model": ErrorResponse},
            403: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            422: {"model": PushRefusal},
            503: {"model": ErrorResponse},
        },
    )
    def push(
        _: Annotated[None, Depends(_admin_only("push"))],
        body: PushRequest,
        service: Service,
        metrics: Metrics,
    ) -> JSONResponse:
        """Append new raw rows (the source's column names) to the offline store and rewrite
        their entities' online windows before answering: ``skewless push`` over HTTP. Rows are
        validated as ingestion validates them; if any is refused nothing is written and the
        answer (422) lists every reason with the rows it concerns. Rows sent before are not
        written twice. Needs the admin token, as /admin/reload does."""
        rows = pd.DataFrame.from_records(body.rows)
        try:
            report = service.push(rows)
        except DataValidationError as exc:
            metrics.errors.labels(type(exc).__name__, "request").inc()
            refusal = PushRefusal(
                detail=f"{PUSH_ORIGIN} was refused; nothing was written",
                problems=exc.problems,
                rows=[
                    RowProblems(row=row, reasons=reasons)
                    for row, reasons in row_problems(service.config, rows)
                ],
            )
            return JSONResponse(refusal.model_dump(), 422)
        answer = PushResponse(
            rows_read=report.rows_read,
            rows_written=report.rows_written,
            rows_already_stored=report.rows_already_stored,
            entities=[_plain(entity) for entity in report.entities],
            warnings=report.warnings,
        )
        return JSONResponse(answer.model_dump())

    return router


def _unauthorized(authorization: str | None, what: str) -> tuple[int, str] | None:
    """Why an admin request without ``Authorization: Bearer <SKEWLESS_ADMIN_TOKEN>`` is refused
    (403 when no token is set: the route is disabled, else 401), or None when it may pass."""
    token = os.environ.get(ADMIN_TOKEN_ENV)
    if not token:
        return 403, f"{what} over HTTP is disabled; set {ADMIN_TOKEN_ENV}"
    given = (authorization or "").encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(given, f"Bearer {token}".encode()):
        return 401, "wrong or missing bearer token"
    return None


def _refuse_unauthorized(authorization: str | None, what: str) -> JSONResponse | None:
    """The answer to an admin request that may not pass, else None."""
    refused = _unauthorized(authorization, what)
    if refused is None:
        return None
    status, detail = refused
    challenge = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": detail}, status, headers=challenge)


def _admin_only(what: str) -> Callable[[str | None], None]:
    """A dependency that refuses a request without the admin token before its body is
    validated: an unauthorized client learns nothing about what the body should be."""

    def check(authorization: Annotated[str | None, Header()] = None) -> None:
        refused = _unauthorized(authorization, what)
        if refused is not None:
            status, detail = refused
            challenge = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            raise HTTPException(status, detail, headers=challenge)

    return check


def _plain(entity: Any) -> int | str:
    """An entity id as JSON holds it (validation hands out numpy and pandas scalars)."""
    return entity.item() if hasattr(entity, "item") else entity


def _reload(service: ServiceCore, metrics: ServingMetrics) -> bool:
    try:
        swapped = service.refresh()
    except UnservableVersionError:
        metrics.reloads.labels("refused").inc()
        raise
    except Exception:
        metrics.reloads.labels("failed").inc()
        raise
    metrics.reloads.labels("swapped" if swapped else "unchanged").inc()
    metrics.model_version.set(service.current.version)
    return swapped


# How often a worker looks for a reload another worker was asked for.
_SIGNAL_SECONDS = 0.5


def _poll(
    service: ServiceCore,
    metrics: ServingMetrics,
    interval: float,
    stop: threading.Event,
    reloads: ReloadSignal | None,
) -> None:
    """Follow the alias until ``stop``, every ``interval`` and whenever ``reloads`` is raised;
    a failed load is counted and the old version kept."""
    tick = interval if reloads is None else min(interval, _SIGNAL_SECONDS)
    due = time.monotonic() + interval
    while not stop.wait(tick):
        asked = reloads is not None and reloads.take()
        if not asked and time.monotonic() < due:
            continue
        due = time.monotonic() + interval
        try:
            _reload(service, metrics)
        except Exception:  # already recorded in last_reload_error and the metrics
            continue


def _check_key(service: ServiceCore, entity_key: str | None) -> None:
    expected = service.config.data.entity_key
    if entity_key is not None and entity_key != expected:
        raise RequestError(f"entity_key '{entity_key}' is not this model's entity key '{expected}'")


def _response(served: Served, request: Request) -> Response:
    """The response, serialized by pydantic from the service's items; returned as a finished
    Response so that FastAPI does not dump, re-validate and re-encode it (3 ms at 100
    entities)."""
    request.state.model_version = served.model.version
    body = PredictionResponse(
        request_id=served.request_id,
        model=ModelInfo(**served.model.describe()),
        predictions=served.items,
    )
    return Response(body.model_dump_json(), media_type="application/json")


def _refusal(metrics: ServingMetrics, kind: str, detail: str, status: int) -> JSONResponse:
    """A request answered with an error: counted by the error's class, its message as the
    detail."""
    metrics.errors.labels(kind, "request").inc()
    return JSONResponse({"detail": detail}, status_code=status)
