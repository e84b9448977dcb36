"""Throughput of the MQTT path: simulator -> Mosquitto (QoS 1) -> bridge -> Kafka (acks=all).

Starts its own Kafka and Mosquitto on free ports in a temporary state dir (through millrace.runtime), then:

1. publish: MqttSink sends N simulated readings with QoS 1 while the bridge is away (its persistent session
   queues them in Mosquitto) -- the rate counts PUBACKs;
2. drain: the bridge starts and moves the backlog into Kafka, acknowledging each message after Kafka's
   delivery report -- the rate counts messages delivered to Kafka and acknowledged;
3. live: publisher and bridge run at the same time; the rate is end to end (first publish to last ack).

Usage: python benchmarks/mqtt_bridge.py [--count 50000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from millrace.config import Settings, load_settings
from millrace.iot.fleet import FleetConfig
from millrace.iot.mqtt_bridge import MqttBridge
from millrace.iot.mqtt_sink import MqttSink
from millrace.iot.simulator import Simulator
from millrace.runtime.mqtt import mqtt_spec
from millrace.runtime.process import free_port
from millrace.runtime.stack import Stack


def _settings(state_dir: Path) -> Settings:
    kafka_port, mqtt_port = free_port(), free_port()
    return load_settings(
        state_dir=state_dir,
        runtime={
            "kafka_port": kafka_port,
            "controller_port": free_port(),
            "kafka_heap": "512m",
            "mqtt_port": mqtt_port,
        },
        kafka={"bootstrap_servers": f"127.0.0.1:{kafka_port}"},
        mqtt={"port": mqtt_port},
    )


class _Cpu:
    def __init__(self) -> None:
        self.proc = psutil.Process(os.getpid())
        times = self.proc.cpu_times()
        self.start = times.user + times.system
        self.wall = time.monotonic()

    def seconds(self) -> float:
        times = self.proc.cpu_times()
        return times.user + times.system - self.start

    def percent(self) -> float:
        return round(100.0 * self.seconds() / (time.monotonic() - self.wall), 1)

    def per_message_ms(self, messages: int) -> float:
        """CPU time of this process per message: a figure that holds up when the machine is busy."""
        return round(1000.0 * self.seconds() / max(1, messages), 3)


def _messages(count: int) -> list[Any]:
    return list(Simulator(FleetConfig(devices=50, locations=5, seed=1), count=count).messages())[:count]


def _publish(settings: Settings, messages: list[Any]) -> dict[str, Any]:
    cpu = _Cpu()
    sink = MqttSink(settings)
    started = time.monotonic()
    sink.send_batch(messages)
    left = sink.flush(120)
    elapsed = time.monotonic() - started
    sink.close()
    snap = sink.stats.snapshot()
    return {
        "messages": len(messages),
        "unacked": left,
        "seconds": round(elapsed, 2),
        "rate_per_s": round(len(messages) / elapsed),
        "puback_latency_ms": snap["latency_ms"],
        "cpu_percent": cpu.percent(),
        "cpu_ms_per_message": cpu.per_message_ms(len(messages)),
    }


def _bridge_result(bridge: MqttBridge, elapsed: float, cpu: _Cpu) -> dict[str, Any]:
    counters, snap = bridge.counters, bridge.stats.snapshot()
    return {
        "received": counters.received,
        "acked": counters.acked,
        "seconds": round(elapsed, 2),
        "rate_per_s": round(counters.acked / elapsed),
        "kafka_latency_ms": snap["latency_ms"],
        "cpu_percent": cpu.percent(),
        "cpu_ms_per_message": cpu.per_message_ms(counters.acked),
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20),
    }


def run(count: int) -> dict[str, Any]:
    messages = _messages(count)
    with tempfile.TemporaryDirectory(prefix="millrace-bench-") as tmp:
        settings = _settings(Path(tmp))
        stack = Stack(settings)
        stack.up()
        stack.manager.start(mqtt_spec(settings))
        try:
            # Register the bridge's persistent session, then leave: Mosquitto queues for it.
            first = MqttBridge(settings, client_id="bench-bridge", commands=False)
            first.connection.open()
            first.subscribed.wait(10)
            first.connection.close()
            published = _publish(settings, messages)

            cpu = _Cpu()
            bridge = MqttBridge(settings, client_id="bench-bridge", commands=False)
            started = time.monotonic()
            bridge.run(count=count)
            drain = _bridge_result(bridge, time.monotonic() - started, cpu)

            cpu = _Cpu()
            live_bridge = MqttBridge(settings, client_id="bench-live", commands=False)
            thread = threading.Thread(target=live_bridge.run, kwargs={"count": count}, daemon=True)
            thread.start()
            live_bridge.subscribed.wait(30)
            started = time.monotonic()
            sink = MqttSink(settings)
            sink.send_batch(messages)
            sink.flush(120)
            sink.close()
            thread.join(300)
            live = _bridge_result(live_bridge, time.monotonic() - started, cpu)
        finally:
            stack.down()
    return {
        "count": count,
        "publish": published,
        "drain": drain,
        "live": live,
        "load_average": os.getloadavg(),
        "machine": f"{psutil.cpu_count()} cores, {round(psutil.virtual_memory().total / 2**30)} GiB",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.count)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for phase in ("publish", "drain", "live"):
        data = result[phase]
        lat = data.get("puback_latency_ms") or data.get("kafka_latency_ms")
        print(
            f"{phase:8s} {data['rate_per_s']:>8,} msg/s in {data['seconds']:6.2f} s  "
            f"p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms  cpu {data['cpu_percent']}% "
            f"({data['cpu_ms_per_message']} ms/msg)"
        )


if __name__ == "__main__":
    main()
