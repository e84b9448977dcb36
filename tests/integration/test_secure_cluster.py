"""A secured three-node KRaft cluster started by millrace's runtime (`stack up --brokers 3 --secure`): TLS with
the local CA, SASL/SCRAM principals per service, ACLs enforced; RF 3 / min ISR 2; fault drills with kill -9.

The cluster is the session's (tests/integration/fixtures_secure.py): three JVMs at 512 MB heap, started once, only
when a test that needs it runs; a broker a drill killed is restarted before the next test gets the cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from millrace.errors import KafkaUnavailable, MillraceError
from millrace.kafka.acls import (
    ADMIN,
    API,
    API_FEED_GROUP_PREFIX,
    INGEST,
    SPARK_SOURCE_GROUP_PREFIX,
    STREAM_JOB,
    Acl,
    apply_acls,
    current_acls,
    declared_acls,
    diff_acls,
)
from millrace.kafka.admin import apply_topics, describe_topic
from millrace.kafka.client_config import check_connection, java_client_config, kafka_failure
from millrace.kafka.producer import make_producer
from millrace.kafka.topics import plan_topics
from millrace.runtime.security import ensure_ca, load_security, security_dir
from millrace.runtime.stack import Stack
from tests.helpers import unique, wait_for
from tests.integration.fixtures_secure import BROKERS, conf_of, full_isr, principal_settings, restart

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def read_all(conf: dict[str, Any], topic: str, group: str, expected: int, timeout_s: float = 60.0) -> list[Any]:
    """Consume ``topic`` from the start as ``group`` until ``expected`` messages (deadline), plus a short extra
    poll so that more than ``expected`` would show."""
    consumer = Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got: list[Any] = []
    errors: list[KafkaError] = []

    def more() -> bool:
        for m in consumer.consume(1000, 0.5):
            (got.append(m) if m.error() is None else errors.append(m.error()))
        assert not [e for e in errors if e.fatal() or "AUTHORIZATION" in e.name()], errors
        return len(got) >= expected

    try:
        wait_for(more, timeout_s=timeout_s, what=f"{expected} messages on {topic}")
        got.extend(m for m in consumer.consume(1000, 1.0) if m.error() is None)
    finally:
        consumer.close()
    return got


def test_secure_layout_files_and_modes(secure_stack: Stack) -> None:
    home = security_dir(secure_stack.settings.state_dir)
    for name in ("ca.key", "credentials.json", "node-1.pem", "node-2.pem", "node-3.pem", "clients/admin.env"):
        assert (home / name).stat().st_mode & 0o777 == 0o600, name
    for node in secure_stack.kafka_cluster().nodes:
        assert node.config_path.stat().st_mode & 0o777 == 0o600  # holds the internal principal's password
        assert node.data_dir.resolve().is_relative_to(secure_stack.settings.state_dir.resolve())
    assert [row.healthy for row in secure_stack.status()] == [True] * BROKERS
    assert len({row.ports["sasl_ssl"] for row in secure_stack.status()}) == BROKERS


def test_declared_topics_have_rf3_and_min_isr_2(secure_stack: Stack) -> None:
    conf = conf_of(secure_stack, ADMIN)
    topics = secure_stack.settings.topics
    for name in (topics.readings, topics.alerts, topics.dead_letter, topics.device_commands):
        info = describe_topic(conf, name)
        assert {len(p.replicas) for p in info.partitions} == {3}, name
        assert {len(p.isr) for p in info.partitions} == {3}, name
        assert info.configs["min.insync.replicas"] == "2", name


def test_topics_apply_says_what_it_cannot_change(secure_stack: Stack) -> None:
    conf = conf_of(secure_stack, ADMIN)
    name = unique("narrow")
    narrow = NewTopic(name, 5, 1, config={"retention.ms": "60000"})  # RF 1, more partitions, short retention
    admin = AdminClient(conf)  # kept referenced until the future resolves
    admin.create_topics([narrow])[name].result(timeout=30)
    topics = secure_stack.settings.topics.model_copy(update={"quality": name})
    plan = plan_topics(conf, topics)
    assert plan.brokers == BROKERS
    assert plan.cannot_change == {
        name: [
            "has 5 partitions, declared 1: partitions cannot be removed",
            "replication factor 1, declared 3: changing it needs a partition reassignment "
            "(kafka-reassign-partitions), or delete and re-create the topic",
            "min.insync.replicas kept at 1 (declared 2)",
        ]
    }
    result = apply_topics(conf, [s for s in plan.specs if s.name == name])
    assert result == {name: "updated"}  # the retention it can change; min ISR 1, so acks=all still works
    info = describe_topic(conf, name)
    assert info.configs["retention.ms"] == str(7 * 86_400_000)
    assert info.configs["min.insync.replicas"] == "1" and {len(p.replicas) for p in info.partitions} == {1}
    producer = make_producer(conf)
    producer.produce(name, b"still writable", "k")
    assert producer.flush(30) == 0 and producer.stats.delivered == 1


def test_acls_applied_idempotently(secure_stack: Stack) -> None:
    admin = AdminClient(conf_of(secure_stack, ADMIN))
    declared = declared_acls(secure_stack.settings.topics, stream_job_group=secure_stack.settings.spark.consumer_group)
    current = current_acls(admin)
    assert diff_acls(declared, current).in_sync
    assert sorted(a for a in current if a.principal != "partner") == declared
    secure_stack.up()  # a second `stack up`: nodes kept, topics and ACLs already as declared
    assert current_acls(admin) == current


def test_ingest_writes_stream_job_reads(secure_stack: Stack) -> None:
    topic = secure_stack.settings.topics.readings
    run = unique("run")
    producer = make_producer(conf_of(secure_stack, INGEST))
    n = 500
    for i in range(n):
        producer.produce(topic, f"{run}:{i}".encode(), f"s{i % 7}")
    assert producer.flush(60) == 0
    assert (producer.stats.delivered, producer.stats.failed) == (n, 0)
    got = read_all(conf_of(secure_stack, STREAM_JOB), topic, unique(SPARK_SOURCE_GROUP_PREFIX + "t"), n)
    ours = sorted(int(m.value().decode().split(":")[1]) for m in got if m.value().decode().startswith(run + ":"))
    assert ours == list(range(n))
    # The Spark job's Kafka options come from the same settings: SASL_SSL, SCRAM login, the CA as truststore.
    java = java_client_config(principal_settings(secure_stack, STREAM_JOB).kafka)
    assert java["security.protocol"] == "SASL_SSL" and java["sasl.mechanism"] == "SCRAM-SHA-512"
    assert 'username="stream-job"' in java["sasl.jaas.config"]
    assert java["ssl.truststore.type"] == "PEM" and Path(java["ssl.truststore.location"]).is_file()


def _one_line(text: str) -> str:
    assert "\n" not in text.strip(), text
    return text


def test_unauthorised_principal_is_denied_produce_consume_admin(secure_stack: Stack) -> None:
    topics = secure_stack.settings.topics
    # produce: the ingest principal writes readings, never alerts
    producer = make_producer({**conf_of(secure_stack, INGEST), "delivery.timeout.ms": 20_000})
    producer.produce(topics.alerts, b"x", "k")
    assert producer.flush(60) == 0
    assert (producer.stats.delivered, producer.stats.failed) == (0, 1)
    assert "Topic authorization failed" in _one_line(producer.stats.last_error or "")
    # consume: the API may see that the readings topic exists (DESCRIBE) and use its own groups, not read it
    group = unique(API_FEED_GROUP_PREFIX)
    consumer = Consumer({**conf_of(secure_stack, API), "group.id": group, "enable.auto.commit": False})
    consumer.assign([TopicPartition(topics.readings, 0, 0)])
    try:
        errors = wait_for(
            lambda: [m.error() for m in consumer.consume(10, 0.5) if m.error() is not None],
            timeout_s=30,
            what="a consume error",
        )
    finally:
        consumer.close()
    assert errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert _one_line(errors[0].str()).endswith("Broker: Topic authorization failed")
    # admin: the stream job may not create topics (nor list ACLs)
    admin = AdminClient(conf_of(secure_stack, STREAM_JOB))
    name = unique("t")
    with pytest.raises(KafkaException) as info:
        admin.create_topics([NewTopic(name, 1, 3)])[name].result(timeout=30)
    message = _one_line(str(kafka_failure(f"create topic {name}", info.value)))
    assert (
        message
        == f"create topic {name}: not authorized (TOPIC_AUTHORIZATION_FAILED); the principal has no ACL allowing it"
    )
    with pytest.raises(MillraceError, match=r"^applying ACLs: not authorized \(CLUSTER_AUTHORIZATION_FAILED\)"):
        apply_acls(admin, [Acl(STREAM_JOB, "TOPIC", topics.alerts, "READ")])


def test_cli_with_a_client_env_file_and_a_denied_command(secure_stack: Stack) -> None:
    clients = security_dir(secure_stack.settings.state_dir) / "clients"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}

    def millrace(principal: str, *args: str) -> subprocess.CompletedProcess[str]:
        lines = (clients / f"{principal}.env").read_text(encoding="utf-8").splitlines()
        child = {**env, **dict(line.split("=", 1) for line in lines)}
        argv = [sys.executable, "-m", "millrace.cli.main", "--state-dir", str(secure_stack.settings.state_dir), *args]
        return subprocess.run(argv, capture_output=True, text=True, env=child, timeout=120, check=False)

    ok = millrace(ADMIN, "acl", "diff")
    assert ok.returncode == 0, ok.stderr
    assert "ACLs match the declared list" in ok.stdout
    denied = millrace(INGEST, "acl", "apply")
    assert denied.returncode == 1
    assert "Traceback" not in denied.stderr
    assert "applying ACLs: not authorized (CLUSTER_AUTHORIZATION_FAILED)" in denied.stderr
    assert len(denied.stderr.strip().splitlines()) == 1, denied.stderr
    password = load_security(secure_stack.settings.state_dir).password(INGEST)  # type: ignore[union-attr]
    assert password not in denied.stdout + denied.stderr


def test_wrong_ca_and_wrong_password_fail_clearly(secure_stack: Stack, tmp_path: Path) -> None:
    ensure_ca(tmp_path / "other")
    conf = {**conf_of(secure_stack, INGEST), "ssl.ca.location": str(tmp_path / "other" / "ca.pem")}
    with pytest.raises(KafkaUnavailable) as info:
        check_connection(conf, timeout_s=5)
    message = _one_line(str(info.value))
    assert message.startswith("cannot connect to Kafka at 127.0.0.1:")
    assert "certificate verify failed" in message
    bad = {**conf_of(secure_stack, INGEST), "sasl.password": "not-the-password"}
    with pytest.raises(KafkaUnavailable) as info:
        check_connection(bad, timeout_s=5)
    assert "Authentication failed" in _one_line(str(info.value))
    assert check_connection(conf_of(secure_stack, INGEST)) == BROKERS


def _create_replicated_topic(conf: dict[str, Any], partitions: int = 3) -> str:
    name = unique("drill")
    admin = AdminClient(conf)
    admin.create_topics([NewTopic(name, partitions, 3, config={"min.insync.replicas": "2"})])[name].result(timeout=30)
    return name


def test_kill_9_one_broker_mid_produce_loses_no_acknowledged_record(secure_stack: Stack) -> None:
    conf = conf_of(secure_stack, ADMIN)
    topic = _create_replicated_topic(conf)
    producer = make_producer(conf)  # acks=all, idempotent
    total = 12_000
    halfway = threading.Event()

    def produce() -> None:
        for i in range(total):
            producer.produce(topic, str(i).encode(), f"k{i % 11}")
            if i == total // 2:
                halfway.set()
            if i % 200 == 0:
                time.sleep(0.05)  # pacing: a stream of ~4,000 msg/s over ~3 s, not one burst
        producer.flush(120)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    assert halfway.wait(60)
    secure_stack.manager.kill("kafka-2")  # SIGKILL: no controlled shutdown
    assert producer.stats.delivered < total  # the crash happened mid-stream
    worker.join(180)
    assert not worker.is_alive()
    assert (producer.stats.delivered, producer.stats.failed) == (total, 0)
    got = read_all(conf, topic, unique("g"), total, timeout_s=120)
    assert sorted(int(m.value()) for m in got) == list(range(total))  # exactly once each
    # The producer carries on with one broker down (ISR 2 = min ISR).
    for i in range(total, total + 100):
        producer.produce(topic, str(i).encode(), "k")
    assert producer.flush(60) == 0 and producer.stats.delivered == total + 100
    restart(secure_stack, "kafka-2")
    wait_for(lambda: full_isr(conf, topic), timeout_s=120, interval_s=1, what="the ISR back to 3")


def test_two_brokers_down_acks_all_errors_then_recovers(secure_stack: Stack) -> None:
    conf = conf_of(secure_stack, ADMIN)
    topic = _create_replicated_topic(conf)
    timeout_s = secure_stack.settings.runtime.stop_timeout_s
    secure_stack.manager.stop("kafka-3", timeout_s=timeout_s)
    secure_stack.manager.kill("kafka-2")
    # A producer that gives up after 15 s: every record is either acknowledged or reported failed.
    producer = Producer({**conf, "acks": "all", "enable.idempotence": True, "delivery.timeout.ms": 15_000})
    outcome: dict[int, KafkaError | None] = {}

    def report(err: KafkaError | None, msg: Any) -> None:
        outcome[int(msg.value())] = err

    try:
        for i in range(50):
            producer.produce(topic, str(i).encode(), f"k{i}", on_delivery=report)
        producer.flush(60)
        assert len(outcome) == 50
        failed = [e for e in outcome.values() if e is not None]
        assert failed, "acks=all with one of three replicas left must not succeed"
        assert {e.code() for e in failed} <= {
            KafkaError._MSG_TIMED_OUT,
            KafkaError.NOT_ENOUGH_REPLICAS,
            KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            KafkaError.REQUEST_TIMED_OUT,
        }
        acked = sorted(i for i, e in outcome.items() if e is None)
    finally:
        restart(secure_stack, "kafka-2", "kafka-3")
    # Recovered: the same producer delivers again, and every acknowledged record is there.
    wait_for(lambda: full_isr(conf, topic), timeout_s=120, interval_s=1, what="the ISR back to 3")
    outcome.clear()
    for i in range(1000, 1200):
        producer.produce(topic, str(i).encode(), f"k{i}", on_delivery=report)
    assert producer.flush(60) == 0
    assert len(outcome) == 200 and [e for e in outcome.values() if e is not None] == []
    values = {int(m.value()) for m in read_all(conf, topic, unique("g"), len(acked) + 200)}
    assert set(range(1000, 1200)) <= values
    assert set(acked) <= values  # nothing acknowledged was lost
