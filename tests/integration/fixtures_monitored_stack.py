"""Monitoring fixtures: a one-broker stack of its own with the JMX exporter, Prometheus, Alertmanager and the host
exporter (``Stack.up(["monitoring"])``), fast intervals, and webhook receivers recording what Alertmanager sends.

A test module wraps :func:`monitored_stack` in a module-scoped fixture. The stack is separate from the session
``stack``, so a test may kill its broker.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from millrace.config import Settings, load_settings
from millrace.runtime.process import free_port
from millrace.runtime.stack import Stack

API_TOKEN = "alertmanager-test-token"


@dataclass
class Notification:
    received_at: float  # time.monotonic()
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class WebhookReceiver:
    """A small HTTP server on 127.0.0.1 that records every POSTed JSON body."""

    port: int = field(default_factory=free_port)
    notifications: list[Notification] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with receiver.lock:
                    receiver.notifications.append(
                        Notification(time.monotonic(), self.path, dict(self.headers.items()), body)
                    )
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (quiet)
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True, name=f"webhook-{self.port}").start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def alerts(self, alertname: str, status: str, *, since: float = 0.0) -> list[tuple[Notification, dict[str, Any]]]:
        """(notification, alert) pairs for ``alertname`` in ``status`` received after ``since``."""
        with self.lock:
            found = []
            for note in self.notifications:
                if note.received_at < since:
                    continue
                for alert in note.body.get("alerts", []):
                    if alert["labels"].get("alertname") == alertname and alert["status"] == status:
                        found.append((note, alert))
            return found


@dataclass
class Monitored:
    stack: Stack
    webhook: WebhookReceiver
    api: WebhookReceiver

    @property
    def settings(self) -> Settings:
        return self.stack.settings

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant PromQL query against the managed Prometheus."""
        url = f"{self.settings.monitoring.prometheus_url}/api/v1/query?query={urllib.parse.quote(expr)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def targets(self) -> list[dict[str, Any]]:
        url = f"{self.settings.monitoring.prometheus_url}/api/v1/targets?state=active"
        with urllib.request.urlopen(url, timeout=5) as response:
            return list(json.load(response)["data"]["activeTargets"])


def monitoring_settings(state_dir: Path, *, webhook_url: str, api_url: str, token_file: Path) -> Settings:
    kafka_port = free_port()
    return load_settings(
        state_dir=state_dir,
        runtime={"kafka_port": kafka_port, "controller_port": free_port(), "kafka_heap": "512m"},
        kafka={"bootstrap_servers": f"127.0.0.1:{kafka_port}"},
        monitoring={
            "prometheus_port": free_port(),
            "alertmanager_port": free_port(),
            "jmx_port": free_port(),
            "exporter_port": free_port(),
            "scrape_interval_s": 1,
            "evaluation_interval_s": 1,
            "broker_down_for_s": 2,
            "group_wait_s": 0,
            "group_interval_s": 1,
            "webhook_url": webhook_url,
            "api_alerts_url": api_url,
            "api_token_file": str(token_file),
        },
    )


@contextlib.contextmanager
def monitored_stack(state_dir: Path) -> Iterator[Monitored]:
    """A broker with its JMX exporter, Prometheus, Alertmanager and the host exporter, all stopped on exit."""
    token_file = state_dir / "alertmanager.token"
    token_file.write_text(API_TOKEN + "\n", encoding="utf-8")
    webhook, api = WebhookReceiver(), WebhookReceiver()
    webhook.start()
    api.start()
    settings = monitoring_settings(
        state_dir,
        webhook_url=webhook.url(),
        api_url=api.url("/api/monitoring/alerts"),
        token_file=token_file,
    )
    stack = Stack(settings)
    try:
        stack.up(["monitoring"], apply_topics=False)
        yield Monitored(stack, webhook, api)
    finally:
        stack.down()
        webhook.stop()
        api.stop()
