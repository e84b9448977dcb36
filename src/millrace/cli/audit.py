"""``millrace audit``: is every record of the readings topic stored, dead-lettered or deduplicated, once?"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from millrace.cli.common import console, print_json, settings_of
from millrace.iot.audit import run_audit
from millrace.stores.factory import open_store


def audit(
    ctx: typer.Context,
    json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    max_listed: Annotated[
        int, typer.Option("--max-listed", min=0, help="Missing and duplicated offsets listed per partition.")
    ] = 10,
) -> None:
    """Reconcile the readings topic with the store and the dead-letter topic, per partition: produced,
    stored, dead-lettered, deduplicated, missing and duplicated offsets. Exit code 1 on any loss or
    duplicate. Run it when the job is idle: records it has not processed yet count as missing."""
    settings = settings_of(ctx)
    store = open_store(settings)
    try:
        report = run_audit(settings, store, max_listed=max_listed)
    finally:
        store.close()
    if json_:
        print_json(report.to_dict())
    else:
        table = Table(title=f"audit of {report.topic}")
        columns = ("partition", "offsets", "produced", "stored", "dead-lettered", "deduplicated", "missing")
        for column in (*columns, "duplicated", "outside"):
            table.add_column(column, justify="right")
        table.add_column("first missing / duplicated offsets")
        for p in report.partitions:
            listed = [f"missing {', '.join(map(str, p.first_missing))}"] if p.first_missing else []
            listed += [f"duplicated {', '.join(map(str, p.first_duplicated))}"] if p.first_duplicated else []
            table.add_row(
                str(p.partition),
                f"{p.low}-{p.high}",
                str(p.produced),
                str(p.stored),
                str(p.dead_lettered),
                str(p.deduplicated),
                f"[red]{p.missing}[/]" if p.missing else "0",
                f"[red]{p.duplicated}[/]" if p.duplicated else "0",
                str(p.outside),
                "; ".join(listed),
            )
        console.print(table)
        console.print(f"[green]{report.verdict()}[/]" if report.ok else f"[red]{report.verdict()}[/]")
    if not report.ok:
        raise typer.Exit(1)
