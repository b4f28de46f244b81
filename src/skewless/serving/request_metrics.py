"""Every answer counted and timed, as a plain ASGI middleware.

Starlette's ``@app.middleware("http")`` (``BaseHTTPMiddleware``) runs the rest of the app in a
task of its own and passes the response back through memory streams; this middleware only
watches the response's start message go by, so counting a request costs no more than the
counting itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skewless.serving.metrics import ServingMetrics


class RequestMetrics:
    """Counts each answer by endpoint, status and model version, and times the successful
    ones (from the request's arrival to the response's last byte)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, serving: Callable[[], int]) -> None:
        self.app, self.metrics, self.serving = app, metrics, serving

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, serving = time.perf_counter(), self.serving()
        status = 500  # what Starlette answers when the app raises before it starts a response

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:  # a bug: still counted, then Starlette's plain 500
            self.metrics.errors.labels(type(exc).__name__, "request").inc()
            self._count(scope, status, serving)
            raise
        endpoint, version = self._count(scope, status, serving)
        self.metrics.latency.labels(endpoint, version).observe(time.perf_counter() - started)

    def _count(self, scope: Scope, status: int, serving: int) -> tuple[str, str]:
        endpoint, version = _endpoint(scope), _version(scope, serving)
        self.metrics.requests.labels(endpoint, str(status), version).inc()
        return endpoint, version


def _endpoint(scope: Scope) -> str:
    """The matched route's path (a bounded label set), or "unmatched"."""
    return getattr(scope.get("route"), "path", "unmatched")


def _version(scope: Scope, serving: int) -> str:
    """The version label of an answer: the version whose forecasts or refusals it carries (the
    route's ``request.state.model_version``); else (/health, a request refused before the
    service ran, an error the service raised) the version being served when the request came
    in, so every answer of a deploy carries it."""
    return str(scope.get("state", {}).get("model_version", serving))
