"""The search sink service: ``filtered-items`` and ``client-search`` -> a search backend.

A consumer group reads both topics (``isolation.level=read_committed``, so only the filter's committed
transactions). Each batch is applied in record order — a product record upserts by id, a tombstone deletes the
id, a client query is stored under its topic/partition/offset — then the backend commits, then the group's
offsets: a crash replays at most the last batch, and a replay changes nothing (every write is idempotent by
id). More instances in the group share the partitions when the backend is shared; the embedded tantivy index
takes one writer, so with it the service runs as one instance.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from millrace.errors import DataError, KafkaUnavailable
from millrace.kafka.consumer import consume_loop, make_consumer
from millrace.kafka.producer import ReliableProducer, make_producer
from millrace.shop.decode import SchemaDecoder
from millrace.shop.search import SearchBackend, decode_json, product_doc, query_doc

log = logging.getLogger(__name__)


@dataclass
class IndexStats:
    upserted: int = 0
    deleted: int = 0
    queries: int = 0
    skipped: int = 0  # records that are not a product or a query (logged)
    dead_lettered: int = 0  # records failing their registered schema (validated runs only)
    batches: int = 0


def apply_batch(
    backend: SearchBackend,
    messages: list[Message],
    products_topic: str,
    stats: IndexStats,
    decoder: SchemaDecoder | None = None,
) -> None:
    """Apply ``messages`` in order and commit the backend. With a ``decoder`` each value is checked against the
    schema its framing names first; one that fails is dead-lettered by the decoder and not indexed."""
    for msg in messages:
        key, value, topic = msg.key(), msg.value(), msg.topic()
        where = f"{topic}[{msg.partition()}]@{msg.offset()}"
        if decoder is not None and value is not None and decoder.decode(msg) is None:
            stats.dead_lettered += 1
            continue
        try:
            if topic == products_topic:
                if not key:
                    raise DataError("no product id (key)")
                product_id = key.decode("utf-8", errors="replace")
                if value is None:
                    backend.delete_products([product_id])
                    stats.deleted += 1
                else:
                    backend.upsert_products([product_doc(product_id, decode_json(value))])
                    stats.upserted += 1
            elif value is not None:
                record_id = f"{topic}/{msg.partition()}/{msg.offset()}"
                backend.upsert_queries([query_doc(record_id, decode_json(value))])
                stats.queries += 1
        except DataError as exc:
            stats.skipped += 1
            log.warning("skipped %s: %s", where, exc)
    backend.commit()
    stats.batches += 1


def run_indexer(
    client_config: dict[str, Any],
    backend: SearchBackend,
    *,
    products_topic: str,
    queries_topic: str,
    group: str,
    stop: threading.Event,
    batch_size: int = 500,
    on_batch: Callable[[IndexStats], None] | None = None,
    registry_url: str | None = None,
    dead_letter_topic: str | None = None,
) -> IndexStats:
    """Index until ``stop`` is set; returns what was applied. With ``registry_url`` (and ``dead_letter_topic``)
    every record is validated against its registered schema and a failure dead-lettered with the reason and its
    partition:offset; the dead letters are delivered before the batch's offsets are committed."""
    stats = IndexStats()
    consumer = make_consumer(client_config, group, extra={"isolation.level": "read_committed"})
    decoder: SchemaDecoder | None = None
    producer: ReliableProducer | None = None
    if registry_url is not None:
        if not dead_letter_topic:
            raise ValueError("validating with the registry needs a dead-letter topic")
        producer = make_producer(client_config)
        sender = producer

        def send(topic: str, value: bytes, key: bytes | str | None) -> None:
            sender.produce(topic, value, key)

        decoder = SchemaDecoder(registry_url, send, dead_letter_topic=dead_letter_topic, stage="shop-index")

    def handle(messages: list[Message]) -> None:
        apply_batch(backend, messages, products_topic, stats, decoder)
        if producer is not None and (producer.flush(30.0) or producer.stats.failed):
            raise KafkaUnavailable(f"dead letters were not delivered to {dead_letter_topic}")
        if on_batch is not None:
            on_batch(stats)

    consume_loop(consumer, [products_topic, queries_topic], handle, stop=stop, batch_size=batch_size, group=group)
    return stats
