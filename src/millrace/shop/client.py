"""The shop's client side: a search is answered from the index and recorded in ``client-search``."""

from __future__ import annotations

import json
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


def record_query(client_config: dict[str, Any], topic: str, record: dict[str, Any], *, timeout_s: float = 15.0) -> None:
    """Produce ``record`` to ``topic`` and wait for its delivery."""
    producer = Producer({**client_config, "acks": "all", "enable.idempotence": True, "log_level": 0})
    failed: list[KafkaError] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failed.append(err)

    value = json.dumps(record, ensure_ascii=False).encode("utf-8")
    producer.produce(topic, value, record["user"].encode("utf-8"), on_delivery=delivered)
    if producer.flush(timeout_s) or failed:
        reason = failed[0].str() if failed else f"not delivered within {timeout_s:.0f} s"
        raise KafkaUnavailable(f"recording the query in {topic} failed: {reason}")


def search(
    backend: SearchBackend, request: SearchRequest, *, client_config: dict[str, Any], topic: str, user: str
) -> SearchResult:
    """Answer the query and record it with the number of products found."""
    result = backend.search(request)
    record_query(client_config, topic, query_record(user=user, text=request.text, results=result.total))
    return result
