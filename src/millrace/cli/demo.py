"""``millrace demo``: the main job — the whole IoT pipeline on this machine with its live dashboard.

Kafka, the Spark job, the API/dashboard and a simulated fleet with anomalies run as managed processes (logs
in ``<state_dir>/logs``); this command shows live figures until Ctrl-C or ``--duration``, then stops what it
started. Before the job stops, the simulator is stopped and the job left to drain, so the closing summary can
show ``millrace audit``'s reconciliation of the readings topic with the store (docs/audit.md).

``--secure`` runs it on the secured cluster of ``stack up --brokers 3 --secure`` (docs/secure-cluster.md): TLS,
SASL/SCRAM, ACLs, and each process as its own principal — the simulator as ``ingest``, the Spark job as
``stream-job``, the API as ``api`` — while the demo itself watches and audits as ``admin``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from millrace.cli import signals
from millrace.cli.common import app_state, console, err_console
from millrace.config import Settings
from millrace.errors import MillraceError
from millrace.iot.audit import AuditReport, run_audit
from millrace.kafka.acls import ADMIN, API, INGEST, STREAM_JOB
from millrace.kafka.admin import describe_topic
from millrace.records import to_iso
from millrace.runtime.pipeline import (
    FleetOptions,
    api_spec,
    api_url,
    millrace_argv,
    process_spec,
    simulator_spec,
)
from millrace.runtime.process import ProcessRecord, ServerSpec, tail
from millrace.runtime.security import client_env, load_security
from millrace.runtime.stack import Stack

PIPELINE = ("iot-simulate", "iot-process", "api")  # stopped in this order: source first, service last
SOURCE = "iot-simulate"
SETTLE_S = 120.0  # how long the job may take to drain what the simulator produced before it stopped


def _api_with_token(settings: Settings, spec: ServerSpec) -> tuple[ServerSpec, str | None]:
    """With auth on and no api.tokens configured, an admin token for this run: its hash goes to the API server
    through the environment (never the token), the token comes back to be printed with the dashboard URL."""
    if settings.api.auth != "token" or settings.api.tokens:
        return spec, None
    from millrace.services.auth import new_token, token_hash

    token = new_token()
    entry = {"name": "demo-admin", "role": "admin", "sha256": token_hash(token)}
    return dataclasses.replace(spec, env={**spec.env, "MILLRACE_API__TOKENS": json.dumps([entry])}), token


def demo(
    ctx: typer.Context,
    duration: Annotated[
        float | None,
        typer.Option(min=1, help="Stop this many seconds after the first stored readings (default: Ctrl-C)."),
    ] = None,
    devices: Annotated[int, typer.Option(min=1, max=2000, help="Simulated devices (6 sensors each).")] = 25,
    locations: Annotated[int, typer.Option(min=1, help="Locations the devices are spread over.")] = 4,
    anomaly_rate: Annotated[float, typer.Option(min=0, max=0.5, help="Fraction of sensor-time in anomalies.")] = 0.05,
    backfill: Annotated[
        float, typer.Option(min=0, help="Seconds of history produced first (warms the detector).")
    ] = 120.0,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 7,
    startup_timeout: Annotated[
        float, typer.Option(min=10, help="Deadline for the Spark job's first stored readings, seconds.")
    ] = 600.0,
    keep: Annotated[bool, typer.Option(help="Leave everything running at the end (stop with `stack down`).")] = False,
    secure: Annotated[
        bool | None,
        typer.Option(
            "--secure/--plaintext",
            help="On the secured cluster (TLS, SASL/SCRAM, ACLs; 3 brokers unless --brokers), each process as its "
            "own principal (runtime.security).",
        ),
    ] = None,
    brokers: Annotated[
        int | None, typer.Option(min=1, max=5, help="Kafka nodes (default: runtime.brokers; 3 with --secure).")
    ] = None,
) -> None:
    """Run the IoT pipeline end to end: Kafka, simulator with anomalies, Spark job, store, dashboard.

    Open the printed URL for the live dashboard. Ctrl-C stops everything cleanly; data stays in the state dir.
    """
    state = app_state(ctx)
    settings = _layout(state.settings, secure=secure, brokers=brokers)
    fleet = FleetOptions(devices=devices, locations=locations, anomaly_rate=anomaly_rate, seed=seed)
    stack = Stack(settings)
    manager = stack.manager
    kafka_was_running = manager.running("kafka-1") is not None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops it like Ctrl-C, start-up included
    started: list[str] = []
    monitor: _Monitor | None = None
    figures: dict[str, Any] | None = None
    audit: AuditReport | None = None
    interrupted: BaseException | None = None
    try:
        what = "a secured Kafka cluster" if settings.runtime.security != "none" else "Kafka"
        with console.status(f"starting {what} (the first run downloads it from Maven Central)..."):
            stack.up()
        principals = _Principals(stack)
        settings = principals.settings_of(ADMIN)  # the demo's own figures and audit: as the admin principal
        monitor = _Monitor(settings)

        def start(spec: ServerSpec, principal: str) -> None:
            spec = dataclasses.replace(spec, env={**spec.env, **principals.env(principal)})
            with console.status(f"starting {spec.name}..."):
                manager.start(spec)
            started.append(spec.name)

        # The Spark job first: its JVM start-up overlaps with producing the history.
        start(process_spec(settings, state.config_path, "--max-offsets", "20000"), STREAM_JOB)
        live_start = datetime.now(UTC)
        if backfill > 0:
            with console.status(f"producing {backfill:.0f} s of fleet history ({fleet.sensors} sensors)..."):
                live_start = _backfill(settings, state.config_path, fleet, backfill, env=principals.env(INGEST))
        api, token = _api_with_token(settings, api_spec(settings, state.config_path))
        start(api, API)
        # The live stream continues the history's event time without a gap (it runs at the wall-clock pace).
        start(simulator_spec(settings, state.config_path, fleet, start=to_iso(live_start)), INGEST)
        if principals.secured:
            console.print(
                f"secured cluster ({settings.runtime.brokers} brokers, SASL_SSL): the simulator runs as {INGEST}, "
                f"the Spark job as {STREAM_JOB}, the API as {API}",
                highlight=False,
            )
        url = api_url(settings)
        # Shown once, here: the server gets only the token's hash, so its log never holds the token.
        dashboard = f"{url}/#token={token}" if token else f"{url}/"
        console.print(
            f"[bold green]dashboard:[/] {dashboard}   API docs: {url}/docs   (Ctrl-C to stop)",
            highlight=False,
            soft_wrap=True,
        )
        # --duration counts from the first stored reading: Spark's start-up time varies a lot with the machine.
        startup_deadline = time.monotonic() + startup_timeout
        live_since: float | None = None
        figures = monitor.figures()
        with Live(monitor.render(manager, figures), console=console, refresh_per_second=1) as live:
            while not stop.is_set():
                stop.wait(1.0)
                figures = monitor.figures()
                live.update(monitor.render(manager, figures))
                now = time.monotonic()
                if live_since is None and figures["stored"] > 0:
                    live_since = now
                if live_since is None and now > startup_deadline:
                    raise MillraceError(
                        f"the Spark job stored nothing within {startup_timeout:.0f} s; last lines of its log:\n"
                        f"{tail(manager.log_path('iot-process'), 20)}"
                    )
                if duration is not None and live_since is not None and now - live_since >= duration:
                    break
                dead = [name for name in started if manager.running(name) is None]
                if dead:
                    raise MillraceError(
                        f"{dead[0]} exited; last lines of its log:\n{tail(manager.log_path(dead[0]), 20)}"
                    )
    except KeyboardInterrupt as exc:
        interrupted = exc
    finally:
        signal.signal(signal.SIGTERM, previous)
        if isinstance(interrupted, KeyboardInterrupt) and not signals.received:
            signals.received.append(signal.SIGINT)  # the CLI exits 130 after the clean stop (docs/cli.md)
        if not keep:
            if SOURCE in started:
                with err_console.status("stopping the simulator..."):
                    manager.stop(SOURCE, timeout_s=30.0)
            audit = _settled_audit(settings, manager, running_job="iot-process" in started)
            _stop_pipeline(stack, started)
        # Read the figures after the job finished its last micro-batch, before Kafka goes away.
        figures = monitor.figures() if monitor is not None else None
        if not keep and not kafka_was_running:
            with err_console.status("stopping Kafka..."):
                stack.down()
    if figures is not None:
        console.print(_summary(figures))
        if audit is not None:
            console.print(_audit_table(audit))
            console.print(_audit_totals(audit), highlight=False)
            console.print(f"[green]{audit.verdict()}[/]" if audit.ok else f"[red]{audit.verdict()}[/]")
        elif keep:
            console.print("the pipeline keeps running: `millrace audit` reconciles it once it is idle")
        if figures["stored"] == 0 and interrupted is None:  # stopped before the job stored anything: no failure
            raise MillraceError(f"the pipeline stored no readings; see {manager.log_path('iot-process')}")
        if audit is not None and not audit.ok:
            raise MillraceError(f"the audit found readings lost or duplicated: {audit.verdict()}")


def _interrupt(signum: int, frame: object) -> None:
    signals.received.append(signum)  # the CLI exits 143 after the clean stop (docs/cli.md)
    raise KeyboardInterrupt


def _layout(settings: Settings, *, secure: bool | None, brokers: int | None) -> Settings:
    """The settings with --secure / --brokers applied: --secure alone means the three-broker secured layout."""
    changes: dict[str, object] = {}
    if secure is not None:
        changes["security"] = "sasl_ssl" if secure else "none"
    if brokers is not None:
        changes["brokers"] = brokers
    elif secure and settings.runtime.brokers == 1:
        changes["brokers"] = 3
    if not changes:
        return settings
    return settings.model_copy(update={"runtime": settings.runtime.model_copy(update=changes)})


class _Principals:
    """Per-process Kafka settings: on a secured cluster each principal's (as in its client env file), passed to
    the child through its environment (never its command line); on a plaintext one, nothing changes."""

    def __init__(self, stack: Stack) -> None:
        self.settings = stack.settings
        self.security = load_security(stack.settings.state_dir) if stack.settings.runtime.security != "none" else None
        self.bootstrap = stack.kafka_cluster().bootstrap_servers

    @property
    def secured(self) -> bool:
        return self.security is not None

    def settings_of(self, principal: str) -> Settings:
        if self.security is None:
            return self.settings
        kafka = self.security.client_settings(principal, self.bootstrap)
        return self.settings.model_copy(update={"kafka": kafka})

    def env(self, principal: str) -> dict[str, str]:
        rt = self.settings.runtime  # the children see the cluster's layout as the demo does (stack views)
        layout = {"MILLRACE_RUNTIME__BROKERS": str(rt.brokers), "MILLRACE_RUNTIME__SECURITY": rt.security}
        if self.security is None:
            return layout
        lines = client_env(self.security.client_settings(principal, self.bootstrap)).splitlines()
        return {**layout, **dict(line.split("=", 1) for line in lines)}


def _backfill(
    settings: Settings, config_path: Any, fleet: FleetOptions, seconds: float, *, env: dict[str, str]
) -> datetime:
    """Produce ``seconds`` of history ending now; returns the event time where the history ends."""
    start = datetime.now(UTC) - timedelta(seconds=seconds)
    steps = max(1, math.ceil(seconds / fleet.interval_s))
    argv = millrace_argv(
        settings,
        config_path,
        "iot",
        "simulate",
        *fleet.args(),
        "--duration",
        str(seconds),
        "--start",
        to_iso(start),
        "--json",
    )
    child = {**os.environ, **env}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, env=child)
    if result.returncode != 0:
        raise MillraceError(f"the history simulator failed: {result.stderr.strip()[-500:]}")
    return start + timedelta(seconds=steps * fleet.interval_s)


def _settled_audit(settings: Settings, manager: Any, *, running_job: bool) -> AuditReport | None:
    """``millrace audit`` once the job has drained the readings topic: repeated while the job still runs and
    records are unaccounted for (the job has not reached them yet), until ``SETTLE_S``. None, with one line on
    stderr, when Kafka or the store cannot be read."""
    from millrace.stores.factory import open_store

    deadline = time.monotonic() + SETTLE_S
    try:
        with err_console.status("waiting for the job to drain the readings topic, then auditing..."):
            while True:
                store = open_store(settings)
                try:
                    report = run_audit(settings, store)
                finally:
                    store.close()
                job_alive = running_job and manager.running("iot-process") is not None
                if report.ok or not job_alive or time.monotonic() > deadline:
                    return report
                time.sleep(2.0)  # the job runs a micro-batch per second
    except KeyboardInterrupt:  # a second Ctrl-C: skip the audit, not the clean stop
        err_console.print("[yellow]audit skipped[/]", highlight=False)
        return None
    except Exception as exc:  # whatever happens here, the caller still stops the pipeline and Kafka
        err_console.print(f"[yellow]no audit: {exc}[/]", highlight=False)
        return None


def _stop_pipeline(stack: Stack, started: list[str]) -> None:
    with err_console.status("stopping the pipeline (the Spark job finishes its micro-batch)..."):
        for name in PIPELINE:
            if name in started:
                stack.manager.stop(name, timeout_s=90.0)


class _Monitor:
    """Live figures read from Kafka offsets and the store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.conf = {**settings.kafka.client_config(), "log_level": 0}  # the monitor never spams the screen
        self.base_readings = self._offsets(settings.topics.readings)
        self.base_dead = self._offsets(settings.topics.dead_letter)
        self.store: Any = None
        self.started = time.monotonic()
        self.last: tuple[float, int] = (self.started, 0)
        self.rate = 0.0

    def _offsets(self, topic: str) -> int:
        try:
            return sum(p.high for p in describe_topic(self.conf, topic, timeout_s=5).partitions)
        except Exception:  # the broker may be restarting: show the last known figure
            return 0

    def _store(self) -> Any:
        if self.store is None:
            from millrace.stores.factory import open_store

            self.store = open_store(self.settings)
        return self.store

    def figures(self) -> dict[str, Any]:
        store = self._store()
        stored = store.count("sensor_metrics")
        now = time.monotonic()
        then, before = self.last
        if now - then >= 1.0:
            self.rate = (stored - before) / (now - then)
            self.last = (now, stored)
        return {
            "produced": self._offsets(self.settings.topics.readings) - self.base_readings,
            "dead_letters": self._offsets(self.settings.topics.dead_letter) - self.base_dead,
            "stored": stored,
            "stored_per_s": self.rate,
            "alerts": store.count("anomaly_alerts"),
            "windows": store.count("windowed_metrics"),
            "quality": store.quality_totals(),
            "recent": store.alerts(limit=6),
        }

    def render(self, manager: Any, figures: dict[str, Any]) -> Group:
        procs = Table("process", "pid", "state", "uptime", box=None)
        for rec in sorted(manager.records(), key=lambda r: r.name):
            procs.add_row(rec.name, str(rec.pid), _state(rec), f"{rec.uptime_s:.0f} s")
        flow = Table("produced", "stored", "stored/s", "dead letters", "windows", "alerts", box=None)
        flow.add_row(
            f"{figures['produced']:,}",
            f"{figures['stored']:,}",
            f"{figures['stored_per_s']:,.0f}",
            f"{figures['dead_letters']:,}",
            f"{figures['windows']:,}",
            f"{figures['alerts']:,}",
        )
        alerts = Table("updated", "device", "kind", "severity", "score", "reason", box=None)
        for alert in figures["recent"]:
            colour = {"critical": "red", "warning": "yellow"}.get(str(alert.get("severity")), "white")
            updated = alert.get("updated_at")
            alerts.add_row(
                updated.strftime("%H:%M:%S") if hasattr(updated, "strftime") else str(updated),
                str(alert.get("device_id")),
                str(alert.get("kind")),
                f"[{colour}]{alert.get('severity')}[/]",
                f"{float(alert.get('score') or 0):.1f}",
                str(alert.get("reason", ""))[:70],
            )
        elapsed = time.monotonic() - self.started
        return Group(
            Panel(procs, title=f"millrace demo — {elapsed:.0f} s — dashboard {api_url(self.settings)}/"),
            Panel(flow, title="pipeline"),
            Panel(alerts, title="latest alerts"),
        )


def _state(rec: ProcessRecord) -> str:
    return "[green]running[/]" if rec.alive else "[red]exited[/]"


def _summary(figures: dict[str, Any]) -> Table:
    table = Table(title="demo summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key in ("produced", "stored", "dead_letters", "windows", "alerts"):
        table.add_row(key.replace("_", " "), f"{figures[key]:,}")
    for key, value in sorted(figures["quality"].items()):
        table.add_row(f"quality: {key}", f"{value:,}")
    return table


def _audit_table(report: AuditReport) -> Table:
    """The audit per partition of the readings topic (the columns of `millrace audit`)."""
    table = Table(title=f"audit of {report.topic}")
    columns = ("partition", "offsets", "produced", "stored", "dead-lettered", "deduplicated", "missing")
    for column in (*columns, "duplicated", "outside"):
        table.add_column(column, justify="right")
    for p in report.partitions:
        table.add_row(
            str(p.partition),
            f"{p.low}-{p.high}",
            f"{p.produced:,}",
            f"{p.stored:,}",
            f"{p.dead_lettered:,}",
            f"{p.deduplicated:,}",
            f"[red]{p.missing:,}[/]" if p.missing else "0",
            f"[red]{p.duplicated:,}[/]" if p.duplicated else "0",
            f"{p.outside:,}",
        )
    return table


def _audit_totals(report: AuditReport) -> str:
    names = ("produced", "stored", "dead_lettered", "deduplicated", "missing", "duplicated", "outside")
    return "audit totals: " + ", ".join(f"{n.replace('_', '-')} {report.total(n)}" for n in names)
