"""Publish a product catalog to the items topic: each product validated against the item schema, framed with
its registry schema id and keyed by its id; a product that fails is dead-lettered with the reason, the
others are still published.

A catalog file is a JSON array of products (the shipped sample) or JSON Lines, one product per line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message
from confluent_kafka.serialization import SerializationError

from millrace.config import TopicSettings
from millrace.errors import DataError
from millrace.kafka.producer import OnDelivery, ReliableProducer
from millrace.kafka.schema_registry import json_serializer, register, registry_client, subject_for
from millrace.records import DeadLetter
from millrace.shop.schemas import Validator, load_schema

log = logging.getLogger(__name__)

STAGE = "publish-catalog"


def sample_catalog_path() -> Path:
    return Path(str(resources.files("millrace") / "resources" / "shop" / "catalog.json"))


@dataclass(frozen=True)
class Row:
    position: str  # "row N" (1-based) in an array, "line N" in JSON Lines
    raw: str
    value: object  # the parsed JSON, or None when the text did not parse
    parse_error: str | None = None


def read_rows(path: Path) -> Iterator[Row]:
    """The file's products in order. A JSON array is read whole; anything else is read as JSON Lines, where a
    line that does not parse is a row with its parse error (the other lines are still read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"catalog file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if text.lstrip().startswith("["):
        try:
            array = json.loads(text)
        except ValueError as exc:
            raise DataError(f"{path} is not a valid JSON array: {exc}") from None
        for i, value in enumerate(array, start=1):
            yield Row(f"row {i}", json.dumps(value, ensure_ascii=False), value)
        return
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield Row(f"line {i}", line, json.loads(line))
        except ValueError as exc:
            yield Row(f"line {i}", line, None, f"not valid JSON: {exc}")


@dataclass
class PublishResult:
    published: int = 0
    dead_lettered: int = 0
    failed: int = 0  # delivery failures after retries
    schema_id: int = 0
    seconds: float = 0.0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (position, reason)
    categories: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0


def publish_catalog(
    path: Path,
    producer: ReliableProducer,
    *,
    registry_url: str,
    topics: TopicSettings,
    compatibility: str,
    flush_timeout_s: float = 60.0,
) -> PublishResult:
    """Register the item schema (idempotent), then publish every valid product of ``path`` to the items topic
    keyed by id; invalid ones go to the shop dead-letter topic as :class:`~millrace.records.DeadLetter`.
    Counts what was delivered, not what was attempted."""
    schema = load_schema("item")
    client = registry_client(registry_url)
    registered = register(client, registry_url, subject_for(topics.shop_items), schema, compatibility)
    serialize = json_serializer(client, schema, validate=False)  # validated below, ~50x faster
    validator = Validator(schema)
    result = PublishResult(schema_id=registered.schema_id)
    source = str(path)
    outcome = {"items": 0, "dead": 0, "failed": 0}

    def count(kind: str) -> OnDelivery:
        def delivered(err: KafkaError | None, _msg: Message) -> None:
            outcome[kind if err is None else "failed"] += 1

        return delivered

    on_item, on_dead = count("items"), count("dead")
    started = time.perf_counter()
    for row in read_rows(path):
        reason = row.parse_error or validator.error(row.value)
        payload: bytes | None = None
        if reason is None:
            assert isinstance(row.value, dict)
            try:
                payload = serialize(row.value, topics.shop_items)
            except SerializationError as exc:  # the registry's copy of the schema disagrees with ours
                reason = f"schema: {exc}"
        if reason is not None or payload is None:
            reason = reason or "not serializable"
            letter = DeadLetter(reason=reason, stage=STAGE, source=source, position=row.position, raw=row.raw)
            value = json.dumps(letter.to_dict(), ensure_ascii=False).encode()
            producer.produce(topics.shop_dead_letter, value, on_delivery=on_dead)
            result.rejected.append((row.position, reason))
            continue
        assert isinstance(row.value, dict)
        producer.produce(topics.shop_items, payload, str(row.value["id"]), on_delivery=on_item)
        category = str(row.value["category"])
        result.categories[category] = result.categories.get(category, 0) + 1
    remaining = producer.flush(flush_timeout_s)
    result.seconds = time.perf_counter() - started
    result.published, result.dead_lettered = outcome["items"], outcome["dead"]
    result.failed = outcome["failed"] + remaining
    return result


def catalog_ids(path: Path) -> list[str]:
    """The ids of the valid-looking products of a catalog file (for orders and tests)."""
    return [str(p["id"]) for p in load_products(path)]


def load_products(path: Path) -> list[dict[str, Any]]:
    """The products of ``path`` that pass the item schema, in file order."""
    validator = Validator(load_schema("item"))
    return [r.value for r in read_rows(path) if isinstance(r.value, dict) and validator.error(r.value) is None]
