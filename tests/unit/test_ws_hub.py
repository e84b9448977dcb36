"""Pure logic of the service: WebSocket fan-out with bounded queues and filters, subscribe parsing, JSON
encoding of store rows, message pretty-printing and topic sizes from log dirs."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from millrace.services.kafka_view import _log_dir_sizes, pretty_value
from millrace.services.problems import dumps
from millrace.services.ws import Hub, parse_subscribe, sensor_type_of


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _frames(client) -> list[dict]:  # type: ignore[no-untyped-def]
    return [orjson.loads(f) for f in client.take()]


def test_publish_honours_channels_and_filters(loop: asyncio.AbstractEventLoop) -> None:
    hub = Hub(queue_size=10)
    everything = hub.connect(loop)
    everything.channels = frozenset({"sensors", "alerts", "quality", "windows"})
    loc2 = hub.connect(loop)
    loc2.channels, loc2.filters = frozenset({"sensors", "alerts", "quality"}), {"location": "loc-02"}
    humid = hub.connect(loop)
    humid.channels, humid.filters = frozenset({"alerts"}), {"sensor_type": "humidity"}
    hub.publish("sensors", {"sensor_id": "dev-0001-temperature", "location": "loc-01", "sensor_type": "temperature"})
    hub.publish("sensors", {"sensor_id": "dev-0002-humidity", "location": "loc-02", "sensor_type": "humidity"})
    hub.publish("alerts", {"alert_id": "a1", "location": "loc-02", "sensor_ids": ["dev-0002-humidity"]})
    hub.publish("quality", {"batch_id": 1})  # quality is never filtered
    hub.publish("windows", {"key": "k", "location": "loc-02"})
    assert [
        (
            f["channel"],
            f["data"].get("sensor_id") or f["data"].get("alert_id") or f["data"].get("key") or f["data"]["batch_id"],
        )
        for f in _frames(everything)
    ] == [
        ("sensors", "dev-0001-temperature"),
        ("sensors", "dev-0002-humidity"),
        ("alerts", "a1"),
        ("quality", 1),
        ("windows", "k"),
    ]
    assert [f["channel"] for f in _frames(loc2)] == ["sensors", "alerts", "quality"]
    assert [f["data"]["alert_id"] for f in _frames(humid)] == ["a1"]
    assert hub.stats()["published"] == {"sensors": 2, "alerts": 1, "quality": 1, "windows": 1}


def test_full_queue_drops_oldest_and_counts(loop: asyncio.AbstractEventLoop) -> None:
    hub = Hub(queue_size=3)
    slow = hub.connect(loop)
    slow.channels = frozenset({"quality"})
    for n in range(5):
        hub.publish("quality", {"batch_id": n})
    assert slow.dropped == 2
    assert [f["data"]["batch_id"] for f in _frames(slow)] == [2, 3, 4]  # the newest survive
    hub.publish("quality", {"batch_id": 5})
    assert [f["data"]["batch_id"] for f in _frames(slow)] == [5] and slow.dropped == 2
    hub.disconnect(slow)
    assert hub.stats()["dropped_total"] == 2 and hub.stats()["clients"] == []


def test_wake_is_scheduled_once_per_batch(loop: asyncio.AbstractEventLoop) -> None:
    hub = Hub()
    client = hub.connect(loop)
    client.channels = frozenset({"quality"})
    for n in range(3):
        hub.publish("quality", {"batch_id": n})
    loop.call_soon(loop.stop)
    loop.run_forever()  # runs the one wake callback scheduled from the publishing side
    assert client.wake.is_set()
    assert len(client.take()) == 3 and not client.wake.is_set()


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"listen": ["alerts"]}, "expected"),
        ([], "expected"),
        ({"subscribe": [1]}, "list of channel names"),
        ({"subscribe": ["alerts", "weather"]}, "unknown channel(s) ['weather']"),
        ({"subscribe": ["alerts"], "filters": []}, "filters must be an object"),
        ({"subscribe": ["alerts"], "filters": {"device": "x"}}, "unknown filter(s) ['device']"),
    ],
)
def test_parse_subscribe_rejects(message: object, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_subscribe(message)


def test_parse_subscribe_accepts() -> None:
    assert parse_subscribe({"subscribe": "alerts"}) == (frozenset({"alerts"}), {})
    assert parse_subscribe(
        {"subscribe": ["sensors", "quality"], "filters": {"location": "loc-01", "sensor_type": None}}
    ) == (frozenset({"sensors", "quality"}), {"location": "loc-01"})


def test_sensor_type_of() -> None:
    assert sensor_type_of("dev-0001-temperature") == "temperature"
    assert sensor_type_of("dev-0001-current") == "current"
    assert sensor_type_of("thermometer") is None


def test_dumps_makes_store_rows_json_safe() -> None:
    row = {
        "t": datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
        "naive": datetime(2026, 3, 1),
        "nan": math.nan,
        "inf": np.float64(np.inf),
        "n": np.int64(3),
        "f": np.float32(0.5),
        "ts": pd.Timestamp("2026-03-01T12:00:01Z"),
        "nat": pd.NaT,
        "tuple": ("a", "b"),
    }
    assert orjson.loads(dumps(row)) == {
        "t": "2026-03-01T12:00:00.123Z",
        "naive": "2026-03-01T00:00:00.000Z",
        "nan": None,
        "inf": None,
        "n": 3,
        "f": 0.5,
        "ts": "2026-03-01T12:00:01.000Z",
        "nat": None,
        "tuple": ["a", "b"],
    }


def test_pretty_value() -> None:
    assert pretty_value(b'{"a": [1, 2]}') == ({"a": [1, 2]}, "json")
    assert pretty_value("température 21".encode()) == ("température 21", "text")
    assert pretty_value(b"\xff\x00") == ("/wA=", "base64")
    assert pretty_value(None) == (None, "null")


def test_log_dir_sizes(tmp_path: Path) -> None:
    data = tmp_path / "node-1" / "data"
    for name, sizes in {
        "millrace.iot.readings-0": (100, 20),
        "millrace.iot.readings-2": (7,),
        "my-topic-with-dashes-1": (5,),
    }.items():
        part = data / name
        part.mkdir(parents=True)
        for i, size in enumerate(sizes):
            (part / f"{i:020d}.log").write_bytes(b"x" * size)
            (part / f"{i:020d}.index").write_bytes(b"i" * 999)  # indexes are not data
    (data / "meta.properties").write_text("node.id=1")
    assert _log_dir_sizes([data, tmp_path / "missing"]) == {
        ("millrace.iot.readings", 0): 120,
        ("millrace.iot.readings", 2): 7,
        ("my-topic-with-dashes", 1): 5,
    }
