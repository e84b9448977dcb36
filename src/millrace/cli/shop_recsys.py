"""``millrace shop recommend-train``: compare the recommenders on the orders lake and publish the best."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.table import Table

from millrace.cli.common import console, err_console, print_json, settings_of
from millrace.errors import UsageError


def recommend_train(
    ctx: typer.Context,
    model: Annotated[
        list[str] | None,
        typer.Option(help="Compare only these models (repeatable): als, cooccurrence, popularity. Default: all."),
    ] = None,
    holdout_days: Annotated[
        float | None, typer.Option(help="Days of the newest orders held out (default: analytics.holdout_days).")
    ] = None,
    top_n: Annotated[int | None, typer.Option(help="Products published per user (default: analytics.top_n).")] = None,
    publish: Annotated[
        bool, typer.Option("--publish/--no-publish", help="Publish the best model's recommendations.")
    ] = True,
    json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Train ALS (Spark MLlib, implicit feedback), item-item co-occurrence and popularity on the orders lake
    before a time hold-out, compare precision@10, recall@10 and NDCG@10 on it, refit the best on every order
    and publish each user's top products (never bought before, never blocked) to the recommendations topic,
    where `millrace shop recommend` reads them."""
    from millrace.jobs.session import build_session
    from millrace.shop.recsys import train_and_publish
    from millrace.shop.recsys_models import MODELS

    models = list(dict.fromkeys(model or MODELS))
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise UsageError(f"unknown model {unknown[0]!r} (one of {', '.join(MODELS)})", param_hint="--model")
    if holdout_days is not None and not holdout_days > 0:
        raise UsageError(f"must be above 0 (got {holdout_days:g})", param_hint="--holdout-days")
    if top_n is not None and not 1 <= top_n <= 1000:
        raise UsageError(f"must be 1-1000 (got {top_n})", param_hint="--top-n")
    settings = settings_of(ctx)
    changes = {k: v for k, v in {"holdout_days": holdout_days, "top_n": top_n}.items() if v is not None}
    if changes:
        settings = settings.model_copy(update={"analytics": settings.analytics.model_copy(update=changes)})

    def say(message: str) -> None:
        if not json_:
            err_console.print(f"[dim]{message}[/]")

    logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines at exit say nothing to a user
    result = train_and_publish(
        settings,
        lambda: build_session(settings, app_name="millrace-recommend-train"),
        models=models,
        publish=publish,
        progress=say,
    )
    if json_:
        print_json(result.as_dict())
        return
    h = result.holdout
    table = Table(
        title=f"recommenders on the hold-out from {h.cutoff:%Y-%m-%d %H:%M} UTC "
        f"({settings.analytics.holdout_days:g} days; {len(h.train)} order lines before, {len(h.test)} after)"
    )
    for column in ("model", "P@10", "R@10", "NDCG@10", "users evaluated", "fit s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in sorted(result.reports, key=lambda r: -r.ndcg):
        mark = " (best)" if r.model == result.best else ""
        table.add_row(
            r.model + mark,
            f"{r.precision:.4f}",
            f"{r.recall:.4f}",
            f"{r.ndcg:.4f}",
            str(r.users),
            f"{r.fit_seconds:.2f}",
        )
    console.print(table)
    console.print(
        f"{result.orders} orders, {result.users} users, {result.products} products; "
        f"{len(result.blocked)} blocked products never recommended"
    )
    if not publish:
        console.print("nothing published (--no-publish)")
        return
    console.print(
        f"published {result.best}: top {settings.analytics.top_n} for {result.published} users to {result.topic} "
        f"(coverage {result.coverage:.1%})"
    )
    console.print(f"recommendation coverage written to {settings.topics.shop_analytics} and the store")


def register(app: typer.Typer) -> None:
    """Add ``recommend-train`` to the ``shop`` group."""
    app.command("recommend-train")(recommend_train)
