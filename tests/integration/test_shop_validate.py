"""The filter and the index service validating with a real registry: a record that is not framed, or framed but
failing its schema, is dead-lettered with the reason, its stage and its partition:offset, and not passed on or
indexed; valid ones flow as before. A query recorded by the client framed with the client-query schema is
accepted by the validating index service."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from millrace.config import Settings
from millrace.kafka.reader import read_all
from millrace.kafka.schema_registry import (
    json_deserializer,
    json_serializer,
    registry_client,
    schema_id_of,
    subject_for,
)
from millrace.runtime.process import free_port
from millrace.services.app import create_app
from millrace.shop.catalog import load_products, sample_catalog_path
from millrace.shop.client import query_record, query_serializer, record_query
from millrace.shop.filter import StopListFilter
from millrace.shop.indexer import IndexStats, run_indexer
from millrace.shop.schemas import apply_schemas, load_schema
from millrace.shop.search import SearchRequest, product_doc
from millrace.shop.search_tantivy import TantivyBackend
from millrace.stores.sqlite import SqliteStore
from tests.helpers import unique, wait_for
from tests.integration.fixtures_service import served
from tests.integration.fixtures_shop import read_topic

pytestmark = pytest.mark.integration


def _produce(settings: Settings, topic: str, records: list[tuple[str, bytes]]) -> list[tuple[int, int]]:
    """Produce and return (partition, offset) of each record, in order."""
    producer = Producer(settings.kafka.client_config())
    where: dict[int, tuple[int, int]] = {}
    for i, (key, value) in enumerate(records):
        producer.produce(
            topic,
            value,
            key.encode(),
            on_delivery=lambda err, m, i=i: where.__setitem__(i, (m.partition(), m.offset())),
        )
    assert producer.flush(30) == 0
    return [where[i] for i in range(len(records))]


def _items(settings: Settings) -> tuple[list[tuple[str, bytes]], dict[str, dict[str, Any]]]:
    """Two valid framed items, one plain (not framed), one framed but failing the item schema."""
    registered = {r.subject: r for r in apply_schemas(settings.shop.registry_url, settings.topics, "BACKWARD")}
    serialize = json_serializer(registry_client(settings.shop.registry_url), load_schema("item"))
    a, b = load_products(sample_catalog_path())[:2]
    item_id = registered[f"{settings.topics.shop_items}-value"].schema_id
    broken = dict(a, id="bad-1")
    del broken["price"]
    records = [
        (a["id"], serialize(a, settings.topics.shop_items)),
        ("plain-1", json.dumps(dict(b, id="plain-1"), ensure_ascii=False).encode()),
        ("bad-1", b"\x00" + item_id.to_bytes(4, "big") + json.dumps(broken, ensure_ascii=False).encode()),
        (b["id"], serialize(b, settings.topics.shop_items)),
    ]
    return records, {a["id"]: a, b["id"]: b}


def test_filter_dead_letters_what_fails_its_schema(shop_settings: Settings) -> None:
    topics = shop_settings.topics
    records, valid = _items(shop_settings)
    positions = _produce(shop_settings, topics.shop_items, records)
    worker = StopListFilter(
        shop_settings.kafka.client_config(),
        items_topic=topics.shop_items,
        filtered_topic=topics.shop_filtered_items,
        stop_topic=topics.shop_stop_list,
        group=unique("flt"),
        instance="v",
        registry_url=shop_settings.shop.registry_url,
        dead_letter_topic=topics.shop_dead_letter,
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: worker.stats.consumed + worker.stats.dead_lettered >= 4, timeout_s=60, what="4 items")
    finally:
        stop.set()
        thread.join(30)
    assert (worker.stats.passed, worker.stats.dead_lettered) == (2, 2)
    # both written in the filter's transactions: read committed, past the commit markers
    conf = shop_settings.kafka.client_config()
    passed = sorted(m.key().decode() for m in read_all(conf, topics.shop_filtered_items))
    assert passed == sorted(valid)
    letters = {
        json.loads(m.value())["raw"][:0] + m.key().decode(): json.loads(m.value())
        for m in read_all(conf, topics.shop_dead_letter)
    }
    assert set(letters) == {"plain-1", "bad-1"}
    assert letters["plain-1"]["reason"].startswith("not framed with a schema id")
    assert letters["bad-1"]["reason"].startswith("fails its schema") and "price" in letters["bad-1"]["reason"]
    assert {letter["stage"] for letter in letters.values()} == {"shop-filter"}
    assert letters["plain-1"]["position"] == "{}:{}".format(*positions[1])
    assert letters["bad-1"]["position"] == "{}:{}".format(*positions[2])
    assert {letter["source"] for letter in letters.values()} == {topics.shop_items}


def test_index_service_dead_letters_and_accepts_framed_queries(shop_settings: Settings, tmp_path: Path) -> None:
    topics = shop_settings.topics
    records, valid = _items(shop_settings)
    # the index service reads filtered-items: put the same four records there
    _produce(shop_settings, topics.shop_filtered_items, [r for r in records])
    conf = shop_settings.kafka.client_config()
    serialize = query_serializer(shop_settings.shop.registry_url, topics.shop_client_search, "BACKWARD")
    record_query(
        conf, topics.shop_client_search, query_record(user="u1", text="клавиатура", results=1), serialize=serialize
    )
    record_query(conf, topics.shop_client_search, query_record(user="u2", text="часы", results=0))  # plain: refused
    backend = TantivyBackend(tmp_path / "search")
    stop, stats = threading.Event(), IndexStats()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            stats.__dict__.update(
                run_indexer(
                    conf,
                    backend,
                    products_topic=topics.shop_filtered_items,
                    queries_topic=topics.shop_client_search,
                    group=unique("idx"),
                    stop=stop,
                    on_batch=lambda s: stats.__dict__.update(s.__dict__),
                    registry_url=shop_settings.shop.registry_url,
                    dead_letter_topic=topics.shop_dead_letter,
                ).__dict__
            )
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: stats.upserted + stats.queries + stats.dead_lettered >= 6, timeout_s=60, what="6 records")
    finally:
        stop.set()
        thread.join(30)
    assert not failed, failed
    assert (stats.upserted, stats.queries, stats.dead_lettered) == (2, 1, 3)
    assert backend.count_queries() == 1 and backend.count_queries("клавиатура") == 1
    for product_id, product in valid.items():
        assert product_id in {h.id for h in backend.search(SearchRequest(product["name"], limit=10)).hits}
    assert backend.search(SearchRequest("", limit=10)).total == 2  # plain-1 and bad-1 were not indexed
    backend.close()
    letters = [json.loads(m.value()) for m in read_topic(conf, topics.shop_dead_letter)]
    assert sorted((d["source"], d["stage"]) for d in letters) == sorted(
        [(topics.shop_filtered_items, "shop-index")] * 2 + [(topics.shop_client_search, "shop-index")]
    )
    (refused,) = [d for d in letters if d["source"] == topics.shop_client_search]
    assert '"query": "часы"' in refused["raw"] and refused["reason"].startswith("not framed")


def test_rest_search_with_use_registry_records_a_framed_query(shop_settings: Settings, tmp_path: Path) -> None:
    topic = shop_settings.topics.shop_client_search
    settings = shop_settings.model_copy(
        update={
            "state_dir": tmp_path,
            "api": shop_settings.api.model_copy(update={"auth": "none"}),
            "shop": shop_settings.shop.model_copy(update={"use_registry": True}),
        }
    )
    product = load_products(sample_catalog_path())[0]
    backend = TantivyBackend(tmp_path / "search")
    backend.upsert_products([product_doc(product["id"], product)])
    backend.commit()
    backend.close()
    word = str(product["name"]).split()[0]
    user = unique("u")
    store = SqliteStore(tmp_path / "m.db")
    try:
        with served(create_app(settings, store=store, live=False)) as url:
            r = httpx.get(f"{url}/api/shop/search", params={"q": word, "user": user}, timeout=30)
            assert r.status_code == 200, r.text
            assert [h["id"] for h in r.json()["hits"]] == [product["id"]]
            # the live queries read the framed record back
            live = httpx.get(f"{url}/api/shop/queries", timeout=30).json()
            assert [(q["user"], q["query"], q["results"]) for q in live] == [(user, word, 1)]
        # a registry that is down: the search is refused (503 naming the registry), never recorded unframed
        down_url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
        down = settings.model_copy(update={"shop": settings.shop.model_copy(update={"registry_url": down_url})})
        with served(create_app(down, store=store, live=False)) as url:
            r = httpx.get(f"{url}/api/shop/search", params={"q": word, "user": "other"}, timeout=30)
            assert r.status_code == 503, r.text
            assert r.json()["type"].endswith("/registry-unavailable") and down_url in r.json()["detail"]
    finally:
        store.close()
    (message,) = read_topic(settings.kafka.client_config(), topic)
    value = message.value()
    client = registry_client(settings.shop.registry_url)
    registered = client.get_latest_version(subject_for(topic))
    assert value[0] == 0 and schema_id_of(value) == registered.schema_id
    assert json.loads(client.get_schema(registered.schema_id).schema_str) == load_schema("client-query")
    decoded = json_deserializer(client)(value, topic)  # validates against the schema the framing names
    assert {k: v for k, v in decoded.items() if k != "timestamp"} == {
        "type": "search",
        "user": user,
        "query": word,
        "results": 1,
    }
    assert message.key() == user.encode()
