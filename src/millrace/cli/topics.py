"""``millrace topics apply | list | describe``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from millrace.cli.common import console, print_json, settings_of
from millrace.kafka.admin import apply_topics, describe_topic, list_topics
from millrace.kafka.topics import plan_topics

app = typer.Typer(help="Apply the declared topic list, list and describe topics.", no_args_is_help=True)


@app.command()
def apply(ctx: typer.Context) -> None:
    """Create missing topics and fix configs that differ from the declared list (idempotent)."""
    settings = settings_of(ctx)
    plan = plan_topics(settings.kafka.client_config(), settings.topics)  # sized for the cluster's brokers
    specs = plan.specs
    result = apply_topics(settings.kafka.client_config(), specs)
    table = Table(title="topics")
    for column in ("topic", "partitions", "rf", "retention", "cleanup", "min isr", "result"):
        table.add_column(column)
    for spec in specs:
        table.add_row(
            spec.name,
            str(spec.partitions),
            str(spec.replication_factor),
            f"{spec.retention_ms / 86_400_000:g} d" if spec.retention_ms >= 0 else "forever",
            spec.cleanup_policy,
            str(spec.min_insync_replicas),
            result[spec.name],
        )
    console.print(table)
    for name, notes in plan.cannot_change.items():
        console.print(f"[yellow]cannot change[/] {name}: {'; '.join(notes)}", highlight=False)


@app.command("list")
def list_(
    ctx: typer.Context,
    internal: Annotated[bool, typer.Option(help="Include internal topics (__consumer_offsets, ...).")] = False,
) -> None:
    """Topic names on the cluster."""
    for name in list_topics(settings_of(ctx).kafka.client_config(), internal=internal):
        typer.echo(name)


@app.command()
def describe(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Topic name.")],
    json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Partitions with leader, replicas, ISR and offsets; the topic's main configs."""
    info = describe_topic(settings_of(ctx).kafka.client_config(), name)
    if json_:
        print_json(
            {
                "name": info.name,
                "messages": info.messages,
                "configs": info.configs,
                "partitions": [p.__dict__ | {"messages": p.messages} for p in info.partitions],
            }
        )
        return
    table = Table(title=f"{info.name}: {len(info.partitions)} partitions, {info.messages} messages")
    for column in ("partition", "leader", "replicas", "isr", "low", "high", "messages"):
        table.add_column(column, justify="right")
    for p in info.partitions:
        table.add_row(
            str(p.partition),
            str(p.leader),
            ",".join(map(str, p.replicas)),
            ",".join(map(str, p.isr)),
            str(p.low),
            str(p.high),
            str(p.messages),
        )
    console.print(table)
    keys = ("retention.ms", "cleanup.policy", "min.insync.replicas", "compression.type")
    console.print("  ".join(f"{k}={info.configs.get(k)}" for k in keys))
