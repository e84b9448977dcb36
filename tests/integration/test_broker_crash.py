"""kill -9 of the single Kafka broker while a producer streams and the stream job runs: after the runtime restarts
the broker, the job recovers by itself and `millrace audit` finds nothing lost and nothing duplicated, and the
store holds exactly one row per reading."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from millrace.config import Settings
from millrace.kafka.producer import make_producer
from millrace.runtime.kafka import metadata_probe
from millrace.runtime.stack import Stack
from millrace.stores.sqlite import SqliteStore
from tests.helpers import wait_for
from tests.integration.test_process import (
    Expected,
    check_audit,
    check_store,
    job_settings,
    produce,
    simulate,
    start_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

RATE = 400.0  # messages per second of the streaming producer


class StreamingProducer(threading.Thread):
    """Produces ``messages`` at ``RATE`` per second through millrace's reliable producer (idempotent, acks=all,
    retried until delivery.timeout.ms), so a broker crash is ridden out without loss or duplicates."""

    def __init__(self, settings: Settings, messages: list[Any]) -> None:
        super().__init__(name="streaming-producer", daemon=True)
        self.settings, self.messages = settings, messages
        self.sent = 0
        self.remaining: int | None = None
        self.failed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = make_producer(self.settings.kafka.client_config())
            topic = self.settings.topics.readings
            started = time.monotonic()
            for i, m in enumerate(self.messages):
                ahead = started + i / RATE - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # pacing the stream, not synchronisation
                producer.produce(topic, m.value, m.key)
                self.sent = i + 1
            self.remaining = producer.flush(240)
            self.failed = producer.stats.failed
        except BaseException as exc:  # reported by the test thread
            self.error = exc


def broker_pid(stack: Stack) -> int:
    rec = stack.manager.running("kafka-1")
    assert rec is not None, "the session's broker is not running"
    return rec.pid


def test_kill_9_of_the_broker_mid_stream_loses_and_duplicates_nothing(
    settings: Settings, stack: Stack, tmp_path: Path
) -> None:
    job = job_settings(settings, tmp_path)
    messages = simulate(3, 300, seed=16)
    expected = Expected(messages, job.processing.allowed_lateness_s)
    head = len(messages) // 4
    produce(job, messages[:head])
    log = tmp_path / "job.log"

    def stored() -> int:
        return SqliteStore(job.sqlite_path).count("sensor_metrics") if job.sqlite_path.exists() else 0

    # Small micro-batches keep the job behind the stream: it still has input to read when the broker dies.
    proc = start_job(job, log, "--max-offsets", "600", "--until-idle", "20")
    stream = StreamingProducer(job, messages[head:])
    try:
        wait_for(lambda: stored() > 0, timeout_s=240, interval_s=0.2, what="the job to store its first readings")
        stream.start()
        wait_for(
            lambda: stream.sent > len(stream.messages) // 3 or stream.error,
            timeout_s=120,
            interval_s=0.1,
            what="the producer to stream a third of its messages",
        )
        pid = broker_pid(stack)
        before_kill = stored()
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(timeout=30)  # reaps it: the session started the broker
        assert stack.manager.running("kafka-1") is None
        assert stream.sent < len(stream.messages), "the stream ended before the crash"
        assert before_kill < len(expected.stored), "the job was done before the crash"

        stack.start_kafka()  # the same runtime code as `stack up`: recovers the log after the unclean stop
        assert metadata_probe(job.kafka.bootstrap_servers)
        stream.join(timeout=300)
        assert not stream.is_alive(), "the producer did not finish within 300 s of the restart"
        assert stream.error is None, repr(stream.error)
        assert (stream.sent, stream.remaining, stream.failed) == (len(stream.messages), 0, 0)
        assert proc.wait(480) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    check_store(job, expected)
    check_audit(job, messages, expected)
