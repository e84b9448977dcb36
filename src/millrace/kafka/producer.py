"""A reliable producer: acks=all, idempotence, compression, batching, delivery counted per message."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from millrace import telemetry
from millrace.kafka.stats import DeliveryStats

log = logging.getLogger(__name__)

OnDelivery = Callable[[KafkaError | None, Message], None]


def producer_config(
    client_config: dict[str, Any],
    *,
    compression: str = "lz4",
    linger_ms: int = 20,
    batch_size: int = 1_000_000,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        **client_config,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": compression,
        "linger.ms": linger_ms,
        "batch.size": batch_size,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        # Retries are unbounded in time until delivery.timeout.ms: a broker restart is ridden out.
        "delivery.timeout.ms": 300_000,
        **(extra or {}),
    }


class ReliableProducer:
    """Wraps confluent_kafka.Producer; counts deliveries and failures in :attr:`stats`.

    ``produce`` never drops a message on a full local queue: it serves delivery callbacks and retries.
    Call :meth:`flush` before exit; anything still queued after its deadline is reported, not hidden.
    """

    def __init__(self, config: dict[str, Any], *, stats: DeliveryStats | None = None) -> None:
        self._producer = Producer(config)
        self.stats = stats or DeliveryStats()
        self._metrics: dict[str, tuple[Any, Any, Any]] = {}  # topic -> its metric children, looked up once

    def _topic_metrics(self, topic: str) -> tuple[Any, Any, Any]:
        found = self._metrics.get(topic)
        if found is None:
            found = self._metrics[topic] = (
                telemetry.PRODUCED.labels(topic),
                telemetry.PRODUCE_FAILED.labels(topic),
                telemetry.DELIVERY_LATENCY.labels(topic),
            )
        return found

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        stats = self.stats
        produced, failed, latencies = self._topic_metrics(msg.topic() or "")
        if err is None:
            stats.delivered += 1
            produced.inc()
            latency = msg.latency()
            if latency is not None:
                stats.latency.add(latency)
                latencies.observe(latency)
        else:
            stats.failed += 1
            failed.inc()
            stats.last_error = str(err)
            log.warning("delivery to %s failed: %s", msg.topic(), err)

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        *,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        on_delivery: OnDelivery | None = None,
    ) -> None:
        callback = self._delivered if on_delivery is None else self._chain(on_delivery)
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=callback)
                break
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let deliveries drain, then retry
        self._producer.poll(0)

    def produce_batch(self, topic: str, values: Iterable[bytes], keys: Iterable[bytes | str | None]) -> int:
        """Many messages at once: the same guarantees as :meth:`produce`, with delivery reports served once
        per 10,000 messages instead of after each (for bulk output such as one message per reading)."""
        produce, callback = self._producer.produce, self._delivered
        n = 0
        for value, key in zip(values, keys, strict=True):
            while True:
                try:
                    produce(topic, value, key, on_delivery=callback)
                    break
                except BufferError:
                    self._producer.poll(0.05)
            n += 1
            if n % 10_000 == 0:
                self._producer.poll(0)
        self._producer.poll(0)
        return n

    def _chain(self, extra: OnDelivery) -> OnDelivery:
        def both(err: KafkaError | None, msg: Message) -> None:
            self._delivered(err, msg)
            extra(err, msg)

        return both

    def poll(self, timeout_s: float = 0.0) -> int:
        return int(self._producer.poll(timeout_s))

    def flush(self, timeout_s: float = 60.0) -> int:
        """Wait for outstanding deliveries; returns how many are still in flight after the deadline."""
        remaining = int(self._producer.flush(timeout_s))
        if remaining:
            log.error("%d messages still undelivered after %.0f s", remaining, timeout_s)
        return remaining

    def __len__(self) -> int:
        return len(self._producer)


def make_producer(client_config: dict[str, Any], **options: Any) -> ReliableProducer:
    """The producer factory every millrace component uses."""
    return ReliableProducer(producer_config(client_config, **options))
