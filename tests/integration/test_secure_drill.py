"""The fault drill through the real Spark stream job on the secured three-node cluster (issue 20).

~100k simulated readings (faults included) go through `millrace iot process`, each process as its own
principal: the ingest principal produces, the stream-job principal runs the job (SASL_SSL + SCRAM, the CA as
its truststore), the admin principal audits.

1. kill -9 of one broker while the producer streams and the job runs: every record acknowledged, none failed;
   the producer and the job carry on through the crash (the job stores more after it).
2. kill -9 of a second broker (one of three left, the quorum lost): an ``acks=all`` producer gets delivery
   errors (timeouts / NOT_ENOUGH_REPLICAS), never a silent success; once both brokers are back, the same
   producer delivers again.
3. the store ends with exactly one row per reading the topic holds (the expected set derived from the
   simulator's labels, in topic order) and `millrace audit` accounts for every record: nothing missing, nothing
   duplicated, every acknowledged record among them.

The figures of the run are printed (pytest -s) and recorded in docs/secure-cluster.md.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Producer

from millrace.config import Settings, TopicSettings
from millrace.kafka.acls import ADMIN, INGEST, STREAM_JOB, apply_acls, declared_acls
from millrace.kafka.admin import admin_client, apply_topics
from millrace.kafka.producer import make_producer
from millrace.kafka.reader import read_all
from millrace.kafka.topics import declared_topics
from millrace.runtime.security import client_env
from millrace.runtime.stack import Stack
from millrace.stores.sqlite import SqliteStore
from tests.helpers import unique, wait_for
from tests.integration.fixtures_secure import BROKERS, conf_of, full_isr, principal_settings, restart
from tests.integration.test_process import Expected, check_store, env_of, simulate

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

RATE = 1500.0  # readings per second of the streaming producer
DEVICES, SECONDS = 20, 820  # 20 devices x 6 sensors x 820 s = 98,400 readings, ~100k messages with the faults
PROBE = 600  # readings offered while two brokers are down
OUTAGE_TIMEOUT_MS = 15_000  # the probe producer's delivery.timeout.ms: it must report, not wait forever


def drill_settings(stack: Stack, tmp: Path) -> tuple[Settings, str]:
    """Fresh topics (RF 3, min ISR 2) with the declared ACLs for them, a fresh store and consumer group."""
    prefix = unique("drill")
    names = (
        "readings", "dead_letter", "alerts", "predictions", "windowed_metrics", "quality", "device_commands",
        "recommendations",
    )  # fmt: skip
    topics = TopicSettings(**{name: f"{prefix}.{name}" for name in names})
    admin = conf_of(stack, ADMIN)
    apply_topics(admin, declared_topics(topics, brokers=BROKERS))
    group = unique("millrace-iot-process")
    base = stack.settings
    wanted = declared_acls(base.topics, stream_job_group=base.spark.consumer_group)
    apply_acls(admin_client(admin), sorted({*wanted, *declared_acls(topics, stream_job_group=group)}))
    spark = base.spark.model_copy(
        update={"driver_memory": "1g", "max_offsets_per_trigger": 5000, "consumer_group": group}
    )
    store = base.store.model_copy(update={"sqlite_path": tmp / "store.db"})
    return base.model_copy(
        update={"topics": topics, "state_dir": tmp / "state", "spark": spark, "store": store}
    ), prefix


def as_principal(stack: Stack, s: Settings, principal: str) -> Settings:
    return s.model_copy(update={"kafka": principal_settings(stack, principal).kafka})


def secure_env(s: Settings) -> dict[str, str]:
    """The environment of a millrace command run as the principal of ``s.kafka`` (its client env file)."""
    env = env_of(s)
    env.update(line.split("=", 1) for line in client_env(s.kafka).splitlines())
    env["MILLRACE_SPARK__CONSUMER_GROUP"] = s.spark.consumer_group
    return env


class StreamingProducer(threading.Thread):
    """Streams ``messages`` at ``RATE`` per second through millrace's reliable producer (idempotent, acks=all,
    retried until delivery.timeout.ms), counting what was acknowledged."""

    def __init__(self, conf: dict[str, Any], topic: str, messages: list[Any]) -> None:
        super().__init__(name="streaming-producer", daemon=True)
        self.conf, self.topic, self.messages = conf, topic, messages
        self.sent = 0
        self.remaining: int | None = None
        self.delivered = self.failed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = make_producer(self.conf)
            started = time.monotonic()
            for i, m in enumerate(self.messages):
                ahead = started + i / RATE - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # pacing the stream, not synchronisation
                producer.produce(self.topic, m.value, m.key)
                self.sent = i + 1
                self.delivered = producer.stats.delivered
            self.remaining = producer.flush(240)
            self.delivered, self.failed = producer.stats.delivered, producer.stats.failed
        except BaseException as exc:  # reported by the test thread
            self.error = exc


class Outcomes:
    """The delivery report of every record of a plain acks=all producer: (value, error; None: acknowledged)."""

    def __init__(self) -> None:
        self.reports: list[tuple[bytes, KafkaError | None]] = []

    def __call__(self, err: KafkaError | None, msg: Any) -> None:
        self.reports.append((msg.value(), err))

    def acked(self) -> set[bytes]:
        return {v for v, e in self.reports if e is None}

    def errors(self) -> Counter[str]:
        return Counter(e.name() for _, e in self.reports if e is not None)


def offer(producer: Producer, topic: str, messages: list[Any], outcomes: Outcomes, flush_s: float) -> int:
    for m in messages:
        producer.produce(topic, m.value, m.key, on_delivery=outcomes)
        producer.poll(0)
    return producer.flush(flush_s)


def test_two_broker_crashes_through_the_stream_job(secure_stack: Stack, tmp_path: Path) -> None:
    t_start = time.monotonic()
    job, _ = drill_settings(secure_stack, tmp_path)
    topic = job.topics.readings
    ingest = conf_of(secure_stack, INGEST)
    messages = simulate(DEVICES, SECONDS, seed=20)
    # head: produced before the job starts; stream: during the first crash; probe: offered while two brokers are
    # down; tail: by the same probe producer after they are back.
    n = len(messages)
    head, stream_end, probe_end = n // 5, n - 2 * PROBE, n - PROBE
    producer = make_producer(ingest)
    for m in messages[:head]:
        producer.produce(topic, m.value, m.key)
    assert producer.flush(120) == 0 and (producer.stats.delivered, producer.stats.failed) == (head, 0)

    def stored() -> int:
        return SqliteStore(job.sqlite_path).count("sensor_metrics") if job.sqlite_path.exists() else 0

    log = tmp_path / "job.log"
    job_env = secure_env(as_principal(secure_stack, job, STREAM_JOB))
    argv = [sys.executable, "-m", "millrace.cli.main", "iot", "process", "--quiet", "--max-offsets", "5000"]
    proc = subprocess.Popen(argv, env=job_env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    stream = StreamingProducer(ingest, topic, messages[head:stream_end])
    figures: dict[str, Any] = {"messages": n}
    try:
        wait_for(lambda: stored() > 0 or proc.poll() is not None, timeout_s=300, interval_s=0.5, what="first readings")
        assert proc.poll() is None, log.read_text()[-4000:]
        figures["job_first_rows_s"] = round(time.monotonic() - t_start, 1)
        t_stream = time.monotonic()
        stream.start()
        wait_for(
            lambda: stream.sent > len(stream.messages) // 3 or stream.error,
            timeout_s=120,
            interval_s=0.1,
            what="a third of the stream",
        )
        # 1. kill -9 of one broker mid-stream.
        secure_stack.manager.kill("kafka-2")
        assert secure_stack.manager.running("kafka-2") is None
        at_kill = (stream.sent, stored())
        assert at_kill[0] < len(stream.messages), "the stream ended before the crash"
        stream.join(timeout=300)
        assert not stream.is_alive(), "the producer did not finish within 300 s of the crash"
        assert stream.error is None, repr(stream.error)
        streamed = len(stream.messages)
        assert (stream.sent, stream.remaining, stream.delivered, stream.failed) == (streamed, 0, streamed, 0)
        figures["stream_s"] = round(time.monotonic() - t_stream, 1)
        # The job carries on with one broker down: it stores readings produced after the crash.
        wait_for(
            lambda: stored() > at_kill[1] + 5000 or proc.poll() is not None,
            timeout_s=300,
            interval_s=0.5,
            what="the job to store 5,000 more readings after the crash",
        )
        assert proc.poll() is None, log.read_text()[-4000:]

        # 2. kill -9 of a second broker: one of three left, below min ISR and without a quorum.
        secure_stack.manager.kill("kafka-3")
        t_outage = time.monotonic()
        probe = Producer(
            {**ingest, "acks": "all", "enable.idempotence": True, "delivery.timeout.ms": OUTAGE_TIMEOUT_MS}
        )
        outcomes = Outcomes()
        try:
            offer(probe, topic, messages[stream_end:probe_end], outcomes, flush_s=60)
            assert len(outcomes.reports) == PROBE  # every record reported, one way or the other
            errors = outcomes.errors()
            figures["outage_errors"] = dict(errors)
            figures["outage_acked"] = len(outcomes.acked())
            assert sum(errors.values()) > 0, "acks=all with one of three brokers left must not succeed"
            assert set(errors) <= {"_MSG_TIMED_OUT", "NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
                                   "REQUEST_TIMED_OUT"}  # fmt: skip
        finally:
            t_restart = time.monotonic()
            restart(secure_stack, "kafka-2", "kafka-3")
        admin = conf_of(secure_stack, ADMIN)
        wait_for(lambda: full_isr(admin, topic), timeout_s=180, interval_s=1, what="the ISR back to 3")
        figures["outage_s"] = round(t_restart - t_outage, 1)
        figures["brokers_back_isr3_s"] = round(time.monotonic() - t_restart, 1)
        # Recovered: the same producer delivers the rest, every record acknowledged.
        acked_before = outcomes.acked()
        tail = Outcomes()
        t_tail = time.monotonic()
        assert offer(probe, topic, messages[probe_end:], tail, flush_s=120) == 0
        assert len(tail.reports) == PROBE and tail.errors() == Counter()
        figures["producer_recovered_s"] = round(time.monotonic() - t_restart, 1)
        figures["tail_delivered_s"] = round(time.monotonic() - t_tail, 1)

        # 3. What the topic holds, in topic order per partition (so per sensor): every acknowledged record is
        # there once; the expected store follows from it and the simulator's labels.
        records = [(msg.value(), msg.key()) for msg in read_all(admin, topic)]
        values = Counter(v for v, _ in records)
        kinds: dict[bytes, str] = {}
        for m in messages:
            kinds.setdefault(m.value, m.kind)
        acked = [m.value for m in messages[:stream_end]] + [m.value for m in messages[probe_end:]]
        assert all(values[v] >= 1 for v in acked)  # nothing acknowledged was lost
        assert acked_before <= set(values)  # and so was nothing the probe had acknowledged during the outage
        produced = Counter(m.value for m in messages)
        assert all(values[v] <= produced[v] for v in values)  # no retry wrote a record twice
        figures["topic_records"] = len(records)
        # reported failed, yet appended by the one broker left before the timeout and kept once the others
        # caught up: acks=all promises no silent loss, not that a timed-out record is absent
        figures["outage_records_in_topic"] = len(records) - stream_end - PROBE
        expected = Expected(
            [SimpleNamespace(value=v, key=k, kind=kinds[v]) for v, k in records], job.processing.allowed_lateness_s
        )
        t_drain = time.monotonic()
        wait_for(
            lambda: stored() >= len(expected.stored) or proc.poll() is not None,
            timeout_s=600,
            interval_s=1,
            what=f"the job to store {len(expected.stored)} readings",
        )
        assert proc.poll() is None, log.read_text()[-4000:]
        figures["drain_after_recovery_s"] = round(time.monotonic() - t_drain, 1)
    finally:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: the job finishes its micro-batch and exits 143
        code = proc.wait(180)
    assert code == 143, log.read_text()[-4000:]
    check_store(job, expected)
    report = audit(as_principal(secure_stack, job, ADMIN))
    assert report["ok"] and report["totals"] == {
        "produced": len(records),
        "stored": len(expected.stored),
        "dead_lettered": expected.dead + expected.late,
        "deduplicated": expected.duplicates,
        "missing": 0,
        "duplicated": 0,
        "outside": 0,
    }, report
    figures["stored"] = len(expected.stored)
    figures["total_s"] = round(time.monotonic() - t_start, 1)
    print("secure drill:", orjson.dumps(figures).decode())


def audit(s: Settings) -> dict[str, Any]:
    """`millrace audit --json` as the principal of ``s.kafka``: exit 0 expected."""
    argv = [sys.executable, "-m", "millrace.cli.main", "audit", "--json"]
    done = subprocess.run(argv, env=secure_env(s), capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, (done.stdout.decode()[-3000:], done.stderr.decode()[-2000:])
    report: dict[str, Any] = orjson.loads(done.stdout)
    return report


@pytest.fixture(autouse=True)
def _declared_acls_after(secure_stack: Stack) -> Any:
    """Put the cluster's ACLs back to the declared list (the drill added its topics' ACLs)."""
    yield
    base = secure_stack.settings
    apply_acls(
        admin_client(conf_of(secure_stack, ADMIN)),
        declared_acls(base.topics, stream_job_group=base.spark.consumer_group),
    )
