"""``millrace mirror status | failover | failback``: the backup cluster MirrorMaker 2 feeds (docs/mirror.md)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.table import Table

from millrace.cli.common import console, print_json, settings_of
from millrace.runtime import failover as mirroring
from millrace.runtime.mirror import primary_cluster
from millrace.runtime.process import ProcessManager

app = typer.Typer(
    help="The backup cluster fed by MirrorMaker 2 (stack up --mirror): lag, failover.", no_args_is_help=True
)


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def _status_json(report: mirroring.MirrorStatus) -> dict[str, Any]:
    return {
        "primary_reachable": report.primary_reachable,
        "primary_seen_at": report.primary_seen_at,
        "total_lag": report.total_lag,
        "partitions": [{**asdict(p), "lag": p.lag} for p in report.partitions],
        "groups": [asdict(g) for g in report.groups],
    }


def _print_status(report: mirroring.MirrorStatus) -> None:
    if not report.primary_reachable:
        seen = report.primary_seen_at or "never"
        console.print(f"[yellow]the primary is unreachable:[/] its end offsets as last seen at {seen}")
    table = Table(title="mirrored partitions (primary -> backup)")
    for column in ("topic", "partition", "primary end", "backup end", "lag"):
        table.add_column(column, justify="left" if column == "topic" else "right")
    for row in report.partitions:
        table.add_row(row.topic, str(row.partition), _num(row.primary_end), _num(row.backup_end), _num(row.lag))
    console.print(table)
    console.print(f"total lag: {_num(report.total_lag)} records")
    if report.groups:
        groups = Table(title="consumer group offsets (committed on the primary, translated on the backup)")
        for column in ("group", "topic", "partition", "primary", "backup"):
            groups.add_column(column, justify="right" if column in ("partition", "primary", "backup") else "left")
        for g in report.groups:
            groups.add_row(g.group, g.topic, str(g.partition), _num(g.primary), _num(g.backup))
        console.print(groups)
    else:
        console.print("no consumer group has committed offsets on the mirrored topics")


@app.command()
def status(ctx: typer.Context, json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """Per mirrored partition: the primary's and the backup's end offsets and the lag; the consumer groups'
    committed offsets and their translation on the backup. Records the primary's end offsets for a failover."""
    report = mirroring.status(settings_of(ctx))
    if json_:
        print_json(_status_json(report))
    else:
        _print_status(report)


@app.command()
def failover(ctx: typer.Context, json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """Switch every client of this state dir to the backup (an overlay of the [kafka] settings), stop
    MirrorMaker, and report per topic the records acknowledged on the primary that the backup lacks."""
    settings = settings_of(ctx)
    report = mirroring.failover(ProcessManager(settings.state_dir), settings)
    total = sum(report.lost.values())
    if json_:
        print_json(
            {
                "lost": report.lost,
                "total_lost": total,
                "backup_bootstrap": report.backup_bootstrap,
                "overlay": str(report.overlay),
                "mirrormaker_stopped": report.mirrormaker_stopped,
                "status": _status_json(report.status),
            }
        )
        return
    _print_status(report.status)
    lost = Table(title="lost in the failover (acknowledged on the primary, absent on the backup)")
    lost.add_column("topic")
    lost.add_column("lost records", justify="right")
    for topic, count in report.lost.items():
        lost.add_row(topic, str(count))
    console.print(lost)
    mark = "[green]nothing lost[/]" if total == 0 else f"[red]{total} records lost[/]"
    console.print(f"{mark}; MirrorMaker {'stopped' if report.mirrormaker_stopped else 'was not running'}")
    console.print(
        f"clients now connect to the backup at {report.backup_bootstrap} (overlay {report.overlay}); "
        "switch back with `millrace mirror failback`"
    )


@app.command()
def failback(ctx: typer.Context) -> None:
    """Point the clients at the primary again (remove the failover overlay). Records written to the backup
    meanwhile stay there: nothing copies them back."""
    settings = settings_of(ctx)
    if mirroring.failback(settings):
        console.print(
            f"clients connect to the primary again ({primary_cluster(settings).bootstrap_servers}); "
            "restart MirrorMaker with `millrace stack up --mirror`"
        )
    else:
        console.print("not failed over: the clients already use the primary")
