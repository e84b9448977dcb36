"""``millrace iot simulate | replay`` (the MQTT bridge and the Spark job attach their own commands)."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from millrace.cli.common import console, err_console, print_json, settings_of
from millrace.cli.signals import stopping
from millrace.config import Settings
from millrace.errors import DataError, MillraceError, UsageError, missing_extra
from millrace.iot.fleet import FAULTS, FleetConfig
from millrace.iot.live_stats import LiveStats
from millrace.iot.sinks import KafkaSink, Sink, pump
from millrace.kafka.admin import require_kafka
from millrace.records import parse_iso
from millrace.telemetry import MetricsServer, serving

# A clean stop flushes what is queued (up to 60 s in _finish); past this the process exits anyway.
GRACE_S = 75.0

app = typer.Typer(help="IoT ingestion: simulate a device fleet, replay data sets, bridge MQTT.", no_args_is_help=True)


class Via(StrEnum):
    kafka = "kafka"
    mqtt = "mqtt"


def _fault_rates(items: list[str]) -> dict[str, float]:
    rates: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if name == "all":
            names = list(FAULTS)
        elif name in FAULTS:
            names = [name]
        else:
            raise UsageError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}, all", param_hint="--fault-rate")
        try:
            rate = float(value)
        except ValueError:
            raise UsageError(f"{item!r}: expected NAME=P, e.g. malformed=0.01", param_hint="--fault-rate") from None
        if not 0 <= rate <= 1:
            raise UsageError(f"{item!r}: P must be between 0 and 1", param_hint="--fault-rate")
        rates.update(dict.fromkeys(names, rate))
    return rates


def _start_time(text: str) -> datetime:
    try:
        at = parse_iso(text)
    except ValueError:
        raise UsageError(f"expected an ISO 8601 time such as 2026-01-01T00:00:00Z, got {text!r}", "--start") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _finish(live: LiveStats, sink: Sink, *, json_: bool, quiet: bool) -> None:
    with err_console.status("waiting for the last deliveries...") if not quiet and not json_ else _null():
        undelivered = sink.flush(60.0)
    live.finish(undelivered)
    sink.close()
    _report(live, json_=json_, quiet=quiet)


def _report(live: LiveStats, *, json_: bool, quiet: bool) -> None:
    if json_:
        print_json(live.to_json())
    elif not quiet:
        console.print(live.summary())
    if live.undelivered or live.stats.failed:
        raise MillraceError(
            f"{live.stats.failed} messages failed and {live.undelivered} were still undelivered "
            f"(last error: {live.stats.last_error})"
        )


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@app.command()
def simulate(
    ctx: typer.Context,
    devices: Annotated[int, typer.Option(min=1, help="Devices (machines); each has all sensor types.")] = 10,
    locations: Annotated[int, typer.Option(min=1, help="Locations the devices are spread over.")] = 3,
    rate: Annotated[float, typer.Option(min=0, help="Messages per second; 0 = as fast as possible.")] = 0.0,
    duration: Annotated[
        float | None, typer.Option(min=0, help="Event-time span to simulate, seconds (default 60 s of data).")
    ] = None,
    count: Annotated[int | None, typer.Option(min=1, help="Number of readings instead of a duration.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: same seed and options, same data.")] = 42,
    anomaly_rate: Annotated[float, typer.Option(min=0, max=0.5, help="Fraction of sensor-time in anomalies.")] = 0.02,
    fault_rate: Annotated[
        list[str] | None,
        typer.Option("--fault-rate", help=f"NAME=P, repeatable; NAME one of {', '.join(FAULTS)} or all."),
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Event-time seconds between a sensor's readings (default: 1, or "
            "sensors/rate with --rate so event time keeps pace with the wall clock).",
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(help="Event time of the first reading, ISO 8601 (default: now - duration, or now with --rate)."),
    ] = None,
    forever: Annotated[bool, typer.Option(help="Run until interrupted (needs --rate).")] = False,
    workers: Annotated[
        int,
        typer.Option(min=1, max=64, help="Producer processes (Kafka only); each produces a share of the devices."),
    ] = 1,
    via: Annotated[Via, typer.Option(help="Send through Kafka directly or publish over MQTT.")] = Via.kafka,
    topic: Annotated[str | None, typer.Option(help="Kafka topic (default: topics.readings).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON summary at the end, nothing else.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live display and no summary.")] = False,
) -> None:
    """Simulate a fleet of devices with labelled anomalies (and optional data faults) and produce it."""
    settings = settings_of(ctx)
    if forever and rate <= 0:
        raise UsageError("needs --rate (messages per second)", param_hint="--forever")
    if duration is None and count is None and not forever:
        duration = 60.0
    sensors = devices * 6
    interval_s = interval or (sensors / rate if rate > 0 else 1.0)
    if start is not None:
        start_at: datetime | None = _start_time(start)
    elif rate > 0:
        start_at = datetime.now(UTC)
    else:
        start_at = None
    options: dict[str, Any] = {
        "devices": devices,
        "locations": locations,
        "interval_s": interval_s,
        "start": start_at,
        "seed": seed,
        "anomaly_rate": anomaly_rate,
        **_fault_rates(fault_rate or []),
    }
    try:
        cfg = FleetConfig(**options)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    target = (topic or settings.topics.readings) if via is Via.kafka else settings.mqtt.readings_topic
    title = f"simulate → {via.value} {target}"
    duration_s, count_n = (None, None) if forever else (duration, count)
    if workers > 1 and via is not Via.kafka:
        raise UsageError("parallel producers need --via kafka", param_hint="--workers")
    stop = threading.Event()
    with stopping(stop, grace_s=GRACE_S, what="simulate"), _metrics(settings, workers > 1) as metrics:
        if via is Via.kafka:
            require_kafka(settings.kafka.client_config(), stop=stop.is_set)
        if stop.is_set():  # stopped during start-up: nothing was produced
            return
        if workers > 1:
            metrics_dir = metrics.multiproc_dir if metrics is not None else None
            _simulate_parallel(
                settings, cfg, title, workers, duration_s, count_n, rate, topic, stop, json_, quiet, metrics_dir
            )
            return
        from millrace.iot.simulator import Simulator

        simulator = Simulator(cfg, duration_s=duration_s, count=count_n)
        sink = _sink(settings, via, topic)
        live = LiveStats(sink.stats, title=title, console=err_console)
        with live.live(enabled=not (quiet or json_)):
            pump(simulator.batches(), sink, live, rate=rate, stop=stop)
        _finish(live, sink, json_=json_, quiet=quiet)


def _simulate_parallel(
    settings: Settings,
    cfg: FleetConfig,
    title: str,
    workers: int,
    duration_s: float | None,
    count: int | None,
    rate: float,
    topic: str | None,
    stop: threading.Event,
    json_: bool,
    quiet: bool,
    metrics_dir: Path | None = None,
) -> None:
    from millrace.iot.parallel import run_workers
    from millrace.kafka.stats import DeliveryStats

    live = LiveStats(DeliveryStats(), title=f"{title} ({workers} workers)", console=err_console)
    with live.live(enabled=not (quiet or json_)):
        undelivered = run_workers(
            settings,
            cfg,
            live,
            workers=workers,
            duration_s=duration_s,
            count=count,
            rate=rate,
            topic=topic,
            stop=stop,
            metrics_dir=metrics_dir,
        )
    live.finish(undelivered)
    _report(live, json_=json_, quiet=quiet)


def _metrics(settings: Settings, multiprocess: bool = False) -> AbstractContextManager[MetricsServer | None]:
    """The ingest process's metrics endpoint (docs/metrics.md), with a multiprocess directory for workers."""
    m = settings.metrics
    return serving(
        "ingest", settings.state_dir, m.ingest_port, host=m.host, enabled=m.enabled, multiprocess=multiprocess
    )


def _sink(settings: Settings, via: Via, topic: str | None) -> Sink:
    if via is Via.mqtt:
        try:
            from millrace.iot.mqtt_sink import MqttSink
        except ModuleNotFoundError as exc:
            raise missing_extra(exc.name or "paho-mqtt", "mqtt") from None
        return MqttSink(settings)
    return KafkaSink(settings, topic=topic)


@app.command()
def replay(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV (any separator, .gz ok) or Parquet.")],
    speed: Annotated[
        float,
        typer.Option(min=0, help="1 = recorded timing, 10 = ten times faster, 0 = as fast as possible."),
    ] = 1.0,
    layout: Annotated[
        str, typer.Option(help="auto, long (one reading per row) or wide (one column per sensor).")
    ] = "auto",
    sep: Annotated[str | None, typer.Option(help="CSV separator (default: detected).")] = None,
    time_column: Annotated[str | None, typer.Option(help="Time column (default: detected by name).")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column carried as ground truth.")] = None,
    sensor_column: Annotated[str | None, typer.Option(help="Long layout: sensor id column.")] = None,
    value_column: Annotated[str | None, typer.Option(help="Long layout: value column.")] = None,
    type_column: Annotated[str | None, typer.Option(help="Long layout: sensor type column.")] = None,
    ignore_column: Annotated[
        list[str] | None, typer.Option(help="Wide layout: a column that is not a sensor (repeatable).")
    ] = None,
    types: Annotated[
        Path | None,
        typer.Option(
            "--types",
            exists=True,
            dir_okay=False,
            help="Sensor type per column or sensor: a .toml or .csv (column,type) file. Unmapped sensors are of "
            "type generic (no physical range).",
        ),
    ] = None,
    location: Annotated[str, typer.Option(help="Location of the readings (when the file has none).")] = "loc-01",
    device: Annotated[str | None, typer.Option(help="Device id (when the file has none; default: file name).")] = None,
    topic: Annotated[str | None, typer.Option(help="Kafka topic (default: topics.readings).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON summary at the end, nothing else.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live display and no summary.")] = False,
) -> None:
    """Replay a recorded data set to Kafka with its inter-arrival times scaled by --speed; bad rows go to the
    dead-letter topic with their row number."""
    from millrace.iot.replay import replay as run_replay
    from millrace.iot.replay import types_without_range
    from millrace.iot.tabular import read_table
    from millrace.iot.type_mapping import read_type_mapping

    settings = settings_of(ctx)
    if layout not in ("auto", "long", "wide"):
        raise UsageError(f"expected auto, long or wide, got {layout!r}", param_hint="--layout")
    table = read_table(
        file,
        sep=sep,
        time_column=time_column,
        label_column=label_column,
        layout=layout,  # type: ignore[arg-type]
        sensor_column=sensor_column,
        value_column=value_column,
        type_column=type_column,
        ignore_columns=ignore_column or [],
        device=device,
        location=location,
        types=read_type_mapping(types) if types is not None else None,
    )
    unknown = types_without_range(table, settings.processing.ranges)
    if unknown:  # sending them would only fill the dead-letter topic
        raise DataError(
            f"{file}: sensor types {', '.join(unknown)} have no range in processing.ranges, so the stream job "
            "would dead-letter their readings as unknown_sensor_type; give each a range in the settings "
            "(processing.ranges.<type> low and high) or map their sensors to generic with --types"
        )
    if not quiet and not json_:
        err_console.print(
            f"{file}: {table.layout} layout, {len(table.frame):,} readings from {table.rows:,} rows, "
            f"{len(table.bad_rows)} bad rows; columns {table.columns}"
        )
    stop = threading.Event()
    with stopping(stop, grace_s=GRACE_S, what="replay"), _metrics(settings):
        require_kafka(settings.kafka.client_config(), stop=stop.is_set)
        if stop.is_set():  # stopped during start-up: nothing was produced
            return
        sink = KafkaSink(settings, topic=topic)
        live = LiveStats(sink.stats, title=f"replay {file.name} → {sink.topic}", console=err_console)
        with live.live(enabled=not (quiet or json_)):
            result = run_replay(table, sink, source=str(file), speed=speed, live=live, stop=stop)
        if json_:
            _finish_replay_json(live, sink, result)
            return
        _finish(live, sink, json_=False, quiet=quiet)
    if not quiet:
        console.print(
            f"{result.readings:,} readings and {result.dead_letters} dead letters sent; "
            f"worst lag behind schedule {result.max_behind_s:.3f} s"
        )


def _finish_replay_json(live: LiveStats, sink: KafkaSink, result: object) -> None:
    undelivered = sink.flush(60.0)
    live.finish(undelivered)
    data = live.to_json()
    data["replay"] = dict(result.__dict__)
    print_json(data)
    if undelivered or live.stats.failed:
        raise MillraceError(f"{live.stats.failed} failed, {undelivered} undelivered")
