"""Reading a topic as it stands, without a consumer group: watermarks, the whole topic, chosen offsets.

For tools that inspect what is in a topic (the audit), not for processing: nothing is committed, every call
uses its own assigned consumer and closes it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from millrace.errors import KafkaUnavailable, MillraceError

# A wanted offset further than this past the read position is reached by seeking rather than reading through.
SEEK_GAP = 5000
# Longest single wait inside a read (see _next_batch).
POLL_S = 0.25


def _consumer(client_config: dict[str, Any]) -> Consumer:
    return Consumer(
        {
            **client_config,
            "group.id": f"millrace-reader-{uuid.uuid4().hex[:8]}",  # never joined or committed: assign() only
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # No connection-refused lines every 50 ms on stderr: a failure comes back as one KafkaUnavailable.
            "log_level": 0,
        }
    )


def _reason(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)


def watermarks(client_config: dict[str, Any], topic: str, *, timeout_s: float = 10.0) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}``: the first offset still held and the next offset to be written."""
    consumer = _consumer(client_config)
    try:
        try:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except KafkaException as exc:
            where = client_config.get("bootstrap.servers")
            raise KafkaUnavailable(f"cannot reach Kafka at {where}: {_reason(exc)}") from exc
        if meta is None or meta.error is not None or not meta.partitions:
            raise MillraceError(f"topic {topic} does not exist (see `millrace topics list`)")
        result = {}
        for pid in sorted(meta.partitions):
            try:
                result[pid] = consumer.get_watermark_offsets(TopicPartition(topic, pid), timeout=timeout_s)
            except KafkaException as exc:
                raise KafkaUnavailable(f"cannot read the offsets of {topic}[{pid}]: {_reason(exc)}") from exc
        return result
    finally:
        consumer.close()


def read_all(
    client_config: dict[str, Any], topic: str, *, timeout_s: float = 30.0, batch_size: int = 5000
) -> Iterator[Message]:
    """Every record of ``topic`` from the low to the high watermark as they stand when the call starts."""
    marks = watermarks(client_config, topic)
    ranges = {p: (low, high) for p, (low, high) in marks.items() if high > low}
    yield from _read(client_config, topic, {p: range(low, high) for p, (low, high) in ranges.items()}, timeout_s)


def read_offsets(
    client_config: dict[str, Any], topic: str, offsets: Mapping[int, Iterable[int]], *, timeout_s: float = 30.0
) -> Iterator[Message]:
    """The records at the given offsets per partition (those that exist: an offset holding no record, such as
    a transaction marker or a compacted record, yields nothing). Reads through short gaps, seeks over long
    ones."""
    yield from _read(client_config, topic, offsets, timeout_s)


def _read(
    client_config: dict[str, Any], topic: str, offsets: Mapping[int, Iterable[int]], timeout_s: float
) -> Iterator[Message]:
    consumer = _consumer(client_config)
    try:
        for partition, wanted_offsets in sorted(offsets.items()):
            wanted = sorted(set(wanted_offsets))
            if wanted:
                yield from _read_partition(consumer, topic, partition, wanted, timeout_s)
    finally:
        consumer.close()


def _next_batch(consumer: Consumer, timeout_s: float) -> list[Message]:
    """Up to 1000 records, or [] when nothing came within ``timeout_s``.

    ``consume(n, timeout)`` waits until it has ``n`` messages or the timeout passed, even after the partition's
    end was reached; short calls return what is there (an EOF event included) in at most ``POLL_S``."""
    deadline = time.monotonic() + timeout_s
    while True:
        msgs = consumer.consume(1000, min(POLL_S, max(0.0, deadline - time.monotonic())))
        if msgs or time.monotonic() >= deadline:
            return msgs


def _read_partition(
    consumer: Consumer, topic: str, partition: int, wanted: list[int], timeout_s: float
) -> Iterator[Message]:
    i, position = 0, -1
    while i < len(wanted):
        if wanted[i] > position + SEEK_GAP or position < 0:
            consumer.assign([TopicPartition(topic, partition, wanted[i])])
            position = wanted[i]
        msgs = _next_batch(consumer, timeout_s)
        if not msgs:
            raise KafkaUnavailable(f"no records from {topic}[{partition}] at offset {position} within {timeout_s} s")
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:  # the end: nothing more to find
                    return
                raise KafkaUnavailable(f"reading {topic}[{partition}] failed: {err.str()}")
            offset = int(msg.offset() or 0)  # always set on a record (None only on events)
            position = offset + 1
            while i < len(wanted) and wanted[i] < offset:  # offsets without a record
                i += 1
            if i < len(wanted) and wanted[i] == offset:
                yield msg
                i += 1
            if i >= len(wanted):
                return
