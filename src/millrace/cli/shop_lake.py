"""``millrace shop archive``: the orders topic into the orders lake (Parquet by order date; docs/lake.md)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from millrace.cli.common import console, err_console, settings_of
from millrace.cli.shop_stream import ValidateOption, use_registry
from millrace.cli.signals import stopping
from millrace.config import Settings
from millrace.errors import DataError, UsageError
from millrace.kafka.admin import require_kafka
from millrace.shop.archive import ArchiveStats, OrderArchiver

ARCHIVE_GROUP = "millrace-shop-archive"
PLAIN_PROGRESS_EVERY_S = 10.0  # progress lines when the output is not a terminal (a log file)


def _catalog(settings: Settings, file: Path | None) -> Path:
    from millrace.shop.catalog import sample_catalog_path

    path = file or settings.shop.catalog_path or sample_catalog_path()
    if not path.is_file():
        raise UsageError(f"catalog file not found: {path}", param_hint="--catalog" if file else "shop.catalog_path")
    return path


def _progress(stats: ArchiveStats, title: str) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("", style="dim")
    table.add_column("", justify="right")
    table.add_row("records read", f"{stats.consumed:,}")
    table.add_row("records/s", f"{stats.rate:,.0f}")
    table.add_row("order events archived", f"{stats.archived:,}")
    table.add_row("rows (order lines)", f"{stats.rows:,}")
    table.add_row("files written", f"{stats.files:,}")
    table.add_row("already in the lake (skipped)", f"{stats.skipped:,}")
    table.add_row("dead-lettered", f"{stats.dead_lettered:,}")
    table.add_row("lag (records)", f"{stats.lag:,}")
    return table


def archive(
    ctx: typer.Context,
    until_idle: Annotated[
        bool,
        typer.Option(
            "--until-idle/--follow",
            help="Stop once every partition is archived to its end (exit 0), or keep following new orders "
            "until Ctrl-C / SIGTERM (the default).",
        ),
    ] = False,
    group: Annotated[str, typer.Option(help="Consumer group of the archivers.")] = ARCHIVE_GROUP,
    instance: Annotated[
        str,
        typer.Option(
            help="This archiver's stable name in the group (static membership: a restart takes its partitions "
            "back at once). Give each archiver of a group its own."
        ),
    ] = "0",
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Order events per batch (default: lake.archive_batch_size).", show_default=False),
    ] = None,
    batch_seconds: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            help="Write a batch at most this many seconds after its first event (default: lake.archive_batch_seconds).",
            show_default=False,
        ),
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="Catalog for the rows' product name and category (default: shop.catalog_path or the sample)."
        ),
    ] = None,
    registry: ValidateOption = None,
) -> None:
    """Archive order events from the orders topic into the orders lake: Parquet files partitioned by order
    date, one row per order line, each event exactly once even after a crash (the lake says what is archived;
    offsets are committed after the files are written). The lake is lake.url: empty for <state_dir>/lake,
    hdfs://host:port/path or webhdfs://host:port/path. Malformed orders go to the shop dead-letter topic."""
    from millrace.shop.catalog import load_products
    from millrace.shop.lake import catalog_index, open_lake

    settings = settings_of(ctx)
    if not instance.strip() or any(c.isspace() for c in instance):
        raise UsageError("an instance name without spaces", param_hint="--instance")
    path = _catalog(settings, catalog)
    products = catalog_index(load_products(path))
    if not products:
        raise DataError(f"{path} has no product that passes the item schema")
    lake = open_lake(settings)  # a bad lake.url is said before Kafka is tried
    topics, conf = settings.topics, settings.kafka.client_config()
    stop = threading.Event()
    with stopping(stop, what="the archiver"):
        require_kafka(conf, stop=stop.is_set)
        if stop.is_set():
            return
        archiver = OrderArchiver(
            conf,
            lake,
            topic=topics.shop_orders,
            dead_letter_topic=topics.shop_dead_letter,
            products=products,
            group=group,
            instance=instance,
            batch_size=batch_size or settings.lake.archive_batch_size,
            batch_seconds=batch_seconds or settings.lake.archive_batch_seconds,
            registry_url=settings.shop.registry_url if use_registry(settings, registry) else None,
        )
        title = f"{topics.shop_orders} -> {lake.spark_url}"
        console.print(f"archiving {escape(title)} (group {escape(group)})", highlight=False)
        if console.is_terminal:
            with Live(_progress(archiver.stats, title), console=console, refresh_per_second=2) as live:
                stats = archiver.run(
                    stop, until_idle=until_idle, on_progress=lambda s: live.update(_progress(s, title))
                )
                live.update(_progress(stats, title))
        else:
            last = [time.monotonic()]

            def line(s: ArchiveStats) -> None:
                if time.monotonic() - last[0] >= PLAIN_PROGRESS_EVERY_S:
                    last[0] = time.monotonic()
                    err_console.print(
                        f"{s.consumed:,} read ({s.rate:,.0f}/s), {s.archived:,} archived in {s.files:,} files, "
                        f"{s.skipped:,} skipped, {s.dead_lettered:,} dead-lettered, lag {s.lag:,}",
                        highlight=False,
                    )

            stats = archiver.run(stop, until_idle=until_idle, on_progress=line)
    if not console.is_terminal:
        console.print(_progress(stats, title))
    console.print(
        f"archiver stopped: {stats.archived:,} order events in {stats.files:,} files, {stats.skipped:,} already "
        f"in the lake, {stats.dead_lettered:,} dead-lettered to {escape(topics.shop_dead_letter)}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Attach the lake's commands to ``millrace shop``."""
    app.command("archive")(archive)
