"""``millrace serve`` as a managed process (the way ``millrace demo`` runs it): ready on /api/health, serves
the dashboard and the live feed, stops on SIGTERM; a taken port is a one-line error."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from millrace.config import Settings
from millrace.runtime.pipeline import api_spec, api_url
from millrace.runtime.process import ProcessManager, free_port
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def test_serve_as_managed_process(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    own = settings.model_copy(update={"state_dir": tmp_path, "api": settings.api.model_copy(update={"port": port})})
    monkeypatch.setenv("MILLRACE_KAFKA__BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("MILLRACE_API__PORT", str(port))
    manager = ProcessManager(tmp_path)
    record = manager.start(api_spec(own, None))
    try:
        url = api_url(own)
        health = wait_for(
            lambda: (h := httpx.get(f"{url}/api/health").json())["feed"]["ready"] and h,
            timeout_s=60,
            what="the live feed of the served app",
        )
        assert health["store"] == "SqliteStore" and health["feed"]["group_id"].startswith("millrace-serve-")
        assert (tmp_path / "millrace.db").is_file()  # the store the settings name
        page = httpx.get(url + "/")
        assert page.status_code == 200 and "<title>millrace" in page.text
        js = httpx.get(url + "/static/vendor/plotly.min.js")
        assert js.status_code == 200 and len(js.content) > 1_000_000
        assert httpx.get(url + "/api/sensors").json()["items"] == []
    finally:
        assert manager.stop("api", timeout_s=30)
    assert not record.alive
    log = Path(record.log_path).read_text(encoding="utf-8")
    assert f"dashboard: http://127.0.0.1:{port}/" in log


def test_serve_port_taken(settings: Settings, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "millrace.cli.main", "--state-dir", str(tmp_path), "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                "PATH": "/usr/bin:/bin",
                "NO_COLOR": "1",
                "COLUMNS": "200",
                "MILLRACE_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            },
        )
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is taken" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr
