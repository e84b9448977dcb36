"""Benchmark of the orders lake: `shop archive` into a local directory and into the managed HDFS.

    .venv/bin/python benchmarks/shop_lake.py [--events 100000] [--lake local hdfs] [--batch-size 5000]

Starts its own single-node Kafka (and, for ``hdfs``, the managed HDFS of ``stack up --with hdfs``) on free
ports, produces ``--events`` simulated order events (plain JSON, the sample catalog, seed 7) to the orders
topic once, then per lake archives them all with an :class:`~millrace.shop.archive.OrderArchiver` in this
process (its own consumer group; start-up included) and reads the lake back with ``Lake.read_orders()``.
Prints events/s, rows (order lines), files, the read time and the load average per lake.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Producer

from millrace.config import load_settings
from millrace.runtime.process import free_port
from millrace.runtime.stack import Stack
from millrace.shop.archive import OrderArchiver
from millrace.shop.catalog import load_products, sample_catalog_path
from millrace.shop.lake import catalog_index, open_lake
from millrace.shop.orders import OrderGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--lake", nargs="+", choices=("local", "hdfs"), default=["local", "hdfs"])
    parser.add_argument("--batch-size", type=int, default=5000)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="millrace-bench-"))
    kafka_port, rpc_port = free_port(), free_port()
    settings = load_settings(
        state_dir=state,
        runtime={"kafka_port": kafka_port, "controller_port": free_port(), "kafka_heap": "512m"},
        kafka={"bootstrap_servers": f"127.0.0.1:{kafka_port}"},
        lake={"hdfs_rpc_port": rpc_port, "hdfs_http_port": free_port()},
    )
    stack = Stack(settings)
    stack.up(with_=["hdfs"] if "hdfs" in args.lake else [])
    try:
        conf = settings.kafka.client_config()
        products = load_products(sample_catalog_path())
        generator = OrderGenerator(products, seed=7, customers=2000)
        producer = Producer({**conf, "acks": "all", "enable.idempotence": True, "linger.ms": 20})
        for _ in range(args.events):
            event = generator.next_event()
            producer.produce(
                settings.topics.shop_orders, json.dumps(event, ensure_ascii=False).encode(), event["customer_id"]
            )
            producer.poll(0)
        if producer.flush(60):
            raise SystemExit("the order events were not all delivered within 60 s")
        for kind in args.lake:
            url = "" if kind == "local" else f"hdfs://127.0.0.1:{rpc_port}/millrace/bench-lake"
            lake = open_lake(settings.model_copy(update={"lake": settings.lake.model_copy(update={"url": url})}))
            archiver = OrderArchiver(
                conf,
                lake,
                topic=settings.topics.shop_orders,
                dead_letter_topic=settings.topics.shop_dead_letter,
                products=catalog_index(products),
                group=f"bench-archive-{kind}",
                batch_size=args.batch_size,
                batch_seconds=1.0,
            )
            started = time.monotonic()
            stats = archiver.run(threading.Event(), until_idle=True)
            archive_s = time.monotonic() - started
            started = time.monotonic()
            rows = len(lake.read_orders())
            read_s = time.monotonic() - started
            print(
                f"{kind}: {stats.archived:,} events ({stats.rows:,} rows, {stats.files} files) in {archive_s:.1f} s "
                f"= {stats.archived / archive_s:,.0f} events/s; read_orders {rows:,} rows in {read_s:.2f} s; "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    finally:
        stack.down()


if __name__ == "__main__":
    main()
