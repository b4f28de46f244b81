"""Load shedding: at most ``serving.max_in_flight`` forecast requests at once per worker.

A saturated server that queues without bound makes every client wait behind the queue, and a
load balancer cannot tell it from a dead one. Refusing the excess at once (503 with
``Retry-After``) keeps the latency of the requests it accepts what it was, and tells clients
and balancers to go elsewhere. Only forecast routes are counted and shed: ``/health``,
``/ready`` and ``/metrics`` always answer, so a saturated server still looks alive.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

RETRY_AFTER_SECONDS = 1


class InFlightLimit:
    """ASGI middleware: a forecast request over the limit is answered 503 before any work.

    ``routes`` are the forecast routes' paths (none has a path parameter, so a path is its
    own metric label); one event loop serves the worker, so the count needs no lock.
    ``on_shed`` is told the route of each refusal.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int | None,
        routes: Collection[str],
        on_shed: Callable[[str], None],
    ) -> None:
        self.app, self.limit, self.on_shed = app, limit, on_shed
        self.routes = frozenset(routes)
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        counted = (
            self.limit is not None and scope["type"] == "http" and scope["path"] in self.routes
        )
        if not counted:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= (self.limit or 0):
            self.on_shed(scope["path"])
            refusal = JSONResponse(
                {
                    "detail": f"the server is at its limit of {self.limit} forecast requests at "
                    "once (serving.max_in_flight); retry shortly or at another replica"
                },
                503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
            await refusal(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
