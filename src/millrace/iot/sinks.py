"""Where simulated or replayed readings go. A sink counts what was *delivered* (in delivery callbacks), never
what was merely attempted.

The Sink protocol (``send``/``poll``/``flush``/``close`` plus ``stats``) is implemented by :class:`KafkaSink`
here and by ``MqttSink`` in :mod:`millrace.iot.mqtt_sink`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from queue import Empty, Full, Queue
from typing import Any, Protocol, TypeVar

from confluent_kafka import KafkaError, Producer
from confluent_kafka import Message as KafkaMessage

from millrace import telemetry
from millrace.config import Settings
from millrace.iot.messages import Message, MessageBatch
from millrace.kafka.producer import producer_config
from millrace.kafka.stats import DeliveryStats

log = logging.getLogger(__name__)
T = TypeVar("T")

# Delivery latency is sampled on one message in this many: the histogram costs a log() per sample, and a
# 1-in-8 sample of hundreds of thousands of deliveries per second gives the same quantiles.
LATENCY_SAMPLE = 8
# On the batch path delivery callbacks are served every this many messages rather than after each one: the
# local queue holds up to a million messages, and a poll per message costs as much as the produce itself.
POLL_EVERY = 128


class Sink(Protocol):
    stats: DeliveryStats

    def send(self, msg: Message) -> None:
        """Queue one message; may block briefly on back-pressure, never drops it."""
        ...

    def poll(self) -> None:
        """Serve delivery callbacks."""
        ...

    def flush(self, timeout_s: float = 60.0) -> int:
        """Wait for outstanding deliveries; returns the number still undelivered after ``timeout_s``."""
        ...

    def close(self) -> None: ...


def send_batch(sink: Sink, batch: MessageBatch) -> None:
    """Send a batch through any sink (KafkaSink has a faster path of its own)."""
    fast = getattr(sink, "send_batch", None)
    if fast is not None:
        fast(batch)
        return
    for msg in batch:
        sink.send(msg)


class KafkaSink:
    """Produces messages to a Kafka topic with acks=all and idempotence (the settings' compression,
    linger and batch size). Calls ``confluent_kafka.Producer.produce`` directly on the hot path."""

    def __init__(
        self, settings: Settings, *, topic: str | None = None, extra_config: dict[str, Any] | None = None
    ) -> None:
        kafka = settings.kafka
        self.topic = topic or settings.topics.readings
        self.dead_letter_topic = settings.topics.dead_letter
        self.config = producer_config(
            kafka.client_config(),
            compression=kafka.compression,
            linger_ms=kafka.linger_ms,
            batch_size=kafka.batch_size,
            extra=extra_config,
        )
        self._producer = Producer(self.config)
        self.stats = DeliveryStats()
        self._seen = 0
        self._callbacks: dict[str, Any] = {}
        # Per topic: [delivered, failed] counted by the callback, and what was already added to the Prometheus
        # counters. A counter's inc() costs microseconds (more in multiprocess mode) — too much per message on
        # this path — so the counts reach it in sums after each poll, batch and flush.
        self._tallies: dict[str, tuple[list[int], list[int]]] = {}
        self._on_delivery = self._callback(self.topic)

    def _callback(self, topic: str) -> Any:
        """The delivery callback of ``topic`` (one per topic: its metric children are looked up once)."""
        found = self._callbacks.get(topic)
        if found is None:
            found = self._callbacks[topic] = self._make_callback(topic)
        return found

    def _make_callback(self, topic: str) -> Any:
        stats = self.stats
        hist = stats.latency
        counter = [0]
        tally = [0, 0]
        self._tallies[topic] = (tally, [0, 0])
        latencies = telemetry.DELIVERY_LATENCY.labels(topic)

        def delivered(err: KafkaError | None, msg: KafkaMessage) -> None:
            if err is None:
                stats.delivered += 1
                tally[0] += 1
                counter[0] += 1
                if counter[0] % LATENCY_SAMPLE == 0:  # sampled: msg.latency() per message costs
                    latency = msg.latency()
                    if latency is not None:
                        hist.add(latency)
                        latencies.observe(latency)
            else:
                stats.failed += 1
                tally[1] += 1
                stats.last_error = str(err)
                log.warning("delivery to %s failed: %s", msg.topic(), err)

        return delivered

    def _publish_counts(self) -> None:
        """Add the deliveries and failures counted since the last call to the Prometheus counters."""
        for topic, (tally, published) in self._tallies.items():
            if tally[0] != published[0]:
                telemetry.PRODUCED.labels(topic).inc(tally[0] - published[0])
                published[0] = tally[0]
            if tally[1] != published[1]:
                telemetry.PRODUCE_FAILED.labels(topic).inc(tally[1] - published[1])
                published[1] = tally[1]

    def send(self, msg: Message) -> None:
        self.produce(self.topic, msg.value, msg.key)

    def send_batch(self, batch: MessageBatch) -> None:
        produce, poll = self._producer.produce, self._producer.poll
        topic, callback = self.topic, self._on_delivery
        keys: Sequence[bytes | str] = batch.key_bytes if batch.key_bytes is not None else batch.keys
        for i, (key, value) in enumerate(zip(keys, batch.values, strict=True)):
            try:
                produce(topic, value, key, on_delivery=callback)
            except BufferError:
                self._produce_blocking(topic, value, key)
            if i % POLL_EVERY == 0:
                poll(0)
        poll(0)
        self._publish_counts()

    def produce(self, topic: str, value: bytes, key: str | bytes | None) -> None:
        """Produce to any topic (e.g. the dead-letter topic) with delivery counted in :attr:`stats`."""
        try:
            self._producer.produce(topic, value, key, on_delivery=self._callback(topic))
        except BufferError:
            self._produce_blocking(topic, value, key)
        self._producer.poll(0)
        self._seen += 1
        if self._seen % POLL_EVERY == 0:
            self._publish_counts()

    def _produce_blocking(self, topic: str, value: bytes, key: str | bytes | None) -> None:
        while True:
            self._producer.poll(0.05)  # local queue full: let deliveries drain, then retry
            try:
                self._producer.produce(topic, value, key, on_delivery=self._callback(topic))
                return
            except BufferError:
                continue

    def poll(self) -> None:
        self._producer.poll(0)
        self._publish_counts()

    def flush(self, timeout_s: float = 60.0) -> int:
        remaining = int(self._producer.flush(timeout_s))
        self._publish_counts()
        if remaining:
            log.error("%d messages still undelivered after %.0f s", remaining, timeout_s)
        return remaining

    def close(self) -> None:
        self.flush(10.0)

    def __len__(self) -> int:
        return len(self._producer)


class _Recorder(Protocol):
    def record_many(self, sensor_types: list[str], kinds: list[str]) -> None: ...


def pump(
    batches: Iterable[MessageBatch],
    sink: Sink,
    recorder: _Recorder | None = None,
    *,
    rate: float = 0.0,
    stop: threading.Event | None = None,
) -> int:
    """Send ``batches`` through ``sink`` in order, at most ``rate`` messages/s (0 = as fast as possible),
    until they run out or ``stop`` is set. Returns the number of messages sent (not yet flushed)."""
    stop = stop or threading.Event()
    sent = 0
    batches = prefetch(batches, stop=stop)
    started = time.monotonic()
    slice_size = max(1, int(rate / 20)) if rate > 0 else 0  # about 50 ms of messages per slice
    for batch in batches:
        if stop.is_set():
            break
        parts = (
            [batch] if not slice_size else [batch.slice(i, i + slice_size) for i in range(0, len(batch), slice_size)]
        )
        for part in parts:
            if rate > 0:
                while (ahead := started + sent / rate - time.monotonic()) > 0 and not stop.is_set():
                    sink.poll()
                    stop.wait(min(ahead, 0.05))
            if stop.is_set():
                break
            send_batch(sink, part)
            if recorder is not None:
                recorder.record_many(part.sensor_types, part.kinds)
            sent += len(part)
    return sent


def prefetch(items: Iterable[T], *, stop: threading.Event, depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` in a background thread, ``depth`` ahead: the simulator's numpy/Arrow work (which
    releases the GIL) overlaps with producing. An exception in the thread is raised here."""
    queue: Queue[tuple[str, object]] = Queue(maxsize=depth)
    done = threading.Event()  # the consumer went away (finished, stopped or failed)

    def put(entry: tuple[str, object]) -> bool:
        while not (done.is_set() or stop.is_set()):
            try:
                queue.put(entry, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def fill() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, never lost
            put(("error", exc))

    thread = threading.Thread(target=fill, name="millrace-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            try:
                kind, value = queue.get(timeout=0.1)
            except Empty:
                if not thread.is_alive() and queue.empty():
                    return
                continue
            if kind == "end":
                return
            if kind == "error":
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]
    finally:
        done.set()
