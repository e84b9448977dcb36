"""What ``shop recommend-train`` writes (docs/shop-recommendations.md): each user's list to the
recommendations topic, and the share of users with a list to shop analytics.

The recommendations topic is keyed by user and compacted, so a user's newest list replaces the last; a value
is framed with the recommendation schema when ``shop.use_registry``, plain JSON otherwise. Both writers wait
for every delivery: :func:`publish_recommendations` raises MillraceError naming how many were not delivered,
and the coverage goes through analytics_records.publish_metrics (its errors).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from millrace.config import Settings
from millrace.errors import MillraceError
from millrace.shop.analytics_records import publish_metrics


def recommendation_record(user: str, items: Sequence[tuple[str, float]], model: str, at: str) -> dict[str, Any]:
    """A value of the recommendations topic (the recommendation schema)."""
    return {
        "user": user,
        "items": [{"product_id": p, "score": round(s, 6)} for p, s in items],
        "model": model,
        "generated_at": at,
    }


def publish_recommendations(settings: Settings, records: Mapping[str, Sequence[tuple[str, float]]], model: str) -> int:
    """Write one record per user (keyed by user) and wait for every delivery; returns how many were delivered."""
    from millrace.kafka.producer import make_producer

    topic = settings.topics.shop_recommendations
    at = datetime.now(UTC).isoformat(timespec="milliseconds")
    serialize: Callable[[dict[str, Any], str], bytes]
    if settings.shop.use_registry:
        from millrace.kafka.schema_registry import json_serializer, register, registry_client, subject_for
        from millrace.shop.schemas import load_schema

        url = settings.shop.registry_url
        client = registry_client(url)
        schema = load_schema("recommendation")
        register(client, url, subject_for(topic), schema, settings.shop.compatibility)
        serialize = json_serializer(client, schema)
    else:

        def serialize(value: dict[str, Any], _topic: str) -> bytes:
            return json.dumps(value, ensure_ascii=False).encode("utf-8")

    producer = make_producer(settings.kafka.client_config(), compression=settings.kafka.compression)
    for user, items in records.items():
        producer.produce(topic, serialize(recommendation_record(user, items, model, at), topic), user)
    remaining = producer.flush(60.0)
    if producer.stats.failed or remaining:
        raise MillraceError(
            f"{producer.stats.failed + remaining} of {len(records)} recommendations were not delivered to {topic}"
        )
    return producer.stats.delivered


def publish_coverage(settings: Settings, model: str, coverage: float, lines: pd.DataFrame) -> int:
    """The share of users with recommendations as shop analytics' ``recommendation_coverage`` (dimension
    ``model``), its window the span of the order ``lines``; returns the records delivered."""
    metric = {
        "metric": "recommendation_coverage",
        "window_start": lines["at"].min().isoformat(),
        "window_end": lines["at"].max().isoformat(),
        "dimensions": {"model": model},
        "value": coverage,
        "computed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    return publish_metrics(settings, [metric])
