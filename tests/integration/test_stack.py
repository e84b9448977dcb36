"""The local runtime: idempotent `stack up`, clear failures, and no loss across a broker restart."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from millrace.config import Settings, load_settings
from millrace.errors import PortInUseError
from millrace.kafka.admin import describe_topic
from millrace.kafka.producer import make_producer
from millrace.runtime.process import free_port
from millrace.runtime.stack import Stack
from tests.integration.test_kafka import consume_exactly, create_topic

pytestmark = pytest.mark.integration


def own_settings(state_dir: Path) -> Settings:
    port = free_port()
    return load_settings(
        state_dir=state_dir,
        runtime={"kafka_port": port, "controller_port": free_port(), "kafka_heap": "384m"},
        kafka={"bootstrap_servers": f"127.0.0.1:{port}"},
    )


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    """A broker of this test's own, so stopping it never disturbs the session broker."""
    stack = Stack(own_settings(tmp_path / "state"))
    try:
        yield stack
    finally:
        stack.down()


def test_up_twice_is_harmless(stack: Stack) -> None:
    before = {s.name: s.pid for s in stack.status()}  # other tests may have added extras (mqtt, ...)
    again = Stack(stack.settings).up()
    assert [rec.pid for rec in again] == [before["kafka-1"]]  # the running broker is kept
    status = {s.name: s for s in Stack(stack.settings).status()}
    assert {name: s.pid for name, s in status.items()} == before  # nothing restarted
    kafka = status["kafka-1"]
    assert (kafka.running, kafka.healthy) == (True, True)
    assert kafka.ports == {
        "client": stack.settings.runtime.kafka_port,
        "controller": stack.settings.runtime.controller_port,
    }
    assert kafka.uptime_s is not None and kafka.uptime_s > 0


def test_taken_port_fails_clearly(tmp_path: Path) -> None:
    settings = own_settings(tmp_path / "state")
    holder = socket.socket()
    holder.bind(("127.0.0.1", settings.runtime.kafka_port))
    holder.listen()
    try:
        with pytest.raises(PortInUseError) as info:
            Stack(settings).up()
    finally:
        holder.close()
    message = str(info.value)
    assert f"127.0.0.1:{settings.runtime.kafka_port} is taken by" in message
    assert "choose another port" in message
    assert Stack(settings).status() == []  # nothing left behind


def test_cli_taken_port_is_one_red_line(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env.update({"MILLRACE_RUNTIME__KAFKA_PORT": str(port), "MILLRACE_RUNTIME__CONTROLLER_PORT": str(free_port())})
    try:
        result = subprocess.run(
            [sys.executable, "-m", "millrace.cli.main", "--state-dir", str(tmp_path / "s"), "stack", "up"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        holder.close()
    assert result.returncode == 1
    assert f"port 127.0.0.1:{port} is taken" in result.stderr
    assert "Traceback" not in result.stderr


def test_data_survives_down_and_up(own_stack: Stack) -> None:
    own_stack.up(apply_topics=False)
    conf = own_stack.settings.kafka.client_config()
    topic = create_topic(conf, partitions=1)
    producer = make_producer(conf)
    for i in range(50):
        producer.produce(topic, str(i).encode(), "k")
    assert producer.flush(30) == 0
    assert own_stack.down() == ["kafka-1"]
    assert own_stack.status() == []
    own_stack.up(apply_topics=False)
    assert describe_topic(conf, topic).messages == 50
    assert [int(m.value()) for m in consume_exactly(conf, topic, 50)] == list(range(50))


def test_broker_restart_mid_produce_loses_nothing(own_stack: Stack) -> None:
    own_stack.up(apply_topics=False)
    conf = own_stack.settings.kafka.client_config()
    topic = create_topic(conf)
    producer = make_producer(conf)
    total = 20_000
    produced = threading.Event()
    halfway = threading.Event()

    def produce() -> None:
        for i in range(total):
            producer.produce(topic, orjson.dumps({"seq": i}), f"s{i % 10}")
            if i == total // 2:
                halfway.set()
            if i % 200 == 0:
                time.sleep(0.1)  # pacing: a steady ~2,000 msg/s stream for ~10 s, not one burst
        produced.set()

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    assert halfway.wait(60), "producer did not reach the halfway mark"
    own_stack.down()  # SIGTERM the broker while the stream is running
    assert producer.stats.delivered < total  # the outage really happened mid-stream
    own_stack.up(apply_topics=False)
    worker.join(120)
    assert not worker.is_alive()
    assert producer.flush(120) == 0
    assert (producer.stats.delivered, producer.stats.failed) == (total, 0)
    seqs = sorted(orjson.loads(m.value())["seq"] for m in consume_exactly(conf, topic, total, timeout_s=120))
    assert seqs == list(range(total))  # every message exactly once (idempotent producer: no duplicates)


def test_unknown_extra_server_is_named(stack: Stack) -> None:
    from millrace.errors import MillraceError

    with pytest.raises(MillraceError, match="unknown server nope for --with"):
        Stack(stack.settings).up(["nope"])
