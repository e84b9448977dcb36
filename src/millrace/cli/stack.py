"""``millrace stack up | down | status | logs``: the managed local servers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from millrace.cli.common import console, human_duration, print_json, settings_of
from millrace.errors import UsageError
from millrace.runtime.process import tail
from millrace.runtime.security import security_dir
from millrace.runtime.stack import EXTRA_SERVERS, Stack, _load_extras

app = typer.Typer(
    help="Start, stop and inspect the local servers (Kafka, and optional MQTT, MongoDB-wire).", no_args_is_help=True
)


@app.command()
def up(
    ctx: typer.Context,
    with_: Annotated[
        list[str] | None,
        typer.Option(
            "--with",
            help="Also start: mqtt, mongodb, monitoring (Prometheus, Alertmanager; brokers export JMX metrics), "
            "registry (Apicurio schema registry for the shop), search (OpenSearch for the shop's search), "
            "hdfs (a NameNode and a DataNode in one JVM for the orders lake; docs/lake.md).",
        ),
    ] = None,
    brokers: Annotated[
        int | None, typer.Option(min=1, max=5, help="Kafka nodes (default: runtime.brokers, 1).")
    ] = None,
    secure: Annotated[
        bool | None, typer.Option("--secure/--plaintext", help="TLS + SASL/SCRAM + ACLs (runtime.security).")
    ] = None,
    mirror: Annotated[
        bool, typer.Option("--mirror", help="Also a backup cluster fed by MirrorMaker 2 ([mirror], docs/mirror.md).")
    ] = False,
) -> None:
    """Start Kafka (KRaft) and apply the topic list (and, secured, the ACLs). Safe to run again: running
    servers are kept."""
    settings = settings_of(ctx)
    _load_extras()  # the optional servers register themselves on import
    unknown = [name for name in with_ or [] if name not in EXTRA_SERVERS]
    if unknown:  # refused before anything starts, as a usage error
        known = ", ".join(sorted(EXTRA_SERVERS)) or "none"
        raise UsageError(f"unknown server {', '.join(unknown)} (known: {known})", param_hint="--with")
    changes: dict[str, object] = {}
    if brokers is not None:
        changes["brokers"] = brokers
    if secure is not None:
        changes["security"] = "sasl_ssl" if secure else "none"
    if changes:
        settings = settings.model_copy(update={"runtime": settings.runtime.model_copy(update=changes)})
    started = time.monotonic()
    stack = Stack(settings)
    with console.status("starting the stack (the first run downloads Kafka from Maven Central)..."):
        records = stack.up(with_ or [], mirror=mirror)
    for rec in records:
        ports = ", ".join(f"{role} {port}" for role, port in rec.ports.items())
        console.print(f"[green]✓[/] {rec.name} pid {rec.pid}" + (f" ({ports})" if ports else ""))
    bootstrap = stack.kafka_cluster().bootstrap_servers
    console.print(f"stack ready in {time.monotonic() - started:.1f} s; bootstrap {bootstrap}")
    if mirror:
        from millrace.runtime.mirror import backup_cluster

        backup = backup_cluster(settings).bootstrap_servers
        console.print(f"backup {backup} fed by MirrorMaker 2; lag: `millrace mirror status` (docs/mirror.md)")
    if settings.runtime.security != "none":
        clients = security_dir(settings.state_dir) / "clients"
        console.print(
            f"secured (SASL_SSL, SCRAM-SHA-512, ACLs): client settings per principal in {clients}/<principal>.env; "
            f"e.g. set -a; . {clients}/admin.env; set +a"
        )


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop every managed server (SIGTERM, then SIGKILL after the stop deadline). Data is kept."""
    stopped = Stack(settings_of(ctx)).down()
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(ctx: typer.Context, json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """Every managed server with its ports, pid, uptime and health."""
    rows = Stack(settings_of(ctx)).status()
    if json_:
        print_json([row.__dict__ for row in rows])
        return
    if not rows:
        console.print("no managed servers (run `millrace stack up`)")
        return
    table = Table(title="millrace stack")
    for column in ("server", "kind", "ports", "pid", "uptime", "health", "log"):
        table.add_column(column)
    for row in rows:
        health = "[green]healthy[/]" if row.healthy else ("[yellow]unhealthy[/]" if row.running else "[red]down[/]")
        table.add_row(
            row.name,
            row.kind,
            ", ".join(f"{role}:{port}" for role, port in row.ports.items()),
            str(row.pid or "-"),
            human_duration(row.uptime_s),
            health,
            row.log_path,
        )
    console.print(table)


@app.command()
def logs(
    ctx: typer.Context,
    server: Annotated[str, typer.Argument(help="Server name, e.g. kafka-1 or mqtt.")] = "kafka-1",
    lines: Annotated[int, typer.Option("-n", help="How many lines.")] = 50,
) -> None:
    """Print the last lines of a managed server's log."""
    path = Stack(settings_of(ctx)).manager.log_path(server)
    if not Path(path).is_file():
        raise typer.BadParameter(f"no log for {server} at {path}")
    typer.echo(tail(path, lines))
