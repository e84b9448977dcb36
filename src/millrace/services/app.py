"""The FastAPI application: REST under /api, the Kafka cluster view under /api/kafka, WebSocket /ws, and the
dashboard at /.

``create_app(settings)`` opens the store from the settings (``store=`` injects one, e.g. a SqliteStore in
tests) and, while the app runs, one background Kafka consumer that feeds the WebSocket channels.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import FileResponse, RedirectResponse, Response

from millrace import __version__
from millrace.config import Settings
from millrace.services import api, auth, cluster, monitoring, problems, shop, shop_analytics, store_browser, ws
from millrace.services.feed import KafkaFeed
from millrace.services.metrics import install as install_metrics
from millrace.services.problems import JsonResponse
from millrace.stores.base import Store

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "dashboard" / "static"


def plotly_js() -> Path | None:
    """plotly.min.js from the installed plotly package (the dashboard works offline, no CDN)."""
    try:
        import plotly
    except ModuleNotFoundError:
        return None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


def _open_store(settings: Settings) -> Store:
    from millrace.stores.factory import open_store

    return open_store(settings)


def create_app(
    settings: Settings, *, store: Store | None = None, live: bool = True, queue_size: int = ws.DEFAULT_QUEUE
) -> FastAPI:
    """Build the service. ``live=False`` skips the Kafka feed (REST-only); ``queue_size`` bounds each
    WebSocket client's outbox. A store passed in is not closed by the app; one it opened is."""
    owns_store = store is None
    hub = ws.Hub(queue_size=queue_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        feed = app.state.feed
        if feed is not None:
            feed.start()
        try:
            yield
        finally:
            if feed is not None:
                feed.stop()
            if owns_store:
                app.state.store.close()

    app = FastAPI(
        title="millrace",
        version=__version__,
        summary="Live IoT telemetry, anomaly alerts and the Kafka cluster behind them.",
        description="REST resources under /api, the Kafka cluster view under /api/kafka, live channels "
        "on the WebSocket /ws and the dashboard at /. Errors are RFC 9457 problem details.",
        default_response_class=JsonResponse,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store if store is not None else _open_store(settings)
    app.state.hub = hub
    app.state.kafka_admin = LazyAdmin(settings.kafka.client_config())
    app.state.feed = None
    if live:
        app.state.feed = KafkaFeed(
            settings.kafka.client_config(), settings.topics, hub, directory=lambda: _directory(app)
        )
    app.state.auth = auth.Authenticator(settings.api.auth, settings.api.tokens)
    auth.install_log_redaction()
    problems.install(app)
    install_metrics(app)  # GET /metrics (no token) and the request-latency histogram
    app.include_router(api.public)
    app.include_router(api.router)
    app.include_router(cluster.router)
    app.include_router(store_browser.router)
    app.include_router(monitoring.router)
    shop.install(app, settings)  # /api/shop
    app.include_router(shop_analytics.router)  # /api/shop/analytics
    app.include_router(ws.router)
    _dashboard(app)
    return app


class LazyAdmin:
    """One AdminClient for the app, created on first use (a REST-only run without Kafka stays quiet)."""

    def __init__(self, client_config: dict[str, Any]) -> None:
        self._config = {**client_config, "logger": logging.getLogger("millrace.services.kafka")}
        self._admin: AdminClient | None = None
        self._lock = threading.Lock()

    def get(self) -> AdminClient:
        with self._lock:
            if self._admin is None:
                self._admin = AdminClient(self._config)
            return self._admin


def _directory(app: FastAPI) -> dict[str, dict[str, Any]]:
    rows = app.state.store.latest_readings()
    return {r["sensor_id"]: {k: r.get(k) for k in ("location", "device_id", "unit")} for r in rows}


def _dashboard(app: FastAPI) -> None:
    plotly_path = plotly_js()

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/dashboard", include_in_schema=False)
    def dashboard() -> Response:
        return RedirectResponse("/")

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly() -> Response:
        if plotly_path is None:
            raise problems.Problem(
                404, "plotly is not installed: run `pip install 'millrace[serve]'`", kind="not-found"
            )
        return FileResponse(
            plotly_path, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"}
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
