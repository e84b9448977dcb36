"""``millrace shop analytics``: Spark over the orders lake, the catalog and the client queries."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from millrace.cli.common import console, err_console, print_json, settings_of
from millrace.errors import UsageError


def analytics(
    ctx: typer.Context,
    master: Annotated[
        str | None,
        typer.Option(help="Spark master URL, e.g. spark://host:7077 (default: spark.master, local[2])."),
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(help="Catalog file for the category metrics (default: the filtered-items topic as it stands)."),
    ] = None,
    top: Annotated[
        int | None, typer.Option(help="How many top products and queries (default: analytics.top_n).", min=1)
    ] = None,
    publish: Annotated[
        bool, typer.Option("--publish/--no-publish", help="Write the results to the analytics topic and the store.")
    ] = True,
    json_: Annotated[bool, typer.Option("--json", help="Every result as one JSON document.")] = False,
) -> None:
    """Sales by category and day, top products, price and stock per category and the client queries' statistics
    (top and zero-result queries, searches and active users per hour, searches per user and hour), computed with
    Spark and written to the analytics topic and the store (GET /api/shop/analytics serves them). A sale is an
    order whose latest status is paid, shipped or delivered."""
    from millrace.jobs.session import build_session
    from millrace.shop.analytics import run_analytics

    settings = settings_of(ctx)
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines at exit say nothing to a user
    if catalog is not None and not catalog.is_file():
        raise UsageError(f"catalog file not found: {catalog}", param_hint="--catalog")
    if top is not None:
        settings = settings.model_copy(update={"analytics": settings.analytics.model_copy(update={"top_n": top})})
    with err_console.status("shop analytics...") as status:

        def progress(text: str) -> None:
            status.update(f"shop analytics: {escape(text)}...")

        run = run_analytics(
            settings,
            lambda: build_session(settings, master=master, app_name="millrace-shop-analytics"),
            catalog=catalog,
            publish=publish,
            progress=progress,
        )
    if json_:
        print_json(_as_json(run))
        return
    _print_summary(run, settings.topics.shop_analytics)


def _as_json(run: Any) -> dict[str, Any]:
    metrics: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in run.metrics:
        metrics[m["metric"]].append({k: m[k] for k in ("dimensions", "value", "window_start", "window_end")})
    published = run.published
    return {
        "computed_at": run.metrics[0]["computed_at"] if run.metrics else None,
        "lake": run.lake_url,
        "catalog": run.catalog_source,
        "sale_lines": run.sale_lines,
        "searches": run.searches,
        "published": None if published is None else {"delivered": published.delivered, "stored": published.stored},
        "seconds": {k: round(v, 3) for k, v in run.seconds.items()},
        "metrics": dict(metrics),
        "categories": run.categories,
    }


def _print_summary(run: Any, topic: str) -> None:
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for m in run.metrics:
        column = {"sales_revenue": 0, "sales_orders": 1, "sales_units": 2}.get(m["metric"])
        if column is not None:
            totals[m["dimensions"]["category"]][column] += m["value"]
    by_category = {c["category"]: c for c in run.categories}
    table = Table(title=f"sales by category (lake {run.lake_url}; catalog {run.catalog_source})")
    for name in ("category", "revenue", "orders", "units", "products", "avg price", "available"):
        table.add_column(name, justify="left" if name == "category" else "right")
    for category in sorted(set(totals) | set(by_category)):
        revenue, orders, units = totals.get(category, [0.0, 0.0, 0.0])
        c = by_category.get(category, {})
        table.add_row(
            escape(category),
            f"{revenue:,.2f}",
            f"{orders:,.0f}",
            f"{units:,.0f}",
            str(c.get("product_count", "-")),
            f"{c['avg_price']:,.2f}" if c else "-",
            str(c.get("total_available", "-")),
        )
    console.print(table)
    _ranked(run, "top_products", "top products (units sold)", ("product_id", "name", "category"))
    _ranked(run, "search_queries", "top search queries", ("query",))
    _ranked(run, "zero_result_queries", "queries that found nothing", ("query",))
    hours = run.values("searches_per_hour")
    users = {m["dimensions"]["hour"]: m["value"] for m in run.values("active_users_per_hour")}
    summary = Table(title="run", show_header=False)
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    days = {m["dimensions"]["day"] for m in run.values("sales_orders")}
    summary.add_row("sale days", str(len(days)))
    summary.add_row("searches", f"{run.searches:,}")
    if hours:
        busiest = max(hours, key=lambda m: m["value"])
        hour = busiest["dimensions"]["hour"]
        summary.add_row("hours with searches", str(len(hours)))
        summary.add_row("busiest hour", f"{hour}: {busiest['value']:.0f} searches, {users.get(hour, 0):.0f} users")
    summary.add_row("metric records", str(len(run.metrics)))
    if run.published is not None:
        summary.add_row(f"delivered to {topic}", str(run.published.delivered))
        summary.add_row("stored (shop_analytics)", str(run.published.stored))
    for phase, seconds in run.seconds.items():
        summary.add_row(f"{phase} (s)", f"{seconds:.1f}")
    console.print(summary)


def _ranked(run: Any, metric: str, title: str, columns: tuple[str, ...]) -> None:
    rows = sorted(run.values(metric), key=lambda m: int(m["dimensions"]["rank"]))
    if not rows:
        console.print(f"{title}: none")
        return
    table = Table(title=title)
    table.add_column("#", justify="right")
    for name in columns:
        table.add_column(name)
    table.add_column("units" if metric == "top_products" else "searches", justify="right")
    for m in rows:
        dims = m["dimensions"]
        table.add_row(dims["rank"], *(escape(dims[c]) for c in columns), f"{m['value']:,.0f}")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``analytics`` to the ``shop`` group."""
    app.command("analytics")(analytics)
