"""``millrace shop filter | block | unblock | blocked | index | search``: the stop-list filter and search."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer

from millrace.cli.common import console, print_json, settings_of
from millrace.cli.signals import stopping
from millrace.config import Settings
from millrace.errors import UsageError
from millrace.kafka.admin import require_kafka
from millrace.shop import stoplist
from millrace.shop.filter import StopListFilter
from millrace.shop.search import SearchBackend, SearchRequest, plural_goods, price_range_of

FILTER_GROUP = "millrace-shop-filter"
INDEX_GROUP = "millrace-shop-index"


def search_dir(settings: Settings) -> Path:
    return settings.state_dir / "search"


def open_backend(settings: Settings, *, writer: bool) -> SearchBackend:
    """The configured backend (shop.search_backend): OpenSearch, or the embedded index of the state dir."""
    from millrace.shop.backends import open_backend as open_configured

    shop = settings.shop
    return open_configured(
        shop.search_backend, directory=search_dir(settings), opensearch_url=shop.opensearch_url, writer=writer
    )


def use_registry(settings: Settings, flag: bool | None) -> bool:
    """--registry / --no-registry when given, else the shop.use_registry setting."""
    return settings.shop.use_registry if flag is None else flag


def where(settings: Settings) -> str:
    if settings.shop.search_backend == "opensearch":
        return f"OpenSearch at {settings.shop.opensearch_url}"
    return str(search_dir(settings))


# `shop filter` and `shop index` validate alike.
ValidateOption = Annotated[
    bool | None,
    typer.Option(
        "--registry/--no-registry",
        help="Validate with the schema registry (default: shop.use_registry); failures are dead-lettered.",
        show_default=False,
    ),
]


def filter_(
    ctx: typer.Context,
    instance: Annotated[
        str, typer.Option(help="This instance's stable name: its transactional id and group member id.")
    ] = "0",
    group: Annotated[str, typer.Option(help="Consumer group of the filter instances.")] = FILTER_GROUP,
    registry: ValidateOption = None,
) -> None:
    """Copy items to filtered-items, leaving out blocked products, exactly once (Kafka transactions)."""
    settings = settings_of(ctx)
    if not instance.strip() or any(c.isspace() for c in instance):
        raise UsageError("an instance name without spaces", param_hint="--instance")
    topics, conf = settings.topics, settings.kafka.client_config()
    stop = threading.Event()
    with stopping(stop, what="the filter"):
        require_kafka(conf, stop=stop.is_set)
        if stop.is_set():
            return
        worker = StopListFilter(
            conf,
            items_topic=topics.shop_items,
            filtered_topic=topics.shop_filtered_items,
            stop_topic=topics.shop_stop_list,
            group=group,
            instance=instance,
            registry_url=settings.shop.registry_url if use_registry(settings, registry) else None,
            dead_letter_topic=topics.shop_dead_letter,
        )

        def ready() -> None:
            console.print(
                f"filter {worker.txn_id}: {topics.shop_items} -> {topics.shop_filtered_items}, "
                f"{len(worker.state.stop.blocked())} blocked",
                highlight=False,
            )

        stats = worker.run(stop, on_ready=ready)
    console.print(
        f"filter stopped: {stats.consumed} items read, {stats.passed} passed, {stats.dropped} blocked, "
        f"{stats.stop_list_records} stop-list records, {stats.transactions} transactions ({stats.aborted} aborted)",
        highlight=False,
    )


def block(
    ctx: typer.Context,
    product_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Product ids.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the stop list).")] = "",
) -> None:
    """Put products on the stop list: filters drop them and remove them downstream within seconds."""
    settings = settings_of(ctx)
    entries = stoplist.block(settings.kafka.client_config(), settings.topics.shop_stop_list, product_ids, reason)
    console.print(f"blocked {', '.join(e.product_id for e in entries)}", highlight=False)


def unblock(
    ctx: typer.Context,
    product_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Product ids.")],
) -> None:
    """Take products off the stop list: filters publish their latest versions again."""
    settings = settings_of(ctx)
    entries = stoplist.unblock(settings.kafka.client_config(), settings.topics.shop_stop_list, product_ids)
    console.print(f"unblocked {', '.join(e.product_id for e in entries)}", highlight=False)


def blocked(ctx: typer.Context, json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """The products on the stop list, as the filters see it."""
    settings = settings_of(ctx)
    entries = stoplist.load_stop_list(settings.kafka.client_config(), settings.topics.shop_stop_list).blocked()
    if json_:
        print_json([e.__dict__ for e in entries])
        return
    for e in entries:
        typer.echo(f"{e.product_id}\t{e.at}\t{e.reason}")
    console.print(f"{len(entries)} blocked", highlight=False, style="dim")


def index(
    ctx: typer.Context,
    group: Annotated[str, typer.Option(help="Consumer group of the indexer.")] = INDEX_GROUP,
    registry: ValidateOption = None,
) -> None:
    """Index filtered-items (products) and client-search (queries) into the search backend (shop.search_backend:
    the embedded index of the state dir, one instance; or OpenSearch, any number of instances)."""
    from millrace.shop.indexer import run_indexer

    settings = settings_of(ctx)
    conf, topics = settings.kafka.client_config(), settings.topics
    stop = threading.Event()
    with stopping(stop, what="the indexer"):
        require_kafka(conf, stop=stop.is_set)
        if stop.is_set():
            return
        backend = open_backend(settings, writer=True)
        try:
            console.print(
                f"indexing {topics.shop_filtered_items} and {topics.shop_client_search} into {where(settings)}",
                highlight=False,
            )
            stats = run_indexer(
                conf,
                backend,
                products_topic=topics.shop_filtered_items,
                queries_topic=topics.shop_client_search,
                group=group,
                stop=stop,
                registry_url=settings.shop.registry_url if use_registry(settings, registry) else None,
                dead_letter_topic=topics.shop_dead_letter,
            )
        finally:
            backend.close()
    console.print(
        f"indexer stopped: {stats.upserted} products indexed, {stats.deleted} removed, {stats.queries} queries, "
        f"{stats.skipped} skipped",
        highlight=False,
    )


def search(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help='What to look for, e.g. "умные часы".')],
    user: Annotated[str, typer.Option(help="Who is searching (recorded in client-search).")] = "anonymous",
    category: Annotated[str | None, typer.Option(help="Only this category.")] = None,
    brand: Annotated[str | None, typer.Option(help="Only this brand.")] = None,
    price: Annotated[str | None, typer.Option(help="Price range LOW-HIGH, LOW- or -HIGH.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many products.")] = 10,
    json_: Annotated[bool, typer.Option("--json", help="JSON output with highlights and facets.")] = False,
    registry: Annotated[
        bool | None,
        typer.Option(
            "--registry/--no-registry",
            help="Frame the recorded query with the registered client-query schema (default: shop.use_registry).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Search the products; the query is recorded in client-search."""
    from millrace.shop.client import search as client_search

    settings = settings_of(ctx)
    if not user.strip():
        raise UsageError("a user name", param_hint="--user")
    try:
        price_range = price_range_of(price) if price is not None else None
    except ValueError as exc:
        raise UsageError(str(exc), param_hint="--price") from None
    request = SearchRequest(text, category=category, brand=brand, price=price_range, limit=limit)
    serialize = None
    if use_registry(settings, registry):
        from millrace.shop.client import query_serializer

        shop = settings.shop
        serialize = query_serializer(shop.registry_url, settings.topics.shop_client_search, shop.compatibility)
    result = client_search(
        open_backend(settings, writer=False),
        request,
        client_config=settings.kafka.client_config(),
        topic=settings.topics.shop_client_search,
        user=user,
        serialize=serialize,
    )
    if json_:
        print_json({"total": result.total, "hits": [h.__dict__ for h in result.hits], "facets": result.facets})
        return
    typer.echo(f"{plural_goods(result.total)}:")
    for hit in result.hits:
        typer.echo(f"{hit.category} -> {hit.name}")


def recommend(
    ctx: typer.Context,
    user: Annotated[str, typer.Option(help="Whose recommendations.")],
    limit: Annotated[int, typer.Option(min=1, max=100, help="At most this many products.")] = 10,
    json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """The latest recommendations for a user (the most ordered products for a user without any)."""
    from millrace.shop.catalog import load_products, sample_catalog_path
    from millrace.shop.recommend import Recommender

    settings = settings_of(ctx)
    if not user.strip() or len(user) > 64:
        raise UsageError("a user name of 1-64 characters", param_hint="--user")
    products = {str(p["id"]): p for p in load_products(settings.shop.catalog_path or sample_catalog_path())}
    recommender = Recommender(
        settings.kafka.client_config(),
        recommendations_topic=settings.topics.shop_recommendations,
        orders_topic=settings.topics.shop_orders,
        products=products,
    )
    answer = recommender.recommend(user, limit=limit)  # NoRecommendations: one line, exit 1
    if json_:
        print_json(answer.as_dict())
        return
    if answer.source == "popular":
        typer.echo(f"no recommendations for {user} yet; the most ordered products:")
    else:
        typer.echo(f"recommended for {user} ({answer.model}, {answer.generated_at}):")
    for item in answer.items:
        typer.echo(f"{item.product_id}  {item.category} -> {item.name}  ({item.score:g})")


def register(app: typer.Typer) -> None:
    """Add these commands to the ``shop`` group."""
    app.command("filter")(filter_)
    app.command("block")(block)
    app.command("unblock")(unblock)
    app.command("blocked")(blocked)
    app.command("index")(index)
    app.command("search")(search)
    app.command("recommend")(recommend)
