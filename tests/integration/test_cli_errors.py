"""The CLI against real servers: Kafka unreachable is detected in seconds; SIGTERM during start-up and during
the run of `iot process` and `iot simulate --forever` stops them cleanly (exit 143, no traceback, what was
sent is delivered); `--until-idle` stops when there is nothing to read. docs/cli.md states the exit codes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from millrace.config import Settings
from millrace.runtime.process import free_port
from tests.helpers import unique, wait_for
from tests.integration.test_process import env_of, job_settings, produce, simulate

pytestmark = pytest.mark.integration

MILLRACE = [sys.executable, "-m", "millrace.cli.main"]
KAFKA_DOWN_DEADLINE_S = 15.0


class Running:
    """A ``millrace`` subprocess whose stdout and stderr lines are collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [*MILLRACE, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line.rstrip("\n"))

    def seen(self, text: str, where: str = "stderr") -> bool:
        return any(text in line for line in getattr(self, where))

    def stop(self, deadline_s: float) -> tuple[int, float]:
        """SIGTERM; the exit code and how long the process took to exit (fails after ``deadline_s``)."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(deadline_s)
        took = time.monotonic() - sent
        for reader in self._readers:
            reader.join(10)
        return code, took

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def running() -> Iterator[list[Running]]:
    procs: list[Running] = []
    yield procs
    for proc in procs:
        proc.kill()


def closed_env(tmp_path: Path, bootstrap: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env.update(
        {
            "MILLRACE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "MILLRACE_STATE_DIR": str(tmp_path / "state"),
            "COLUMNS": "200",
            "NO_COLOR": "1",
        }
    )
    return env


@pytest.mark.parametrize(
    "args",
    [
        ("iot", "simulate", "--count", "100"),
        ("iot", "simulate", "--forever", "--rate", "50"),
        ("iot", "replay", "rig.csv", "--speed", "0"),
        ("iot", "process", "--duration", "60"),
    ],
    ids=["simulate", "simulate --forever", "replay", "process"],
)
def test_kafka_down_is_one_line_within_seconds(args: tuple[str, ...], tmp_path: Path) -> None:
    (tmp_path / "rig.csv").write_text("time,a\n2026-01-01T00:00:00Z,1\n2026-01-01T00:00:01Z,2\n", encoding="utf-8")
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    done = subprocess.run(
        [*MILLRACE, *args],
        env=closed_env(tmp_path, bootstrap),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=KAFKA_DOWN_DEADLINE_S * 4,
        check=False,
    )
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot reach Kafka at {bootstrap} within 5 s (kafka.bootstrap_servers); is it running? "
        "`millrace stack up` starts a local one"
    ], done.stderr
    assert "Traceback" not in done.stderr and "%3|" not in done.stderr  # no librdkafka log lines either
    assert took < KAFKA_DOWN_DEADLINE_S, f"took {took:.1f} s"


@pytest.fixture
def black_hole() -> Iterator[tuple[str, threading.Event]]:
    """A port that accepts connections and never answers: a client there waits for its deadline. The event
    is set once something connected (a command is then in its Kafka check, i.e. starting up)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    connected = threading.Event()
    done = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)
            connected.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}", connected
    finally:
        done.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


@pytest.mark.parametrize(
    "args", [("iot", "simulate", "--forever", "--rate", "50"), ("iot", "process")], ids=["simulate", "process"]
)
def test_sigterm_while_checking_kafka(
    args: tuple[str, ...], black_hole: tuple[str, threading.Event], tmp_path: Path, running: list[Running]
) -> None:
    bootstrap, connected = black_hole
    proc = Running(list(args), closed_env(tmp_path, bootstrap), tmp_path)
    running.append(proc)
    assert connected.wait(30), "the command never tried to reach Kafka"
    code, took = proc.stop(deadline_s=15)
    assert code == 143, proc.stderr
    assert took < 10, f"took {took:.1f} s"
    assert not any("Traceback" in line for line in proc.stderr), proc.stderr
    assert any(line.startswith("SIGTERM: stopping") for line in proc.stderr), proc.stderr


def messages_in(settings: Settings, topic: str) -> int:
    consumer = Consumer({**settings.kafka.client_config(), "group.id": unique("count")})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def test_sigterm_stops_simulate_forever_with_everything_delivered(
    settings: Settings, tmp_path: Path, running: list[Running]
) -> None:
    job = job_settings(settings, tmp_path)
    topic = job.topics.readings
    proc = Running(
        ["iot", "simulate", "--forever", "--rate", "500", "--devices", "3", "--topic", topic, "--json"],
        env_of(job),
        tmp_path,
    )
    running.append(proc)

    def produced() -> bool:
        try:
            return messages_in(job, topic) >= 500
        except KafkaException:  # a topic this new may still be electing its leaders
            return False

    wait_for(produced, timeout_s=60, what="a second of simulated readings")
    code, took = proc.stop(deadline_s=30)
    assert code == 143, proc.stderr
    assert took < 15, f"took {took:.1f} s"
    assert not any("Traceback" in line for line in proc.stderr), proc.stderr
    summary = json.loads("\n".join(proc.stdout))
    # a clean stop: what was sent is delivered and counted, nothing is left behind
    assert summary["delivered"] == messages_in(job, topic) > 0, summary
    assert summary["sent"] == summary["delivered"] and summary["failed"] == summary["undelivered"] == 0, summary


def test_sigterm_stops_iot_process_while_its_jvm_starts(
    settings: Settings, tmp_path: Path, running: list[Running]
) -> None:
    job = job_settings(settings, tmp_path)
    proc = Running(["iot", "process"], env_of(job), tmp_path)
    running.append(proc)
    wait_for(lambda: proc.seen("processing "), timeout_s=60, what="the job to pass its Kafka check")
    code, took = proc.stop(deadline_s=90)
    assert code == 143, proc.stderr
    assert took < 60, f"took {took:.1f} s"
    assert not any("Traceback" in line for line in proc.stderr), proc.stderr
    assert not any("did not stop within" in line for line in proc.stderr), "the clean stop was cut short"


def test_sigterm_stops_iot_process_during_its_run(settings: Settings, tmp_path: Path, running: list[Running]) -> None:
    job = job_settings(settings, tmp_path)
    produce(job, simulate(2, 120, seed=21))
    proc = Running(["iot", "process", "--max-offsets", "300"], env_of(job), tmp_path)
    running.append(proc)
    wait_for(lambda: proc.seen("batch ", "stdout"), timeout_s=240, what="the job's first micro-batch")
    code, took = proc.stop(deadline_s=90)
    assert code == 143, proc.stderr
    assert took < 60, f"took {took:.1f} s"
    assert not any("Traceback" in line for line in proc.stderr), proc.stderr
    assert any(line.startswith("done: ") for line in proc.stderr), "no summary: not a clean stop"


def test_until_idle_stops_a_restarted_job_with_nothing_left_to_read(settings: Settings, tmp_path: Path) -> None:
    job = job_settings(settings, tmp_path)
    produce(job, simulate(1, 30, seed=22))
    env = env_of(job)
    first = subprocess.run(
        [*MILLRACE, "iot", "process", "--quiet", "--until-idle", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert "done: " in first.stderr and " 0 input records" not in first.stderr, first.stderr[-3000:]
    # The same checkpoint again: nothing left to read. It used to wait for input forever.
    started = time.monotonic()
    again = subprocess.run(
        [*MILLRACE, "iot", "process", "--quiet", "--until-idle", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    took = time.monotonic() - started
    assert again.returncode == 0, again.stderr[-3000:]
    done = [line for line in again.stderr.splitlines() if line.startswith("done: ")]
    assert len(done) == 1 and ", 0 input records in " in done[0], again.stderr[-3000:]
    assert took < 120, f"took {took:.1f} s"
