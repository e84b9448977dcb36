"""The shop's pipeline in one process, for ``millrace shop demo``: the schemas registered, the catalog published,
the stop-list filter, the index service, simulated orders and a stream of simulated client searches, each in
its own thread, until ``stop`` is set. The servers (Kafka, the registry, OpenSearch when chosen) are started
by the caller; every component is the one the separate commands run.

A client search picks a word from a catalog product's name (one in five with a one-letter typo, which the
backend's fuzzy matching still finds), asks the index and records the query in client-search, as
``millrace shop search`` does. Nothing here prints: :meth:`ShopDemo.figures` is read by the caller.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from millrace.config import TopicSettings
from millrace.kafka.producer import ReliableProducer
from millrace.kafka.schema_registry import json_serializer, register, registry_client, subject_for
from millrace.shop.catalog import PublishResult, load_products, publish_catalog
from millrace.shop.client import QueryRecorder, query_record, query_serializer
from millrace.shop.filter import StopListFilter
from millrace.shop.indexer import IndexStats, run_indexer
from millrace.shop.orders import OrderGenerator, pump_orders
from millrace.shop.schemas import apply_schemas, load_schema
from millrace.shop.search import SearchBackend, SearchRequest

log = logging.getLogger(__name__)

FILTER_GROUP = "millrace-shop-filter"
INDEX_GROUP = "millrace-shop-index"
CATALOG_WAIT_S = 60.0


@dataclass
class SearchStats:
    searches: int = 0
    found: int = 0  # searches with at least one product
    last_query: str = ""
    last_total: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def p50_ms(self) -> float | None:
        ordered = sorted(self.latencies_ms)
        return ordered[len(ordered) // 2] if ordered else None


def client_queries(products: list[dict[str, Any]], seed: int) -> Callable[[], tuple[str, str]]:
    """(user, query) pairs drawn from the catalog's names; one in five with one letter changed."""
    rng = random.Random(seed)
    words = sorted({w.lower() for p in products for w in str(p["name"]).split() if len(w) >= 4 and w.isalpha()})
    if not words:
        words = ["часы"]
    letters = "абвгдеклмнопрст"

    def draw() -> tuple[str, str]:
        word = rng.choice(words)
        if rng.random() < 0.2 and len(word) >= 5:
            i = rng.randrange(1, len(word) - 1)
            word = word[:i] + rng.choice(letters) + word[i + 1 :]
        return f"u{rng.randrange(1, 200):03d}", word

    return draw


class ShopDemo:
    """Threads of the shop pipeline. :meth:`start` registers the schemas and publishes the catalog first (so the
    figures start from a known catalog), then starts the threads; :meth:`join` waits for them after ``stop``."""

    def __init__(
        self,
        client_config: dict[str, Any],
        *,
        topics: TopicSettings,
        registry_url: str,
        compatibility: str,
        catalog: Path,
        open_backend: Callable[[bool], SearchBackend],
        producer: Callable[[], ReliableProducer],
        order_rate: float = 5.0,
        search_rate: float = 2.0,
        seed: int = 7,
        use_registry: bool = True,
    ) -> None:
        self.client_config, self.topics = client_config, topics
        # on: the searches are framed with the client-query schema, and the filter and the index service validate
        # every record against the registry, dead-lettering failures (as shop.use_registry does for the commands)
        self.use_registry = use_registry
        self.registry_url, self.compatibility, self.catalog = registry_url, compatibility, catalog
        self._open_backend, self._producer = open_backend, producer
        self.order_rate, self.search_rate, self.seed = order_rate, search_rate, seed
        self.stop = threading.Event()
        self.published: PublishResult | None = None
        self.orders = 0
        self.index = IndexStats()
        self.search = SearchStats()
        self.filter: StopListFilter | None = None
        self.failures: list[tuple[str, BaseException]] = []
        self._threads: list[threading.Thread] = []
        self._backend: SearchBackend | None = None

    def start(self) -> None:
        apply_schemas(self.registry_url, self.topics, self.compatibility)
        producer = self._producer()
        self.published = publish_catalog(
            self.catalog,
            producer,
            registry_url=self.registry_url,
            topics=self.topics,
            compatibility=self.compatibility,
        )
        self.filter = StopListFilter(
            self.client_config,
            items_topic=self.topics.shop_items,
            filtered_topic=self.topics.shop_filtered_items,
            stop_topic=self.topics.shop_stop_list,
            group=FILTER_GROUP,
            instance="demo",
            **self._validation(),
        )
        self._backend = self._open_backend(True)
        filter_ = self.filter
        self._spawn("filter", lambda: filter_.run(self.stop))
        self._spawn("index", self._run_index)
        self._spawn("orders", self._run_orders)
        self._spawn("searches", self._run_searches)

    def _validation(self) -> dict[str, Any]:
        if not self.use_registry:
            return {}
        return {"registry_url": self.registry_url, "dead_letter_topic": self.topics.shop_dead_letter}

    def _spawn(self, name: str, target: Callable[[], object]) -> None:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported by figures() and the caller; the others stop too
                log.exception("shop demo: %s failed", name)
                self.failures.append((name, exc))
                self.stop.set()

        thread = threading.Thread(target=run, name=f"shop-demo-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _run_index(self) -> None:
        assert self._backend is not None

        def on_batch(stats: IndexStats) -> None:
            self.index = stats

        run_indexer(
            self.client_config,
            self._backend,
            products_topic=self.topics.shop_filtered_items,
            queries_topic=self.topics.shop_client_search,
            group=INDEX_GROUP,
            stop=self.stop,
            on_batch=on_batch,
            **self._validation(),
        )

    def _run_orders(self) -> None:
        products = load_products(self.catalog)
        topic = self.topics.shop_orders
        client = registry_client(self.registry_url)
        schema = load_schema("order")
        register(client, self.registry_url, subject_for(topic), schema, self.compatibility)
        serialize = json_serializer(client, schema, validate=True)
        generator = OrderGenerator(
            products, seed=self.seed, customers=200, start=datetime.now(UTC), rate=self.order_rate
        )
        producer = self._producer()

        def send(event: dict[str, Any]) -> None:
            producer.produce(topic, serialize(event, topic), event["customer_id"])
            self.orders += 1

        try:
            pump_orders(iter(generator), send, rate=self.order_rate, count=None, stop=self.stop)
        finally:
            producer.flush(30.0)

    def _run_searches(self) -> None:
        assert self._backend is not None
        draw = client_queries(load_products(self.catalog), self.seed)
        topic = self.topics.shop_client_search
        serialize = query_serializer(self.registry_url, topic, self.compatibility) if self.use_registry else None
        recorder = QueryRecorder(self.client_config, topic, serialize=serialize)
        interval = 1.0 / self.search_rate
        self._wait_for_catalog_indexed()
        try:
            while not self.stop.wait(interval):
                user, text = draw()
                started = time.perf_counter()
                result = self._backend.search(SearchRequest(text, limit=5))
                self.search.latencies_ms.append((time.perf_counter() - started) * 1000)
                recorder.record(query_record(user=user, text=text, results=result.total))
                self.search.searches += 1
                self.search.found += result.total > 0
                self.search.last_query, self.search.last_total = text, result.total
        finally:
            recorder.close()

    def _wait_for_catalog_indexed(self, timeout_s: float = CATALOG_WAIT_S) -> None:
        """Searches start once the filter has passed the catalog on and the index holds what it passed (or
        after ``timeout_s``), so that the first ones are not asked of an empty index."""
        deadline = time.monotonic() + timeout_s
        published = self.published.published if self.published else 0
        while not self.stop.wait(0.2) and time.monotonic() < deadline:
            f = self.filter.stats if self.filter is not None else None
            if f is not None and f.consumed >= published and self.index.upserted >= f.passed:
                return

    def alive(self) -> list[str]:
        return [t.name.removeprefix("shop-demo-") for t in self._threads if t.is_alive()]

    def join(self, timeout_s: float = 60.0) -> list[str]:
        """Set ``stop`` and wait for every thread; returns the names of those still running at the deadline."""
        self.stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._backend is not None and not self.alive():
            self._backend.close()
        return self.alive()

    def figures(self) -> dict[str, Any]:
        f = self.filter.stats if self.filter is not None else None
        return {
            "catalog": self.published.published if self.published else 0,
            "filtered": f.passed if f else 0,
            "dropped": f.dropped if f else 0,
            "transactions": f.transactions if f else 0,
            "indexed": self.index.upserted,
            "removed": self.index.deleted,
            "indexed_queries": self.index.queries,
            "dead_lettered": (f.dead_lettered if f else 0) + self.index.dead_lettered,
            "orders": self.orders,
            "searches": self.search.searches,
            "found": self.search.found,
            "last_query": self.search.last_query,
            "last_total": self.search.last_total,
            "search_p50_ms": self.search.p50_ms(),
        }
