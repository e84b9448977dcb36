"""Simulated orders: deterministic with a seed, valid for the order schema, over real catalog products, with
repeat and co-purchases, and order states that only move forward."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from millrace.shop.catalog import load_products, sample_catalog_path
from millrace.shop.orders import OrderGenerator, pump_orders
from millrace.shop.schemas import Validator, load_schema

START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ALLOWED = {None: {"created"}, "created": {"paid", "cancelled"}, "paid": {"shipped"}, "shipped": {"delivered"}}


@pytest.fixture(scope="module")
def products() -> list[dict[str, Any]]:
    return load_products(sample_catalog_path())


def events(products: list[dict[str, Any]], n: int, seed: int = 7, **kw: Any) -> list[dict[str, Any]]:
    return list(itertools.islice(OrderGenerator(products, seed=seed, start=START, rate=10.0, **kw), n))


def test_same_seed_same_events(products: list[dict[str, Any]]) -> None:
    a, b = events(products, 500), events(products, 500)
    assert a == b
    assert a != events(products, 500, seed=8)
    first = a[0]
    assert (first["status"], first["created_at"], first["order_id"]) == (
        "created",
        "2026-06-01T12:00:00.000Z",
        "o7-0000001",
    )
    assert a[10]["updated_at"] == "2026-06-01T12:00:01.000Z"  # 10 events at 10/s: one second of event time


def test_events_are_valid_and_reference_the_catalog(products: list[dict[str, Any]]) -> None:
    by_id = {p["id"]: p for p in products}
    validator = Validator(load_schema("order"))
    for event in events(products, 2000):
        assert validator.error(event) is None, event
        for line in event["lines"]:
            product = by_id[line["product_id"]]
            assert (line["sku"], line["unit_price"]) == (product["sku"], product["price"]["amount"])
        total = sum(line["unit_price"] * line["quantity"] for line in event["lines"])
        assert event["total"]["amount"] == pytest.approx(total)


def test_states_move_forward_and_end(products: list[dict[str, Any]]) -> None:
    state: dict[str, str | None] = {}
    statuses: Counter[str] = Counter()
    for event in events(products, 3000):
        previous = state.get(event["order_id"])
        assert event["status"] in ALLOWED[previous], (previous, event["status"])
        state[event["order_id"]] = event["status"]
        statuses[event["status"]] += 1
    assert set(statuses) == {"created", "paid", "shipped", "delivered", "cancelled"}
    assert statuses["delivered"] > 0.5 * statuses["paid"]  # orders complete rather than pile up open


def test_repeat_and_co_purchases(products: list[dict[str, Any]]) -> None:
    generator = OrderGenerator(products, seed=3, start=START)
    created = [e for e in itertools.islice(generator, 4000) if e["status"] == "created"]
    per_customer = Counter(e["customer_id"] for e in created)
    assert per_customer.most_common(1)[0][1] >= 5 * max(1, min(per_customer.values()))  # skewed activity
    bought = Counter((e["customer_id"], line["product_id"]) for e in created for line in e["lines"])
    assert sum(1 for n in bought.values() if n >= 2) >= 20  # the same customer buys the same product again
    pairs = Counter(tuple(sorted(line["product_id"] for line in e["lines"])) for e in created if len(e["lines"]) == 2)
    assert sum(pairs.values()) >= 0.3 * len(created)
    main, companion = pairs.most_common(1)[0][0]
    assert companion in generator.companions(main) or main in generator.companions(companion)
    assert pairs.most_common(1)[0][1] >= 3  # a pair bought together again and again


def test_pump_counts_and_stops() -> None:
    sent: list[dict[str, Any]] = []
    stream = iter([{"status": "created"}, {"status": "paid"}] * 10)
    result = pump_orders(stream, sent.append, rate=1000.0, count=7, stop=threading.Event())
    assert result.produced == len(sent) == 7 and result.by_status == {"created": 4, "paid": 3}
    stop = threading.Event()
    stop.set()
    assert pump_orders(iter([{"status": "x"}]), sent.append, rate=1.0, count=None, stop=stop).produced == 0


def test_generator_refuses_nothing_to_order() -> None:
    with pytest.raises(ValueError, match="no products"):
        OrderGenerator([], seed=1)
