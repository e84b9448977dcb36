"""``millrace acl apply | list | diff``: the declared ACLs of a secured cluster (millrace.kafka.acls)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from millrace.cli.common import console, print_json, settings_of
from millrace.config import Settings
from millrace.kafka.acls import Acl, AclDiff, apply_acls, current_acls, declared_acls, diff_acls
from millrace.kafka.admin import admin_client

app = typer.Typer(
    help="Apply, list and compare the per-service ACLs (needs a principal allowed to manage ACLs: admin).",
    no_args_is_help=True,
)


def _declared(settings: Settings) -> list[Acl]:
    return declared_acls(
        settings.topics, stream_job_group=settings.spark.consumer_group, mirror_topics=settings.mirror.topics
    )


def _table(title: str, acls: list[Acl] | tuple[Acl, ...], mark: str = "") -> Table:
    table = Table(title=title)
    for column in ("", "principal", "operation", "resource", "name", "pattern"):
        table.add_column(column)
    for a in acls:
        table.add_row(mark, a.principal, a.operation, a.resource.lower(), a.name, a.pattern.lower())
    return table


def _print_diff(plan: AclDiff, *, applied: bool) -> None:
    verb_add, verb_del = ("added", "removed") if applied else ("to add", "to remove")
    for acl in plan.missing:
        console.print(f"[green]+[/] {acl}  ({verb_add})", highlight=False)
    for acl in plan.extra:
        console.print(f"[red]-[/] {acl}  ({verb_del})", highlight=False)
    if plan.unmanaged:
        console.print(f"{len(plan.unmanaged)} ACL(s) of principals not declared by millrace left as they are")
    if plan.in_sync:
        console.print("ACLs match the declared list" + (" (nothing to do)" if applied else ""))


@app.command()
def apply(ctx: typer.Context) -> None:
    """Add the missing ACLs and remove extra ones of millrace's principals (idempotent)."""
    settings = settings_of(ctx)
    plan = apply_acls(admin_client(settings.kafka.client_config()), _declared(settings))
    _print_diff(plan, applied=True)


@app.command()
def diff(ctx: typer.Context) -> None:
    """What `acl apply` would change; exit code 1 when the cluster differs from the declared list."""
    settings = settings_of(ctx)
    plan = diff_acls(_declared(settings), current_acls(admin_client(settings.kafka.client_config())))
    _print_diff(plan, applied=False)
    if not plan.in_sync:
        raise typer.Exit(1)


@app.command("list")
def list_(
    ctx: typer.Context,
    declared: Annotated[
        bool, typer.Option("--declared", help="The declared list, without asking the cluster.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """The ACLs on the cluster (or, with --declared, the declared ones)."""
    settings = settings_of(ctx)
    acls = _declared(settings) if declared else current_acls(admin_client(settings.kafka.client_config()))
    if json_:
        print_json([a.__dict__ for a in acls])
        return
    console.print(_table("declared ACLs" if declared else "ACLs on the cluster", acls))
