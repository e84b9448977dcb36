"""``millrace shop ...``: the marketplace domain (catalog, orders, schemas; the filter and search attach theirs)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from millrace.cli import shop_analytics, shop_demo, shop_lake, shop_recsys, shop_stream
from millrace.cli.common import console, err_console, settings_of
from millrace.cli.signals import stopping
from millrace.config import Settings
from millrace.errors import DataError, MillraceError, UsageError
from millrace.kafka.admin import require_kafka
from millrace.kafka.producer import make_producer
from millrace.records import parse_iso

app = typer.Typer(
    help="Marketplace: publish the catalog, generate orders, manage schemas, filter and search products.",
    no_args_is_help=True,
)
shop_stream.register(app)  # filter, block, unblock, blocked, index, search
shop_analytics.register(app)  # analytics (Spark over the orders lake and the client queries)
shop_recsys.register(app)  # recommend-train
shop_lake.register(app)  # archive: orders into the lake
app.command("demo")(shop_demo.demo)  # everything above in one command, with live figures

schemas_app = typer.Typer(help="The shop's JSON Schemas in the schema registry.", no_args_is_help=True)
app.add_typer(schemas_app, name="schemas")


def _producer(settings: Settings) -> Any:
    k = settings.kafka
    conf = k.client_config()
    return make_producer(conf, compression=k.compression, linger_ms=k.linger_ms, batch_size=k.batch_size)


def _catalog_path(settings: Settings, file: Path | None) -> Path:
    from millrace.shop.catalog import sample_catalog_path

    path = file or settings.shop.catalog_path or sample_catalog_path()
    if not path.is_file():
        raise UsageError(f"catalog file not found: {path}", param_hint="FILE" if file else "shop.catalog_path")
    return path


@schemas_app.command("apply")
def schemas_apply(
    ctx: typer.Context,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Schema files to register (default: the shipped ones).")
    ] = None,
) -> None:
    """Register the shop's schemas (items, orders, client queries, recommendations, analytics) with the
    configured compatibility set on each subject; an incompatible change is refused (exit 1)."""
    from millrace.shop.schemas import apply_schemas

    settings = settings_of(ctx)
    if directory is not None and not directory.is_dir():
        raise UsageError(f"not a directory: {directory}", param_hint="--dir")
    registered = apply_schemas(
        settings.shop.registry_url, settings.topics, settings.shop.compatibility, directory=directory
    )
    table = Table(title=f"schemas ({settings.shop.compatibility})")
    for column in ("subject", "id", "version", "result"):
        table.add_column(column)
    for r in registered:
        table.add_row(r.subject, str(r.schema_id), str(r.version), "registered" if r.changed else "unchanged")
    console.print(table)


@app.command("publish-catalog")
def publish_catalog(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Argument(help="A catalog in the item schema: JSON array or JSON Lines (default: the sample)."),
    ] = None,
) -> None:
    """Publish a product catalog to the items topic, keyed by product id, framed with the registered item
    schema; a product that fails the schema is named on one line and sent to the shop dead-letter topic."""
    from millrace.shop.catalog import publish_catalog as publish

    settings = settings_of(ctx)
    path = _catalog_path(settings, file)
    require_kafka(settings.kafka.client_config())
    producer = _producer(settings)
    result = publish(
        path,
        producer,
        registry_url=settings.shop.registry_url,
        topics=settings.topics,
        compatibility=settings.shop.compatibility,
    )
    for position, reason in result.rejected:
        err_console.print(f"[yellow]rejected[/] {escape(position)}: {escape(reason)}", highlight=False, soft_wrap=True)
    table = Table(title=f"catalog {path.name} -> {settings.topics.shop_items} (schema id {result.schema_id})")
    table.add_column("category")
    table.add_column("products", justify="right")
    for category, n in sorted(result.categories.items()):
        table.add_row(category, str(n))
    table.add_section()
    table.add_row("published", str(result.published))
    table.add_row(f"dead-lettered ({settings.topics.shop_dead_letter})", str(result.dead_lettered))
    table.add_row("seconds", f"{result.seconds:.2f}")
    table.add_row("products/s", f"{result.rate:,.0f}")
    console.print(table)
    if result.failed:
        raise MillraceError(f"{result.failed} messages were not delivered to Kafka (see the log above)")


@app.command()
def orders(
    ctx: typer.Context,
    rate: Annotated[float, typer.Option(help="Order events per second.")] = 10.0,
    count: Annotated[int | None, typer.Option(help="Stop after this many events (default: until Ctrl-C).")] = None,
    seed: Annotated[int, typer.Option(help="Same seed, catalog and --start: the same events.")] = 0,
    customers: Annotated[int, typer.Option(help="Simulated customers.")] = 200,
    start: Annotated[str | None, typer.Option(help="Event time of the first event, ISO 8601 (default: now).")] = None,
    catalog: Annotated[
        Path | None, typer.Option(help="Catalog file (default: shop.catalog_path or the sample).")
    ] = None,
) -> None:
    """Produce simulated orders over the catalog's products to the orders topic (keyed by customer id, framed
    with the registered order schema): repeat and co-purchases, order states created -> paid -> shipped ->
    delivered (or cancelled)."""
    from millrace.kafka.schema_registry import json_serializer, register, registry_client, subject_for
    from millrace.shop.catalog import load_products
    from millrace.shop.orders import OrderGenerator, pump_orders
    from millrace.shop.schemas import Validator, load_schema

    if not rate > 0:
        raise UsageError(f"must be above 0 (got {rate:g})", param_hint="--rate")
    if count is not None and count < 1:
        raise UsageError(f"must be at least 1 (got {count})", param_hint="--count")
    if customers < 1:
        raise UsageError(f"must be at least 1 (got {customers})", param_hint="--customers")
    try:
        first = parse_iso(start) if start else datetime.now(UTC)
    except ValueError:
        raise UsageError(f"not an ISO 8601 time: {start!r}", param_hint="--start") from None
    settings = settings_of(ctx)
    path = _catalog_path(settings, catalog)
    products = load_products(path)
    if not products:
        raise DataError(f"{path} has no product that passes the item schema")
    topic = settings.topics.shop_orders
    url = settings.shop.registry_url
    schema = load_schema("order")
    client = registry_client(url)
    registered = register(client, url, subject_for(topic), schema, settings.shop.compatibility)
    serialize = json_serializer(client, schema, validate=False)  # checked by the faster Validator in send
    validator = Validator(schema)
    generator = OrderGenerator(products, seed=seed, customers=customers, start=first, rate=rate)
    stop = threading.Event()
    with stopping(stop, grace_s=75.0, what="orders"):
        require_kafka(settings.kafka.client_config(), stop=stop.is_set)
        producer = _producer(settings)

        def send(event: dict[str, Any]) -> None:
            reason = validator.error(event)
            if reason is not None:  # a generator bug, not bad input: stop rather than publish it
                raise MillraceError(f"a generated order fails the order schema: {reason}")
            producer.produce(topic, serialize(event, topic), event["customer_id"])

        result = pump_orders(iter(generator), send, rate=rate, count=count, stop=stop)
        remaining = producer.flush(60.0)
    table = Table(title=f"orders -> {topic} (schema id {registered.schema_id}, seed {seed})")
    table.add_column("status")
    table.add_column("events", justify="right")
    for status, n in sorted(result.by_status.items()):
        table.add_row(status, str(n))
    table.add_section()
    table.add_row("delivered to Kafka", str(producer.stats.delivered))
    table.add_row("events/s", f"{result.produced / result.seconds:,.1f}" if result.seconds > 0 else "-")
    console.print(table)
    if producer.stats.failed or remaining:
        raise MillraceError(f"{producer.stats.failed + remaining} order events were not delivered to Kafka")
