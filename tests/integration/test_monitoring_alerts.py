"""The pipeline's alerts end to end on real servers: the session's Kafka broker, the real stream job
(`millrace iot process`) and simulator (`millrace iot simulate`) as their own processes exporting metrics,
Prometheus and Alertmanager as `stack up --with monitoring` starts them, and the API whose alert list
Alertmanager posts to with its own operator token.

Malformed readings → DeadLetterRateHigh fires → Alertmanager → an infrastructure alert in the store and on
the WebSocket. The stream job stopped while input continues → PipelineStalled fires and lands; the input
stopped → both resolve and their rows close. Intervals and windows are seconds (fixtures_monitoring.FAST).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.sync.client import connect

from millrace.config import Settings
from millrace.services.app import create_app
from millrace.stores.sqlite import SqliteStore
from tests.helpers import wait_for
from tests.integration.fixtures_alerting import (
    api_tokens,
    clean_env,
    monitoring_servers,
    prom,
    prom_value,
    routed_to,
    simulate,
    stop,
    with_monitoring,
)
from tests.integration.fixtures_service import served
from tests.integration.test_process import env_of, job_settings, start_job

pytestmark = pytest.mark.integration

RATE = 40  # readings/s from the simulator of clean input
MALFORMED = ("--rate", "20", "--fault-rate", "malformed=0.5")  # ~10/s dead letters, over dead_letter_rate_max 1/s


@dataclass
class Pipeline:
    settings: Settings
    url: str
    tokens: dict[str, str]
    store: SqliteStore
    job: Any
    simulators: list[Any]
    logs: Path

    def get(self, path: str, **params: Any) -> Any:
        answer = httpx.get(
            self.url + path, params=params, headers={"Authorization": f"Bearer {self.tokens['viewer']}"}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    def infra_alerts(self) -> list[dict[str, Any]]:
        return self.store.alerts(kind="infrastructure", limit=1000)


def named(alerts: list[dict[str, Any]], alertname: str, since: datetime | None = None) -> list[dict[str, Any]]:
    return [
        a
        for a in alerts
        if str(a["reason"]).split(": ", 1)[0] == alertname and (since is None or a["opened_at"] >= since)
    ]


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    tmp = Path(tmp_path_factory.mktemp("monitoring"))
    s = job_settings(settings, tmp)
    s, tokens = api_tokens(s, tmp / "secrets")
    s = with_monitoring(s)
    store = SqliteStore(s.sqlite_path)  # the job's store: infrastructure alerts beside the sensor alerts
    logs = tmp / "logs"
    logs.mkdir()
    t0 = time.monotonic()
    with served(create_app(s, store=store)) as url:
        routed = routed_to(s, url, tmp / "secrets" / "alertmanager.token")
        with monitoring_servers(routed):
            t_servers = time.monotonic()
            job = start_job(s, logs / "job.log")
            simulators: list[Any] = []
            try:
                wait_for(
                    lambda: prom_value(routed, 'up{job="millrace-stream"}') == 1,
                    timeout_s=120,
                    what="Prometheus to scrape the stream job (its target file registered)",
                )
                t_job = time.monotonic()
                simulators.append(
                    simulate(
                        clean_env(env_of(s)),
                        logs / "simulate.log",
                        *("--rate", str(RATE), "--forever", "--devices", "4", "--anomaly-rate", "0"),
                    )
                )
                wait_for(
                    lambda: (prom_value(routed, "sum(millrace_stream_rows_processed_total)") or 0) > 0,
                    timeout_s=120,
                    what="the stream job to store the simulator's first readings",
                )
                print(
                    f"monitoring servers {t_servers - t0:.1f} s, stream job scraped {t_job - t_servers:.1f} s, "
                    f"first readings stored {time.monotonic() - t_job:.1f} s"
                )
                yield Pipeline(routed, url, tokens, store, job, simulators, logs)
            finally:
                for process in (*simulators, job):
                    stop(process)
    store.close()


def test_dead_letters_fire_an_alert_that_alertmanager_delivers_to_the_alert_list(pipeline: Pipeline) -> None:
    p = pipeline
    headers = {"Authorization": f"Bearer {p.tokens['viewer']}"}
    with connect(p.url.replace("http", "ws", 1) + "/ws", additional_headers=headers) as ws:
        ws.send(orjson.dumps({"subscribe": ["alerts"]}).decode())
        assert orjson.loads(ws.recv(10))["type"] == "subscribed"
        assert named(p.infra_alerts(), "DeadLetterRateHigh") == []  # clean input so far
        # a second producer sends malformed readings beside the clean ones
        started = time.monotonic()
        p.simulators.append(
            simulate(clean_env(env_of(p.settings)), p.logs / "malformed.log", "--forever", "--seed", "7", *MALFORMED)
        )
        found = wait_for(
            lambda: named(p.infra_alerts(), "DeadLetterRateHigh"),
            timeout_s=60,
            what="DeadLetterRateHigh in millrace's alert list",
        )
        delivered_s = time.monotonic() - started
        # the first firing (under load a micro-batch may outlast the rate window and the alert fire again)
        alert = min(found, key=lambda a: a["opened_at"])
        assert (alert["kind"], alert["severity"], alert["status"]) == ("infrastructure", "warning", "open")
        assert alert["reason"].startswith("DeadLetterRateHigh: ")
        assert alert["reason"].endswith(" records/s to the dead-letter topic")
        assert alert["alert_id"].startswith("am-")
        # the same alert went out live, with Alertmanager's labels
        deadline = time.monotonic() + 10
        frame: dict[str, Any] = {}
        while frame.get("alert_id") != alert["alert_id"]:
            message = orjson.loads(ws.recv(max(0.1, deadline - time.monotonic())))
            frame = message["data"] if message.get("channel") == "alerts" else {}
        assert (frame["alertname"], frame["source"], frame["labels"]["severity"]) == (
            "DeadLetterRateHigh",
            "alertmanager",
            "warning",
        )
    # Prometheus saw what the alert says: malformed readings counted by reason
    reasons = {r["metric"]["reason"]: float(r["value"][1]) for r in prom(p.settings, "millrace_dead_letters_total")}
    assert reasons and sum(reasons.values()) > 0, reasons
    # the API's panels read the same series from Prometheus
    panels = {panel["id"]: panel for panel in p.get("/api/monitoring/panels", range=300)["panels"]}
    assert {s["label"] for s in panels["dead_letters"]["series"]} == set(reasons)
    labels = {s["label"] for s in panels["throughput"]["series"]}
    assert {"read by the job", "stored by the job", f"produced {p.settings.topics.readings}"} <= labels
    assert p.get("/api/monitoring/query", q="sum(millrace_dead_letters_total)")["data"]["resultType"] == "vector"
    print(f"DeadLetterRateHigh in the alert list {delivered_s:.1f} s after malformed input began")


def test_a_stopped_stream_job_fires_pipeline_stalled_and_both_resolve(pipeline: Pipeline) -> None:
    p = pipeline
    stopped_at = datetime.now(UTC)
    t0 = time.monotonic()
    assert stop(p.job) == 143  # a clean stop on SIGTERM exits 128 + 15 (docs/cli.md)
    targets = p.settings.state_dir / "metrics" / "targets"
    assert not list(targets.glob("stream-*.json"))  # the job removed its target: gone, not down
    # a stall before the stop (the job's first micro-batch may take longer than stalled_after) is not this one
    (alert,) = wait_for(
        lambda: named(p.infra_alerts(), "PipelineStalled", since=stopped_at - timedelta(seconds=1)),
        timeout_s=60,
        what="PipelineStalled in millrace's alert list after the stream job stopped",
    )
    stalled_s = time.monotonic() - t0
    assert (alert["severity"], alert["status"], alert["closed_at"]) == ("critical", "open", None)
    assert alert["reason"] == "PipelineStalled: no readings processed for 10s while input arrives"
    firing = [(a["alertname"], a["state"]) for a in p.get("/api/monitoring/panels")["alerts"]]
    assert ("PipelineStalled", "firing") in firing
    # the input stops too: the stall and the dead letters are over, Alertmanager sends "resolved"
    for simulator in p.simulators:
        assert stop(simulator) == 143
    t1 = time.monotonic()

    def closed() -> list[dict[str, Any]]:
        rows = {a["alert_id"]: a for a in p.infra_alerts()}
        ids = (alert["alert_id"], *(a["alert_id"] for a in named(list(rows.values()), "DeadLetterRateHigh")))
        return [rows[i] for i in ids] if all(rows[i]["status"] == "closed" for i in ids) else []

    rows = wait_for(closed, timeout_s=60, what="PipelineStalled and DeadLetterRateHigh resolved in the alert list")
    resolved_s = time.monotonic() - t1
    for row in rows:
        assert row["closed_at"] is not None and row["closed_at"] >= row["opened_at"]
        events = [e["event"] for e in p.store.alert_events(row["alert_id"])]
        assert events == ["opened", "closed"]
    # one row per firing: Alertmanager's resends updated them, never added one
    assert len(named(p.infra_alerts(), "PipelineStalled", since=stopped_at - timedelta(seconds=1))) == 1
    print(
        f"PipelineStalled in the alert list {stalled_s:.1f} s after the stop; resolved {resolved_s:.1f} s after input"
    )
