"""``millrace serve``: the REST + WebSocket API, the Kafka cluster view and the live dashboard."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer

from millrace.cli.common import console, settings_of
from millrace.cli.signals import stopping
from millrace.config import ApiToken, Settings
from millrace.errors import ConfigError, PortInUseError, missing_extra
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
    tls = tls_files(settings)
    settings, token = with_generated_token(settings)
    with stopping(stop, grace_s=30.0, what="the API server"):
        app = create_app(settings, live=live, queue_size=queue_size)
        if stop.is_set():
            return
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        base = f"{'https' if tls else 'http'}://{shown}:{port}"
        # The token goes in the URL fragment: browsers never send a fragment to the server, so it stays out of
        # access logs; the dashboard moves it to sessionStorage and clears it from the address bar.
        console.print(
            f"dashboard: [bold]{base}/{'#token=' + token if token else ''}[/]  API docs: {base}/docs  "
            f"store: {type(app.state.store).__name__}  Kafka: {settings.kafka.bootstrap_servers}",
            highlight=False,
            soft_wrap=True,
        )
        if token:
            console.print("a new admin token was generated for this run (no api.tokens configured)")
        elif settings.api.auth == "none":
            console.print("[yellow]authentication is off (api.auth = none): anyone who reaches the port can act[/]")
        ssl = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])} if tls else {}
        target = register_api_target(settings, host, port, tls=tls is not None)
        try:
            uvicorn.run(app, host=host, port=port, log_level=log_level, **ssl)  # type: ignore[arg-type]
        finally:
            if target is not None:
                target.unlink(missing_ok=True)


def register_api_target(settings: Settings, host: str, port: int, *, tls: bool) -> Path | None:
    """The API's file_sd target (it serves /metrics on its own port; docs/metrics.md), None with metrics off."""
    if not settings.metrics.enabled:
        return None
    from millrace.telemetry import register_target

    labels = {"__scheme__": "https"} if tls else None
    return register_target("api", settings.state_dir, host, port, labels=labels)


def tls_files(settings: Settings) -> tuple[Path, Path] | None:
    """api.tls_cert and api.tls_key, checked to be readable files (a missing one is a settings error)."""
    cert, key = settings.api.tls_cert, settings.api.tls_key
    if cert is None or key is None:
        return None
    for name, path in (("api.tls_cert", cert), ("api.tls_key", key)):
        if not path.is_file():
            raise ConfigError(f"invalid setting {name}: no such file {path}")
    return cert, key


def with_generated_token(settings: Settings) -> tuple[Settings, str | None]:
    """With auth on and no token configured, a fresh admin token for this run only (its hash in the returned
    settings, the token returned to be shown once). Otherwise the settings unchanged and None."""
    if settings.api.auth != "token" or settings.api.tokens:
        return settings, None
    from millrace.services.auth import new_token, token_hash

    token = new_token()
    entry = ApiToken(name="generated-admin", role="admin", sha256=token_hash(token))
    return settings.model_copy(update={"api": settings.api.model_copy(update={"tokens": (entry,)})}), token
