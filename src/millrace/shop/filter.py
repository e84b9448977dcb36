"""The stop-list filter: ``items`` -> ``filtered-items``, exactly once, products on the stop list left out.

Exactly once (consume-transform-produce): each batch of items, the tombstones and re-publications the stop list
called for, and the consumer group's offsets of the batch are committed in one Kafka transaction; readers of
``filtered-items`` with ``isolation.level=read_committed`` see a batch entirely or not at all, and a batch is
committed once. Each instance has a stable name (``--instance``): it is the transactional id's suffix, so an
instance restarted after a crash aborts its predecessor's open transaction and fences it, and the consumer's
static group membership (``group.instance.id``), so the restart takes the same partitions without a rebalance.

The stop list's effects downstream: a block is a tombstone on ``filtered-items`` (key = product id), an unblock
re-publishes the product's latest version. Which version is the latest comes from local state: every instance
keeps the latest ``items`` value per product id of the partitions it owns, rebuilt when it gets a partition by
reading that partition up to the group's committed offset (the catalog is keyed by id, so a compacted or
retained ``items`` topic holds every product). The instance owning a product's partition applies the effect.
Because the stop list is followed outside the transaction, a crash between seeing a change and committing its
effect could lose it; so on every partition assignment (a start, a restart, a rebalance) the instance asserts
the stop list for that partition's products again: a tombstone for each blocked one, a re-publication for each
unblocked one. Both are idempotent downstream (search deletes or upserts by id); they are the only records a
restart adds to ``filtered-items``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from millrace.errors import KafkaUnavailable, MillraceError
from millrace.kafka.client_config import kafka_failure
from millrace.shop.decode import SchemaDecoder
from millrace.shop.stoplist import StopEntry, StopList, StopListFollower

log = logging.getLogger(__name__)

Output = tuple[bytes, bytes | None]  # (key, value); a None value is a tombstone
OFFSET_BEGINNING = -2
TXN_TIMEOUT_S = 30.0


@dataclass
class FilterState:
    """What the filter decides, without Kafka: the stop list and the latest item value per product id of the
    partitions this instance owns (id -> (partition, value); a None value is a product deleted from the
    catalog)."""

    stop: StopList
    latest: dict[str, tuple[int, bytes | None]] = field(default_factory=dict)

    def on_item(self, partition: int, key: bytes | None, value: bytes | None) -> Output | None:
        """The record for ``filtered-items``, or None when the product is blocked (or the item has no id)."""
        if not key:
            return None
        product_id = key.decode("utf-8", errors="replace")
        self.latest[product_id] = (partition, value)
        if self.stop.is_blocked(product_id):
            return None
        return key, value

    def on_stop_change(self, entry: StopEntry) -> Output | None:
        """The record a change of the stop list calls for here: only for a product of an owned partition."""
        held = self.latest.get(entry.product_id)
        if held is None:
            return None
        key = entry.product_id.encode("utf-8")
        if entry.blocked:
            return key, None
        value = held[1]
        return None if value is None else (key, value)

    def on_assigned(self, partition: int, records: Iterable[tuple[bytes | None, bytes | None]]) -> list[Output]:
        """Take over ``partition`` from its records up to the committed offset; returns the stop list's
        effects asserted again for its products (see the module docstring)."""
        ids = []
        for key, value in records:
            if key:
                product_id = key.decode("utf-8", errors="replace")
                self.latest[product_id] = (partition, value)
                ids.append(product_id)
        outputs: list[Output] = []
        for product_id in dict.fromkeys(ids):
            value = self.latest[product_id][1]
            if self.stop.is_blocked(product_id):
                outputs.append((product_id.encode("utf-8"), None))
            elif self.stop.was_unblocked(product_id) and value is not None:
                outputs.append((product_id.encode("utf-8"), value))
        return outputs

    def on_revoked(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        self.latest = {k: v for k, v in self.latest.items() if v[0] not in gone}


@dataclass
class FilterStats:
    consumed: int = 0
    passed: int = 0
    dropped: int = 0
    stop_list_records: int = 0  # tombstones and re-publications
    transactions: int = 0
    aborted: int = 0
    dead_lettered: int = 0  # items failing their registered schema (validated runs only)


def transactional_id(group: str, instance: str) -> str:
    return f"{group}-{instance}"


class StopListFilter:
    """One filter instance. :meth:`run` until ``stop`` is set; the stop list must exist."""

    def __init__(
        self,
        client_config: dict[str, Any],
        *,
        items_topic: str,
        filtered_topic: str,
        stop_topic: str,
        group: str = "millrace-shop-filter",
        instance: str = "0",
        batch_size: int = 500,
        session_timeout_ms: int = 15_000,
        registry_url: str | None = None,
        dead_letter_topic: str | None = None,
    ) -> None:
        """With ``registry_url`` (and ``dead_letter_topic``) each item is validated against its registered schema;
        one that fails is dead-lettered with the reason and partition:offset in the same transaction as the
        batch (so exactly once too) and not passed on."""
        self.client_config = client_config
        self.items_topic, self.filtered_topic = items_topic, filtered_topic
        self.batch_size = batch_size
        self.stats = FilterStats()
        self.txn_id = transactional_id(group, instance)
        self._follower = StopListFollower(client_config, stop_topic)
        self.state = FilterState(self._follower.state)
        self._decoder: SchemaDecoder | None = None
        if registry_url is not None:
            if not dead_letter_topic:
                raise ValueError("validating with the registry needs a dead-letter topic")
            self._decoder = SchemaDecoder(
                registry_url, self._send_dead_letter, dead_letter_topic=dead_letter_topic, stage="shop-filter"
            )
        self._pending: list[Output] = []  # effects not committed yet
        self._assigned: list[int] = []  # partitions to take over before the next batch
        self._producer = Producer(
            {
                **client_config,
                "transactional.id": self.txn_id,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "transaction.timeout.ms": int(TXN_TIMEOUT_S * 2000),
            }
        )
        self._consumer = Consumer(
            {
                **client_config,
                "group.id": group,
                "group.instance.id": self.txn_id,
                "session.timeout.ms": session_timeout_ms,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            }
        )

    def run(self, stop: threading.Event, *, on_ready: Callable[[], None] | None = None) -> FilterStats:
        try:
            self._follower.load()
            try:
                self._producer.init_transactions(TXN_TIMEOUT_S)
            except KafkaException as exc:
                raise kafka_failure(f"starting transactions as {self.txn_id}", exc) from exc
            self._consumer.subscribe([self.items_topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
            if on_ready is not None:
                on_ready()
            while not stop.is_set():
                self._step()
        finally:
            # Every transaction is committed or aborted by now, so nothing is left to flush; a fenced instance's
            # clients may raise on the way out, which must not hide why it stopped.
            for close in (self._consumer.close, self._follower.close):
                try:
                    close()
                except KafkaException as exc:
                    log.debug("closing after the filter stopped: %s", exc)
        return self.stats

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.extend(p.partition for p in partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {p.partition for p in partitions}
        self._assigned = [p for p in self._assigned if p not in revoked]
        self.state.on_revoked(revoked)

    def _step(self) -> None:
        for entry in self._follower.poll(0):
            output = self.state.on_stop_change(entry)
            if output is not None:
                self._pending.append(output)
        messages = self._consumer.consume(self.batch_size, 0.2)
        if self._assigned:
            self._take_over(self._assigned)
            self._assigned = []
        records = []
        for msg in messages:
            err = msg.error()
            if err is None:
                records.append(msg)
            elif err.fatal():
                raise kafka_failure(f"consuming {self.items_topic}", KafkaException(err))
            else:
                log.warning("consumer error: %s", err.str())
        if not records and not self._pending:
            return
        self._transaction(records)

    def _take_over(self, partitions: list[int]) -> None:
        committed = self._consumer.committed([TopicPartition(self.items_topic, p) for p in partitions], timeout=30)
        for tp in committed:
            end = tp.offset if tp.offset >= 0 else 0
            records = scan_partition(self.client_config, self.items_topic, tp.partition, end)
            self._pending.extend(self.state.on_assigned(tp.partition, records))
            log.info(
                "took over %s[%d] (%d records before offset %d)", self.items_topic, tp.partition, len(records), end
            )

    def _transaction(self, records: list[Message]) -> None:
        producer, stats = self._producer, self.stats
        passed = dropped = dead = 0
        try:
            producer.begin_transaction()
            for key, value in self._pending:
                self._produce(key, value)
            offsets: dict[int, int] = {}
            for msg in records:
                partition = int(msg.partition() or 0)
                if self._decoder is not None and msg.value() is not None and self._decoder.decode(msg) is None:
                    dead += 1  # dead-lettered through this transaction's producer
                    offsets[partition] = int(msg.offset() or 0) + 1
                    continue
                output = self.state.on_item(partition, msg.key(), msg.value())
                if output is None:
                    dropped += 1
                else:
                    self._produce(*output)
                    passed += 1
                offsets[partition] = int(msg.offset() or 0) + 1
            if offsets:
                producer.send_offsets_to_transaction(
                    [TopicPartition(self.items_topic, p, o) for p, o in sorted(offsets.items())],
                    self._consumer.consumer_group_metadata(),
                    TXN_TIMEOUT_S,
                )
            producer.commit_transaction(TXN_TIMEOUT_S)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.txn_requires_abort():
                log.warning("transaction aborted (%s): the batch is read again", err.str())
                producer.abort_transaction(TXN_TIMEOUT_S)
                stats.aborted += 1
                self._rewind()
                return
            if isinstance(err, KafkaError) and err.fatal():
                raise MillraceError(
                    f"filter {self.txn_id} stopped: {err.name()}: {err.str()} (another instance with the same "
                    "--instance took over, or the broker fenced this one)"
                ) from None
            raise kafka_failure("committing the filter's transaction", exc) from exc
        stats.consumed += len(records)
        stats.passed += passed
        stats.dropped += dropped
        stats.dead_lettered += dead
        stats.stop_list_records += len(self._pending)
        stats.transactions += 1
        self._pending = []

    def _send_dead_letter(self, topic: str, value: bytes, key: bytes | str | None) -> None:
        self._produce(key.encode("utf-8") if isinstance(key, str) else key, value, topic)

    def _produce(self, key: bytes | None, value: bytes | None, topic: str | None = None) -> None:
        while True:
            try:
                self._producer.produce(topic or self.filtered_topic, value, key)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def _rewind(self) -> None:
        """After an abort: back to the committed offsets, so the aborted batch is consumed again."""
        assignment = self._consumer.assignment()
        for tp in self._consumer.committed(assignment, timeout=30):
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))


def scan_partition(
    client_config: dict[str, Any], topic: str, partition: int, end: int, *, timeout_s: float = 60.0
) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of the committed records of ``topic[partition]`` before offset ``end``."""
    if end <= 0:
        return []
    consumer = Consumer(
        {
            **client_config,
            "group.id": f"millrace-scan-{uuid.uuid4().hex[:8]}",  # assign() only: never joined
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "log_level": 0,
        }
    )
    found: list[tuple[bytes | None, bytes | None]] = []
    try:
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"{topic}[{partition}] was not read up to offset {end} within {timeout_s:.0f} s")
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return found
                    raise KafkaUnavailable(f"reading {topic}[{partition}] failed: {err.str()}")
                if int(msg.offset() or 0) >= end:
                    return found
                found.append((msg.key(), msg.value()))
    finally:
        consumer.close()
