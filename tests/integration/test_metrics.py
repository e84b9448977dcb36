# ruff: noqa: F811  (pytest fixtures imported from fixtures_mqtt are parameters here)
"""Prometheus endpoints of real millrace processes, found through their file_sd target files and scraped over
HTTP during a run: exact counters where the input fixes them (docs/metrics.md)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from millrace import telemetry
from millrace.config import Settings
from millrace.iot.fleet import FleetConfig
from millrace.iot.live_stats import LiveStats
from millrace.iot.parallel import run_workers
from millrace.kafka.producer import make_producer
from millrace.kafka.stats import DeliveryStats
from millrace.records import SensorReading
from millrace.runtime.process import free_port
from tests.helpers import unique, wait_for
from tests.integration.fixtures_mqtt import mosquitto, mqtt_settings  # noqa: F401  (fixtures)
from tests.integration.fixtures_service import fresh_topics
from tests.integration.test_process import job_settings, start_job

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def discovered(state_dir: Path, component: str, pid: int, timeout_s: float) -> tuple[Path, dict]:
    """The process's target file (as Prometheus' file_sd reads it) once it exists."""
    path = state_dir / "metrics" / "targets" / f"{component}-{pid}.json"
    wait_for(path.is_file, timeout_s=timeout_s, what=f"{path.name}")
    (entry,) = json.loads(path.read_text(encoding="utf-8"))
    assert entry["labels"]["job"] == f"millrace-{component}" and entry["labels"]["instance"] == f"{component}-{pid}"
    return path, entry


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 90.0) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout_s)


def readings(sensors: int, per_sensor: int) -> list[bytes]:
    """Valid temperature readings, 1 s apart per sensor, ending a minute ago (inside every validity bound)."""
    start = datetime.now(UTC) - timedelta(seconds=per_sensor + 60)
    out = []
    for i in range(per_sensor):
        for s in range(sensors):
            r = SensorReading(
                sensor_id=f"dev-{s:04d}-temperature",
                device_id=f"dev-{s:04d}",
                sensor_type="temperature",
                value=21.0 + 0.3 * math.sin(i / 3 + s),
                unit="°C",
                location="loc-01",
                timestamp=start + timedelta(seconds=i),
            )
            out.append(orjson.dumps(r.to_dict()))
    return out


def test_the_stream_jobs_endpoint_counts_its_input_dead_letters_and_outputs_exactly(
    settings: Settings, tmp_path: Path
) -> None:
    s = job_settings(settings, tmp_path)
    valid = readings(sensors=3, per_sensor=40)
    malformed = [b"[1, 2", b"plain text", b"42", b'"a string"']  # not a JSON object
    missing = [b'{"sensor_id": "x-temperature", "sensor_type": "temperature"}', b'{"value": 1.5}']
    hot = [  # far outside the temperature range
        orjson.dumps({**orjson.loads(valid[i]), "sensor_id": f"hot-{i}-temperature", "value": 5000.0}) for i in range(3)
    ]
    producer = make_producer(s.kafka.client_config())
    for record in valid + malformed + missing + hot:
        producer.produce(s.topics.readings, record)
    assert producer.flush(60) == 0
    invalid = len(malformed) + len(missing) + len(hot)
    total = len(valid) + invalid

    started = time.time()
    proc = start_job(s, tmp_path / "job.log", "--trigger", "0.5")
    try:
        target, entry = discovered(s.state_dir, "stream", proc.pid, timeout_s=180)
        url = f"http://{entry['targets'][0]}/metrics"

        def caught_up() -> Samples | None:
            samples = scrape(url)
            return samples if value(samples, "millrace_stream_input_rows_total") >= total else None

        samples = wait_for(caught_up, timeout_s=240, interval_s=0.5, what="the job to read every record")
        assert value(samples, "millrace_stream_input_rows_total") == total
        assert value(samples, "millrace_stream_rows_processed_total") == len(valid)
        assert value(samples, "millrace_dead_letters_total", reason="malformed") == len(malformed)
        assert value(samples, "millrace_dead_letters_total", reason="missing_field") == len(missing)
        assert value(samples, "millrace_dead_letters_total", reason="out_of_range") == len(hot)
        assert value(samples, "millrace_data_quality_total", problem="invalid") == invalid
        assert value(samples, "millrace_data_quality_total", problem="out_of_range") == len(hot)
        for problem in ("duplicate", "late", "gap"):
            assert value(samples, "millrace_data_quality_total", problem=problem) == 0
        # Written by the driver ...
        assert value(samples, "millrace_produced_total", topic=s.topics.dead_letter) == invalid
        assert value(samples, "millrace_produce_failed_total", topic=s.topics.dead_letter) == 0
        # ... and by Spark's Python workers (multiprocess mode), served from the same endpoint.
        assert value(samples, "millrace_produced_total", topic=s.topics.predictions) == len(valid)
        assert value(samples, "millrace_store_write_seconds_count", backend="sqlite", collection="sensor_metrics") >= 1
        assert value(samples, "millrace_store_write_seconds_count", backend="sqlite", collection="data_quality") >= 1
        batches = value(samples, "millrace_stream_batches_total")
        assert batches >= 1 and value(samples, "millrace_stream_batch_duration_seconds_count") == batches
        assert started <= value(samples, "millrace_stream_last_batch_timestamp_seconds") <= time.time()
        # The lag of the job's consumer group drops to zero once its offsets are committed.
        wait_for(
            lambda: (
                ("millrace_stream_lag_records", (("topic", s.topics.readings),)) in (now := scrape(url))
                and value(now, "millrace_stream_lag_records", topic=s.topics.readings) == 0
            ),
            timeout_s=60,
            interval_s=0.5,
            what="lag 0",
        )
        multiproc = s.state_dir / "metrics" / "multiproc" / f"stream-{proc.pid}"
        assert multiproc.is_dir() and list(multiproc.glob("*.db"))
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert not target.exists() and not multiproc.exists()  # a clean stop unregisters


def test_the_apis_metrics_need_no_token_and_count_requests_by_route(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env |= {
        "MILLRACE_STATE_DIR": str(tmp_path / "state"),
        "MILLRACE_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "MILLRACE_STORE__SQLITE_PATH": str(tmp_path / "store.db"),
        "MILLRACE_API__AUTH": "token",
    }
    argv = [sys.executable, "-m", "millrace.cli.main", "serve", "--port", str(port), "--no-live"]
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        target, entry = discovered(tmp_path / "state", "api", proc.pid, timeout_s=60)
        assert entry["targets"] == [f"127.0.0.1:{port}"] and "__scheme__" not in entry["labels"]
        base = f"http://127.0.0.1:{port}"

        def get(path: str) -> int:
            try:
                with urllib.request.urlopen(base + path, timeout=10) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return exc.code
            except urllib.error.URLError:
                return 0  # not listening yet

        wait_for(lambda: get("/api/health") == 200, timeout_s=60, what="the API")
        assert get("/api/health") == 200
        assert [get(f"/api/sensors/dev-{i}-temperature/readings") for i in range(3)] == [401] * 3
        samples = scrape(base + "/metrics")  # no token
        health = value(samples, "millrace_api_request_seconds_count", method="GET", route="/api/health", status="200")
        assert health >= 2  # the wait above may have asked more than once
        route = "/api/sensors/{sensor_id}/readings"
        assert value(samples, "millrace_api_request_seconds_count", method="GET", route=route, status="401") == 3
        assert not any(dict(labels).get("route", "").startswith("/api/sensors/dev-") for _, labels in samples)
        assert value(samples, "millrace_ws_clients") == 0
        stop(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()
    assert not target.exists()


def test_an_ingest_processs_endpoint_is_discovered_and_unregistered(settings: Settings, tmp_path: Path) -> None:
    s = fresh_topics(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env |= {
        "MILLRACE_STATE_DIR": str(tmp_path / "state"),
        "MILLRACE_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "MILLRACE_TOPICS__READINGS": s.topics.readings,
    }
    argv = [sys.executable, "-m", "millrace.cli.main", "iot", "simulate", "--devices", "2", "--rate", "40"]
    argv += ["--duration", "120", "--quiet"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        target, entry = discovered(tmp_path / "state", "ingest", proc.pid, timeout_s=60)
        url = f"http://{entry['targets'][0]}/metrics"
        produced = wait_for(
            lambda: value(scrape(url), "millrace_produced_total", topic=s.topics.readings) >= 20,
            timeout_s=60,
            what="20 readings acknowledged",
        )
        assert produced
        stop(proc, 90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert not target.exists()


def test_parallel_producers_counts_reach_the_parents_endpoint_exactly(settings: Settings, tmp_path: Path) -> None:
    s = fresh_topics(settings)
    topic = s.topics.readings
    count = 3000
    live = LiveStats(DeliveryStats())
    with telemetry.serving("ingest", tmp_path, 0, host="127.0.0.1", multiprocess=True) as server:
        assert server is not None
        before = value(scrape(server.url), "millrace_produced_total", topic=topic)
        undelivered = run_workers(
            s, FleetConfig(devices=4, seed=7), live, workers=2, count=count, metrics_dir=server.multiproc_dir
        )
        assert undelivered == 0 and live.stats.delivered == count
        samples = scrape(server.url)
    assert before == 0
    assert value(samples, "millrace_produced_total", topic=topic) == count
    assert value(samples, "millrace_produce_failed_total", topic=topic) == 0
    # Latencies are sampled one delivery in eight per worker.
    assert 0 < value(samples, "millrace_delivery_latency_seconds_count", topic=topic) <= count / 8 + 2


def test_the_mqtt_bridges_endpoint_counts_dead_letters_by_reason(mqtt_settings: Settings, tmp_path: Path) -> None:
    from tests.integration.test_mqtt_bridge import publish_raw

    s = mqtt_settings
    prefix = s.mqtt.readings_topic.split("/")[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env |= {
        "MILLRACE_STATE_DIR": str(tmp_path / "state"),
        "MILLRACE_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "MILLRACE_MQTT__PORT": str(s.mqtt.port),
        "MILLRACE_MQTT__READINGS_TOPIC": s.mqtt.readings_topic,
        "MILLRACE_TOPICS__READINGS": s.topics.readings,
        "MILLRACE_TOPICS__DEAD_LETTER": s.topics.dead_letter,
    }
    argv = [sys.executable, "-m", "millrace.cli.main", "iot", "mqtt-bridge", "--no-commands", "--quiet"]
    log = (tmp_path / "bridge.log").open("wb")
    proc = subprocess.Popen([*argv, "--client-id", unique("bridge")], env=env, stdout=log, stderr=subprocess.STDOUT)
    topic = f"{prefix}/loc-01/dev-0001/temperature"
    try:
        target, entry = discovered(tmp_path / "state", "mqtt-bridge", proc.pid, timeout_s=60)
        url = f"http://{entry['targets'][0]}/metrics"

        def subscribed() -> bool:  # a probe reading until one reaches Kafka: the subscription is in place
            publish_raw(s, [(topic, b"21.5")])
            return wait_for_value(url, "millrace_produced_total", 1, timeout_s=2.0, topic=s.topics.readings)

        wait_for(subscribed, timeout_s=60, interval_s=0, what="the bridge's subscription")
        bad = [b"{not json", b"{still not json", b"", b'{"temperature": 21.5}']
        publish_raw(s, [(topic, payload) for payload in bad])
        assert wait_for_value(url, "millrace_produced_total", len(bad), timeout_s=60, topic=s.topics.dead_letter)
        samples = scrape(url)
        assert value(samples, "millrace_dead_letters_total", reason="invalid JSON") == 2
        assert value(samples, "millrace_dead_letters_total", reason="empty payload") == 1
        assert value(samples, "millrace_dead_letters_total", reason="missing field") == 1
        assert sum(v for (name, _), v in samples.items() if name == "millrace_dead_letters_total") == len(bad)
        assert value(samples, "millrace_produced_total", topic=s.topics.dead_letter) == len(bad)
        assert value(samples, "millrace_delivery_latency_seconds_count", topic=s.topics.dead_letter) == len(bad)
        stop(proc, 90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()
    assert not target.exists()


def wait_for_value(url: str, name: str, at_least: float, *, timeout_s: float, **labels: str) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value(scrape(url), name, **labels) >= at_least:
            return True
        time.sleep(0.1)
    return False
