"""``millrace shop ...``: the marketplace domain (catalog, orders, schemas; the filter and search attach theirs)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Marketplace: publish the catalog, generate orders, manage schemas, filter and search products.",
    no_args_is_help=True,
)
