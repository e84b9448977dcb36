"""Helpers for the alert-list tests: Prometheus, Alertmanager and the host exporter started through
millrace.runtime.monitoring (as `stack up --with monitoring` starts them) beside the session's broker, on free
ports with intervals of seconds; API tokens with one for Alertmanager; Prometheus queries; child processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from millrace.config import ApiToken, Settings
from millrace.runtime import monitoring
from millrace.runtime.process import ProcessManager, free_port
from millrace.services.auth import new_token, token_hash

# Seconds. Short enough that an alert goes from its cause to millrace's alert list in a few seconds.
FAST = {
    "scrape_interval_s": 1.0,
    "evaluation_interval_s": 1.0,
    "group_wait_s": 1.0,
    "group_interval_s": 2.0,
    "repeat_interval_s": 3600.0,
    "rate_window_s": 20.0,
    "stalled_after_s": 10.0,
    "broker_down_for_s": 2.0,
    "dead_letter_rate_max": 1.0,
}


def api_tokens(settings: Settings, directory: Path) -> tuple[Settings, dict[str, str]]:
    """Settings with authentication on and three tokens: ``viewer`` (the test's reads), ``operator``, and
    ``alertmanager`` (operator role), which is also written to ``directory/alertmanager.token`` for
    Alertmanager's credentials_file."""
    tokens = {"viewer": new_token(), "operator": new_token(), "alertmanager": new_token()}
    roles = {"viewer": "viewer", "operator": "operator", "alertmanager": "operator"}
    entries = tuple(ApiToken(name=n, role=roles[n], sha256=token_hash(t)) for n, t in tokens.items())  # type: ignore[arg-type]
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / "alertmanager.token"
    token_file.write_text(tokens["alertmanager"], encoding="utf-8")
    token_file.chmod(0o600)
    api = settings.api.model_copy(update={"auth": "token", "tokens": entries})
    return settings.model_copy(update={"api": api}), tokens


def with_monitoring(settings: Settings, **overrides: Any) -> Settings:
    """``settings`` with Prometheus, Alertmanager and the exporter on free ports and FAST intervals."""
    update: dict[str, Any] = {
        "prometheus_port": free_port(),
        "alertmanager_port": free_port(),
        "exporter_port": free_port(),
        **FAST,
        **overrides,
    }
    return settings.model_copy(update={"monitoring": settings.monitoring.model_copy(update=update)})


def routed_to(settings: Settings, api_url: str, token_file: Path | None) -> Settings:
    """``settings`` with Alertmanager routed to the alert list of the API at ``api_url`` (with the token in
    ``token_file``; None: no token, for an API with api.auth = "none")."""
    update = {"api_alerts_url": f"{api_url}/api/monitoring/alerts", "api_token_file": token_file}
    return settings.model_copy(update={"monitoring": settings.monitoring.model_copy(update=update)})


@contextmanager
def monitoring_servers(settings: Settings) -> Iterator[ProcessManager]:
    """Alertmanager, the host exporter and Prometheus as `stack up --with monitoring` starts them (the
    session's broker runs without the JMX exporter: no broker targets); stopped on exit."""
    manager = ProcessManager(settings.state_dir)
    started = []
    try:
        for spec in monitoring.specs(settings):
            started.append(manager.start(spec).name)
        yield manager
    finally:
        for name in reversed(started):
            manager.stop(name, timeout_s=settings.runtime.stop_timeout_s)


def prom(settings: Settings, expr: str) -> list[dict[str, Any]]:
    """The result of an instant query (a vector)."""
    answer = httpx.get(f"{settings.monitoring.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
    answer.raise_for_status()
    return answer.json()["data"]["result"]  # type: ignore[no-any-return]


def prom_value(settings: Settings, expr: str) -> float | None:
    result = prom(settings, expr)
    return float(result[0]["value"][1]) if result else None


def simulate(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`millrace iot simulate` as its own process (the ingest component: it registers its metrics)."""
    argv = [sys.executable, "-m", "millrace.cli.main", "iot", "simulate", "--quiet", *args]
    return subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    """SIGTERM (a clean stop: the process removes its target file), SIGKILL after ``timeout_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


def clean_env(base: dict[str, str]) -> dict[str, str]:
    """The environment without the test session's MILLRACE_ variables, plus ``base``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}, **base}
