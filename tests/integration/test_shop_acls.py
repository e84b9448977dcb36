"""The shop's services on the secured cluster (SASL/SCRAM, ACLs enforced) as their own principals: the filter's
transactions under its transactional-id prefix, the index service reading as its group, and what each principal
may not do refused by the brokers."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from millrace.errors import MillraceError
from millrace.kafka.acls import (
    ADMIN,
    SHOP_ANALYTICS,
    SHOP_API,
    SHOP_CLIENT,
    SHOP_FILTER,
    SHOP_FILTER_GROUP,
    SHOP_INDEX,
    SHOP_INDEX_GROUP,
)
from millrace.runtime.stack import Stack
from millrace.shop import stoplist
from millrace.shop.catalog import load_products, sample_catalog_path
from millrace.shop.client import query_record
from millrace.shop.filter import StopListFilter
from millrace.shop.lake import catalog_index, open_lake, order_rows
from millrace.shop.orders import OrderGenerator
from tests.helpers import unique, wait_for
from tests.integration.fixtures_secure import conf_of, principal_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _produce(conf: dict[str, Any], topic: str, records: list[tuple[str, bytes | None]]) -> list[KafkaError]:
    producer = Producer({**conf, "acks": "all", "enable.idempotence": True})
    errors: list[KafkaError] = []
    for key, value in records:
        producer.produce(topic, value, key.encode(), on_delivery=lambda err, _m: errors.append(err) if err else None)
    producer.flush(30)
    return errors


def test_filter_and_index_run_as_their_principals(secure_stack: Stack) -> None:
    topics = secure_stack.settings.topics
    run = unique("acl")
    ids = [f"{run}-{i}" for i in range(12)]
    blocked = ids[3]
    stoplist.block(conf_of(secure_stack, SHOP_API), topics.shop_stop_list, [blocked], "test")
    items = [(i, json.dumps({"id": i, "name": f"товар {i}"}, ensure_ascii=False).encode()) for i in ids]
    assert _produce(conf_of(secure_stack, SHOP_API), topics.shop_items, items) == []

    worker = StopListFilter(
        conf_of(secure_stack, SHOP_FILTER),
        items_topic=topics.shop_items,
        filtered_topic=topics.shop_filtered_items,
        stop_topic=topics.shop_stop_list,
        group=SHOP_FILTER_GROUP,
        instance=run,
    )
    stop = threading.Event()
    failure: list[BaseException] = []

    def run_filter() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:  # surfaced by the assertion below
            failure.append(exc)

    thread = threading.Thread(target=run_filter, daemon=True)
    thread.start()
    consumer = Consumer(
        {
            **conf_of(secure_stack, SHOP_INDEX),
            "group.id": SHOP_INDEX_GROUP,  # the index service's group: the only one its ACLs allow
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topics.shop_filtered_items])
    got: dict[str, int] = {}
    errors: list[KafkaError] = []

    def ours_arrived() -> bool:
        assert not failure, failure
        for m in consumer.consume(500, 0.5):
            if m.error() is not None:
                errors.append(m.error())
            elif m.key() and m.key().decode().startswith(run):
                got[m.key().decode()] = got.get(m.key().decode(), 0) + 1
        assert not [e for e in errors if "AUTHORIZATION" in e.name()], errors
        return len(got) >= len(ids) - 1

    try:
        wait_for(ours_arrived, timeout_s=120, what="the filtered products as shop-index")
    finally:
        consumer.close()
        stop.set()
        thread.join(60)
    assert not failure, failure
    assert got == {i: 1 for i in ids if i != blocked}  # once each, the blocked one left out
    assert worker.stats.transactions >= 1 and worker.stats.aborted == 0


def test_each_shop_principal_is_refused_what_it_may_not_do(secure_stack: Stack) -> None:
    topics = secure_stack.settings.topics
    # the index service reads filtered-items but may not write it
    refused = _produce(conf_of(secure_stack, SHOP_INDEX), topics.shop_filtered_items, [("x", b"{}")])
    assert refused and refused[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # the client records queries but may not block a product
    with pytest.raises(MillraceError, match="AUTHORIZATION|authoriz"):
        stoplist.block(conf_of(secure_stack, SHOP_CLIENT), topics.shop_stop_list, ["p-1"], "no")
    # the filter's transactions only under its own prefix
    outsider = Producer({**conf_of(secure_stack, SHOP_FILTER), "transactional.id": unique("elsewhere")})
    with pytest.raises(KafkaException) as caught:
        outsider.init_transactions(30)
    assert caught.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED


def test_analytics_and_recommendations_run_as_their_principal(secure_stack: Stack, tmp_path: Path) -> None:
    """`shop analytics` and `shop recommend-train` as shop-analytics: Spark reads the client queries through the
    brokers' ACLs, recommend-train reads the stop list, the jobs publish to their two topics, and the principal
    may not touch the orders topic. (The catalog comes from the sample file: filtered-items here holds the other
    tests' bare products.)"""
    from millrace.jobs.session import build_session
    from millrace.kafka.reader import watermarks
    from millrace.shop.analytics import run_analytics
    from millrace.shop.recsys import train_and_publish

    topics = secure_stack.settings.topics
    products = load_products(sample_catalog_path())
    start = datetime(2026, 10, 1, tzinfo=UTC)
    queries = [
        (
            f"u{i % 7}",
            json.dumps(query_record(user=f"u{i % 7}", text=f"запрос {i % 5}", results=i % 3, at=start)).encode(),
        )
        for i in range(40)
    ]
    assert _produce(conf_of(secure_stack, SHOP_CLIENT), topics.shop_client_search, queries) == []

    settings = principal_settings(secure_stack, SHOP_ANALYTICS).model_copy(
        update={
            "state_dir": tmp_path,
            "store": secure_stack.settings.store.model_copy(update={"sqlite_path": tmp_path / "store.db"}),
            "analytics": secure_stack.settings.analytics.model_copy(update={"holdout_days": 10.0}),
        }
    )
    lake = open_lake(settings)  # <state_dir>/lake
    generator = OrderGenerator(products, seed=11, customers=80, start=start, rate=3000 / (42 * 86400))
    index = catalog_index(products)
    for offset in range(3000):
        lake.write(0, order_rows(generator.next_event(), 0, offset, index))

    analytics_before = sum(hi for _lo, hi in watermarks(conf_of(secure_stack, ADMIN), topics.shop_analytics).values())
    run = run_analytics(settings, lambda: build_session(settings), catalog=sample_catalog_path())
    assert run.searches >= 40 and run.sale_lines > 0 and run.categories
    result = train_and_publish(settings, lambda: build_session(settings))
    assert result.published > 0 and result.topic == topics.shop_recommendations
    analytics_after = sum(hi for _lo, hi in watermarks(conf_of(secure_stack, ADMIN), topics.shop_analytics).values())
    assert analytics_after - analytics_before == len(run.metrics) + len(run.categories) + result.analytics_published

    refused = _produce(conf_of(secure_stack, SHOP_ANALYTICS), topics.shop_orders, [("c1", b"{}")])
    assert refused and refused[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
