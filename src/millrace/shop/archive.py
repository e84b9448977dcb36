"""The archiver: the orders topic -> the orders lake (shop/lake.py), each order event exactly once.

It consumes the orders topic as a consumer group, collects a batch (``batch_size`` records or
``batch_seconds`` after the batch's first record), and for each Kafka partition of the batch cuts its
records, in offset order, into runs of consecutive records of one order date — normally one run per
(partition, order date) — and writes each run as one file named by its first and last offsets, in offset
order. Only then are the group's offsets committed.

Why that is exactly once. Within a partition the files are written in offset order, each atomically (a
hidden temporary name, then a rename), so at any moment — a kill -9 included — the files of a partition
cover every archived record up to the highest offset in their names, and nothing above it. The lake, not the
committed offset, is the truth: on start and whenever it is assigned a partition the archiver reads the
highest archived offset of the partition from the file names, starts reading after it, and skips any
record at or below it (the committed offset is only where to start when the lake holds nothing of a
partition). A replay after a crash between writing and committing thus writes nothing twice, whatever its
batch boundaries; temporary files a killed writer left are removed when the partition is assigned.

Malformed records (not JSON, not an order, failing the order schema — or, with the registry, the schema
their framing names) go to the shop dead-letter topic with the reason and ``partition:offset``; they are
delivered before any file of their batch is written, so a crash may send one twice (at least once, with the
source offset to tell) but never loses one. Values may be framed with a schema id (as ``shop orders``
publishes them) or plain JSON; without the registry the shipped order schema checks them.

One archiver per partition at a time: the consumer group assigns each partition to one member; a member
stopping or crashing hands its partitions over and the new owner resumes from the lake.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from millrace import telemetry
from millrace.errors import DataError, KafkaUnavailable, MillraceError, StoreUnavailable
from millrace.kafka.consumer import count_consumed, make_consumer
from millrace.kafka.producer import ReliableProducer, make_producer
from millrace.kafka.schema_registry import schema_id_of
from millrace.records import DeadLetter
from millrace.shop.decode import TOMBSTONE, SchemaDecoder
from millrace.shop.lake import ArchivedFile, Lake, Product, order_rows
from millrace.shop.schemas import Validator, load_schema

log = logging.getLogger(__name__)

STAGE = "shop-archive"
ASSIGN_TIMEOUT_S = 60.0  # --until-idle: the group must give this archiver partitions within this


@dataclass
class ArchiveStats:
    consumed: int = 0
    archived: int = 0  # order events written to the lake
    rows: int = 0  # their lines
    files: int = 0
    skipped: int = 0  # records already in the lake (a replay after a crash)
    dead_lettered: int = 0
    batches: int = 0
    lag: int = 0  # records of the assigned partitions not read yet
    started: float = field(default_factory=time.monotonic)
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Records read per second since the start."""
        return self.consumed / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Pending:
    """One partition's records of the batch being collected."""

    rows: list[list[dict[str, Any]]] = field(default_factory=list)  # per order event, in offset order
    next_offset: int = -1  # the offset after the last record read (to commit)


def runs(events: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Consecutive events (each its rows, in offset order) cut into runs of one order date: one file each."""
    out: list[list[dict[str, Any]]] = []
    current_date = None
    for rows in events:
        date = rows[0]["order_date"]
        if not out or date != current_date:
            out.append([])
            current_date = date
        out[-1].extend(rows)
    return out


class OrderArchiver:
    """One archiver. :meth:`run` until ``stop`` is set (or, with ``until_idle``, until caught up)."""

    def __init__(
        self,
        client_config: dict[str, Any],
        lake: Lake,
        *,
        topic: str,
        dead_letter_topic: str,
        products: Mapping[str, Product],
        group: str = "millrace-shop-archive",
        instance: str | None = None,
        batch_size: int = 5000,
        batch_seconds: float = 5.0,
        registry_url: str | None = None,
        session_timeout_ms: int = 15_000,
    ) -> None:
        """``instance``: a stable name for static group membership, so a restarted archiver takes its
        partitions back at once instead of after the session timeout. ``registry_url``: check each value
        against the schema its framing names (else against the shipped order schema)."""
        if batch_size < 1 or batch_seconds <= 0:
            raise ValueError("batch_size must be at least 1 and batch_seconds above 0")
        self.lake, self.topic, self.group = lake, topic, group
        self.dead_letter_topic = dead_letter_topic
        self.products = products
        self.batch_size, self.batch_seconds = batch_size, batch_seconds
        self.stats = ArchiveStats()
        extra: dict[str, Any] = {"isolation.level": "read_committed", "session.timeout.ms": session_timeout_ms}
        if instance is not None:
            extra["group.instance.id"] = f"{group}-{instance}"
        self._consumer: Consumer = make_consumer(client_config, group, extra=extra)
        self._producer: ReliableProducer = make_producer(client_config)
        self._decoder: SchemaDecoder | None = None
        self._validator: Validator | None = None
        if registry_url is not None:
            self._decoder = SchemaDecoder(registry_url, self._send, dead_letter_topic=dead_letter_topic, stage=STAGE)
        else:
            self._validator = Validator(load_schema("order"))
        self._archived: dict[int, int] = {}  # partition -> highest offset in the lake (-1: none)
        self._next: dict[int, int] = {}  # partition -> the next offset to read, when known
        self._unresolved: set[int] = set()  # assigned partitions whose start is the committed offset
        self._pending: dict[int, _Pending] = {}
        self._pending_records = 0
        self._batch_started: float | None = None
        self._assigned_once = False
        self.written: list[ArchivedFile] = []

    # -- the loop ----------------------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        *,
        until_idle: bool = False,
        on_progress: Callable[[ArchiveStats], None] | None = None,
        progress_every_s: float = 1.0,
    ) -> ArchiveStats:
        """Archive until ``stop`` is set; with ``until_idle``, also stop once every assigned partition is read
        to its end and archived. The pending batch is written and committed on the way out."""
        consumer = self._consumer
        consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        started = time.monotonic()
        last_progress = 0.0
        try:
            while not stop.is_set():
                messages = consumer.consume(min(1000, self.batch_size), 0.5)
                self._resolve_starts()
                self._take(messages)
                now = time.monotonic()
                full = self._pending_records >= self.batch_size
                due = self._batch_started is not None and now - self._batch_started >= self.batch_seconds
                if full or due or (until_idle and not messages and self._pending):
                    self._flush()
                if now - last_progress >= progress_every_s:
                    last_progress = now
                    self._update_lag(cached=True)
                    if on_progress is not None:
                        on_progress(self.stats)
                if until_idle and not messages and not self._pending:
                    if self._assigned_once and self._caught_up():
                        break
                    if not self._assigned_once and now - started > ASSIGN_TIMEOUT_S:
                        raise KafkaUnavailable(
                            f"no partition of {self.topic} was assigned to group {self.group} within "
                            f"{ASSIGN_TIMEOUT_S:.0f} s (does the topic exist? is another member holding them?)"
                        )
            self._flush()
            self._update_lag(cached=True)
        finally:
            try:
                consumer.close()
            except KafkaException as exc:
                log.debug("closing the archiver's consumer: %s", exc)
            self._producer.flush(30.0)
        return self.stats

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start each partition after the highest offset the lake holds of it (else at the committed one)."""
        self._assigned_once = True
        ids = [tp.partition for tp in partitions]
        try:
            self.lake.remove_temp_files(ids)
            archived = self.lake.archived_offsets()
        except Exception as exc:  # fsspec back ends raise their own kinds (OSError, RuntimeError, HTTP errors)
            raise StoreUnavailable(f"cannot read the lake at {self.lake.spark_url}: {_one_line(exc)}") from exc
        for tp in partitions:
            highest = archived.get(tp.partition, -1)
            self._archived[tp.partition] = highest
            self._next.pop(tp.partition, None)
            if highest >= 0:
                tp.offset = highest + 1
                self._next[tp.partition] = highest + 1
            else:
                self._unresolved.add(tp.partition)
        log.info(
            "assigned %s partitions %s; archived up to %s",
            self.topic,
            ids,
            {p: self._archived[p] for p in ids},
        )
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Drop what was read of revoked partitions and not archived: their next owner reads it again."""
        for tp in partitions:
            pending = self._pending.pop(tp.partition, None)
            if pending is not None:
                self._pending_records -= len(pending.rows)
            for held in (self._archived, self._next):
                held.pop(tp.partition, None)
            self._unresolved.discard(tp.partition)
        if not self._pending:
            self._batch_started = None

    def _resolve_starts(self) -> None:
        """Where reading starts in partitions the lake has nothing of: the committed offset, else the start."""
        if not self._unresolved:
            return
        wanted = [TopicPartition(self.topic, p) for p in sorted(self._unresolved)]
        try:
            committed = self._consumer.committed(wanted, timeout=10)
        except KafkaException as exc:
            log.warning("reading the committed offsets: %s", exc)
            return
        for tp in committed:
            if tp.partition in self._next:  # a record was read meanwhile
                pass
            elif tp.offset >= 0:
                self._next[tp.partition] = tp.offset
            else:
                low, _ = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)
                self._next[tp.partition] = low
            self._unresolved.discard(tp.partition)

    def _take(self, messages: list[Message]) -> None:
        good = []
        for msg in messages:
            err = msg.error()
            if err is None:
                good.append(msg)
            elif err.fatal():
                raise MillraceError(
                    f"the archiver stopped: {err.name()}: {err.str()} (another archiver of the group with the same "
                    "--instance took over, or the broker fenced this one)"
                )
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", err.str())
        if not good:
            return
        count_consumed(good, self.group)
        stats = self.stats
        for msg in good:
            partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
            if partition not in self._archived:  # revoked while this was in flight
                continue
            stats.consumed += 1
            pending = self._pending.setdefault(partition, _Pending())
            pending.next_offset = offset + 1
            self._next[partition] = offset + 1
            if self._batch_started is None:
                self._batch_started = time.monotonic()
            if offset <= self._archived[partition]:
                stats.skipped += 1
                continue
            event = self._decode(msg)
            if event is None:
                continue
            try:
                rows = order_rows(event, partition, offset, self.products)
            except DataError as exc:
                self._dead_letter(msg, "not-an-order", str(exc))
                continue
            pending.rows.append(rows)
            self._pending_records += 1

    def _decode(self, msg: Message) -> dict[str, Any] | None:
        """The order event of ``msg``, or None when it was dead-lettered."""
        data = msg.value()
        if data is None:
            self._dead_letter(msg, "no-value", "a record without a value (orders are never deleted)")
            return None
        if self._decoder is not None:
            before = dict(self._decoder.stats.reasons)
            value = self._decoder.decode(msg)
            if value is None or value is TOMBSTONE:  # dead-lettered by the decoder
                after = self._decoder.stats.reasons
                kind = next((k for k, n in after.items() if n > before.get(k, 0)), "schema")
                self._counted(kind)
                return None
        else:
            body = data[5:] if schema_id_of(data) is not None else data
            try:
                value = json.loads(body)
            except ValueError as exc:
                self._dead_letter(msg, "not-json", f"not valid JSON: {exc}")
                return None
            reason = self._validator.error(value) if self._validator is not None else None
            if reason is not None:
                self._dead_letter(msg, "schema-violation", f"fails the order schema: {reason}")
                return None
        if not isinstance(value, dict):
            self._dead_letter(msg, "not-an-order", "not a JSON object")
            return None
        return value

    def _counted(self, kind: str) -> None:
        self.stats.dead_lettered += 1
        self.stats.reasons[kind] = self.stats.reasons.get(kind, 0) + 1
        telemetry.DEAD_LETTERS.labels(kind).inc()

    def _dead_letter(self, msg: Message, kind: str, reason: str) -> None:
        data = msg.value() or b""
        body = data[5:] if schema_id_of(data) is not None else data
        letter = DeadLetter(
            reason=reason,
            stage=STAGE,
            source=str(msg.topic()),
            position=f"{msg.partition()}:{msg.offset()}",
            raw=body.decode("utf-8", errors="replace"),
        )
        self._send(self.dead_letter_topic, json.dumps(letter.to_dict(), ensure_ascii=False).encode(), msg.key())
        self._counted(kind)

    def _send(self, topic: str, value: bytes, key: bytes | str | None) -> None:
        self._producer.produce(topic, value, key)

    # -- writing -----------------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Dead letters delivered, then the batch's files written in offset order, then offsets committed."""
        if not self._pending:
            return
        failed_before = self._producer.stats.failed
        if self._producer.flush(30.0) or self._producer.stats.failed > failed_before:
            raise KafkaUnavailable(f"dead letters were not delivered to {self.dead_letter_topic}")
        stats = self.stats
        commits = []
        for partition, pending in sorted(self._pending.items()):
            for run in runs(pending.rows):
                try:
                    written = self.lake.write(partition, run)
                except Exception as exc:  # nothing is committed: the batch is read again on the next start
                    raise StoreUnavailable(
                        f"cannot write to the lake at {self.lake.spark_url}: {_one_line(exc)}"
                    ) from exc
                self._archived[partition] = written.last
                self.written.append(written)
                stats.files += 1
                stats.rows += len(run)
            stats.archived += len(pending.rows)
            commits.append(TopicPartition(self.topic, partition, pending.next_offset))
        try:
            self._consumer.commit(offsets=commits, asynchronous=False)
        except KafkaException as exc:
            # The files are in the lake, which is what the next start goes by: a failed commit costs a re-read.
            log.warning("committing offsets after writing the batch: %s", exc)
        stats.batches += 1
        self._pending = {}
        self._pending_records = 0
        self._batch_started = None

    # -- progress ----------------------------------------------------------------------------------------

    def _update_lag(self, *, cached: bool) -> bool:
        """Refresh stats.lag; True when every assigned partition's end is known."""
        lag, known = 0, True
        try:
            assignment = self._consumer.assignment()
        except KafkaException:
            return False
        for tp in assignment:
            position = self._next.get(tp.partition)
            try:
                _, high = self._consumer.get_watermark_offsets(tp, timeout=5, cached=cached)
            except KafkaException:
                known = False
                continue
            if position is None or high < 0:
                known = False
                continue
            lag += max(0, high - position)
        self.stats.lag = lag
        return known and bool(assignment)

    def _caught_up(self) -> bool:
        return self._update_lag(cached=False) and self.stats.lag == 0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().split("\n")[0] or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."
