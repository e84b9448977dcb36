"""The shop analytics' records and their one writer (docs/shop-analytics.md): what ``shop analytics`` and
``shop recommend-train`` put on the analytics topic and in the store.

Two shapes, both of the analytics schema (``resources/shop/schemas/analytics.json``), a record exactly one of
them: a **metric record** (metric, window_start, window_end, dimensions, value, computed_at; times as ISO 8601
UTC text, every dimension value a string), keyed by metric on the topic and stored as one row of the store's
``shop_analytics`` collection; and the issue's **category message** (category, product_count, avg_price,
total_available, timestamp), keyed by category, on the topic only.

:func:`publish_records` validates every record before writing any (a DataError names the first that fails:
nothing is written then), stores the metric records (an idempotent upsert on (metric, computed_at,
dimensions)), then produces every record and waits for each delivery (KafkaUnavailable when one is not
delivered; the rows already stored stay). No Spark here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message

from millrace.config import Settings
from millrace.errors import DataError, KafkaUnavailable
from millrace.records import to_iso

# a category metric's name -> its field in the category message
CATEGORY_METRICS = {
    "category_product_count": "product_count",
    "category_avg_price": "avg_price",
    "category_total_available": "total_available",
}


# ---- records ----


def metric_record(
    metric: str,
    dimensions: Mapping[str, object],
    value: float,
    window_start: datetime,
    window_end: datetime,
    computed_at: datetime,
) -> dict[str, Any]:
    """One metric record of the analytics schema (times as ISO 8601 UTC text, dimensions as strings)."""
    return {
        "metric": metric,
        "window_start": to_iso(window_start),
        "window_end": to_iso(window_end),
        "dimensions": {str(k): str(v) for k, v in dimensions.items()},
        "value": float(value),
        "computed_at": to_iso(computed_at),
    }


def category_messages(metrics: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The issue's per-category message, one per category, from the run's ``category_*`` metric records."""
    merged: dict[str, dict[str, Any]] = {}
    for m in metrics:
        name = CATEGORY_METRICS.get(str(m.get("metric")))
        if name is None:
            continue
        category = m["dimensions"]["category"]
        entry = merged.setdefault(category, {"category": category, "timestamp": m["computed_at"]})
        entry[name] = round(float(m["value"]), 2) if name == "avg_price" else int(m["value"])
    return [merged[c] for c in sorted(merged) if len(merged[c]) == 2 + len(CATEGORY_METRICS)]


def _is_metric(record: Mapping[str, Any]) -> bool:
    return "metric" in record


# ---- publishing ----


@dataclass
class Published:
    delivered: int = 0  # records delivered to the analytics topic
    stored: int = 0  # metric rows written to the store


def publish_records(settings: Settings, records: Sequence[Mapping[str, Any]], *, timeout_s: float = 60.0) -> Published:
    """Validate every record against the analytics schema (DataError naming the first that fails: nothing is
    written then), store the metric records, and produce every record to the analytics topic — framed with the
    registered analytics schema when ``shop.use_registry``, plain JSON otherwise; metric records keyed by metric,
    category messages by category. Raises KafkaUnavailable when a record is not delivered."""
    from millrace.kafka.producer import make_producer
    from millrace.shop.schemas import Validator, load_schema
    from millrace.stores.factory import open_store

    schema = load_schema("analytics")
    validator = Validator(schema)
    for i, record in enumerate(records):
        reason = validator.error(record)
        if reason is not None:
            raise DataError(f"analytics record {i + 1} ({_label(record)}) fails the analytics schema: {reason}")
    topic = settings.topics.shop_analytics
    serialize = _serializer(settings, schema)
    metric_rows = [r for r in records if _is_metric(r)]
    outcome = Published()
    store = open_store(settings)
    try:
        outcome.stored = store.upsert_analytics(metric_rows)
    finally:
        store.close()
    k = settings.kafka
    producer = make_producer(k.client_config(), compression=k.compression, linger_ms=k.linger_ms)
    failed: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            outcome.delivered += 1
        else:
            failed.append(err.str())

    for record in records:
        key = str(record["metric"] if _is_metric(record) else record["category"])
        producer.produce(topic, serialize(dict(record), topic), key, on_delivery=delivered)
    remaining = producer.flush(timeout_s)
    if failed or remaining:
        reason = failed[0] if failed else f"{remaining} not delivered within {timeout_s:.0f} s"
        raise KafkaUnavailable(f"{len(failed) + remaining} analytics records did not reach {topic}: {reason}")
    return outcome


def publish_metrics(settings: Settings, metrics: list[dict[str, Any]]) -> int:
    """Write metric records (the analytics schema's metric shape: metric, window_start, window_end, dimensions,
    value, computed_at — times as ISO text or aware datetimes, computed_at defaulting to now) to the store and
    the analytics topic; category messages may be among them (topic only). Returns the records delivered."""
    now = datetime.now(UTC)
    records = []
    for m in metrics:
        record = dict(m)
        if _is_metric(record):
            record.setdefault("computed_at", now)
            for name in ("window_start", "window_end", "computed_at"):
                if isinstance(record.get(name), datetime):
                    record[name] = to_iso(record[name])
            record["dimensions"] = {str(k): str(v) for k, v in (record.get("dimensions") or {}).items()}
        records.append(record)
    return publish_records(settings, records).delivered


def _label(record: Mapping[str, Any]) -> str:
    return str(record.get("metric") or record.get("category") or "no metric")


def _serializer(settings: Settings, schema: dict[str, Any]) -> Callable[[dict[str, Any], str], bytes]:
    if not settings.shop.use_registry:
        return lambda value, _topic: json.dumps(value, ensure_ascii=False).encode("utf-8")
    from millrace.kafka.schema_registry import json_serializer, register, registry_client, subject_for

    shop = settings.shop
    client = registry_client(shop.registry_url)
    register(client, shop.registry_url, subject_for(settings.topics.shop_analytics), schema, shop.compatibility)
    return json_serializer(client, schema, validate=False)  # validated above
