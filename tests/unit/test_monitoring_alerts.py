"""Alertmanager's webhook payload → infrastructure alerts (pure parsing), the webhook route on a SQLite store
(stored once, resends left alone, resolved closes the row, broadcast on the WebSocket, operator token only),
and the Prometheus proxy's pure parts and its 503 when nothing answers."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from millrace.config import ApiToken, Settings
from millrace.runtime.process import free_port
from millrace.services import monitoring
from millrace.services.alertmanager import (
    KIND,
    PayloadError,
    parse_payload,
    parse_time,
    severity_of,
    split_reason,
)
from millrace.services.app import create_app
from millrace.services.auth import new_token, token_hash
from millrace.stores.sqlite import SqliteStore

STARTS = "2026-03-01T12:00:00.123456789Z"
ENDS = "2026-03-01T12:05:30.5Z"


def am_alert(status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "PipelineStalled", "severity": "critical", "instance": "stream-4242", **labels},
        "annotations": {"summary": "the stream job finished no batch for 30 s", "description": "Restart it."},
        "startsAt": STARTS,
        "endsAt": ENDS if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": "c0ffee12deadbeef",
    }


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="PipelineStalled"}',
        "truncatedAlerts": 0,
        "status": alerts[0]["status"] if alerts else "firing",
        "receiver": "millrace",
        "groupLabels": {"alertname": "PipelineStalled"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }


def test_a_firing_alert_becomes_an_open_infrastructure_alert() -> None:
    (note,) = parse_payload(payload(am_alert()))
    a = note.alert
    starts = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert a.alert_id == f"am-c0ffee12deadbeef-{int(starts.timestamp() * 1000)}"
    assert a.alert_id == "am-c0ffee12deadbeef-1772366400123"
    assert (a.kind, a.severity, a.status, a.device_id, a.sensor_ids) == (KIND, "critical", "open", "stream-4242", ())
    assert a.reason == "PipelineStalled: the stream job finished no batch for 30 s"
    assert split_reason(a.reason) == ("PipelineStalled", "the stream job finished no batch for 30 s")
    assert a.recommendation == "Restart it."
    assert (a.opened_at, a.updated_at, a.closed_at) == (starts, starts, None)
    assert (note.alertname, note.instance, note.summary) == (
        "PipelineStalled",
        "stream-4242",
        "the stream job finished no batch for 30 s",
    )
    live = note.to_dict()
    assert live["score"] != live["score"]  # NaN in memory: no anomaly score; served as null
    assert orjson.loads(orjson.dumps(live))["score"] is None
    assert live["source"] == "alertmanager" and live["labels"]["severity"] == "critical"
    assert live["opened_at"] == "2026-03-01T12:00:00.123Z"


def test_a_resolved_alert_closes_the_same_row_at_its_end() -> None:
    (firing,) = parse_payload(payload(am_alert()))
    (resolved,) = parse_payload(payload(am_alert("resolved")))
    ends = datetime(2026, 3, 1, 12, 5, 30, 500000, tzinfo=UTC)
    assert resolved.alert.alert_id == firing.alert.alert_id
    assert (resolved.alert.status, resolved.alert.closed_at, resolved.alert.updated_at) == ("closed", ends, ends)
    assert resolved.alert.opened_at == firing.alert.opened_at


def test_a_new_firing_of_the_same_rule_is_a_new_alert() -> None:
    later = am_alert()
    later["startsAt"] = "2026-03-01T13:00:00Z"
    first, second = parse_payload(payload(am_alert(), later))
    assert first.alert.alert_id != second.alert.alert_id
    assert second.alert.alert_id == "am-c0ffee12deadbeef-1772370000000"


@pytest.mark.parametrize(
    ("label", "severity"),
    [("critical", "critical"), ("page", "critical"), ("Warning", "warning"), ("info", "info"), ("", "warning")],
)
def test_severity_labels(label: str, severity: str) -> None:
    assert severity_of({"severity": label} if label else {}) == severity


def test_times() -> None:
    assert parse_time("2026-03-01T12:00:00.987654321Z", "t") == datetime(2026, 3, 1, 12, 0, 0, 987654, tzinfo=UTC)
    assert parse_time("2026-03-01T14:00:00+02:00", "t") == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert parse_time("0001-01-01T00:00:00Z", "t") is None
    assert parse_time(None, "t") is None


def test_summary_falls_back_to_the_alertname() -> None:
    bare = am_alert()
    bare["annotations"] = {}
    (note,) = parse_payload(payload(bare))
    assert (note.alert.reason, note.alert.recommendation, note.summary) == ("PipelineStalled", None, "")


def _broken(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    body = payload(am_alert())
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "body: expected a JSON object (Alertmanager's webhook payload)"),
        (_broken(("version",), "3"), "version: expected '4' (Alertmanager's webhook), got '3'"),
        (_broken(("alerts",), {}), "alerts: expected a list"),
        (_broken(("alerts", 0, "status"), "pending"), "alerts[0].status: expected firing or resolved, got 'pending'"),
        (_broken(("alerts", 0, "labels", "alertname"), KeyError), "alerts[0].labels.alertname: missing"),
        (_broken(("alerts", 0, "fingerprint"), "x; drop"), "alerts[0].fingerprint: expected hex digits, got 'x; drop'"),
        (_broken(("alerts", 0, "startsAt"), "yesterday"), "alerts[0].startsAt: 'yesterday' is not an RFC 3339 time"),
        (_broken(("alerts", 0, "startsAt"), KeyError), "alerts[0].startsAt: missing"),
        (_broken(("alerts", 0, "labels"), ["a"]), "alerts[0].labels: expected an object"),
    ],
)
def test_payload_errors_name_the_field(body: Any, message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_payload(body)
    assert str(caught.value) == message


# ---- the Prometheus proxy's pure parts ----


def test_legends_fill_in_labels_and_drop_missing_ones() -> None:
    assert monitoring.legend("produced {topic}", {"topic": "millrace.iot.readings"}) == "produced millrace.iot.readings"
    assert monitoring.legend("produced {topic}", {}) == "produced"
    assert monitoring.legend("{reason}", {}) == "value"
    assert monitoring.legend("{job} {instance}", {"job": "kafka", "instance": "node-1"}) == "kafka node-1"


def test_panel_series_from_range_and_instant_results() -> None:
    (lag,) = [p for p in monitoring.PANELS if p.id == "lag"]
    data = {
        "resultType": "matrix",
        "result": [
            {"metric": {"topic": "b"}, "values": [[100, "5"], [101, "NaN"]]},
            {"metric": {"topic": "a"}, "values": [[100, "7"]]},
        ],
    }
    assert monitoring.panel_series(lag, [data]) == [
        {"label": "a", "metric": {"topic": "a"}, "points": [[100.0, 7.0]]},
        {"label": "b", "metric": {"topic": "b"}, "points": [[100.0, 5.0], [101.0, None]]},
    ]
    (brokers,) = [p for p in monitoring.PANELS if p.id == "brokers"]
    up = {"resultType": "vector", "result": [{"metric": {"job": "kafka", "instance": "n1"}, "value": [100, "1"]}]}
    assert monitoring.panel_series(brokers, [up]) == [
        {"label": "kafka n1", "metric": {"job": "kafka", "instance": "n1"}, "points": [[100.0, 1.0]]}
    ]


def test_range_queries_have_about_240_points() -> None:
    assert monitoring.step_for(60) == 1.0
    assert monitoring.step_for(900) == 4.0
    assert monitoring.step_for(86400) == 360.0


def test_the_panels_ask_for_the_contract_metrics() -> None:
    exprs = " ".join(s.expr for p in monitoring.PANELS for s in p.series)
    for name in (
        "millrace_produced_total",
        "millrace_stream_input_rows_total",
        "millrace_stream_rows_processed_total",
        "millrace_stream_lag_records",
        "millrace_stream_batch_duration_seconds_bucket",
        "millrace_dead_letters_total",
    ):
        assert name in exprs
    assert [p.id for p in monitoring.PANELS] == ["throughput", "lag", "batch_duration", "dead_letters", "brokers"]


# ---- the webhook route on a real SQLite store ----

TOKENS = {role: new_token() for role in ("viewer", "operator")}


def _auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@pytest.fixture
def client(tmp_path: Path) -> Any:
    tokens = tuple(ApiToken(name=f"am-{r}", role=r, sha256=token_hash(t)) for r, t in TOKENS.items())  # type: ignore[arg-type]
    base = Settings(state_dir=tmp_path)
    settings = base.model_copy(
        update={
            "api": base.api.model_copy(update={"auth": "token", "tokens": tokens}),
            "monitoring": base.monitoring.model_copy(update={"prometheus_port": free_port()}),  # nothing there
        }
    )
    store = SqliteStore(tmp_path / "millrace.db")
    with TestClient(create_app(settings, store=store, live=False)) as c:
        yield c
    store.close()


def test_the_webhook_stores_once_broadcasts_and_closes_on_resolve(client: TestClient) -> None:
    with client.websocket_connect("/ws", headers=_auth("viewer")) as ws:
        ws.send_text(orjson.dumps({"subscribe": ["alerts"]}).decode())
        assert orjson.loads(ws.receive_text())["type"] == "subscribed"
        first = client.post("/api/monitoring/alerts", json=payload(am_alert()), headers=_auth("operator"))
        assert first.status_code == 200, first.text
        (alert_id,) = first.json()["alert_ids"]
        assert first.json() == {"received": 1, "stored": 1, "alert_ids": [alert_id]}
        frame = orjson.loads(ws.receive_text())
        assert frame["channel"] == "alerts"
        assert {k: frame["data"][k] for k in ("alert_id", "kind", "status", "alertname", "instance")} == {
            "alert_id": alert_id,
            "kind": "infrastructure",
            "status": "open",
            "alertname": "PipelineStalled",
            "instance": "stream-4242",
        }
        # Alertmanager resends a firing alert every repeat interval: one row, nothing new to broadcast
        again = client.post("/api/monitoring/alerts", json=payload(am_alert()), headers=_auth("operator"))
        assert again.json() == {"received": 1, "stored": 0, "alert_ids": []}
        resolved = client.post("/api/monitoring/alerts", json=payload(am_alert("resolved")), headers=_auth("operator"))
        assert resolved.json() == {"received": 1, "stored": 1, "alert_ids": [alert_id]}
        closing = orjson.loads(ws.receive_text())
        assert (closing["data"]["alert_id"], closing["data"]["status"]) == (alert_id, "closed")
    listed = client.get("/api/alerts", params={"kind": "infrastructure"}, headers=_auth("viewer")).json()["items"]
    assert [(a["alert_id"], a["status"], a["severity"], a["device_id"]) for a in listed] == [
        (alert_id, "closed", "critical", "stream-4242")
    ]
    assert listed[0]["closed_at"] == "2026-03-01T12:05:30.500Z"
    assert listed[0]["score"] is None
    events = client.get(f"/api/alerts/{alert_id}", headers=_auth("viewer")).json()["events"]
    assert [e["event"] for e in events] == ["opened", "closed"]


def test_an_operator_acknowledgement_survives_alertmanager_resends(client: TestClient) -> None:
    (alert_id,) = client.post("/api/monitoring/alerts", json=payload(am_alert()), headers=_auth("operator")).json()[
        "alert_ids"
    ]
    ack = client.post(f"/api/alerts/{alert_id}/acknowledge", json={"by": "ops"}, headers=_auth("operator"))
    assert ack.status_code == 200, ack.text
    client.post("/api/monitoring/alerts", json=payload(am_alert("resolved")), headers=_auth("operator"))
    row = client.get(f"/api/alerts/{alert_id}", headers=_auth("viewer")).json()
    assert (row["status"], row["closed_at"]) == ("acknowledged", "2026-03-01T12:05:30.500Z")


def test_the_webhook_needs_an_operator_token(client: TestClient) -> None:
    body = payload(am_alert())
    assert client.post("/api/monitoring/alerts", json=body).status_code == 401
    viewer = client.post("/api/monitoring/alerts", json=body, headers=_auth("viewer"))
    assert viewer.status_code == 403
    assert viewer.json()["detail"] == "this needs the operator role; token 'am-viewer' has the viewer role"
    assert client.get("/api/alerts", headers=_auth("viewer")).json()["items"] == []


def test_a_payload_that_is_not_alertmanagers_is_a_422_naming_the_field(client: TestClient) -> None:
    body = copy.deepcopy(payload(am_alert()))
    body["alerts"][0]["fingerprint"] = ""
    answer = client.post("/api/monitoring/alerts", json=body, headers=_auth("operator"))
    assert answer.status_code == 422
    assert answer.json()["detail"] == "alerts[0].fingerprint: expected hex digits, got ''"
    assert client.get("/api/alerts", headers=_auth("viewer")).json()["items"] == []


def test_queries_answer_503_when_prometheus_is_not_running(client: TestClient) -> None:
    url = client.app.state.settings.monitoring.prometheus_url  # type: ignore[attr-defined]  # nothing listens
    for path in ("/api/monitoring/query?q=up", "/api/monitoring/panels"):
        answer = client.get(path, headers=_auth("viewer"))
        assert answer.status_code == 503, answer.text
        body = answer.json()
        assert body["type"] == "https://millrace.dev/problems/monitoring-unavailable"
        assert body["detail"].startswith(f"Prometheus does not answer at {url} (ConnectError)")
        assert body["detail"].endswith("start it with `millrace stack up --with monitoring`")
    assert client.get("/api/monitoring/query?q=up").status_code == 401
