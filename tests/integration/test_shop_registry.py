"""The shop against a real Apicurio Registry and the session's real broker: the catalog published with the
registered schema id in every value's framing, bad rows and bad messages dead-lettered with their reason and
position, orders exactly reproducible from a seed, an incompatible schema change refused."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from millrace.config import Settings
from millrace.kafka.producer import make_producer
from millrace.kafka.schema_registry import (
    json_deserializer,
    json_serializer,
    register,
    registry_client,
    schema_id_of,
    subject_for,
)
from millrace.records import parse_iso
from millrace.shop.catalog import load_products, sample_catalog_path
from millrace.shop.catalog_gen import generate_catalog
from millrace.shop.decode import SchemaDecoder
from millrace.shop.orders import OrderGenerator
from millrace.shop.schemas import load_schema
from tests.integration.fixtures_shop import read_topic, shop_env

pytestmark = pytest.mark.integration


def millrace(
    settings: Settings, tmp_path: Path, *args: str, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "millrace.cli.main", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout_s,
        cwd=tmp_path,
        env=shop_env(settings, tmp_path / "state"),
    )


def decoded(settings: Settings, topic: str) -> list[tuple[str, int, Any]]:
    """(key, schema id, value) of every record of ``topic``, each value checked against its registered schema."""
    deserialize = json_deserializer(registry_client(settings.shop.registry_url))
    out = []
    for msg in read_topic(settings.kafka.client_config(), topic):
        data = msg.value()
        schema_id = schema_id_of(data)
        assert schema_id is not None, "every value is framed with its schema id"
        out.append((msg.key().decode(), schema_id, deserialize(data, topic)))
    return out


def test_publish_catalog_with_the_registered_schema(shop_settings: Settings, tmp_path: Path) -> None:
    result = millrace(shop_settings, tmp_path, "shop", "publish-catalog")
    assert result.returncode == 0, result.stderr
    assert "published" in result.stdout and "300" in result.stdout
    topics = shop_settings.topics
    latest = registry_client(shop_settings.shop.registry_url).get_latest_version(subject_for(topics.shop_items))
    assert latest.version == 1
    records = decoded(shop_settings, topics.shop_items)
    assert len(records) == 300
    assert {schema_id for _, schema_id, _ in records} == {latest.schema_id}
    products = {p["id"]: p for p in load_products(sample_catalog_path())}
    assert {key: value for key, _, value in records} == products  # keyed by id, contents unchanged
    assert list(read_topic(shop_settings.kafka.client_config(), topics.shop_dead_letter)) == []


def test_bad_rows_are_named_and_dead_lettered(shop_settings: Settings, tmp_path: Path) -> None:
    good, other = generate_catalog(5)[1:3]
    broken = dict(other, id="broken", price={"amount": -5, "currency": "RUB"})
    path = tmp_path / "mine.jsonl"
    lines = [json.dumps(good, ensure_ascii=False), "{not json", json.dumps(broken, ensure_ascii=False)]
    path.write_text("\n".join([*lines, json.dumps(other, ensure_ascii=False)]) + "\n", encoding="utf-8")
    result = millrace(shop_settings, tmp_path, "shop", "publish-catalog", str(path))
    assert result.returncode == 0, result.stderr
    rejected = [line for line in result.stderr.splitlines() if line.startswith("rejected")]
    assert rejected[0].startswith("rejected line 2: not valid JSON")
    assert rejected[1] == "rejected line 3: price.amount: -5 is less than the minimum of 0"
    assert len(rejected) == 2 and "Traceback" not in result.stderr
    topics = shop_settings.topics
    assert sorted(key for key, _, _ in decoded(shop_settings, topics.shop_items)) == sorted([good["id"], other["id"]])
    letters = [json.loads(m.value()) for m in read_topic(shop_settings.kafka.client_config(), topics.shop_dead_letter)]
    assert [(d["position"], d["stage"], d["source"]) for d in letters] == [
        ("line 2", "publish-catalog", str(path)),
        ("line 3", "publish-catalog", str(path)),
    ]
    assert letters[1]["reason"] == "price.amount: -5 is less than the minimum of 0"
    assert json.loads(letters[1]["raw"])["id"] == "broken"


def test_orders_are_reproducible_from_a_seed(shop_settings: Settings, tmp_path: Path) -> None:
    start = "2026-06-01T00:00:00Z"
    args = ("shop", "orders", "--rate", "2000", "--count", "300", "--seed", "5", "--start", start)
    result = millrace(shop_settings, tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "delivered to Kafka" in result.stdout
    records = decoded(shop_settings, shop_settings.topics.shop_orders)
    assert len(records) == 300
    expected = list(
        itertools.islice(
            OrderGenerator(load_products(sample_catalog_path()), seed=5, start=parse_iso(start), rate=2000.0), 300
        )
    )
    # Keyed by customer: each customer's events arrive in the order they were made, exactly as generated.
    per_customer: dict[str, list[Any]] = defaultdict(list)
    for event in expected:
        per_customer[event["customer_id"]].append(event)
    got: dict[str, list[Any]] = defaultdict(list)
    for key, _, value in records:
        assert key == value["customer_id"]
        got[key].append(value)
    assert got == per_customer


def test_a_message_failing_its_schema_is_dead_lettered_with_its_offset(shop_settings: Settings) -> None:
    topics, conf = shop_settings.topics, shop_settings.kafka.client_config()
    millrace_items = topics.shop_items
    client = registry_client(shop_settings.shop.registry_url)

    schema = load_schema("item")
    registered = register(client, shop_settings.shop.registry_url, subject_for(millrace_items), schema, "BACKWARD")
    good = generate_catalog(4)[0]
    serialize = json_serializer(client, schema)
    producer = make_producer(conf)
    frame = b"\x00" + registered.schema_id.to_bytes(4, "big")
    producer.produce(millrace_items, serialize(good, millrace_items), good["id"])
    producer.produce(millrace_items, json.dumps(good).encode(), "unframed")
    producer.produce(millrace_items, frame + json.dumps({**good, "price": {"amount": "free"}}).encode(), "invalid")
    assert producer.flush(30) == 0
    offsets = {m.key().decode(): f"{m.partition()}:{m.offset()}" for m in read_topic(conf, millrace_items)}

    decoder = SchemaDecoder(
        shop_settings.shop.registry_url,
        lambda topic, value, key: producer.produce(topic, value, key),
        dead_letter_topic=topics.shop_dead_letter,
        stage="check",
    )
    assert decoder.decode_all(read_topic(conf, millrace_items)) == [good]
    assert producer.flush(30) == 0
    letters = {m.key().decode(): json.loads(m.value()) for m in read_topic(conf, topics.shop_dead_letter)}
    assert set(letters) == {"unframed", "invalid"}
    assert letters["unframed"]["reason"] == "not framed with a schema id (magic byte 0 + 4-byte id)"
    assert letters["invalid"]["reason"].startswith(f"fails its schema (id {registered.schema_id}): ")
    assert "'free' is not of type 'number'" in letters["invalid"]["reason"]
    for key in ("unframed", "invalid"):
        assert (letters[key]["source"], letters[key]["position"]) == (millrace_items, offsets[key])
    assert decoder.stats.reasons == {"not-framed": 1, "schema-violation": 1}


def test_an_incompatible_schema_change_is_refused(shop_settings: Settings, tmp_path: Path) -> None:
    first = millrace(shop_settings, tmp_path, "shop", "schemas", "apply")
    assert first.returncode == 0, first.stderr
    subject = subject_for(shop_settings.topics.shop_orders)
    client = registry_client(shop_settings.shop.registry_url)
    assert client.get_config(subject).compatibility_level.value == "BACKWARD"
    again = millrace(shop_settings, tmp_path, "shop", "schemas", "apply")
    assert again.returncode == 0 and "registered" not in again.stdout  # unchanged schemas: nothing new

    changed = tmp_path / "schemas"
    changed.mkdir()
    for kind in ("item", "order", "client-query", "recommendation", "analytics"):
        (changed / f"{kind}.json").write_text(json.dumps(load_schema(kind)), encoding="utf-8")
    order = load_schema("order")
    order["properties"]["coupon"] = {"type": "string"}
    order["required"] = [*order["required"], "coupon"]  # old orders lack it: not BACKWARD compatible
    (changed / "order.json").write_text(json.dumps(order), encoding="utf-8")
    refused = millrace(shop_settings, tmp_path, "shop", "schemas", "apply", "--dir", str(changed))
    assert refused.returncode == 1
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in refused.stderr
    assert lines[0].startswith(f"error: schema for subject {subject} is incompatible with its latest version")
    assert "A new required property was added" in lines[0]
    assert client.get_latest_version(subject).version == 1

    order["required"] = [r for r in order["required"] if r != "coupon"]  # optional: compatible
    (changed / "order.json").write_text(json.dumps(order), encoding="utf-8")
    accepted = millrace(shop_settings, tmp_path, "shop", "schemas", "apply", "--dir", str(changed))
    assert accepted.returncode == 0, accepted.stderr
    fresh = registry_client(shop_settings.shop.registry_url)  # the client caches the latest version it saw
    assert fresh.get_latest_version(subject).version == 2
