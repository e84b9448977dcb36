"""Monitoring routes: Alertmanager's webhook into millrace's alert list, and Prometheus' HTTP API for the
dashboard's Monitoring tab.

- ``POST /api/monitoring/alerts`` takes Alertmanager's webhook payload (version 4). Each alert becomes an
  ``infrastructure`` alert in the store (services/alertmanager.py says how it maps) and goes out on the
  WebSocket ``alerts`` channel like a sensor alert. Only an alert that is new or changed is broadcast: a
  repeat notification answers ``stored: 0``. Alertmanager authenticates with its own token of the
  *operator* role (``http_config.authorization.credentials``): writing to the alert list is an operator's
  act, and a viewer token cannot forge alerts.
- ``GET /api/monitoring/query`` runs one PromQL query (instant, or over a range) and
  ``GET /api/monitoring/panels`` the dashboard's named panels at once. Both answer 503
  ``monitoring-unavailable`` when Prometheus does not answer (``millrace stack up --with monitoring``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Body, Query, Request
from starlette.responses import Response

from millrace.config import Settings
from millrace.services.alertmanager import KIND, Notification, PayloadError, parse_payload
from millrace.services.auth import AUTH_RESPONSES, OPERATOR, VIEWER
from millrace.services.problems import JsonResponse, Problem
from millrace.services.schemas import PROBLEM_RESPONSES, Responses
from millrace.services.ws import Hub
from millrace.stores.base import Store

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/monitoring", tags=["monitoring"], responses=PROBLEM_RESPONSES | AUTH_RESPONSES)

PROMETHEUS_TIMEOUT_S = 5.0
MAX_RANGE_S = 7 * 86400
MAX_POINTS = 240  # per series of a range query: enough for a chart, small for the browser
_UNAVAILABLE: Responses = {503: PROBLEM_RESPONSES[422] | {"description": "Prometheus is not running"}}


@dataclass(frozen=True, slots=True)
class Series:
    label: str  # the legend; "{topic}" is replaced by that label's value of each series
    expr: str


@dataclass(frozen=True, slots=True)
class Panel:
    id: str
    title: str
    unit: str
    series: tuple[Series, ...]
    instant: bool = False  # a table of current values (broker health), not a chart


# The dashboard's panels (Grafana's dashboard in resources/grafana/ draws the same queries). Rates over 1m:
# at least four scrapes at the default 15 s interval.
PANELS: tuple[Panel, ...] = (
    Panel(
        "throughput",
        "Throughput",
        "records/s",
        (
            Series("produced {topic}", "sum by (topic) (rate(millrace_produced_total[1m]))"),
            Series("read by the job", "sum(rate(millrace_stream_input_rows_total[1m]))"),
            Series("stored by the job", "sum(rate(millrace_stream_rows_processed_total[1m]))"),
        ),
    ),
    Panel("lag", "Stream job lag", "records", (Series("{topic}", "sum by (topic) (millrace_stream_lag_records)"),)),
    Panel(
        "batch_duration",
        "Micro-batch duration",
        "s",
        (
            Series(
                "p50",
                "histogram_quantile(0.5, sum by (le) (rate(millrace_stream_batch_duration_seconds_bucket[1m])))",
            ),
            Series(
                "p95",
                "histogram_quantile(0.95, sum by (le) (rate(millrace_stream_batch_duration_seconds_bucket[1m])))",
            ),
        ),
    ),
    Panel(
        "dead_letters",
        "Dead letters",
        "records/s",
        (Series("{reason}", "sum by (reason) (rate(millrace_dead_letters_total[1m]))"),),
    ),
    Panel(
        "brokers",
        "Broker health",
        "up",
        (Series("{job} {instance}", 'up{job=~"kafka|kafka-backup|mirrormaker"}'),),
        instant=True,
    ),
)


def prometheus_url(settings: Settings) -> str:
    """Where Prometheus' HTTP API is: [monitoring] host and prometheus_port."""
    return settings.monitoring.prometheus_url


class Prometheus:
    """A small client of Prometheus' HTTP API. Errors become problems: 503 when it cannot be reached,
    422 when it rejects the query (its own message, e.g. a PromQL parse error)."""

    def __init__(self, url: str, timeout_s: float = PROMETHEUS_TIMEOUT_S) -> None:
        self.url = url
        self._client = httpx.Client(base_url=url, timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        try:
            response = self._client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise Problem(
                503,
                f"Prometheus does not answer at {self.url} ({type(exc).__name__}): start it with "
                "`millrace stack up --with monitoring`",
                kind="monitoring-unavailable",
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            if response.status_code in (400, 422) and error:
                raise Problem(422, f"Prometheus: {error}", kind="validation")
            raise Problem(
                503,
                f"Prometheus answered {response.status_code}: {error or 'no result'}",
                kind="monitoring-unavailable",
            )
        return body.get("data")

    def query(self, expr: str, range_s: float | None, *, now: float | None = None) -> Any:
        """Prometheus' ``data`` of an instant query (``range_s`` None) or of a range ending now."""
        if range_s is None:
            return self.get("/api/v1/query", {"query": expr})
        end = time.time() if now is None else now
        return self.get(
            "/api/v1/query_range", {"query": expr, "start": end - range_s, "end": end, "step": step_for(range_s)}
        )


def step_for(range_s: float) -> float:
    """The resolution of a range query: about MAX_POINTS points, at least one per second."""
    return max(1.0, math.ceil(range_s / MAX_POINTS))


def _prometheus(request: Request) -> Prometheus:
    """A client for one request (a test or a second app may point at another Prometheus)."""
    return Prometheus(prometheus_url(request.app.state.settings))


def legend(template: str, metric: dict[str, str]) -> str:
    """A series' legend: ``{name}`` replaced by the series' label of that name ("" when it has none)."""
    out = template
    for name, value in metric.items():
        out = out.replace("{" + name + "}", value)
    while "{" in out and "}" in out.split("{", 1)[1]:
        start = out.index("{")
        out = out[:start] + out[out.index("}", start) + 1 :]
    return " ".join(out.split()) or "value"


def panel_series(panel: Panel, data_by_series: list[Any]) -> list[dict[str, Any]]:
    """The panel's lines (or current values): [{label, metric, points: [[unix_s, value], ...]}]."""
    out = []
    for series, data in zip(panel.series, data_by_series, strict=True):
        for item in (data or {}).get("result", []):
            metric = item.get("metric", {})
            raw = item.get("values") or ([item["value"]] if "value" in item else [])
            points = [[float(t), _number(v)] for t, v in raw]
            out.append({"label": legend(series.label, metric), "metric": metric, "points": points})
    out.sort(key=lambda s: s["label"])
    return out


def _number(text: Any) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


RangeS = Annotated[
    int | None, Query(alias="range", ge=1, le=MAX_RANGE_S, description="Seconds back from now; omit: instant.")
]


@router.get(
    "/query",
    dependencies=[VIEWER],
    responses=_UNAVAILABLE,
    summary="One PromQL query through Prometheus' HTTP API (instant, or over the last `range` seconds)",
)
def query(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=4000, description="PromQL")],
    range_s: RangeS = None,
) -> Response:
    with _prometheus(request) as prometheus:
        data = prometheus.query(q, range_s)
    return JsonResponse({"query": q, "range": range_s, "step": step_for(range_s) if range_s else None, "data": data})


@router.get(
    "/panels",
    dependencies=[VIEWER],
    responses=_UNAVAILABLE,
    summary="The Monitoring tab's panels (throughput, lag, batch duration, dead letters, broker health) and "
    "the alerts Prometheus has firing",
)
def panels(request: Request, range_s: Annotated[int, Query(alias="range", ge=60, le=MAX_RANGE_S)] = 900) -> Response:
    now = time.time()
    out = []
    with _prometheus(request) as prometheus:
        results = [
            [prometheus.query(s.expr, None if panel.instant else range_s, now=now) for s in panel.series]
            for panel in PANELS
        ]
        alerts = prometheus.get("/api/v1/alerts") or {}
    for panel, data in zip(PANELS, results, strict=True):
        out.append(
            {
                "id": panel.id,
                "title": panel.title,
                "unit": panel.unit,
                "instant": panel.instant,
                "queries": [s.expr for s in panel.series],
                "series": panel_series(panel, data),
            }
        )
    firing = [
        {
            "alertname": a.get("labels", {}).get("alertname", ""),
            "state": a.get("state"),
            "severity": a.get("labels", {}).get("severity"),
            "instance": a.get("labels", {}).get("instance"),
            "summary": a.get("annotations", {}).get("summary", ""),
            "active_at": a.get("activeAt"),
        }
        for a in alerts.get("alerts", [])
    ]
    firing.sort(key=lambda a: (a["state"] != "firing", a["alertname"], str(a["instance"])))
    return JsonResponse(
        {"prometheus": prometheus.url, "range": range_s, "step": step_for(range_s), "panels": out, "alerts": firing}
    )


@router.post(
    "/alerts",
    dependencies=[OPERATOR],
    responses={422: PROBLEM_RESPONSES[422] | {"description": "Not an Alertmanager webhook payload"}},
    summary="Alertmanager's webhook (version 4): store each alert as an infrastructure alert and broadcast it",
)
def receive_alerts(
    request: Request, payload: Annotated[dict[str, Any], Body(description="Alertmanager's webhook payload")]
) -> Response:
    try:
        notifications = parse_payload(payload)
    except PayloadError as exc:
        raise Problem(422, str(exc), kind="validation") from None
    store: Store = request.app.state.store
    hub: Hub = request.app.state.hub
    changed = store_notifications(store, notifications)
    for note in changed:
        hub.publish("alerts", note.to_dict())
    for note in changed:
        log.info(
            "infrastructure alert %s %s (%s, %s)",
            note.alertname,
            "resolved" if note.alert.status == "closed" else "firing",
            note.instance or "no instance",
            note.alert.alert_id,
        )
    return JsonResponse(
        {"received": len(notifications), "stored": len(changed), "alert_ids": [n.alert.alert_id for n in changed]}
    )


def store_notifications(store: Store, notifications: list[Notification]) -> list[Notification]:
    """Upsert the alerts that are new or changed (a resend of the same state is left alone); returns them."""
    latest: dict[str, Notification] = {}
    for note in notifications:  # one notification holds an alert once; the last one wins regardless
        latest[note.alert.alert_id] = note
    changed = []
    for alert_id, note in latest.items():
        row = store.alert(alert_id)
        if row is not None and row.get("kind") == KIND and _same(row, note):
            continue
        changed.append(note)
    if changed:
        store.upsert_alerts([n.alert.to_dict() for n in changed])
    return changed


def _same(row: dict[str, Any], note: Notification) -> bool:
    closed = row.get("closed_at") is not None
    return closed == (note.alert.closed_at is not None) and row.get("reason") == note.alert.reason
