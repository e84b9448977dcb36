"""``millrace iot mqtt-bridge``: MQTT readings into Kafka, Kafka device commands out to MQTT."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from millrace.cli.common import console, err_console, print_json, settings_of
from millrace.cli.signals import stopping
from millrace.errors import MillraceError, missing_extra
from millrace.kafka.admin import require_kafka
from millrace.kafka.stats import DeliveryStats
from millrace.telemetry import serving


def mqtt_bridge(
    ctx: typer.Context,
    duration: Annotated[
        float | None,
        typer.Option("--duration", min=0.0, help="Stop after this many seconds (default: run until Ctrl-C)."),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option("--count", min=1, help="Stop after this many MQTT messages are in Kafka and acked."),
    ] = None,
    client_id: Annotated[
        str, typer.Option(help="MQTT client id; keep it fixed so the broker keeps the session between runs.")
    ] = "millrace-bridge",
    commands: Annotated[
        bool, typer.Option("--commands/--no-commands", help="Also relay device commands from Kafka to MQTT.")
    ] = True,
    command_group: Annotated[str, typer.Option(help="Kafka consumer group of the command relay.")] = (
        "millrace-mqtt-commands"
    ),
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON summary at the end, no live display.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live display and no summary.")] = False,
) -> None:
    """Subscribe to mqtt.readings_topic (sensors/<location>/<device>/<type>) and produce readings to Kafka.

    QoS 1 with acknowledgement only after Kafka confirmed delivery, on a persistent session: nothing is lost
    when the bridge or the broker restarts. Bad payloads go to the dead-letter topic. Device commands from
    topics.device_commands are published to mqtt.command_topic.
    """
    settings = settings_of(ctx)
    try:
        from millrace.iot.live_stats import LiveStats
        from millrace.iot.mqtt_bridge import MqttBridge
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("paho"):
            raise missing_extra("paho-mqtt", "mqtt") from None
        raise
    stop = threading.Event()
    m = settings.metrics
    metrics = serving("mqtt-bridge", settings.state_dir, m.mqtt_bridge_port, host=m.host, enabled=m.enabled)
    with stopping(stop, grace_s=60.0, what="the MQTT bridge"), metrics:
        require_kafka(settings.kafka.client_config(), stop=stop.is_set)
        if stop.is_set():
            return
        stats = DeliveryStats()
        title = f"mqtt-bridge {settings.mqtt.host}:{settings.mqtt.port} {settings.mqtt.readings_topic} → " + (
            settings.topics.readings
        )
        live = LiveStats(stats, title=title, console=err_console)
        bridge = MqttBridge(
            settings,
            client_id=client_id,
            commands=commands,
            command_group=command_group,
            stats=stats,
            recorder=live,
        )
        with live.live(enabled=not (quiet or json_)):
            counters = bridge.run(stop, duration_s=duration, count=count)
    undelivered = len(bridge.producer)
    live.finish(undelivered)
    relay = bridge.relay
    command_counts = {"published": relay.published, "dead_letters": relay.dead_letters} if relay else None
    if json_:
        print_json({**live.to_json(), "bridge": counters.as_dict(), "commands": command_counts})
    elif not quiet:
        console.print(live.summary())
        console.print(
            f"MQTT messages: {counters.received:,} received, {counters.readings:,} readings, "
            f"{counters.dead_letters:,} dead letters, {counters.acked:,} acknowledged, "
            f"{counters.redelivered:,} redelivered"
            + (f"; commands: {command_counts['published']:,} published" if command_counts else "")
        )
    if undelivered:
        raise MillraceError(
            f"{undelivered} messages still undelivered to Kafka (they stay unacknowledged in MQTT "
            "and will be delivered by the next run)"
        )
