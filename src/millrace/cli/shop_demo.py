"""``millrace shop demo``: the marketplace end to end on this machine, with live figures.

Kafka and the schema registry (and OpenSearch when shop.search_backend is ``opensearch``) are started like
``stack up --with registry [search]`` unless ``--external`` says they already run at the configured addresses;
then the schemas are registered, the sample catalog (or shop.catalog_path) published, and the stop-list filter,
the index service, simulated orders and simulated client searches run until Ctrl-C, SIGTERM or
``--duration``, validated with the registry (the searches framed with the client-query schema, the filter and
the index service dead-lettering what fails its schema). The stop is clean: every thread finishes its batch,
the filter its transaction, the producers flush; then what this command started is stopped and a summary
printed (exit 0 after --duration, 130 / 143 after a signal, as every long-running command: docs/cli.md).
"""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from millrace.cli.common import console, err_console, settings_of
from millrace.cli.shop_stream import open_backend, where
from millrace.cli.signals import stopping
from millrace.errors import MillraceError
from millrace.kafka.admin import require_kafka
from millrace.kafka.producer import make_producer
from millrace.runtime.stack import Stack
from millrace.shop.catalog import sample_catalog_path
from millrace.shop.demo import ShopDemo


def demo(
    ctx: typer.Context,
    duration: Annotated[
        float | None, typer.Option(min=1, help="Stop after this many seconds of searches (default: Ctrl-C).")
    ] = None,
    order_rate: Annotated[float, typer.Option(min=0.1, max=10_000, help="Order events per second.")] = 5.0,
    search_rate: Annotated[float, typer.Option(min=0.1, max=1000, help="Client searches per second.")] = 2.0,
    seed: Annotated[int, typer.Option(help="Seed of the orders and the searches.")] = 7,
    external: Annotated[
        bool, typer.Option(help="Use the Kafka and registry already running at the configured addresses.")
    ] = False,
) -> None:
    """Run the shop: registry, catalog, orders, the stop-list filter, search indexing and client searches."""
    settings = settings_of(ctx)
    shop = settings.shop
    stack = Stack(settings)
    kafka_was_running = stack.manager.running("kafka-1") is not None
    extras = ["registry", *(["search"] if shop.search_backend == "opensearch" else [])]
    stop = threading.Event()
    runner: ShopDemo | None = None
    figures: dict[str, Any] | None = None
    started_servers = False
    stuck: list[str] = []
    with stopping(stop, grace_s=90.0, what="the shop demo"):
        try:
            if not external:
                with console.status(f"starting Kafka and {', '.join(extras)} (the first run downloads them)..."):
                    stack.up(extras)
                started_servers = True
            conf = settings.kafka.client_config()
            require_kafka(conf, stop=stop.is_set)
            k = settings.kafka

            def producer() -> Any:
                return make_producer(conf, compression=k.compression, linger_ms=k.linger_ms, batch_size=k.batch_size)

            runner = ShopDemo(
                conf,
                topics=settings.topics,
                registry_url=shop.registry_url,
                compatibility=shop.compatibility,
                catalog=shop.catalog_path or sample_catalog_path(),
                open_backend=lambda writer: open_backend(settings, writer=writer),
                producer=producer,
                order_rate=order_rate,
                search_rate=search_rate,
                seed=seed,
                # the demo needs the registry in any case (it registers the schemas and publishes the catalog
                # framed, --external too), so it always runs validated, whatever shop.use_registry says
                use_registry=True,
            )
            runner.stop = stop  # a signal stops the threads
            with console.status("registering the schemas and publishing the catalog..."):
                runner.start()
            console.print(
                f"shop demo: {runner.figures()['catalog']} products published, searching {where(settings)}, "
                f"{order_rate:g} orders/s, {search_rate:g} searches/s (Ctrl-C to stop)",
                highlight=False,
            )
            began = time.monotonic()
            with Live(_table(runner.figures()), console=console, refresh_per_second=1) as live:
                while not stop.wait(1.0):
                    live.update(_table(runner.figures()))
                    if duration is not None and time.monotonic() - began >= duration:
                        break
        finally:
            if runner is not None:
                with err_console.status("stopping the filter, the index service, orders and searches..."):
                    stuck = runner.join(60.0)
                figures = runner.figures()
            if started_servers and not kafka_was_running:
                with err_console.status("stopping the servers..."):
                    stack.down()
    if figures is not None:
        console.print(_table(figures, title="shop demo: summary"))
    if runner is not None and runner.failures:
        name, exc = runner.failures[0]
        raise MillraceError(f"the shop demo's {name} failed: {exc}")
    if stuck:
        raise MillraceError(f"the shop demo's {', '.join(stuck)} did not stop within 60 s")


def _table(f: dict[str, Any], *, title: str = "shop demo") -> Table:
    table = Table(title=title)
    table.add_column("stage")
    table.add_column("count", justify="right")
    p50 = f["search_p50_ms"]
    rows = [
        ("catalog published", f["catalog"]),
        ("filtered (passed / dropped)", f"{f['filtered']} / {f['dropped']}"),
        ("filter transactions", f["transactions"]),
        ("indexed products (removed)", f"{f['indexed']} ({f['removed']})"),
        ("orders", f["orders"]),
        ("searches (found something)", f"{f['searches']} ({f['found']})"),
        ("queries indexed", f["indexed_queries"]),
        ("dead-lettered", f["dead_lettered"]),
        ("search p50", "-" if p50 is None else f"{p50:.1f} ms"),
        ("last query", f"{f['last_query']} -> {f['last_total']}" if f["last_query"] else "-"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table
