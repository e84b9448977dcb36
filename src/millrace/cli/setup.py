"""``millrace setup``: check the system tools and fetch every server distribution once, before first use."""

from __future__ import annotations

import shutil
import time
from typing import Annotated

import typer
from rich.table import Table

from millrace.cli.common import console, settings_of
from millrace.errors import MillraceError
from millrace.runtime.distribution import has_pom, resolve_jars
from millrace.runtime.hdfs import hdfs_home
from millrace.runtime.kafka import JMX_EXPORTER_VERSION
from millrace.runtime.registry import find_java, java_major, registry_home, required_java
from millrace.runtime.search import search_home
from millrace.runtime.tools import require

SPARK_VERSION = "4.2.0"


def setup(
    ctx: typer.Context,
    spark: Annotated[bool, typer.Option(help="Also fetch the Spark Kafka connector jars.")] = True,
) -> None:
    """Check Java and Maven, then download Kafka (and the Spark Kafka connector) into the cache dir.

    Safe to run again: what is cached is reused. The README's commands call this for you.
    """
    settings = settings_of(ctx)
    require("java", "to run Kafka and Spark")
    require("mvn", "to download Kafka from Maven Central")
    wanted = [("kafka", settings.runtime.kafka_version)]
    wanted.append(("mirror", settings.runtime.kafka_version))  # MirrorMaker 2 (stack up --mirror)
    wanted.append(("jmx", JMX_EXPORTER_VERSION))  # the brokers' metrics agent (stack up --with monitoring)
    if spark and has_pom("spark"):
        wanted.append(("spark", SPARK_VERSION))
    table = Table("distribution", "version", "jars", "location", "took")
    for name, version in wanted:
        started = time.monotonic()
        with console.status(f"resolving {name} {version} from Maven Central (cached after the first run)..."):
            lib = resolve_jars(name, version, settings.cache_dir)
        jars = len(list(lib.glob("*.jar")))
        table.add_row(name, version, str(jars), str(lib), f"{time.monotonic() - started:.1f} s")
    # The shop's servers (stack up --with registry / search / hdfs), fetched here so no test or first start waits.
    for name, version, fetch in (
        ("registry", settings.shop.registry_version, registry_home),
        ("search", settings.shop.search_version, search_home),
        ("hdfs", settings.lake.hdfs_version, hdfs_home),  # the orders lake's HDFS (stack up --with hdfs)
    ):
        started = time.monotonic()
        with console.status(f"resolving {name} {version} from Maven Central (cached after the first run)..."):
            home = fetch(settings.cache_dir, version)
        jars = len(list(home.rglob("*.jar")))
        table.add_row(name, version, str(jars), str(home), f"{time.monotonic() - started:.1f} s")
    console.print(table)
    try:
        java = find_java(required_java(settings.shop.registry_version), settings.shop.registry_java)
        console.print(f"[green]found[/] Java {java_major(java)} for the schema registry: {java}")
    except MillraceError as exc:
        console.print(f"[yellow]missing[/] {exc}")
    for tool, why in (
        ("mosquitto", "MQTT bridge (stack up --with mqtt)"),
        ("chromium", "dashboard browser tests"),
        ("go", "MongoDB-wire test server (stack up --with mongodb)"),
        ("prometheus", "metrics and alert rules (stack up --with monitoring)"),
        ("prometheus-alertmanager", "alert notifications (stack up --with monitoring)"),
    ):
        found = shutil.which(tool) or (shutil.which(f"/usr/sbin/{tool}") if tool == "mosquitto" else None)
        mark = "[green]found[/]" if found else "[yellow]missing[/]"
        console.print(f"{mark} {tool}: {why}")
