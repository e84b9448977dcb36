"""The shop's client side: a search is answered from the index and recorded in ``client-search``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from millrace.errors import KafkaUnavailable
from millrace.shop.search import SearchBackend, SearchRequest, SearchResult


def query_record(
    *, user: str, text: str, kind: str = "search", results: int | None = None, at: datetime | None = None
) -> dict[str, Any]:
    """What ``client-search`` holds for one query (keyed by user; the client-query schema's fields)."""
    timestamp = (at or datetime.now(UTC)).isoformat(timespec="milliseconds")
    record: dict[str, Any] = {"type": kind, "user": user, "query": text, "timestamp": timestamp}
    if results is not None:
        record["results"] = results
    return record


Serialize = Callable[[dict[str, Any], str], bytes]


def query_serializer(registry_url: str, topic: str, compatibility: str) -> Serialize:
    """Frame queries with the client-query schema, registered (idempotently) under ``topic``'s subject."""
    from millrace.kafka.schema_registry import json_serializer, register, registry_client, subject_for
    from millrace.shop.schemas import load_schema

    client = registry_client(registry_url)
    schema = load_schema("client-query")
    register(client, registry_url, subject_for(topic), schema, compatibility)
    return json_serializer(client, schema)


def record_query(
    client_config: dict[str, Any],
    topic: str,
    record: dict[str, Any],
    *,
    timeout_s: float = 15.0,
    serialize: Serialize | None = None,
) -> None:
    """Produce ``record`` to ``topic`` (plain JSON, or framed by ``serialize``) and wait for its delivery."""
    producer = Producer({**client_config, "acks": "all", "enable.idempotence": True, "log_level": 0})
    failed: list[KafkaError] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failed.append(err)

    value = serialize(record, topic) if serialize else json.dumps(record, ensure_ascii=False).encode("utf-8")
    producer.produce(topic, value, record["user"].encode("utf-8"), on_delivery=delivered)
    if producer.flush(timeout_s) or failed:
        reason = failed[0].str() if failed else f"not delivered within {timeout_s:.0f} s"
        raise KafkaUnavailable(f"recording the query in {topic} failed: {reason}")


def search(
    backend: SearchBackend,
    request: SearchRequest,
    *,
    client_config: dict[str, Any],
    topic: str,
    user: str,
    serialize: Serialize | None = None,
) -> SearchResult:
    """Answer the query and record it with the number of products found."""
    result = backend.search(request)
    record = query_record(user=user, text=request.text, results=result.total)
    record_query(client_config, topic, record, serialize=serialize)
    return result


class QueryRecorder:
    """One long-lived producer for a process that records many queries (the API): :meth:`record` waits for
    that query's delivery only, so concurrent requests do not wait on one another's records. Queries are plain
    JSON, or framed by ``serialize`` (:func:`query_serializer`)."""

    def __init__(self, client_config: dict[str, Any], topic: str, *, serialize: Serialize | None = None) -> None:
        self.topic = topic
        self._serialize = serialize
        self._producer = Producer({**client_config, "acks": "all", "enable.idempotence": True, "log_level": 0})

    def record(self, record: dict[str, Any], *, timeout_s: float = 15.0) -> None:
        outcome: list[KafkaError | None] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            outcome.append(err)

        value = (
            self._serialize(record, self.topic)
            if self._serialize
            else json.dumps(record, ensure_ascii=False).encode("utf-8")
        )
        self._producer.produce(self.topic, value, record["user"].encode("utf-8"), on_delivery=delivered)
        deadline = time.monotonic() + timeout_s
        while not outcome and time.monotonic() < deadline:
            self._producer.poll(0.05)  # callbacks of any thread's records run here; each appends to its own list
        if not outcome or outcome[0] is not None:
            reason = (
                outcome[0].str() if outcome and outcome[0] is not None else f"not delivered within {timeout_s:.0f} s"
            )
            raise KafkaUnavailable(f"recording the query in {self.topic} failed: {reason}")

    def close(self, timeout_s: float = 5.0) -> None:
        self._producer.flush(timeout_s)
