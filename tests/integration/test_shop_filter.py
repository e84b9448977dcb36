"""The stop-list filter against a real broker: exactly once through a kill -9 of the filter process, and the
stop list's blocks and unblocks applied downstream without a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from millrace.config import Settings
from millrace.errors import MillraceError
from millrace.kafka.admin import apply_topics
from millrace.kafka.topics import TopicSpec
from millrace.shop import stoplist
from millrace.shop.filter import OFFSET_BEGINNING, StopListFilter
from tests.helpers import unique, wait_for

pytestmark = pytest.mark.integration

MILLRACE = [sys.executable, "-m", "millrace.cli.main"]


@dataclass(frozen=True)
class ShopTopics:
    items: str
    filtered: str
    stop_list: str
    client_search: str


@pytest.fixture
def shop_topics(settings: Settings) -> ShopTopics:
    """Fresh shop topics (the stop list compacted, as declared)."""
    topics = ShopTopics(unique("items"), unique("filtered"), unique("stop"), unique("client-search"))
    specs = [
        TopicSpec(topics.items, 3),
        TopicSpec(topics.filtered, 3),
        TopicSpec(topics.stop_list, 1, retention_ms=-1, cleanup_policy="compact"),
        TopicSpec(topics.client_search, 3),
    ]
    conf = settings.kafka.client_config()
    apply_topics(conf, specs)
    admin = AdminClient(conf)

    def led() -> bool:  # every partition of every topic has a leader
        meta = admin.list_topics(timeout=10).topics
        found = [meta.get(spec.name) for spec in specs]
        return all(t is not None and t.partitions and all(p.leader >= 0 for p in t.partitions.values()) for t in found)

    wait_for(led, timeout_s=30, what="the shop topics' leaders")
    return topics


def shop_env(settings: Settings, topics: ShopTopics, state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env.update(
        {
            "MILLRACE_STATE_DIR": str(state_dir),
            "MILLRACE_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "MILLRACE_TOPICS__SHOP_ITEMS": topics.items,
            "MILLRACE_TOPICS__SHOP_FILTERED_ITEMS": topics.filtered,
            "MILLRACE_TOPICS__SHOP_STOP_LIST": topics.stop_list,
            "MILLRACE_TOPICS__SHOP_CLIENT_SEARCH": topics.client_search,
        }
    )
    return env


def item(product_id: str, version: int = 1, **fields: object) -> bytes:
    record = {"id": product_id, "name": f"Товар {product_id}", "version": version, **fields}
    return json.dumps(record, ensure_ascii=False).encode()


def produce_items(client_config: dict[str, object], topic: str, records: list[tuple[str, bytes | None]]) -> None:
    producer = Producer({**client_config, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    for key, value in records:
        producer.produce(topic, value, key.encode())
        producer.poll(0)
    assert producer.flush(30) == 0


def committed(client_config: dict[str, object], topic: str) -> list[tuple[str, bytes | None]]:
    """(key, value) of every record of ``topic`` as a read_committed reader sees it now, partition by partition
    (up to each partition's last stable offset: an open transaction's records are not there yet)."""
    consumer = Consumer(
        {
            **client_config,
            "group.id": unique("reader"),
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        found: dict[int, list[tuple[str, bytes | None]]] = {p: [] for p in partitions}
        ended: set[int] = set()
        deadline = time.monotonic() + 30
        while len(ended) < len(partitions):
            assert time.monotonic() < deadline, f"{topic} not read to its end within 30 s"
            for msg in consumer.consume(1000, 0.2):
                err = msg.error()
                if err is not None:
                    assert err.code() == KafkaError._PARTITION_EOF, err.str()
                    ended.add(msg.partition())
                else:
                    found[msg.partition()].append((msg.key().decode(), msg.value()))
        return [record for p in partitions for record in found[p]]
    finally:
        consumer.close()


def versions(client_config: dict[str, object], topic: str, key: str) -> list[bytes | None]:
    return [v for k, v in committed(client_config, topic) if k == key]


@pytest.fixture
def running_filter(settings: Settings, shop_topics: ShopTopics) -> Iterator[StopListFilter]:
    """A filter instance in a thread of this process, stopped at the end."""
    worker = StopListFilter(
        settings.kafka.client_config(),
        items_topic=shop_topics.items,
        filtered_topic=shop_topics.filtered,
        stop_topic=shop_topics.stop_list,
        group=unique("filter"),
    )
    stop, ready = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(stop, on_ready=ready.set)
        except BaseException as exc:
            failed.append(exc)
            raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: ready.is_set() or failed, timeout_s=30, what="the filter's start")
    assert not failed, failed
    yield worker
    stop.set()
    thread.join(30)
    assert not thread.is_alive() and not failed, failed


def test_exactly_once_through_a_kill_9(settings: Settings, shop_topics: ShopTopics, tmp_path: Path) -> None:
    conf = settings.kafka.client_config()
    total, blocked = 6000, {f"p{i:05d}" for i in range(0, 6000, 97)}
    stoplist.block(conf, shop_topics.stop_list, sorted(blocked), "test")
    ids = [f"p{i:05d}" for i in range(total)]
    killed = threading.Event()

    def pump() -> None:  # the first half streams in while the filter runs, the rest after the kill
        producer = Producer({**conf, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
        for start in range(0, total, 200):
            if start == total // 2:
                assert producer.flush(30) == 0
                killed.wait(90)
            for product_id in ids[start : start + 200]:
                producer.produce(shop_topics.items, item(product_id), product_id.encode())
            producer.poll(0)
            time.sleep(0.2)
        assert producer.flush(30) == 0

    env = shop_env(settings, shop_topics, tmp_path)
    group = unique("filter")
    args = [*MILLRACE, "shop", "filter", "--instance", "one", "--group", group]
    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(
            lambda: len(committed(conf, shop_topics.filtered)) >= 1000,
            timeout_s=60,
            what="the filter's first committed records",
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
        killed.set()
    assert first.returncode == -signal.SIGKILL
    second = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        expected = set(ids) - blocked
        records = wait_for(
            lambda: (r := committed(conf, shop_topics.filtered)) and {k for k, v in r if v} >= expected and r,
            timeout_s=120,
            what="every unblocked item in filtered-items",
        )
        pumper.join(30)
    finally:
        second.send_signal(signal.SIGTERM)
        out, err = second.communicate(timeout=30)
    assert second.returncode == 143, err
    values = Counter(k for k, v in records if v is not None)
    assert set(values) == expected  # no losses, and no blocked product passed
    assert [k for k, n in values.items() if n > 1] == []  # no duplicates
    assert all(json.loads(v)["id"] == k for k, v in records if v is not None)
    tombstones = {k for k, v in records if v is None}
    assert tombstones <= blocked  # the restart asserted the stop list again for the products it had seen
    assert "filter stopped:" in out


def test_block_and_unblock_apply_downstream_without_a_restart(
    settings: Settings, shop_topics: ShopTopics, running_filter: StopListFilter
) -> None:
    conf = settings.kafka.client_config()
    produce_items(conf, shop_topics.items, [("a", item("a")), ("b", item("b"))])
    wait_for(lambda: len(committed(conf, shop_topics.filtered)) == 2, timeout_s=30, what="a and b filtered")
    started = time.monotonic()
    stoplist.block(conf, shop_topics.stop_list, ["a"], "counterfeit")
    wait_for(lambda: versions(conf, shop_topics.filtered, "a") == [item("a"), None], timeout_s=10, what="a's tombstone")
    block_s = time.monotonic() - started
    produce_items(conf, shop_topics.items, [("a", item("a", 2)), ("b", item("b", 2))])  # a stays out
    wait_for(lambda: ("b", item("b", 2)) in committed(conf, shop_topics.filtered), timeout_s=30, what="b, v2")
    stoplist.unblock(conf, shop_topics.stop_list, ["a"])
    wait_for(
        lambda: versions(conf, shop_topics.filtered, "a") == [item("a"), None, item("a", 2)],
        timeout_s=10,
        what="a re-published at its latest version",
    )
    assert block_s < 10
    assert [e.product_id for e in stoplist.load_stop_list(conf, shop_topics.stop_list).blocked()] == []


def test_a_second_filter_of_the_same_instance_fences_the_first(settings: Settings, shop_topics: ShopTopics) -> None:
    conf = settings.kafka.client_config()
    group = unique("filter")

    def start() -> tuple[StopListFilter, threading.Event, list[BaseException]]:
        worker = StopListFilter(
            conf,
            items_topic=shop_topics.items,
            filtered_topic=shop_topics.filtered,
            stop_topic=shop_topics.stop_list,
            group=group,
            instance="same",
        )
        stop, failed = threading.Event(), []

        def run() -> None:
            try:
                worker.run(stop)
            except MillraceError as exc:
                failed.append(exc)

        threading.Thread(target=run, daemon=True).start()
        return worker, stop, failed

    old, old_stop, old_failed = start()
    produce_items(conf, shop_topics.items, [("a", item("a"))])
    wait_for(lambda: old.stats.passed == 1, timeout_s=30, what="the first instance at work")
    new, new_stop, new_failed = start()
    produce_items(conf, shop_topics.items, [("b", item("b"))])
    wait_for(lambda: old_failed, timeout_s=30, what="the first instance fenced")
    assert "same --instance" in str(old_failed[0]) or "FENCED" in str(old_failed[0])
    wait_for(lambda: versions(conf, shop_topics.filtered, "b") == [item("b")], timeout_s=30, what="b from the new one")
    new_stop.set()
    old_stop.set()
    assert new_failed == []
    assert versions(conf, shop_topics.filtered, "a") == [item("a")]
