"""At-least-once consumption: offsets are committed only after the batch handler returns."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from millrace import telemetry

log = logging.getLogger(__name__)

BatchHandler = Callable[[list[Message]], None]


def make_consumer(
    client_config: dict[str, Any],
    group_id: str,
    *,
    auto_offset_reset: str = "earliest",
    extra: dict[str, Any] | None = None,
) -> Consumer:
    return Consumer(
        {
            **client_config,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": auto_offset_reset,
            "enable.partition.eof": False,
            **(extra or {}),
        }
    )


def count_consumed(messages: Sequence[Message], group: str) -> None:
    """Count good ``messages`` (no error) in millrace_consumed_total{topic, group}."""
    by_topic: dict[str, int] = {}
    for msg in messages:
        if msg.error() is None:
            topic = msg.topic() or ""
            by_topic[topic] = by_topic.get(topic, 0) + 1
    for topic, n in by_topic.items():
        telemetry.CONSUMED.labels(topic, group).inc(n)


def stop_on_signals(stop: threading.Event) -> None:
    """Set ``stop`` on SIGINT/SIGTERM (main thread only) so loops finish their batch and close cleanly."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the current batch", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def consume_loop(
    consumer: Consumer,
    topics: Sequence[str],
    handle: BatchHandler,
    *,
    stop: threading.Event,
    batch_size: int = 1000,
    poll_timeout_s: float = 0.5,
    group: str = "",
) -> int:
    """Subscribe and hand batches to ``handle`` until ``stop`` is set; commit after each handled batch.

    A handler exception propagates without committing, so the batch is redelivered on restart. The
    consumer is closed on the way out (leaving the group promptly). Returns the number of messages handled.
    """
    consumer.subscribe(list(topics))
    handled = 0
    try:
        while not stop.is_set():
            messages = consumer.consume(batch_size, poll_timeout_s)
            if not messages:
                continue
            good = []
            for msg in messages:
                err = msg.error()
                if err is None:
                    good.append(msg)
                elif err.code() != KafkaError._PARTITION_EOF:
                    if err.fatal():
                        raise KafkaException(err)
                    log.warning("consumer error: %s", err)
            if good:
                count_consumed(good, group)
                handle(good)
                handled += len(good)
                consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return handled
