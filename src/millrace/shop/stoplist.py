"""The stop list: which product ids the filter keeps out of ``filtered-items``.

It lives in a compacted topic, one record per product id (key = the id): ``{"product_id", "blocked", "reason",
"at"}``. An unblock is a record with ``blocked: false``, not a tombstone, so that a filter instance that starts
after the unblock still knows the product was unblocked and re-publishes it (a tombstone would be compacted
away). Every filter instance reads the whole topic at start (:func:`load_stop_list`) and then follows it
(:class:`StopListFollower`); the topic is the only state, so the list is shared and survives restarts.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from millrace.errors import DataError, KafkaUnavailable, UsageError
from millrace.kafka.client_config import kafka_failure

MAX_ID_LENGTH = 200
_NO_LEADER_YET = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
)


@dataclass(frozen=True)
class StopEntry:
    product_id: str
    blocked: bool
    reason: str = ""
    at: str = ""  # ISO 8601, UTC

    def encode(self) -> bytes:
        record = {"product_id": self.product_id, "blocked": self.blocked, "reason": self.reason, "at": self.at}
        return json.dumps(record, ensure_ascii=False).encode("utf-8")


def decode_entry(key: bytes | None, value: bytes | None) -> StopEntry | None:
    """The entry a stop-list record holds; None for a record that is not one (no key, bad JSON). A tombstone
    (someone cleaning the topic by hand) counts as an unblock."""
    if not key:
        return None
    product_id = key.decode("utf-8", errors="replace")
    if value is None:
        return StopEntry(product_id, blocked=False)
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    return StopEntry(product_id, bool(data.get("blocked", True)), str(data.get("reason", "")), str(data.get("at", "")))


@dataclass
class StopList:
    """The latest entry per product id, in the order the topic gave them."""

    entries: dict[str, StopEntry] = field(default_factory=dict)

    def apply(self, entry: StopEntry) -> StopEntry | None:
        """Record ``entry``; returns it when it changes whether the product is blocked (else None)."""
        before = self.entries.get(entry.product_id)
        self.entries[entry.product_id] = entry
        was_blocked = before is not None and before.blocked
        return entry if was_blocked != entry.blocked else None

    def is_blocked(self, product_id: str) -> bool:
        entry = self.entries.get(product_id)
        return entry is not None and entry.blocked

    def was_unblocked(self, product_id: str) -> bool:
        entry = self.entries.get(product_id)
        return entry is not None and not entry.blocked

    def blocked(self) -> list[StopEntry]:
        return sorted((e for e in self.entries.values() if e.blocked), key=lambda e: e.product_id)


def check_product_id(product_id: str) -> str:
    product_id = product_id.strip()
    if not product_id or len(product_id) > MAX_ID_LENGTH or any(c.isspace() for c in product_id):
        raise UsageError(f"a product id is 1-{MAX_ID_LENGTH} characters without spaces", param_hint="ID")
    return product_id


def publish_entries(
    client_config: dict[str, Any], topic: str, entries: Sequence[StopEntry], *, timeout_s: float = 15.0
) -> None:
    """Write the entries and wait for their delivery (acks=all): when this returns, filters will see them."""
    producer = Producer({**client_config, "acks": "all", "enable.idempotence": True, "log_level": 0})
    failure: list[KafkaError] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failure.append(err)

    for entry in entries:
        producer.produce(topic, entry.encode(), entry.product_id.encode("utf-8"), on_delivery=delivered)
    if producer.flush(timeout_s) or failure:
        reason = failure[0].str() if failure else f"not delivered within {timeout_s:.0f} s"
        raise KafkaUnavailable(f"writing to the stop list {topic} failed: {reason}")


def block(client_config: dict[str, Any], topic: str, product_ids: Sequence[str], reason: str = "") -> list[StopEntry]:
    at = _now()
    entries = [StopEntry(check_product_id(p), True, reason, at) for p in product_ids]
    publish_entries(client_config, topic, entries)
    return entries


def unblock(client_config: dict[str, Any], topic: str, product_ids: Sequence[str]) -> list[StopEntry]:
    at = _now()
    entries = [StopEntry(check_product_id(p), False, "", at) for p in product_ids]
    publish_entries(client_config, topic, entries)
    return entries


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class StopListFollower:
    """Reads the whole stop-list topic (every partition, from the start, outside any consumer group), then
    follows it: :meth:`poll` returns the entries that changed a product's state since the last call."""

    def __init__(self, client_config: dict[str, Any], topic: str) -> None:
        self.topic = topic
        self.state = StopList()
        self._consumer = Consumer(
            {
                **client_config,
                "group.id": f"millrace-stop-list-{uuid.uuid4().hex[:8]}",  # assign() only: never joined
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "log_level": 0,
            }
        )

    def load(self, *, timeout_s: float = 30.0) -> StopList:
        """Assign every partition from the beginning and read up to the end as it stands now."""
        try:
            meta = self._consumer.list_topics(self.topic, timeout=timeout_s).topics.get(self.topic)
        except KafkaException as exc:
            raise kafka_failure(f"reading the stop list {self.topic}", exc) from exc
        if meta is None or meta.error is not None or not meta.partitions:
            raise DataError(f"the stop-list topic {self.topic} does not exist (run `millrace topics apply`)")
        partitions = sorted(meta.partitions)
        deadline = time.monotonic() + timeout_s
        ends = {}
        for p in partitions:
            low, high = self._watermarks(p, deadline)
            if high > low:
                ends[p] = high
        self._consumer.assign([TopicPartition(self.topic, p, -2) for p in partitions])  # -2: OFFSET_BEGINNING
        positions: dict[int, int] = {}
        while any(positions.get(p, -1) < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"the stop list {self.topic} was not read to its end within {timeout_s:.0f} s")
            for msg in self._consumer.consume(1000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        positions[int(msg.partition() or 0)] = int(msg.offset() or 0)
                        continue
                    raise KafkaUnavailable(f"reading the stop list {self.topic} failed: {err.str()}")
                positions[int(msg.partition() or 0)] = int(msg.offset() or 0) + 1
                self._apply(msg)
        return self.state

    def _watermarks(self, partition: int, deadline: float) -> tuple[int, int]:
        """The partition's (low, high), waiting out a leader not elected yet (a topic just created)."""
        while True:
            try:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=5)
                return int(low), int(high)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                retriable = isinstance(err, KafkaError) and (err.retriable() or err.code() in _NO_LEADER_YET)
                if not retriable or time.monotonic() > deadline:
                    raise kafka_failure(f"reading the offsets of the stop list {self.topic}", exc) from exc
                time.sleep(0.2)

    def poll(self, timeout_s: float = 0.0) -> list[StopEntry]:
        changed = []
        for msg in self._consumer.consume(1000, timeout_s):
            if msg.error() is None:
                entry = self._apply(msg)
                if entry is not None:
                    changed.append(entry)
        return changed

    def _apply(self, msg: Message) -> StopEntry | None:
        entry = decode_entry(msg.key(), msg.value())
        return None if entry is None else self.state.apply(entry)

    def close(self) -> None:
        self._consumer.close()


def load_stop_list(client_config: dict[str, Any], topic: str, *, timeout_s: float = 30.0) -> StopList:
    follower = StopListFollower(client_config, topic)
    try:
        return follower.load(timeout_s=timeout_s)
    finally:
        follower.close()


def entries_of(records: Iterable[tuple[bytes | None, bytes | None]]) -> StopList:
    """The stop list a sequence of (key, value) records builds (for tests and tools that hold records)."""
    state = StopList()
    for key, value in records:
        entry = decode_entry(key, value)
        if entry is not None:
            state.apply(entry)
    return state
