"""``millrace demo``: the main job. Starts the local stack and proves the path end to end."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
import typer
from rich.table import Table

from millrace.cli.common import console, settings_of
from millrace.kafka.consumer import make_consumer
from millrace.kafka.producer import make_producer
from millrace.runtime.stack import Stack


def demo(
    ctx: typer.Context,
    count: Annotated[int, typer.Option(help="Messages in the round trip.")] = 10_000,
    timeout_s: Annotated[float, typer.Option("--timeout", help="Deadline for the round trip, seconds.")] = 120.0,
) -> None:
    """Start the stack, produce readings to Kafka and consume them back, printing the counts."""
    settings = settings_of(ctx)
    with console.status("starting the stack..."):
        Stack(settings).up()
    conf = settings.kafka.client_config()
    topic = settings.topics.readings
    producer = make_producer(conf)
    run = f"demo-{int(time.time())}"
    for i in range(count):
        producer.produce(topic, orjson.dumps({"run": run, "seq": i}), f"sensor-{i % 60}")
    if producer.flush(timeout_s):
        raise typer.Exit(1)
    consumer = make_consumer(conf, f"millrace-{run}")
    consumer.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + timeout_s
    while seen < count and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.5):
            if msg.error() is None and orjson.loads(msg.value()).get("run") == run:
                seen += 1
    consumer.close()
    table = Table("produced", "delivered", "failed", "consumed")
    stats = producer.stats
    table.add_row(str(count), str(stats.delivered), str(stats.failed), str(seen))
    console.print(table)
    if seen != count:
        raise typer.Exit(1)
