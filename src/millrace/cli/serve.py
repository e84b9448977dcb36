"""``millrace serve``: the REST + WebSocket API, the Kafka cluster view and the live dashboard."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from millrace.cli.common import console, settings_of
from millrace.cli.signals import stopping
from millrace.errors import PortInUseError, missing_extra
from millrace.runtime.process import port_holder, port_is_free


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Interface to bind (default: api.host).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default: api.port).")] = None,
    live: Annotated[bool, typer.Option(help="Feed the WebSocket channels from Kafka.")] = True,
    queue_size: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="Per-client WebSocket queue (oldest dropped).")
    ] = 1000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve the dashboard at / , the API under /api (OpenAPI at /docs) and live channels on /ws."""
    settings = settings_of(ctx)
    try:
        import uvicorn

        from millrace.services.app import create_app
    except ModuleNotFoundError as exc:
        raise missing_extra(exc.name or "fastapi", "serve") from None
    host = host or settings.api.host
    port = port or settings.api.port
    if not port_is_free(host, port):
        holder = port_holder(port)
        raise PortInUseError(f"port {port} on {host} is taken ({holder}); choose another with --port")
    stop = threading.Event()
    # uvicorn handles SIGINT/SIGTERM itself once it runs (graceful shutdown) and hands the signal back to
    # this handler when it is done; before that, the handler makes a stop during start-up a clean one too.
    with stopping(stop, grace_s=30.0, what="the API server"):
        app = create_app(settings, live=live, queue_size=queue_size)
        if stop.is_set():
            return
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        console.print(
            f"dashboard: [bold]http://{shown}:{port}/[/]  API docs: http://{shown}:{port}/docs  "
            f"store: {type(app.state.store).__name__}  Kafka: {settings.kafka.bootstrap_servers}"
        )
        uvicorn.run(app, host=host, port=port, log_level=log_level)
