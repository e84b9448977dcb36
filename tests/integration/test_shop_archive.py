"""``millrace shop archive`` against the real broker, registry and HDFS: every order event of the orders topic
in the lake exactly once — after a kill -9 of the archiver and a restart with other batch boundaries, and
after the lake got ahead of the committed offsets — with rows equal to the events produced, and malformed
orders dead-lettered with their partition:offset."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from millrace.config import Settings
from millrace.kafka.admin import apply_topics
from millrace.kafka.reader import watermarks
from millrace.kafka.schema_registry import json_serializer, register, registry_client, subject_for
from millrace.kafka.topics import declared_topics
from millrace.shop.archive import OrderArchiver
from millrace.shop.catalog import load_products, sample_catalog_path
from millrace.shop.lake import SCHEMA, Lake, catalog_index, open_lake, order_rows
from millrace.shop.orders import OrderGenerator
from millrace.shop.schemas import load_schema
from tests.helpers import unique, wait_for
from tests.integration.fixtures_hdfs import ManagedHdfs
from tests.integration.fixtures_shop import SHOP_TOPICS, read_topic, shop_env

pytestmark = pytest.mark.integration

MILLRACE = str(Path(sys.executable).with_name("millrace"))
START = datetime(2026, 6, 1, 23, 0, tzinfo=UTC)  # 20 s of event time per event: the orders cross midnight
NOT_JSON = b'{"order_id": "o-broken", "lines": ['

Position = tuple[int, int]


class Orders:
    """Order events produced to the orders topic, with where each landed."""

    def __init__(self, settings: Settings, *, framed: bool) -> None:
        self.settings = settings
        self.topic = settings.topics.shop_orders
        self.products = load_products(sample_catalog_path())
        self.events = iter(OrderGenerator(self.products, seed=5, start=START, rate=0.05))
        self.valid: dict[Position, dict[str, Any]] = {}
        self.malformed: set[Position] = set()
        self.serialize = None
        if framed:
            url, schema = settings.shop.registry_url, load_schema("order")
            client = registry_client(url)
            register(client, url, subject_for(self.topic), schema, "BACKWARD")
            self.serialize = json_serializer(client, schema)

    def produce(self, n: int, *, bad: tuple[bytes, ...] = (), plain: int = 0) -> None:
        """``n`` events (the first ``plain`` of them as unframed JSON), then the ``bad`` values."""
        records: list[tuple[str, bytes, dict[str, Any] | None]] = []
        for i, event in enumerate(itertools.islice(self.events, n)):
            if self.serialize is None or i < plain:
                value = json.dumps(event, ensure_ascii=False).encode()
            else:
                value = self.serialize(event, self.topic)
            records.append((event["customer_id"], value, event))
        records += [("c-bad", value, None) for value in bad]
        landed: dict[int, Position] = {}
        producer = Producer(self.settings.kafka.client_config())  # dropped on return: no client outlives the test
        for i, (key, value, _) in enumerate(records):
            producer.produce(
                self.topic,
                value,
                key.encode(),
                on_delivery=lambda err, m, i=i: landed.__setitem__(i, (m.partition(), m.offset())),
            )
        assert producer.flush(30) == 0
        for i, (_, _, event) in enumerate(records):
            if event is None:
                self.malformed.add(landed[i])
            else:
                self.valid[landed[i]] = event

    def expected_rows(self) -> pd.DataFrame:
        index = catalog_index(self.products)
        rows = [row for (p, o), event in sorted(self.valid.items()) for row in order_rows(event, p, o, index)]
        return pa.Table.from_pylist(rows, schema=SCHEMA).to_pandas()


def _assert_exactly_once(lake: Lake, orders: Orders) -> None:
    archived = lake.read_orders()
    keys = archived[["kafka_partition", "kafka_offset", "line_no"]]
    assert not keys.duplicated().any(), archived[keys.duplicated(keep=False)]
    assert set(zip(archived["kafka_partition"], archived["kafka_offset"], strict=True)) == set(orders.valid)
    pd.testing.assert_frame_equal(archived, orders.expected_rows())
    assert archived["order_date"].nunique() >= 2
    # each file covers a run of consecutive offsets of one partition, and the runs never overlap
    for partition, files in itertools.groupby(lake.files(), key=lambda f: f.partition):
        spans = [(f.first, f.last) for f in files]
        assert all(a_last < b_first for (_, a_last), (b_first, _) in itertools.pairwise(spans)), (partition, spans)


def _assert_dead_letters(settings: Settings, orders: Orders) -> None:
    letters = [
        json.loads(m.value()) for m in read_topic(settings.kafka.client_config(), settings.topics.shop_dead_letter)
    ]
    ours = [letter for letter in letters if letter["stage"] == "shop-archive"]
    assert {letter["position"] for letter in ours} == {f"{p}:{o}" for p, o in orders.malformed}
    assert all(letter["source"] == orders.topic and letter["reason"] for letter in ours)
    assert {letter["raw"] for letter in ours} == {NOT_JSON.decode()}


def _assert_committed_to_the_end(settings: Settings, group: str) -> None:
    marks = watermarks(settings.kafka.client_config(), settings.topics.shop_orders)
    consumer = Consumer({**settings.kafka.client_config(), "group.id": group, "log_level": 0})
    try:
        committed = consumer.committed([TopicPartition(settings.topics.shop_orders, p) for p in marks], timeout=10)
    finally:
        consumer.close()
    assert {tp.partition: tp.offset for tp in committed} == {p: high for p, (_, high) in marks.items()}


def _archiver(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([MILLRACE, "shop", "archive", *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def _crash_and_replay(settings: Settings, tmp_path: Path, *, n: int, registry: bool, lake_url: str = "") -> None:
    """Half the orders archived by a follower killed with SIGKILL once some files exist; the other half
    produced; a restart with other batch boundaries archives until idle. Then every event is there once."""
    env = shop_env(settings, tmp_path)
    if lake_url:
        env["MILLRACE_LAKE__URL"] = lake_url
    lake = open_lake(
        settings.model_copy(update={"state_dir": tmp_path, "lake": settings.lake.model_copy(update={"url": lake_url})})
    )
    group = unique("archive")
    validate = "--registry" if registry else "--no-registry"
    orders = Orders(settings, framed=registry)
    orders.produce(n // 2, bad=(NOT_JSON,), plain=0 if registry else 5)
    log = tmp_path / "archive.log"
    first = _archiver(env, log, "--follow", "--group", group, "--batch-size", "40", "--batch-seconds", "0.3", validate)
    try:
        wait_for(lambda: len(lake.files()) >= 4 or first.poll() is not None, timeout_s=120, what="the first files")
        assert first.poll() is None, log.read_text()
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    at_kill = lake.archived_offsets()
    assert at_kill, "no file survived the kill"
    orders.produce(n - n // 2, bad=(NOT_JSON,))
    second = _archiver(
        env, log, "--until-idle", "--group", group, "--batch-size", "70", "--batch-seconds", "1", validate
    )
    try:
        assert second.wait(timeout=240) == 0, log.read_text()
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(timeout=30)
    _assert_exactly_once(lake, orders)
    _assert_dead_letters(settings, orders)
    _assert_committed_to_the_end(settings, group)
    assert not lake.fs.glob(f"{lake.orders_dir}/order_date=*/.tmp-*")
    assert "archiver stopped:" in log.read_text()


def test_archive_survives_kill_9_exactly_once(shop_settings: Settings, tmp_path: Path) -> None:
    _crash_and_replay(shop_settings, tmp_path, n=3000, registry=True)


@pytest.fixture
def plain_shop_settings(settings: Settings) -> Settings:
    """Fresh shop topics on the session broker, no registry (the archiver checks the shipped order schema)."""
    names = {field: unique(f"shop-{field.removeprefix('shop_')}") for field in SHOP_TOPICS}
    topics = settings.topics.model_copy(update=names)
    apply_topics(settings.kafka.client_config(), [s for s in declared_topics(topics) if s.name in names.values()])
    return settings.model_copy(update={"topics": topics})


def test_archive_on_hdfs_survives_kill_9_exactly_once(
    plain_shop_settings: Settings, hdfs: ManagedHdfs, tmp_path: Path
) -> None:
    lake_url = f"{hdfs.rpc_url}/millrace/{unique('lake')}"
    _crash_and_replay(plain_shop_settings, tmp_path, n=1200, registry=False, lake_url=lake_url)
    on_hdfs = hdfs.settings.lake.model_copy(update={"url": lake_url})
    lake = open_lake(plain_shop_settings.model_copy(update={"lake": on_hdfs}))
    assert lake.spark_url == lake_url
    assert len(lake.read_orders()) > 0


def test_a_lake_ahead_of_the_commits_is_not_written_twice(plain_shop_settings: Settings, tmp_path: Path) -> None:
    """As after a crash between writing files and committing: the lake holds a prefix of each partition
    (its last files removed here), the group has committed nothing; a new archiver with other batch sizes
    skips what the lake holds and writes the rest."""
    settings = plain_shop_settings.model_copy(update={"state_dir": tmp_path})
    orders = Orders(settings, framed=False)
    orders.produce(900, bad=(NOT_JSON,))
    lake = open_lake(settings)
    products = catalog_index(orders.products)
    conf, topics = settings.kafka.client_config(), settings.topics

    def archive(group: str, batch_size: int) -> OrderArchiver:
        archiver = OrderArchiver(
            conf,
            lake,
            topic=topics.shop_orders,
            dead_letter_topic=topics.shop_dead_letter,
            products=products,
            group=group,
            batch_size=batch_size,
            batch_seconds=0.5,
        )
        archiver.run(threading.Event(), until_idle=True)
        return archiver

    first = archive(unique("archive"), 25)
    assert (first.stats.archived, first.stats.dead_lettered, first.stats.skipped) == (900, 1, 0)
    by_partition: dict[int, list[Any]] = {}
    for f in lake.files():
        by_partition.setdefault(f.partition, []).append(f)
    for files in by_partition.values():
        for f in sorted(files, key=lambda f: f.first)[-3:]:
            lake.fs.rm(f.path)
    kept = lake.archived_offsets()
    assert len(kept) == len(by_partition)
    second = archive(unique("archive"), 1000)  # a fresh group: nothing committed to start from
    _assert_exactly_once(lake, orders)
    marks = watermarks(conf, topics.shop_orders)
    # it started after what the lake holds, not at the beginning nor at a commit
    assert second.stats.consumed == sum(high - kept[p] - 1 for p, (_, high) in marks.items())
    assert second.stats.skipped == 0
    assert second.stats.archived == len([1 for p, o in orders.valid if o > kept[p]])
    assert second.stats.dead_lettered == len([1 for p, o in orders.malformed if o > kept[p]])
    _assert_committed_to_the_end(settings, second.group)


def test_sigterm_writes_the_batch_in_hand_and_commits(plain_shop_settings: Settings, tmp_path: Path) -> None:
    """SIGTERM while a batch waits for its time limit (120 s): what was read is written and committed, the
    summary printed, exit 143; a restart archives the rest."""
    settings = plain_shop_settings
    env = shop_env(settings, tmp_path)
    lake = open_lake(settings.model_copy(update={"state_dir": tmp_path}))
    orders = Orders(settings, framed=False)
    orders.produce(300)
    group = unique("archive")
    log = tmp_path / "archive.log"
    run = ("--group", group, "--batch-size", "200", "--batch-seconds", "120", "--no-registry")
    proc = _archiver(env, log, "--follow", *run)
    try:
        wait_for(lambda: lake.files() or proc.poll() is not None, timeout_s=120, what="the first batch's files")
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=45) == 143, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    text = log.read_text()
    assert "SIGTERM: stopping the archiver" in text and "archiver stopped:" in text
    archived = lake.archived_offsets()
    marks = watermarks(settings.kafka.client_config(), settings.topics.shop_orders)
    consumer = Consumer({**settings.kafka.client_config(), "group.id": group, "log_level": 0})
    try:
        tps = [TopicPartition(settings.topics.shop_orders, p) for p in marks]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()
    # what was written was committed; what was read but not written was neither (nothing in between)
    assert {p: o for p, o in committed.items() if o >= 0} == {p: high + 1 for p, high in archived.items()}
    rows = lake.read_orders()
    assert not rows[["kafka_partition", "kafka_offset", "line_no"]].duplicated().any()
    assert len(set(zip(rows["kafka_partition"], rows["kafka_offset"], strict=True))) >= 200
    finish = _archiver(env, log, "--until-idle", "--group", group, "--batch-seconds", "1", "--no-registry")
    assert finish.wait(timeout=120) == 0, log.read_text()
    _assert_exactly_once(lake, orders)


def test_a_stop_writes_the_batch_in_hand(plain_shop_settings: Settings, tmp_path: Path) -> None:
    """Stopped once everything is read, before the batch's size or time limit: the batch is written, then
    committed."""
    settings = plain_shop_settings.model_copy(update={"state_dir": tmp_path})
    orders = Orders(settings, framed=False)
    orders.produce(300)
    lake = open_lake(settings)
    group = unique("archive")
    archiver = OrderArchiver(
        settings.kafka.client_config(),
        lake,
        topic=settings.topics.shop_orders,
        dead_letter_topic=settings.topics.shop_dead_letter,
        products=catalog_index(orders.products),
        group=group,
        batch_size=1000,
        batch_seconds=600,
    )
    stop = threading.Event()

    def progress(stats: Any) -> None:
        if stats.consumed == 300:
            assert lake.files() == []  # still in hand
            stop.set()

    stats = archiver.run(stop, on_progress=progress, progress_every_s=0.05)
    assert (stats.consumed, stats.archived, stats.batches) == (300, 300, 1)
    _assert_exactly_once(lake, orders)
    _assert_committed_to_the_end(settings, group)
