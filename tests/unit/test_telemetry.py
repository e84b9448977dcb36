"""millrace.telemetry: the endpoint and its file_sd target, multiprocess aggregation, the contract's names; the
API's /metrics route and request histogram."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from millrace import telemetry
from millrace.errors import PortInUseError

DOCS = Path(__file__).parents[2] / "docs" / "metrics.md"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_serve_metrics_registers_the_target_and_removes_it_on_close(tmp_path: Path) -> None:
    telemetry.PRODUCED.labels("unit.serve").inc(3)
    server = telemetry.serve_metrics("ingest", tmp_path, 0)
    target = tmp_path / "metrics" / "targets" / f"ingest-{os.getpid()}.json"
    assert server.target == target and server.port > 0
    assert json.loads(target.read_text(encoding="utf-8")) == [
        {
            "targets": [f"127.0.0.1:{server.port}"],
            "labels": {"job": "millrace-ingest", "instance": f"ingest-{os.getpid()}"},
        }
    ]
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left behind
    assert scrape(server.url)[("millrace_produced_total", (("topic", "unit.serve"),))] == 3.0
    server.close()
    assert not target.exists()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)


def test_a_taken_port_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError, match=rf"metrics endpoint of stream: cannot listen on 127.0.0.1:{port}"):
            telemetry.serve_metrics("stream", tmp_path, port, multiprocess=True)
    assert not list((tmp_path / "metrics" / "multiproc").iterdir())
    assert not (tmp_path / "metrics" / "targets").exists()


def test_targets_of_dead_processes_are_removed_when_another_registers(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    directory = telemetry.targets_dir(tmp_path)
    directory.mkdir(parents=True)
    stale = directory / f"stream-{int(dead.stdout)}.json"
    alive = directory / f"api-{os.getppid()}.json"
    stale.write_text("[]", encoding="utf-8")
    alive.write_text("[]", encoding="utf-8")
    mine = telemetry.register_target("mqtt-bridge", tmp_path, "0.0.0.0", 9999, labels={"__scheme__": "https"})
    assert sorted(p.name for p in directory.iterdir()) == sorted([alive.name, mine.name])
    assert json.loads(mine.read_text(encoding="utf-8"))[0] == {
        "targets": ["127.0.0.1:9999"],  # a wildcard bind is scraped on loopback
        "labels": {"job": "millrace-mqtt-bridge", "instance": f"mqtt-bridge-{os.getpid()}", "__scheme__": "https"},
    }


def test_multiprocess_directories_of_dead_runs_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    parent = tmp_path / "metrics" / "multiproc"
    stale = parent / f"stream-{int(dead.stdout)}"
    stale.mkdir(parents=True)
    (stale / "counter_1.db").write_bytes(b"")
    other = parent / f"ingest-{os.getppid()}"
    other.mkdir()
    with telemetry.serving("stream", tmp_path, 0, host="127.0.0.1", multiprocess=True) as server:
        assert server is not None
        assert sorted(p.name for p in parent.iterdir()) == sorted([other.name, f"stream-{os.getpid()}"])


def test_websocket_clients_and_drops(tmp_path: Path) -> None:
    import asyncio

    from millrace.services.ws import Hub

    loop = asyncio.new_event_loop()
    try:
        clients, dropped = telemetry.WS_CLIENTS._value.get(), telemetry.WS_DROPPED._value.get()
        hub = Hub(queue_size=2)
        a, b = hub.connect(loop), hub.connect(loop)
        assert telemetry.WS_CLIENTS._value.get() == clients + 2
        a.channels = frozenset({"alerts"})
        for i in range(5):
            hub.publish("alerts", {"i": i})
        assert telemetry.WS_DROPPED._value.get() == dropped + 3  # 5 offered to a queue of 2
        hub.disconnect(a)
        hub.disconnect(a)  # twice: counted once
        hub.disconnect(b)
        assert telemetry.WS_CLIENTS._value.get() == clients
    finally:
        loop.close()


def _record_in_worker(topic: str, n: int) -> None:
    from millrace import telemetry as worker_telemetry

    worker_telemetry.PRODUCED.labels(topic).inc(n)
    worker_telemetry.DELIVERY_LATENCY.labels(topic).observe(0.02)
    worker_telemetry.STORE_WRITE.labels("sqlite", "sensor_metrics").observe(0.003)


def test_metrics_of_worker_processes_are_served_with_the_parents_summed(tmp_path: Path) -> None:
    topic = "unit.multiproc"
    telemetry.PRODUCED.labels(topic).inc(5)
    telemetry.DELIVERY_LATENCY.labels(topic).observe(0.2)
    with telemetry.serving("ingest", tmp_path, 0, host="127.0.0.1", multiprocess=True) as server:
        assert server is not None and server.multiproc_dir is not None
        assert server.multiproc_dir == tmp_path / "metrics" / "multiproc" / f"ingest-{os.getpid()}"
        ctx = mp.get_context("spawn")
        with telemetry.worker_environment(server.multiproc_dir):
            procs = [ctx.Process(target=_record_in_worker, args=(topic, n)) for n in (3, 4)]
            for proc in procs:
                proc.start()
        assert telemetry.MULTIPROC_ENV not in os.environ  # the parent never runs in multiprocess mode
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        samples = scrape(server.url)
        key = (("topic", topic),)
        assert samples[("millrace_produced_total", key)] == 12.0
        assert samples[("millrace_delivery_latency_seconds_count", key)] == 3.0
        assert samples[("millrace_delivery_latency_seconds_bucket", (("le", "0.025"), ("topic", topic)))] == 2.0
        assert samples[("millrace_delivery_latency_seconds_sum", key)] == pytest.approx(0.24)
        store = (("backend", "sqlite"), ("collection", "sensor_metrics"))
        assert samples[("millrace_store_write_seconds_count", store)] >= 2.0
        # Workers' unlabelled gauges (0 there) neither add a pid label nor hide the parent's value.
        assert not any(dict(labels).get("pid") for _, labels in samples)
        directory = server.multiproc_dir
    assert not directory.exists()


def test_every_name_of_the_contract_is_exported_and_documented() -> None:
    text = telemetry.exposition().decode()
    exported = set(re.findall(r"^# TYPE (millrace_\w+) (\w+)$", text, re.MULTILINE))
    documented = set(re.findall(r"^\| `(millrace_\w+)` \| (\w+) \|", DOCS.read_text(encoding="utf-8"), re.MULTILINE))
    contract = {
        ("millrace_produced_total", "counter"), ("millrace_produce_failed_total", "counter"),
        ("millrace_delivery_latency_seconds", "histogram"), ("millrace_consumed_total", "counter"),
        ("millrace_dead_letters_total", "counter"), ("millrace_data_quality_total", "counter"),
        ("millrace_stream_batches_total", "counter"), ("millrace_stream_batch_duration_seconds", "histogram"),
        ("millrace_stream_input_rows_total", "counter"), ("millrace_stream_rows_processed_total", "counter"),
        ("millrace_stream_last_batch_timestamp_seconds", "gauge"), ("millrace_stream_lag_records", "gauge"),
        ("millrace_store_write_seconds", "histogram"), ("millrace_alerts_total", "counter"),
        ("millrace_ws_clients", "gauge"), ("millrace_ws_dropped_total", "counter"),
        ("millrace_api_request_seconds", "histogram"),
    }  # fmt: skip
    assert exported == contract
    assert documented == contract


def test_the_api_serves_metrics_without_a_token_and_labels_requests_by_route_template(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from millrace.config import Settings
    from millrace.services.app import create_app
    from millrace.stores.sqlite import SqliteStore

    # auth = "token" with no token: every /api route is 401. Said explicitly: the integration tests' conftest sets
    # MILLRACE_API__AUTH=none for the whole process when both suites run together.
    settings = Settings(state_dir=tmp_path, api={"auth": "token"})
    store = SqliteStore(tmp_path / "store.db")
    route = "/api/sensors/{sensor_id}/readings"

    def count(status: str, route: str = route) -> float:
        labels = {"method": "GET", "route": route, "status": status}
        return sum(
            s.value
            for m in telemetry.API_REQUEST.collect()
            for s in m.samples
            if s.name == "millrace_api_request_seconds_count" and s.labels == labels
        )

    # The registry is the process's: other tests in the same run may have counted requests, so compare counts.
    before = count("401")
    unmatched_404, unmatched_200, static_200 = (
        count("404", "unmatched"),
        count("200", "unmatched"),
        count("200", "/static"),
    )
    with TestClient(create_app(settings, store=store, live=False)) as client:
        for sensor in ("dev-1-temperature", "dev-2-humidity"):
            assert client.get(f"/api/sensors/{sensor}/readings").status_code == 401
        assert client.get("/no/such/path").status_code == 404
        assert client.get("/static/index.html").status_code == 200
        response = client.get("/metrics")
    store.close()
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert count("401") == before + 2
    text = response.text
    assert 'route="/no/such/path"' not in text and 'route="unmatched",status="404"' in text
    assert count("404", "unmatched") == unmatched_404 + 1
    assert count("200", "/static") == static_200 + 1 and count("200", "unmatched") == unmatched_200
    assert 'route="/metrics"' not in text
    openapi = create_app(settings, store=SqliteStore(tmp_path / "s2.db"), live=False).openapi()
    assert "/metrics" not in openapi["paths"]


def test_metrics_off_means_no_endpoint_and_no_target(tmp_path: Path) -> None:
    with telemetry.serving("ingest", tmp_path, 0, host="127.0.0.1", enabled=False) as server:
        assert server is None
    assert not (tmp_path / "metrics").exists()


class _Msg:
    def __init__(self, topic: str, error: object = None) -> None:
        self._topic, self._error = topic, error

    def topic(self) -> str:
        return self._topic

    def error(self) -> object:
        return self._error


def test_consumed_counts_good_messages_per_topic_and_group() -> None:
    from millrace.kafka.consumer import count_consumed

    def consumed(topic: str) -> float:
        return telemetry.CONSUMED.labels(topic, "unit-group")._value.get()

    before = consumed("unit.a"), consumed("unit.b")
    count_consumed([_Msg("unit.a"), _Msg("unit.b"), _Msg("unit.a"), _Msg("unit.a", error="EOF")], "unit-group")
    assert (consumed("unit.a"), consumed("unit.b")) == (before[0] + 2, before[1] + 1)
