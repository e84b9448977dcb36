"""The API's Prometheus side: ``GET /metrics`` and the request-latency middleware (docs/metrics.md).

``/metrics`` needs no token (Prometheus scrapes it like every other millrace target; the series carry counts
and latencies, never readings, tokens or client addresses) and is left out of the OpenAPI schema and of its
own histogram. The histogram's ``route`` label is the matched route's template (``/api/sensors/{sensor_id}``),
so raw paths cannot blow up the series count; a path no route matches is ``unmatched``.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from millrace import telemetry
from millrace.services import problems

METRICS_PATH = "/metrics"
router = APIRouter()


@router.get(METRICS_PATH, include_in_schema=False)
def metrics(request: Request) -> Response:
    if not request.app.state.settings.metrics.enabled:
        raise problems.Problem(404, "metrics are off (metrics.enabled = false)", kind="not-found")
    return Response(telemetry.exposition(), media_type=telemetry.CONTENT_TYPE)


class RequestMetrics:
    """Pure ASGI middleware (BaseHTTPMiddleware would buffer streaming responses): one observation per HTTP
    request once its response is complete, labelled with the route template and the status code."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started reaches the client as a 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            telemetry.API_REQUEST.labels(scope.get("method", ""), route_template(scope), str(status)).observe(
                time.perf_counter() - started
            )


def route_template(scope: dict[str, Any] | Scope) -> str:
    """The path template of the route that handled the request (a mount's prefix for static files)."""
    path = getattr(scope.get("route"), "path", None)
    if path:
        return str(path)
    if scope.get("endpoint") is not None and scope.get("root_path"):  # a Mount: its prefix is the root path
        return str(scope["root_path"])
    return "unmatched"


def install(app: FastAPI) -> None:
    app.add_middleware(RequestMetrics)
    app.include_router(router)
