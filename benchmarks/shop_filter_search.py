"""Benchmark of the shop's stream path: the stop-list filter (Kafka transactions) and the search index service.

    .venv/bin/python benchmarks/shop_filter_search.py [--items 20000] [--blocked 200] [--queries 200]

Starts its own single-node Kafka on free ports, produces ``--items`` catalog-like products (~500 bytes of
Russian JSON) to a fresh items topic, then times, one stage after the other in this process:
the filter copying them to filtered-items (transactions of up to 500 items), the index service putting
filtered-items into a tantivy index, and search latency over the index (p50/p95 of ``--queries`` searches).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from millrace.config import load_settings
from millrace.kafka.admin import apply_topics
from millrace.kafka.topics import TopicSpec
from millrace.runtime.process import free_port
from millrace.runtime.stack import Stack
from millrace.shop import stoplist
from millrace.shop.filter import StopListFilter
from millrace.shop.indexer import IndexStats, run_indexer
from millrace.shop.search import SearchRequest
from millrace.shop.search_tantivy import TantivyBackend

WORDS = ["Клавиатура", "Умные часы", "Наушники", "Смартфон", "Ноутбук", "Чайник", "Пылесос", "Монитор"]
CATEGORIES = ["Компьютеры", "Электроника", "Дом", "Аксессуары"]


def item(i: int, rng: random.Random) -> bytes:
    name = f"{rng.choice(WORDS)} модель {i}"
    record = {
        "id": f"p{i:06d}",
        "name": name,
        "description": f"{name}: надёжный товар для дома и работы, гарантия {rng.randint(1, 3)} года",
        "category": rng.choice(CATEGORIES),
        "brand": f"Бренд{rng.randint(1, 40)}",
        "price": {"amount": rng.randint(300, 90000), "currency": "RUB"},
        "tags": ["новинка"],
    }
    return json.dumps(record, ensure_ascii=False).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--blocked", type=int, default=200)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="millrace-bench-"))
    kafka_port = free_port()
    settings = load_settings(
        state_dir=state,
        runtime={"kafka_port": kafka_port, "controller_port": free_port(), "kafka_heap": "512m"},
        kafka={"bootstrap_servers": f"127.0.0.1:{kafka_port}"},
    )
    stack = Stack(settings)
    stack.up()
    try:
        conf = settings.kafka.client_config()
        items, filtered, stop_topic, queries = "b-items", "b-filtered", "b-stop", "b-client-search"
        apply_topics(
            conf,
            [
                TopicSpec(items, 3),
                TopicSpec(filtered, 3),
                TopicSpec(stop_topic, 1, retention_ms=-1, cleanup_policy="compact"),
                TopicSpec(queries, 3),
            ],
        )
        admin = AdminClient(conf)
        deadline = time.monotonic() + 30
        while not all(  # every partition of the new topics has a leader
            (t := admin.list_topics(timeout=10).topics.get(name)) is not None
            and t.partitions
            and all(p.leader >= 0 for p in t.partitions.values())
            for name in (items, filtered, stop_topic, queries)
        ):
            if time.monotonic() > deadline:
                raise SystemExit("the benchmark topics got no leaders within 30 s")
            time.sleep(0.2)
        rng = random.Random(7)
        stoplist.block(conf, stop_topic, [f"p{i:06d}" for i in rng.sample(range(args.items), args.blocked)])
        producer = Producer({**conf, "acks": "all", "enable.idempotence": True, "linger.ms": 20})
        for i in range(args.items):
            producer.produce(items, item(i, rng), f"p{i:06d}".encode())
            producer.poll(0)
        producer.flush(60)

        worker = StopListFilter(conf, items_topic=items, filtered_topic=filtered, stop_topic=stop_topic)
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        started = time.monotonic()
        thread.start()
        while worker.stats.consumed < args.items:
            time.sleep(0.05)
        filter_s = time.monotonic() - started
        stop.set()
        thread.join(30)
        s = worker.stats
        print(
            f"filter: {s.consumed} items in {filter_s:.2f} s (start-up included) = {s.consumed / filter_s:,.0f}/s; "
            f"{s.passed} passed, {s.dropped} blocked, {s.transactions} transactions"
        )

        backend = TantivyBackend(state / "search")
        stats = IndexStats()
        stop = threading.Event()

        def count(current: IndexStats) -> None:
            stats.upserted = current.upserted
            if current.upserted >= s.passed:
                stop.set()

        started = time.monotonic()
        run_indexer(
            conf, backend, products_topic=filtered, queries_topic=queries, group="b-index", stop=stop, on_batch=count
        )
        index_s = time.monotonic() - started
        rate = stats.upserted / index_s
        print(f"index: {stats.upserted} products in {index_s:.2f} s (start-up included) = {rate:,.0f}/s")

        reader = TantivyBackend(state / "search", writer=False)
        texts = ["клавиатуры", "умные часы", "наушников", "смартфон бренд3", "чайнек", "ноутбуки", "монитор"]
        latencies = []
        for i in range(args.queries):
            t0 = time.perf_counter()
            reader.search(SearchRequest(texts[i % len(texts)]))
            latencies.append((time.perf_counter() - t0) * 1000)
        q = statistics.quantiles(latencies, n=20)
        print(f"search: {args.queries} queries, p50 {statistics.median(latencies):.1f} ms, p95 {q[18]:.1f} ms")
        backend.close()
    finally:
        stack.down()


if __name__ == "__main__":
    main()
