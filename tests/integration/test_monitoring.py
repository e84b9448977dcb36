"""Monitoring on real servers: the broker's JMX exporter scraped by the real Prometheus, targets discovered from
the state dir, and a kill -9 of the broker reaching two webhooks through Alertmanager (and resolving when the
broker is back). The stack is this module's own (fixtures_monitored_stack), not the session's."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from millrace.kafka.admin import admin_client
from millrace.kafka.producer import make_producer
from millrace.runtime.monitoring import targets_dir, write_targets
from millrace.runtime.process import free_port
from millrace.runtime.stack import Stack
from tests.helpers import unique, wait_for
from tests.integration.fixtures_monitored_stack import API_TOKEN, Monitored, monitored_stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    with monitored_stack(tmp_path_factory.mktemp("monitored")) as running:
        yield running


def _value(result: list[dict[str, object]]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])  # type: ignore[index]


def test_prometheus_scrapes_the_broker_jmx_exporter(monitored: Monitored) -> None:
    # One node: it is the active controller, and the controller counts no offline partitions.
    active = wait_for(
        lambda: monitored.query('kafka_controller_kafkacontroller_activecontrollercount{job="kafka"}'),
        timeout_s=60,
        what="the broker's active controller count in Prometheus",
    )
    assert [(r["metric"]["instance"], r["value"][1]) for r in active] == [("kafka-1", "1")]
    assert _value(monitored.query('up{job="kafka", instance="kafka-1"}')) == 1.0
    assert _value(monitored.query('kafka_controller_kafkacontroller_offlinepartitionscount{job="kafka"}')) == 0.0
    assert _value(monitored.query('kafka_server_replicamanager_underreplicatedpartitions{job="kafka"}')) == 0.0

    # Messages in per topic: exactly what was produced.
    from confluent_kafka.admin import NewTopic

    conf = monitored.settings.kafka.client_config()
    topic = unique("jmx")
    admin = admin_client(conf)  # kept alive until its futures are done
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(timeout=30)
    producer = make_producer(conf)
    for i in range(250):
        producer.produce(topic, b"x" * 100, str(i).encode())
    producer.flush(30)
    expr = f'sum(kafka_server_brokertopicmetrics_messagesin_total{{job="kafka", topic="{topic}"}})'
    wait_for(
        lambda: monitored.query(expr) and _value(monitored.query(expr)) == 250.0,
        timeout_s=30,
        what=f"250 messages in on {topic} in Prometheus",
    )
    size = monitored.query(f'sum(kafka_log_size_bytes{{job="kafka", topic="{topic}"}})')
    assert _value(size) > 0  # lz4-compressed batches: much less than 250 x 100 bytes
    wait_for(
        lambda: monitored.query('sum(kafka_network_requestmetrics_requests_total{request="Produce"}) > 0'),
        timeout_s=30,
        what="the broker's Produce request count in Prometheus",
    )


def test_host_exporter_reports_the_state_dir_disk(monitored: Monitored) -> None:
    state = str(monitored.settings.state_dir.resolve())
    free = wait_for(
        lambda: monitored.query(f'millrace_disk_free_bytes{{job="millrace-host", path="{state}"}}'),
        timeout_s=30,
        what="the disk of the state dir in Prometheus",
    )
    size = monitored.query(f'millrace_disk_size_bytes{{path="{state}"}}')
    assert 0 < _value(free) <= _value(size)
    healthy = {t["labels"]["job"]: t["health"] for t in monitored.targets()}
    assert healthy == {"prometheus": "up", "alertmanager": "up", "millrace-host": "up", "kafka": "up"}


def test_a_registered_process_is_scraped_and_dropped_when_its_file_goes(monitored: Monitored) -> None:
    """The metrics contract's discovery: a target file appears → scraped under its job; removed → gone."""
    registry = CollectorRegistry()
    counter = Counter("millrace_produced", "records acknowledged by Kafka", ["topic"], registry=registry)
    counter.labels(topic="t").inc(7)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    target = targets_dir(monitored.settings.state_dir) / "ingest-4242.json"
    try:
        write_targets(
            target,
            [{"targets": [f"127.0.0.1:{port}"], "labels": {"job": "millrace-ingest", "instance": "ingest-4242"}}],
        )
        expr = 'millrace_produced_total{job="millrace-ingest", instance="ingest-4242", topic="t"}'
        got = wait_for(lambda: monitored.query(expr), timeout_s=60, what="the registered process in Prometheus")
        assert _value(got) == 7.0
        target.unlink()
        wait_for(
            lambda: not any(t["labels"].get("instance") == "ingest-4242" for t in monitored.targets()),
            timeout_s=60,
            what="the target to leave Prometheus after its file was removed",
        )
    finally:
        target.unlink(missing_ok=True)
        server.shutdown()
        thread.join(5)


def test_stack_up_again_keeps_the_servers_and_reloads_changed_rules(monitored: Monitored) -> None:
    before = {r.name: r.pid for r in monitored.stack.manager.records()}
    m = monitored.settings.monitoring.model_copy(update={"consumer_lag_max": 777})
    again = Stack(monitored.settings.model_copy(update={"monitoring": m}))
    records = again.up(["monitoring"], apply_topics=False)
    assert {r.name: r.pid for r in records} == before  # nothing restarted

    def lag_rule() -> str:
        url = f"{m.prometheus_url}/api/v1/rules?type=alert"
        with urllib.request.urlopen(url, timeout=5) as response:
            groups = json.load(response)["data"]["groups"]
        return next(r["query"] for g in groups for r in g["rules"] if r["name"] == "ConsumerLagHigh")

    wait_for(lambda: lag_rule().endswith("> 777"), timeout_s=30, what="Prometheus to load the changed rule")


def test_broker_kill_alerts_through_alertmanager_and_resolves(monitored: Monitored, tmp_path: Path) -> None:
    stack = monitored.stack
    wait_for(lambda: monitored.query('up{job="kafka"} == 1'), timeout_s=60, what="the broker scraped before the kill")
    killed_at = time.monotonic()
    stack.manager.kill("kafka-1")
    try:
        firing = wait_for(
            lambda: monitored.webhook.alerts("KafkaBrokerDown", "firing", since=killed_at),
            timeout_s=60,
            what="KafkaBrokerDown at the webhook",
        )
    except AssertionError as exc:  # say what Prometheus and Alertmanager saw
        seen = {
            expr: [(r["metric"], r["value"][1]) for r in monitored.query(expr)]
            for expr in (
                'up{job="kafka"}',
                "ALERTS",
                "prometheus_notifications_sent_total",
                "prometheus_notifications_dropped_total",
                "sum(alertmanager_alerts_received_total)",
                'alertmanager_notifications_failed_total{integration="webhook"}',
            )
        }
        raise AssertionError(f"{exc}; {seen}") from None
    fire_latency = firing[0][0].received_at - killed_at
    note, alert = firing[0]
    assert note.path == "/hook"
    assert alert["labels"] == {
        "alertname": "KafkaBrokerDown",
        "job": "kafka",
        "instance": "kafka-1",
        "severity": "critical",
    }
    assert alert["annotations"]["summary"] == "Kafka broker kafka-1 (kafka) is down"
    # The same notification reaches millrace's alert list endpoint, with Alertmanager's token.
    api = wait_for(
        lambda: monitored.api.alerts("KafkaBrokerDown", "firing", since=killed_at),
        timeout_s=30,
        what="KafkaBrokerDown at the API endpoint",
    )
    assert api[0][0].path == "/api/monitoring/alerts"
    assert api[0][0].headers["Authorization"] == f"Bearer {API_TOKEN}"
    assert api[0][1]["fingerprint"] == alert["fingerprint"]

    restarted_at = time.monotonic()
    stack.start_kafka(broker_metrics=True)
    resolved = wait_for(
        lambda: monitored.webhook.alerts("KafkaBrokerDown", "resolved", since=restarted_at),
        timeout_s=90,
        what="KafkaBrokerDown resolved at the webhook",
    )
    resolve_latency = resolved[0][0].received_at - restarted_at
    assert resolved[0][1]["fingerprint"] == alert["fingerprint"]
    assert resolved[0][1]["endsAt"] > resolved[0][1]["startsAt"]
    report = {"kill_to_firing_s": round(fire_latency, 1), "restart_to_resolved_s": round(resolve_latency, 1)}
    log.warning("broker-down alert latency: %s", json.dumps(report))
    print(f"\nbroker-down alert latency: {json.dumps(report)}")
    # scrape 1 s + for 2 s + evaluation 1 s + group_wait 0: well under 15 s unless the machine is starved
    assert fire_latency < 30
