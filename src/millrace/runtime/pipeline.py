"""The IoT pipeline's own processes — simulator, Spark job, API service — as managed servers.

``millrace demo`` runs them beside the Kafka node through the same :class:`ProcessManager`, so they get
readiness checks, logs in ``<state_dir>/logs``, show up in ``millrace stack status`` and stop cleanly with
``millrace stack down``. Each is a ``millrace`` subcommand started with the same settings as the parent.
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from millrace.config import Settings
from millrace.runtime.process import ServerSpec

PIPELINE_KIND = "pipeline"


@dataclass(frozen=True)
class FleetOptions:
    devices: int = 25
    locations: int = 4
    interval_s: float = 1.0  # event-time spacing per sensor; the live rate keeps pace with the wall clock
    anomaly_rate: float = 0.05
    seed: int = 7

    @property
    def sensors(self) -> int:
        return self.devices * 6

    @property
    def live_rate(self) -> float:
        return self.sensors / self.interval_s

    def args(self) -> list[str]:
        return [
            "--devices",
            str(self.devices),
            "--locations",
            str(self.locations),
            "--seed",
            str(self.seed),
            "--anomaly-rate",
            str(self.anomaly_rate),
            "--interval",
            str(self.interval_s),
        ]


def millrace_argv(settings: Settings, config_path: Path | None, *args: str) -> list[str]:
    """argv running a ``millrace`` subcommand with the settings the parent runs with.

    Environment variables are inherited; the state dir, log level and config file are passed explicitly.
    """
    argv = [
        sys.executable,
        "-m",
        "millrace.cli.main",
        "--state-dir",
        str(settings.state_dir.resolve()),
        "--log-level",
        settings.log_level,
    ]
    if config_path is not None:
        argv += ["--config", str(config_path.resolve())]
    return argv + list(args)


def _spec(settings: Settings, name: str, argv: Sequence[str], **kw: object) -> ServerSpec:
    return ServerSpec(
        name=name,
        kind=PIPELINE_KIND,
        argv=argv,
        env={"PYTHONUNBUFFERED": "1", "NO_COLOR": "1"},
        start_timeout_s=settings.runtime.start_timeout_s,
        **kw,  # type: ignore[arg-type]
    )


def process_spec(settings: Settings, config_path: Path | None, *extra: str) -> ServerSpec:
    """The Spark job; ready as soon as it runs (its progress is visible in the store and its log)."""
    argv = millrace_argv(settings, config_path, "iot", "process", *extra)
    # A graceful stop finishes the current micro-batch; give it time before SIGKILL.
    return _spec(settings, "iot-process", argv, ports={}, ready=lambda: True, stop_timeout_s=90.0, term_group=False)


def simulator_spec(
    settings: Settings, config_path: Path | None, fleet: FleetOptions, *, start: str | None = None
) -> ServerSpec:
    """The live simulator: unbounded, anomalies on, at the wall-clock pace; event time from ``start``
    (ISO 8601, default now)."""
    args = [*fleet.args(), "--rate", str(fleet.live_rate), "--forever", "--quiet"]
    if start is not None:
        args += ["--start", start]
    argv = millrace_argv(settings, config_path, "iot", "simulate", *args)
    return _spec(settings, "iot-simulate", argv, ports={}, ready=lambda: True)


def api_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.api.host in ("0.0.0.0", "::") else settings.api.host
    return f"http://{host}:{settings.api.port}"


def api_spec(settings: Settings, config_path: Path | None) -> ServerSpec:
    """``millrace serve``; ready when /api/health answers 200."""
    argv = millrace_argv(settings, config_path, "serve")
    health = api_url(settings) + "/api/health"

    def ready() -> bool:
        with urllib.request.urlopen(health, timeout=2) as response:  # noqa: S310 (loopback URL we built)
            return bool(response.status == 200)

    return _spec(settings, "api", argv, ports={"http": settings.api.port}, ready=ready, host=settings.api.host)
