"""MirrorMaker 2 to a backup cluster (`stack up --mirror`): every record of a mirrored topic reaches the backup
at the same offset within a bounded lag, consumer group offsets are translated, and the failover drill
(kill -9 the primary, `mirror failover`, resume on the backup) loses nothing and re-reads nothing.

One primary, one backup and MirrorMaker start once for this module (tests/integration/fixtures_mirror.py). The
drill kills the primary, so it runs last."""

# ruff: noqa: F811  (the fixture imported from fixtures_mirror is a parameter here)

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import psutil
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from typer.testing import CliRunner

from millrace.cli.main import app
from millrace.config import failover_path, load_settings
from millrace.kafka.reader import watermarks
from millrace.runtime import failover, mirror, monitoring
from tests.helpers import unique, wait_for
from tests.integration.fixtures_mirror import MirrorStack, mirror_stack  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# How long a record may take to reach the backup: measured ~1-4 s (docs/mirror.md), bounded generously for a
# loaded two-core machine.
LAG_BOUND_S = 60.0


def produce(conf: dict[str, Any], topic: str, records: list[tuple[bytes, bytes]]) -> int:
    """Produce with acks=all; returns the number the primary acknowledged (every one, or the test fails)."""
    producer = Producer({**conf, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    acked: list[int] = []
    for key, value in records:
        producer.produce(topic, value, key, on_delivery=lambda err, msg: acked.append(0 if err else 1))
        producer.poll(0)
    assert producer.flush(30) == 0
    assert sum(acked) == len(records)
    return sum(acked)


def contents(conf: dict[str, Any], topic: str) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every record of ``topic`` up to its high watermarks as (partition, offset, key, value), sorted."""
    marks = watermarks(conf, topic)
    consumer = Consumer({**conf, "group.id": unique("read"), "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, low) for p, (low, _high) in marks.items()])
    wanted = sum(high - low for low, high in marks.values())
    got: list[Any] = []
    try:
        wait_for(
            lambda: got.extend(m for m in consumer.consume(500, 0.2) if m.error() is None) or len(got) >= wanted,
            timeout_s=60,
            what=f"{wanted} records of {topic}",
        )
    finally:
        consumer.close()
    return sorted((m.partition(), m.offset(), m.key(), m.value()) for m in got)


def wait_lag_zero(ms: MirrorStack, topic: str) -> tuple[failover.MirrorStatus, float]:
    started = time.monotonic()

    def caught_up() -> failover.MirrorStatus | None:
        report = failover.status(ms.settings)
        rows = [r for r in report.partitions if r.topic == topic]
        return report if rows and all(r.lag == 0 for r in rows) else None

    report = wait_for(caught_up, timeout_s=LAG_BOUND_S, interval_s=0.5, what=f"lag 0 on {topic}")
    return report, time.monotonic() - started


def consume_and_commit(conf: dict[str, Any], topic: str, group: str, expected: int) -> list[tuple[int, int]]:
    """Read ``expected`` records as ``group`` from the start, commit synchronously; (partition, offset) read."""
    consumer = Consumer({**conf, "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got: list[tuple[int, int]] = []
    try:
        wait_for(
            lambda: (
                got.extend((m.partition(), m.offset()) for m in consumer.consume(500, 0.5) if m.error() is None)
                or len(got) >= expected
            ),
            timeout_s=60,
            what=f"{expected} records of {topic}",
        )
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert len(got) == expected
    return got


def primary_committed(ms: MirrorStack, topic: str, group: str) -> dict[int, int]:
    offsets = failover.committed_offsets(ms.settings.kafka.client_config(), [topic])
    return {p: off for (g, t, p), off in offsets.items() if g == group and t == topic}


def backup_committed(ms: MirrorStack, topic: str, group: str) -> dict[int, int]:
    offsets = failover.committed_offsets(mirror.backup_config(ms.settings), [topic])
    return {p: off for (g, t, p), off in offsets.items() if g == group and t == topic}


def records(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
    return [(f"sensor-{i % 7}".encode(), f"{prefix}-{i}".encode()) for i in range(n)]


def test_every_record_reaches_the_backup_at_the_same_offset(mirror_stack: MirrorStack) -> None:
    ms, topic = mirror_stack, mirror_stack.topics["copy"]
    primary = ms.settings.kafka.client_config()
    started = time.monotonic()
    assert produce(primary, topic, records("copy", 600)) == 600
    produced_in = time.monotonic() - started
    report, took = wait_lag_zero(ms, topic)
    rows = [r for r in report.partitions if r.topic == topic]
    assert sum(r.primary_end or 0 for r in rows) == 600 and [r.partition for r in rows] == [0, 1, 2]
    on_primary = contents(primary, topic)
    assert len(on_primary) == 600
    assert contents(mirror.backup_config(ms.settings), topic) == on_primary  # same partition, offset, key, value
    assert took < LAG_BOUND_S
    mm2 = ms.stack.manager.running("mirrormaker")
    assert mm2 is not None
    rss_mb = psutil.Process(mm2.pid).memory_info().rss / 2**20
    print(f"600 records acked in {produced_in:.1f} s, all on the backup {took:.1f} s later; MM2 RSS {rss_mb:.0f} MB")


def scrape(url: str) -> dict[str, list[Any]]:
    """The samples of a Prometheus text endpoint by metric name."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (http on localhost)
        text = response.read().decode("utf-8")
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def test_consumer_group_offsets_are_translated_on_the_backup(mirror_stack: MirrorStack) -> None:
    ms, topic = mirror_stack, mirror_stack.topics["groups"]
    primary = ms.settings.kafka.client_config()
    produce(primary, topic, records("groups", 90))
    group = unique("g")
    consume_and_commit(primary, topic, group, 90)
    committed = primary_committed(ms, topic, group)
    assert sum(committed.values()) == 90
    wait_for(
        lambda: backup_committed(ms, topic, group) == committed,
        timeout_s=LAG_BOUND_S,
        interval_s=0.5,
        what=f"the offsets {committed} of {group} translated on the backup",
    )


def test_mirrormaker_metrics_count_exactly_what_it_copied(mirror_stack: MirrorStack) -> None:
    """MirrorMaker's JMX exporter (scraped as job mirrormaker): per partition of the copied topic, the records it
    replicated equal the primary's end offset (the 600 of the first test); the group of the test before has a
    checkpoint latency; every connector's tasks run."""
    ms, topic = mirror_stack, mirror_stack.topics["copy"]
    mm2 = ms.stack.manager.running("mirrormaker")
    assert mm2 is not None and mm2.ports["jmx"] == mirror.mirrormaker_jmx_port(ms.settings)
    # What the monitoring runtime writes to targets/jmx.json for Prometheus: MirrorMaker as job mirrormaker.
    target = {
        "targets": [f"{mm2.host}:{mm2.ports['jmx']}"],
        "labels": {"job": "mirrormaker", "instance": "mirrormaker"},
    }
    assert target in monitoring.jmx_targets(ms.stack.manager.records())
    url = f"http://{mm2.host}:{mm2.ports['jmx']}/metrics"
    ends = {r.partition: r.primary_end for r in failover.status(ms.settings).partitions if r.topic == topic}
    assert sum(e or 0 for e in ends.values()) == 600

    def copied() -> dict[int, int]:
        samples = scrape(url).get("kafka_connect_mirror_source_record_count_total", [])
        return {int(s.labels["partition"]): int(s.value) for s in samples if s.labels["topic"] == topic}

    # The count is taken when the backup acknowledges a record, a moment after the record is readable there.
    wait_for(lambda: copied() == ends, timeout_s=LAG_BOUND_S, interval_s=0.5, what=f"record counts {ends}")
    metrics = scrape(url)
    labels = {"source": mirror.SOURCE, "target": mirror.TARGET, "topic": topic}
    ages = [s for s in metrics["kafka_connect_mirror_source_record_age_ms"] if s.labels.items() >= labels.items()]
    latencies = [s for s in metrics["kafka_connect_mirror_source_replication_latency_ms"] if s.labels["topic"] == topic]
    assert sorted(int(s.labels["partition"]) for s in ages) == [0, 1, 2]
    assert all(0 <= s.value < LAG_BOUND_S * 1000 for s in ages + latencies), [s.value for s in ages + latencies]
    groups_topic = ms.topics["groups"]
    checkpoints = [
        s for s in metrics.get("kafka_connect_mirror_checkpoint_latency_ms", []) if s.labels["topic"] == groups_topic
    ]
    assert sorted(int(s.labels["partition"]) for s in checkpoints) == [0, 1, 2]
    running = {s.labels["connector"]: s.value for s in metrics["kafka_connect_worker_connector_running_tasks"]}
    failed = {s.labels["connector"]: s.value for s in metrics["kafka_connect_worker_connector_failed_tasks"]}
    assert running["MirrorSourceConnector"] >= 1 and set(failed.values()) == {0.0}, (running, failed)


def test_status_cli_shows_lag_and_translated_offsets(mirror_stack: MirrorStack) -> None:
    ms = mirror_stack
    runner = CliRunner()
    result = runner.invoke(app, ["--config", str(ms.config_path), "mirror", "status", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["primary_reachable"] is True
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for row in data["partitions"]:
        by_topic.setdefault(row["topic"], []).append(row)
    assert set(by_topic) == {"millrace.iot.readings", *ms.topics.values()}
    copy = by_topic[ms.topics["copy"]]
    assert [(r["partition"], r["lag"]) for r in copy] == [(0, 0), (1, 0), (2, 0)]
    assert sum(r["primary_end"] for r in copy) == sum(r["backup_end"] for r in copy) == 600
    groups = [g for g in data["groups"] if g["topic"] == ms.topics["groups"]]
    assert len(groups) == 3 and all(g["primary"] == g["backup"] for g in groups)
    assert sum(g["backup"] for g in groups) == 90
    table = runner.invoke(app, ["--config", str(ms.config_path), "mirror", "status"])
    assert table.exit_code == 0, table.output
    assert "total lag: 0 records" in table.output and ms.topics["copy"] in table.output

    # `stack up --mirror` again keeps what runs (same pids) and names the backup.
    pids = {r.name: r.pid for r in ms.stack.manager.records()}
    again = runner.invoke(app, ["--config", str(ms.config_path), "stack", "up", "--mirror"])
    assert again.exit_code == 0, again.output
    # MirrorMaker serves its metrics (the fixture turns broker metrics on): its jmx port is listed.
    assert f"mirrormaker pid {pids['mirrormaker']} (jmx {mirror.mirrormaker_jmx_port(ms.settings)})\n" in again.output
    assert f"backup-kafka-1 pid {pids['backup-kafka-1']} (client {ms.settings.mirror.kafka_port}" in again.output
    assert f"backup 127.0.0.1:{ms.settings.mirror.kafka_port} fed by MirrorMaker 2" in again.output
    rows = json.loads(runner.invoke(app, ["--config", str(ms.config_path), "stack", "status", "--json"]).output)
    assert {(r["name"], r["kind"], r["healthy"]) for r in rows} == {
        ("kafka-1", "kafka", True),
        ("backup-kafka-1", "kafka", True),
        ("mirrormaker", "mirror", True),
    }


def test_failover_drill_loses_nothing_and_resumes_at_the_translated_offsets(mirror_stack: MirrorStack) -> None:
    ms, topic = mirror_stack, mirror_stack.topics["drill"]
    primary = ms.settings.kafka.client_config()
    group = unique("drill")
    first, rest = records("before", 120), records("after", 180)
    produce(primary, topic, first)
    consume_and_commit(primary, topic, group, 120)
    committed = primary_committed(ms, topic, group)
    wait_for(
        lambda: backup_committed(ms, topic, group) == committed,
        timeout_s=LAG_BOUND_S,
        interval_s=0.5,
        what=f"the offsets of {group} translated on the backup",
    )
    produce(primary, topic, rest)  # acks=all: acknowledged by the primary
    wait_lag_zero(ms, topic)  # `mirror status` records the primary's end offsets

    ms.stack.manager.kill("kafka-1")  # kill -9
    runner = CliRunner()
    result = runner.invoke(app, ["--config", str(ms.config_path), "mirror", "failover", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["status"]["primary_reachable"] is False
    assert report["lost"] == {name: 0 for name in sorted(["millrace.iot.readings", *ms.topics.values()])}
    assert report["total_lost"] == 0 and report["mirrormaker_stopped"] is True
    assert ms.stack.manager.running("mirrormaker") is None

    switched = load_settings(ms.config_path)  # the overlay now points every client at the backup
    backup_bootstrap = mirror.backup_cluster(ms.settings).bootstrap_servers
    assert switched.kafka.bootstrap_servers == backup_bootstrap == report["backup_bootstrap"]
    conf = switched.kafka.client_config()
    consumer = Consumer({**conf, "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got: list[Any] = []
    try:
        wait_for(
            lambda: got.extend(m for m in consumer.consume(500, 0.5) if m.error() is None) or len(got) >= len(rest),
            timeout_s=60,
            what=f"{len(rest)} records on the backup",
        )
        got.extend(m for m in consumer.consume(500, 2.0) if m.error() is None)  # anything more would be re-read
        positions = consumer.position([TopicPartition(topic, p) for p in range(3)])
    finally:
        consumer.close()
    assert sorted(m.value() for m in got) == sorted(value for _key, value in rest)
    # Per partition: exactly the offsets from the translated commit to the primary's last acknowledged end.
    ends = {r.partition: r.primary_end for r in failover.status(ms.settings).partitions if r.topic == topic}
    for p in range(3):
        offsets = sorted(m.offset() for m in got if m.partition() == p)
        assert offsets == list(range(committed[p], ends[p] or 0)), p
    assert {tp.partition: tp.offset for tp in positions} == ends

    # The table form, then back to the primary.
    table = runner.invoke(app, ["--config", str(ms.config_path), "mirror", "failover"])
    assert table.exit_code == 0, table.output
    assert "nothing lost" in table.output and "mirror failback" in table.output
    # The stack comes back up while failed over (the killed primary restarts): MirrorMaker stays stopped.
    names = [r.name for r in ms.stack.up(mirror=True)]
    assert names == ["kafka-1", "backup-kafka-1"] and ms.stack.manager.running("mirrormaker") is None
    back = runner.invoke(app, ["--config", str(ms.config_path), "mirror", "failback"])
    assert back.exit_code == 0 and "primary again" in back.output
    assert not failover_path(ms.settings.state_dir).exists()
    assert load_settings(ms.config_path).kafka.bootstrap_servers == ms.settings.kafka.bootstrap_servers
