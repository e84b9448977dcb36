"""``millrace token create``: a new API token, shown once, and the settings lines that admit it."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import typer

from millrace.cli.common import console
from millrace.errors import UsageError

app = typer.Typer(help="API tokens for the REST API, the dashboard and the WebSocket.", no_args_is_help=True)

NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")


def create(
    role: Annotated[
        Literal["viewer", "operator", "admin"],
        typer.Option(help="viewer reads; operator also acknowledges and resolves alerts; admin also creates topics."),
    ] = "viewer",
    name: Annotated[str, typer.Option(help="A label for the token (shown in refusals and logs).")] = "",
) -> None:
    """Print a new random token once, with the api.tokens entry (its SHA-256, never the token) to add to
    the config file. Nothing is stored: lose the token and create another."""
    label = name or f"{role}-token"
    if not NAME.match(label):
        raise UsageError("--name: 1 to 100 characters of letters, digits, '_', '.', '@' or '-'")
    # Imported here: services need the [serve] extra, and the CLI must load without it.
    from millrace.services.auth import new_token, token_hash

    token = new_token()
    console.print(f"token (shown once, keep it secret): {token}", highlight=False, soft_wrap=True)
    console.print("add to the config file:", highlight=False)
    console.print(
        f'[[api.tokens]]\nname = "{label}"\nrole = "{role}"\nsha256 = "{token_hash(token)}"',
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
