"""Kafka plumbing against a real broker: keyed order, exact counts, topic list and describe figures."""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest
from confluent_kafka.admin import NewTopic

from millrace.config import Settings
from millrace.kafka.admin import admin_client, apply_topics, describe_topic, list_topics
from millrace.kafka.consumer import consume_loop, make_consumer
from millrace.kafka.producer import make_producer
from millrace.kafka.topics import TopicSpec, declared_topics
from tests.helpers import unique, wait_for

pytestmark = pytest.mark.integration


def create_topic(client_config: dict[str, object], partitions: int = 3) -> str:
    name = unique("t")
    admin = admin_client(client_config)  # keep a reference until the future resolves
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


def consume_exactly(client_config: dict[str, object], topic: str, expected: int, *, timeout_s: float = 60.0):
    """Consume until ``expected`` messages arrived (deadline), then one more short poll to catch extras."""
    consumer = make_consumer(client_config, unique("g"))
    consumer.subscribe([topic])
    got = []
    try:
        wait_for(
            lambda: got.extend(m for m in consumer.consume(1000, 0.5) if m.error() is None) or len(got) >= expected,
            timeout_s=timeout_s,
            what=f"{expected} messages on {topic}",
        )
        got.extend(m for m in consumer.consume(1000, 1.0) if m.error() is None)
    finally:
        consumer.close()
    return got


def test_keyed_messages_consumed_exactly_once_in_per_key_order(client_config: dict[str, object]) -> None:
    topic = create_topic(client_config)
    producer = make_producer(client_config)
    keys = [f"sensor-{i}" for i in range(25)]
    n = 5_000
    for i in range(n):
        key = keys[i % len(keys)]
        producer.produce(topic, f"{key}:{i // len(keys)}".encode(), key)
    assert producer.flush(30) == 0
    assert (producer.stats.delivered, producer.stats.failed) == (n, 0)

    messages = consume_exactly(client_config, topic, n)
    assert len(messages) == n
    by_key: dict[str, list[int]] = defaultdict(list)
    partitions_of: dict[str, set[int]] = defaultdict(set)
    for msg in messages:
        key, seq = msg.value().decode().split(":")
        assert msg.key().decode() == key
        by_key[key].append(int(seq))
        partitions_of[key].add(msg.partition())
    assert set(by_key) == set(keys)
    for key in keys:
        assert by_key[key] == list(range(n // len(keys))), f"order broken for {key}"
        assert len(partitions_of[key]) == 1  # a key always lands on one partition
    assert len({p for parts in partitions_of.values() for p in parts}) == 3  # keys spread over partitions


def test_consume_loop_commits_only_after_the_handler(client_config: dict[str, object]) -> None:
    topic = create_topic(client_config, partitions=1)
    producer = make_producer(client_config)
    for i in range(100):
        producer.produce(topic, str(i).encode(), "k")
    assert producer.flush(30) == 0
    group = unique("g")

    class Boom(Exception):
        pass

    def failing(batch: list) -> None:
        raise Boom  # handler fails: nothing may be committed

    with pytest.raises(Boom):
        consume_loop(make_consumer(client_config, group), [topic], failing, stop=threading.Event())

    seen: list[int] = []
    stop = threading.Event()

    def collect(batch: list) -> None:
        seen.extend(int(m.value()) for m in batch)
        if len(seen) >= 100:
            stop.set()

    timer = threading.Timer(60, stop.set)  # deadline
    timer.start()
    try:
        consume_loop(make_consumer(client_config, group), [topic], collect, stop=stop)
    finally:
        timer.cancel()
    assert seen == list(range(100))  # the failed batch was redelivered from the start


def test_declared_topics_are_applied_and_described(settings: Settings) -> None:
    conf = settings.kafka.client_config()
    names = set(list_topics(conf))
    declared = declared_topics(settings.topics)
    assert {spec.name for spec in declared} <= names
    readings = describe_topic(conf, settings.topics.readings)
    assert len(readings.partitions) == 3
    assert readings.configs["retention.ms"] == str(7 * 86_400_000)
    assert readings.configs["cleanup.policy"] == "delete"
    for part in readings.partitions:
        assert part.leader == 1 and part.isr == (1,) and part.replicas == (1,)
    assert set(apply_topics(conf, declared).values()) == {"unchanged"}  # idempotent


def test_apply_topics_updates_partitions_and_configs(client_config: dict[str, object]) -> None:
    name = unique("spec")
    spec = TopicSpec(name, 1, retention_ms=3_600_000)
    assert apply_topics(client_config, [spec]) == {name: "created"}
    wider = TopicSpec(name, 2, retention_ms=7_200_000, cleanup_policy="compact,delete")
    assert apply_topics(client_config, [wider]) == {name: "updated"}
    info = describe_topic(client_config, name)
    assert len(info.partitions) == 2
    assert info.configs["retention.ms"] == "7200000"
    assert info.configs["cleanup.policy"] == "compact,delete"


def test_describe_counts_true_offsets(client_config: dict[str, object]) -> None:
    topic = create_topic(client_config)
    producer = make_producer(client_config)
    for i in range(300):
        producer.produce(topic, b"x", f"k{i % 7}")
    assert producer.flush(30) == 0
    info = describe_topic(client_config, topic)
    assert info.messages == 300
    assert sum(p.high for p in info.partitions) == 300
