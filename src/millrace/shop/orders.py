"""Simulated orders over a real catalog, with the structure recommendations learn from.

Customers buy with skewed activity (a few buy often), each prefers two categories, comes back for products
they bought before (repeat purchases), and often buys a product together with one of its companions (a
phone with a case or a charger, a laptop with a mouse or a bag: co-purchases). Each order then moves through
its states — created, then paid or cancelled, shipped, delivered — and every state change is one event on
the orders topic, keyed by customer id. The same products, seed and start time give the same events.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# Categories whose products go well with a product of the key's category.
COMPANIONS: dict[str, tuple[str, ...]] = {
    "Телефоны": ("Аксессуары", "Аудио"),
    "Ноутбуки": ("Компьютеры", "Аксессуары"),
    "Компьютеры": ("Компьютеры",),
    "Умные часы": ("Аксессуары", "Телефоны"),
    "Планшеты": ("Аксессуары",),
    "Аудио": ("Телефоны",),
    "Аксессуары": ("Телефоны",),
    "Бытовая техника": ("Бытовая техника",),
}
NEXT_STATE = {"created": "paid", "paid": "shipped", "shipped": "delivered"}
CANCEL_P = 0.08  # a created order is cancelled instead of paid
REPEAT_P = 0.3  # a returning customer buys one of their earlier products again
COMPANION_P = 0.5  # the basket also holds a companion of its main product
NEW_ORDER_P = 0.25  # each event creates an order, else advances an open one (an order lives ~4 events)


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Customer:
    customer_id: str
    categories: tuple[str, ...]
    bought: list[str] = field(default_factory=list)


@dataclass
class _Order:
    order: dict[str, Any]
    status: str


class OrderGenerator:
    """An endless, deterministic stream of order events (dicts in the order schema) over ``products``."""

    def __init__(
        self,
        products: Sequence[dict[str, Any]],
        *,
        seed: int = 0,
        customers: int = 200,
        start: datetime | None = None,
        rate: float = 10.0,
    ) -> None:
        if not products:
            raise ValueError("the catalog has no products to order")
        if customers < 1 or rate <= 0:
            raise ValueError("customers must be at least 1 and rate above 0")
        self._rng = random.Random(seed)
        self._seed = seed
        self._products = {str(p["id"]): p for p in products}
        self._by_category: dict[str, list[str]] = {}
        for p in products:
            self._by_category.setdefault(str(p["category"]), []).append(str(p["id"]))
        categories = sorted(self._by_category)
        self._customers = [
            _Customer(f"c{i:05d}", tuple(self._rng.sample(categories, min(2, len(categories)))))
            for i in range(1, customers + 1)
        ]
        # Zipf-like activity: customer k is picked with weight 1/k.
        self._weights = [1.0 / k for k in range(1, customers + 1)]
        self._companions = {pid: self._pick_companions(p) for pid, p in self._products.items()}
        self._open: list[_Order] = []
        self._start = (start or datetime.now(UTC)).astimezone(UTC)
        self._step = timedelta(seconds=1.0 / rate)
        self._n_events = 0
        self._n_orders = 0

    def _pick_companions(self, product: dict[str, Any]) -> tuple[str, ...]:
        pool = [
            pid
            for category in COMPANIONS.get(str(product["category"]), ())
            for pid in self._by_category.get(category, [])
            if pid != product["id"]
        ]
        return tuple(self._rng.sample(pool, min(2, len(pool))))

    def companions(self, product_id: str) -> tuple[str, ...]:
        """The products bought together with ``product_id`` (what co-purchase signal there is to find)."""
        return self._companions[product_id]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.next_event()

    def next_event(self) -> dict[str, Any]:
        at = self._start + self._step * self._n_events
        self._n_events += 1
        if not self._open or self._rng.random() < NEW_ORDER_P:
            return self._create(at)
        open_order = self._open[self._rng.randrange(len(self._open))]
        if open_order.status == "created" and self._rng.random() < CANCEL_P:
            status = "cancelled"
        else:
            status = NEXT_STATE[open_order.status]
        open_order.status = status
        if status in ("delivered", "cancelled"):
            self._open.remove(open_order)
        return {**open_order.order, "status": status, "updated_at": _iso(at)}

    def _create(self, at: datetime) -> dict[str, Any]:
        rng = self._rng
        customer = rng.choices(self._customers, weights=self._weights)[0]
        if customer.bought and rng.random() < REPEAT_P:
            main = rng.choice(customer.bought)
        else:
            category = rng.choice(customer.categories) if rng.random() < 0.7 else rng.choice(sorted(self._by_category))
            main = rng.choice(self._by_category[category])
        basket = [main]
        companions = self._companions[main]
        if companions and rng.random() < COMPANION_P:
            basket.append(rng.choice(companions))
        lines = []
        for pid in basket:
            product = self._products[pid]
            quantity = 1 if product["category"] != "Аксессуары" else rng.choice((1, 1, 2, 3))
            lines.append(
                {
                    "product_id": pid,
                    "sku": product["sku"],
                    "quantity": quantity,
                    "unit_price": float(product["price"]["amount"]),
                }
            )
            if pid not in customer.bought:
                customer.bought.append(pid)
        self._n_orders += 1
        total = round(sum(line["unit_price"] * line["quantity"] for line in lines), 2)
        order = {
            "order_id": f"o{self._seed}-{self._n_orders:07d}",
            "customer_id": customer.customer_id,
            "status": "created",
            "lines": lines,
            "total": {"amount": total, "currency": self._products[main]["price"]["currency"]},
            "store_id": self._products[main]["store_id"],
            "created_at": _iso(at),
            "updated_at": _iso(at),
        }
        self._open.append(_Order(order, "created"))
        return dict(order)


@dataclass
class PumpResult:
    produced: int = 0
    seconds: float = 0.0
    by_status: dict[str, int] = field(default_factory=dict)


def pump_orders(
    events: Iterator[dict[str, Any]],
    send: Callable[[dict[str, Any]], None],
    *,
    rate: float,
    count: int | None,
    stop: threading.Event,
) -> PumpResult:
    """Hand ``count`` events (None: until ``stop``) to ``send`` at ``rate`` per second. Pacing keeps to the
    schedule (a late event is sent at once, not skipped), so the average rate holds under jitter."""
    result = PumpResult()
    started = time.monotonic()
    interval = 1.0 / rate
    while (count is None or result.produced < count) and not stop.is_set():
        due = started + result.produced * interval
        delay = due - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        event = next(events)
        send(event)
        result.produced += 1
        result.by_status[event["status"]] = result.by_status.get(event["status"], 0) + 1
    result.seconds = time.monotonic() - started
    return result
