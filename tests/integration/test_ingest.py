"""IoT ingestion against a real broker: simulate and replay produce exactly what they report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import NewTopic

from millrace.config import Settings
from millrace.iot.faults import MALFORMED_VARIANTS, classify_malformed
from millrace.iot.fleet import FleetConfig
from millrace.iot.live_stats import LiveStats
from millrace.iot.replay import replay
from millrace.iot.simulator import Simulator, simulate_frame
from millrace.iot.sinks import KafkaSink, pump
from millrace.iot.tabular import read_table
from millrace.kafka.admin import admin_client
from millrace.kafka.consumer import make_consumer
from tests.helpers import unique, wait_for

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


def create_topic(client_config: dict[str, object], partitions: int = 3) -> str:
    name = unique("ingest")
    admin = admin_client(client_config)
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


def consume_exactly(client_config: dict[str, object], topic: str, expected: int, *, timeout_s: float = 60.0):
    """Consume until ``expected`` messages arrived (deadline), then one more poll to catch any extras."""
    consumer = make_consumer(client_config, unique("g"))
    consumer.subscribe([topic])
    got: list = []

    def more() -> bool:
        got.extend(m for m in consumer.consume(5000, 0.5) if m.error() is None)
        return len(got) >= expected

    try:
        wait_for(more, timeout_s=timeout_s, what=f"{expected} messages on {topic}")
        got.extend(m for m in consumer.consume(5000, 1.0) if m.error() is None)
    finally:
        consumer.close()
    return got


def test_simulated_counts_per_type_and_kind_equal_consumed(settings: Settings, client_config: dict) -> None:
    topic = create_topic(client_config)
    cfg = FleetConfig(devices=5, locations=2, start=START, seed=11, anomaly_rate=0.1)
    sink = KafkaSink(settings, topic=topic)
    live = LiveStats(sink.stats)
    sent = pump(Simulator(cfg, duration_s=600).batches(), sink, live)
    assert sink.flush(60) == 0
    assert (sink.stats.delivered, sink.stats.failed, sent) == (live.sent, 0, live.sent)

    messages = consume_exactly(client_config, topic, sent)
    assert len(messages) == sent
    payloads = [orjson.loads(m.value()) for m in messages]
    assert Counter(p["sensor_type"] for p in payloads) == live.by_type
    assert Counter(p["ground_truth"] for p in payloads) == live.by_kind
    assert all(m.key().decode() == p["sensor_id"] for m, p in zip(messages, payloads, strict=True))
    # Ground truth on the wire is the simulator's, reading by reading.
    frame = simulate_frame(cfg, duration_s=600)
    expected = {(r.sensor_id, r.seq): (r.value, r.ground_truth) for r in frame.itertuples(index=False)}
    assert {(p["sensor_id"], p["seq"]): (p["value"], p["ground_truth"]) for p in payloads} == expected
    assert len(set(live.by_kind)) >= 4  # several anomaly kinds present, not only "normal"
    summary = live.to_json()
    assert summary["delivered"] == sent and summary["latency_ms"]["p99"] > 0


def test_every_malformed_kind_is_produced_as_such(settings: Settings, client_config: dict) -> None:
    topic = create_topic(client_config, partitions=1)
    cfg = FleetConfig(devices=1, locations=1, start=START, seed=5, anomaly_rate=0.0, malformed=0.5)
    sink = KafkaSink(settings, topic=topic)
    batches = list(Simulator(cfg, count=240).batches())
    sent = [m for batch in batches for m in batch]
    pump(batches, sink)
    assert sink.flush(60) == 0 and sink.stats.delivered == len(sent) == 240

    messages = consume_exactly(client_config, topic, len(sent))
    assert [m.value() for m in messages] == [m.value for m in sent]  # one partition: production order
    variants = Counter(classify_malformed(m.value()) for m in messages)
    assert set(variants) == {"ok", *MALFORMED_VARIANTS}
    assert variants["ok"] == sum(m.kind != "fault:malformed" for m in sent)


WIDE_CSV = """time;Temperature;Vibration;label
2026-01-01 00:00:00.000;21.5;0.20;0
2026-01-01 00:00:01.000;21.6;0.21;0
2026-01-01 00:00:02.000;x;0.22;0
2026-01-01 00:00:02.500;29.9;0.22;1
2026-01-01 00:00:04.500;21.7;0.23;0
"""


def test_replay_wide_csv_in_order_with_scaled_timing(settings: Settings, client_config: dict, tmp_path: Path) -> None:
    topic = create_topic(client_config, partitions=1)
    dead = create_topic(client_config, partitions=1)
    path = tmp_path / "line-4.csv"
    path.write_text(WIDE_CSV, encoding="utf-8")
    table = read_table(path)
    sink = KafkaSink(settings, topic=topic)
    sink.dead_letter_topic = dead
    result = replay(table, sink, source=str(path), speed=2.0)
    assert sink.flush(30) == 0
    assert (result.readings, result.dead_letters, sink.stats.delivered) == (8, 1, 9)

    messages = consume_exactly(client_config, topic, 8)
    payloads = [orjson.loads(m.value()) for m in messages]
    assert [(p["sensor_id"], p["value"], p["ground_truth"]) for p in payloads] == [
        ("line-4-temperature", 21.5, "normal"), ("line-4-vibration", 0.2, "normal"),
        ("line-4-temperature", 21.6, "normal"), ("line-4-vibration", 0.21, "normal"),
        ("line-4-temperature", 29.9, "anomaly"), ("line-4-vibration", 0.22, "anomaly"),
        ("line-4-temperature", 21.7, "normal"), ("line-4-vibration", 0.23, "normal"),
    ]  # fmt: skip
    assert payloads[4]["timestamp"] == "2026-01-01T00:00:02.500Z"
    # Kafka's CreateTime is set when the producer queued the message: recorded offsets 0, 1, 2.5, 4.5 s at
    # speed 2 -> sent 0, 0.5, 1.25, 2.25 s after the first.
    sent_ms = [m.timestamp()[1] for m in messages[::2]]
    offsets = [(t - sent_ms[0]) / 1000 for t in sent_ms]
    for got, want in zip(offsets, [0.0, 0.5, 1.25, 2.25], strict=True):
        assert want - 0.02 <= got <= want + 0.3, offsets

    letters = consume_exactly(client_config, dead, 1)
    letter = orjson.loads(letters[0].value())
    assert letters[0].key() == b"row 4"
    assert (letter["position"], letter["stage"], letter["source"]) == ("row 4", "replay", str(path))
    assert letter["reason"] == "non-numeric value 'x' in column 'Temperature'"
    assert letter["raw"] == "2026-01-01 00:00:02.000;x;0.22;0"


def test_replay_speed_zero_is_immediate(settings: Settings, client_config: dict, tmp_path: Path) -> None:
    topic = create_topic(client_config, partitions=1)
    path = tmp_path / "slow.csv"
    path.write_text("time,temp\n2026-01-01T00:00:00Z,1\n2026-01-01T01:00:00Z,2\n", encoding="utf-8")
    sink = KafkaSink(settings, topic=topic)
    replay(read_table(path), sink, source=str(path), speed=0)
    assert sink.flush(30) == 0
    messages = consume_exactly(client_config, topic, 2)
    assert messages[1].timestamp()[1] - messages[0].timestamp()[1] < 1000  # an hour of data, not an hour


def _cli(settings: Settings, *args: str) -> dict:
    env = {**os.environ, "MILLRACE_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers}
    done = subprocess.run(
        [sys.executable, "-m", "millrace.cli.main", "--state-dir", str(settings.state_dir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cli_simulate_and_replay_json(settings: Settings, client_config: dict, tmp_path: Path) -> None:
    topic = create_topic(client_config)
    summary = _cli(
        settings,
        "iot",
        "simulate",
        "--count",
        "3000",
        "--devices",
        "5",
        "--topic",
        topic,
        "--fault-rate",
        "duplicate=0.01",
        "--json",
    )
    duplicates = summary["by_kind"].get("fault:duplicate", 0)
    assert summary["sent"] == summary["delivered"] == 3000 + duplicates and summary["failed"] == 0
    assert sum(summary["by_sensor_type"].values()) == summary["sent"]
    assert len(consume_exactly(client_config, topic, summary["sent"])) == summary["sent"]

    path = tmp_path / "wide.csv"
    path.write_text(WIDE_CSV, encoding="utf-8")
    replay_topic = create_topic(client_config, partitions=1)
    summary = _cli(settings, "iot", "replay", str(path), "--speed", "0", "--topic", replay_topic, "--json")
    assert summary["replay"]["readings"] == 8 and summary["replay"]["dead_letters"] == 1
    assert summary["delivered"] == 9 and summary["by_kind"] == {"anomaly": 2, "dead_letter": 1, "normal": 6}
    assert summary["by_sensor_type"] == {"generic": 8, "(bad row)": 1}  # no type read into the names

    # A long file declares its types in a type column; a mapping file gives a wide file's columns theirs.
    long = tmp_path / "long.csv"
    long.write_text(
        "ts,sensor,type,value\n2026-01-01T00:00:00Z,m1-t,temperature,21.5\n"
        "2026-01-01T00:00:00Z,m1-h,humidity,40\n2026-01-01T00:00:01Z,m1-t,temperature,21.6\n"
    )
    summary = _cli(settings, "iot", "replay", str(long), "--speed", "0", "--topic", replay_topic, "--json")
    assert summary["delivered"] == 3 and summary["by_sensor_type"] == {"temperature": 2, "humidity": 1}
    types = tmp_path / "types.csv"
    types.write_text("column,type\nTemperature,temperature\n", encoding="utf-8")
    summary = _cli(
        settings, "iot", "replay", str(path), "--speed", "0", "--topic", replay_topic, "--types", str(types), "--json"
    )
    assert summary["by_sensor_type"] == {"temperature": 4, "generic": 4, "(bad row)": 1}


def test_full_local_queue_blocks_without_losing_or_reordering(settings: Settings, client_config: dict) -> None:
    topic = create_topic(client_config)
    cfg = FleetConfig(devices=10, start=START, seed=2, anomaly_rate=0.0)
    sink = KafkaSink(settings, topic=topic, extra_config={"queue.buffering.max.messages": 300})
    sent = pump(Simulator(cfg, count=30_000).batches(), sink)
    assert sink.flush(60) == 0 and (sent, sink.stats.delivered, sink.stats.failed) == (30_000, 30_000, 0)
    messages = consume_exactly(client_config, topic, sent)
    seqs: dict[str, list[int]] = {}
    for msg in messages:
        data = orjson.loads(msg.value())
        seqs.setdefault(data["sensor_id"], []).append(data["seq"])
    assert len(messages) == 30_000 and len(seqs) == 60
    assert all(s == list(range(500)) for s in seqs.values())  # every reading, in order per key


def test_parallel_workers_produce_every_reading_once_in_order_per_sensor(
    settings: Settings, client_config: dict
) -> None:
    from millrace.iot.parallel import run_workers
    from millrace.kafka.stats import DeliveryStats

    topic = create_topic(client_config)
    cfg = FleetConfig(devices=7, start=START, seed=4, anomaly_rate=0.1)
    live = LiveStats(DeliveryStats())
    assert run_workers(settings, cfg, live, workers=2, count=20_000, topic=topic) == 0
    assert (live.sent, live.stats.delivered, live.stats.failed) == (20_000, 20_000, 0)

    messages = consume_exactly(client_config, topic, 20_000)
    payloads = [orjson.loads(m.value()) for m in messages]
    frame = simulate_frame(cfg, count=20_000)  # the union of the shards is the unsharded run
    assert sorted((p["sensor_id"], p["seq"], p["value"], p["ground_truth"]) for p in payloads) == sorted(
        zip(frame["sensor_id"], frame["seq"], frame["value"], frame["ground_truth"], strict=True)
    )
    per_sensor: dict[str, list[int]] = {}
    for p in payloads:
        per_sensor.setdefault(p["sensor_id"], []).append(p["seq"])
    assert all(seqs == sorted(seqs) for seqs in per_sensor.values())
    assert Counter(p["sensor_type"] for p in payloads) == live.by_type
    assert Counter(p["ground_truth"] for p in payloads) == live.by_kind
