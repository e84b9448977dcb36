"""WebSocket channels fed by the service's Kafka consumer: delivery within a deadline, filters, and a slow
client that never reads while a fast one receives everything (the slow client's drop counter grows)."""

from __future__ import annotations

import base64
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
import pytest
from websockets.sync.client import ClientConnection, connect

from millrace.config import Settings
from millrace.jobs.sink import prediction_messages
from millrace.kafka.producer import ReliableProducer, make_producer
from millrace.services.app import create_app
from tests.helpers import wait_for
from tests.integration.fixtures_service import fresh_topics, seeded_store, served

pytestmark = pytest.mark.integration

QUEUE = 200


@pytest.fixture(scope="module")
def live(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str]]:
    """The service on a free port with its own fresh topics and a seeded store (sensor → location)."""
    s = fresh_topics(settings)
    store = seeded_store(Path(tmp_path_factory.mktemp("ws")) / "millrace.db")
    with served(create_app(s, store=store, queue_size=QUEUE)) as url:
        wait_for(
            lambda: httpx.get(f"{url}/api/health").json()["feed"]["ready"],
            timeout_s=60,
            what="the live feed to be assigned its partitions",
        )
        yield s, url
    store.close()


@pytest.fixture(scope="module")
def producer(settings: Settings) -> ReliableProducer:
    return make_producer(settings.kafka.client_config(), linger_ms=0)


def _ws(stack: ExitStack, url: str, channels: list[str], filters: dict[str, str] | None = None) -> ClientConnection:
    conn = stack.enter_context(connect(url.replace("http://", "ws://") + "/ws", compression=None, max_queue=None))
    conn.send(orjson.dumps({"subscribe": channels, "filters": filters or {}}).decode())
    ack = orjson.loads(conn.recv(timeout=10))
    assert ack == {"type": "subscribed", "channels": sorted(channels), "filters": filters or {}}
    return conn


def _recv(conn: ClientConnection, n: int, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    return [orjson.loads(conn.recv(timeout=timeout_s)) for _ in range(n)]


def _send(producer: ReliableProducer, topic: str, key: str, data: dict[str, Any]) -> None:
    producer.produce(topic, orjson.dumps(data), key=key)
    assert producer.flush(30) == 0


def _prediction(sensor_id: str, n: int, pad: str = "") -> dict[str, Any]:
    data: dict[str, Any] = {
        "sensor_id": sensor_id,
        "timestamp": f"2026-03-01T12:00:{n % 60:02d}.000Z",
        "score": 0.5,
        "is_anomaly": False,
        "anomaly_kind": None,
        "n": n,
    }
    if pad:
        data["pad"] = pad
    return data


def _alert(alert_id: str, location: str, sensor_id: str) -> dict[str, Any]:
    return {
        "alert_id": alert_id,
        "device_id": sensor_id.rsplit("-", 1)[0],
        "sensor_ids": [sensor_id],
        "kind": "spike",
        "severity": "critical",
        "score": 9.0,
        "reason": "spike",
        "location": location,
        "opened_at": "2026-03-01T12:00:00.000Z",
        "updated_at": "2026-03-01T12:00:01.000Z",
        "closed_at": None,
        "status": "open",
        "readings": 1,
        "top_features": [],
    }


def _key(msg: dict[str, Any]) -> tuple[str, str]:
    data = msg["data"]
    return msg["channel"], str(data.get("alert_id") or data.get("sensor_id") or data.get("key") or data.get("batch_id"))


def test_channels_and_filters(live: tuple[Settings, str], producer: ReliableProducer) -> None:
    s, url = live
    stack = ExitStack()
    a = _ws(stack, url, ["sensors", "alerts"], {"location": "loc-02"})
    b = _ws(stack, url, ["sensors", "alerts", "quality", "windows"])
    c = _ws(stack, url, ["sensors"], {"sensor_type": "humidity"})
    t = s.topics
    _send(producer, t.predictions, "dev-0001-temperature", _prediction("dev-0001-temperature", 1))
    _send(producer, t.predictions, "dev-0002-humidity", _prediction("dev-0002-humidity", 2))
    _send(producer, t.alerts, "al-a", _alert("al-a", "loc-02", "dev-0002-temperature"))
    _send(producer, t.alerts, "al-b", _alert("al-b", "loc-01", "dev-0001-humidity"))
    _send(producer, t.quality, "7", {"batch_id": 7, "valid": 10, "late": 1})
    _send(
        producer,
        t.windowed_metrics,
        "temperature|loc-02",
        {
            "scope": "type_location",
            "key": "temperature|loc-02",
            "sensor_type": "temperature",
            "location": "loc-02",
            "window_start": "2026-03-01T12:00:00.000Z",
            "window_end": "2026-03-01T12:01:00.000Z",
            "count": 3,
            "mean": 30.0,
            "min": 29.0,
            "max": 31.0,
            "stddev": 1.0,
            "anomaly_count": 0,
        },
    )
    got_b = _recv(b, 6)  # produced to four topics: no order across them
    assert sorted(map(_key, got_b)) == [
        ("alerts", "al-a"),
        ("alerts", "al-b"),
        ("quality", "7"),
        ("sensors", "dev-0001-temperature"),
        ("sensors", "dev-0002-humidity"),
        ("windows", "temperature|loc-02"),
    ]
    enriched = next(m["data"] for m in got_b if _key(m) == ("sensors", "dev-0002-humidity"))
    assert (enriched["location"], enriched["sensor_type"], enriched["device_id"]) == (
        "loc-02",
        "humidity",
        "dev-0002",
    )
    # b has everything, so a's and c's queues hold all they will get from these; a sentinel comes next
    _send(producer, t.predictions, "dev-0002-humidity", _prediction("dev-0002-humidity", 99))
    got_a = _recv(a, 3)
    assert sorted(map(_key, got_a[:2])) == [("alerts", "al-a"), ("sensors", "dev-0002-humidity")]
    assert got_a[2]["data"]["n"] == 99
    got_c = _recv(c, 2)
    assert [(m["channel"], m["data"]["n"]) for m in got_c] == [("sensors", 2), ("sensors", 99)]
    assert _recv(b, 1)[0]["data"]["n"] == 99
    health = httpx.get(f"{url}/api/health").json()
    assert health["feed"]["consumed"] >= 7 and health["feed"]["last_error"] is None
    stack.close()


def test_bad_subscribe(live: tuple[Settings, str]) -> None:
    _, url = live
    with connect(url.replace("http://", "ws://") + "/ws") as conn:
        for message, fragment in (
            (b"{not json", "unexpected character"),
            (b'{"subscribe": ["weather"]}', "unknown channel(s) ['weather']"),
            (b'{"subscribe": ["alerts"], "filters": {"colour": "red"}}', "unknown filter"),
            (b'{"listen": true}', "expected {"),
        ):
            conn.send(message.decode())
            reply = orjson.loads(conn.recv(timeout=10))
            assert reply["type"] == "error" and fragment in reply["detail"], reply
        conn.send('{"subscribe": "alerts"}')
        assert orjson.loads(conn.recv(timeout=10)) == {
            "type": "subscribed",
            "channels": ["alerts"],
            "filters": {},
        }


def _raw_ws(url: str, channels: list[str]) -> socket.socket:
    """A WebSocket client that subscribes and then never reads (tiny receive buffer)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = orjson.dumps({"subscribe": channels})
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    sock.sendall(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)
    return sock


def test_slow_client_does_not_block_fast_one(live: tuple[Settings, str], producer: ReliableProducer) -> None:
    s, url = live
    before = {c["id"] for c in httpx.get(f"{url}/api/health").json()["websocket"]["clients"]}
    slow = _raw_ws(url, ["sensors"])
    wait_for(
        lambda: any(
            c["channels"] == ["sensors"]
            for c in httpx.get(f"{url}/api/health").json()["websocket"]["clients"]
            if c["id"] not in before
        ),
        timeout_s=10,
        what="the slow client's subscription",
    )
    stack = ExitStack()
    fast = _ws(stack, url, ["sensors"])
    clients = httpx.get(f"{url}/api/health").json()["websocket"]["clients"]
    slow_id, fast_id = sorted(c["id"] for c in clients if c["id"] not in before)
    steps, per_step = 30, 100  # 3000 incompressible ~4 KB messages = ~12 MB for a reader of 4 KB
    received: list[int] = []
    for step in range(steps):
        for i in range(per_step):
            n = step * per_step + i
            producer.produce(
                s.topics.predictions,
                orjson.dumps(_prediction("dev-0001-temperature", n, os.urandom(2000).hex())),
                key="dev-0001-temperature",
            )
        assert producer.flush(30) == 0
        received.extend(m["data"]["n"] for m in _recv(fast, per_step))
    assert received == list(range(steps * per_step))  # all of them, in order, none dropped
    stats = {c["id"]: c for c in httpx.get(f"{url}/api/health").json()["websocket"]["clients"]}
    assert stats[fast_id]["dropped"] == 0 and stats[fast_id]["sent"] == steps * per_step
    assert stats[slow_id]["dropped"] > 0
    assert stats[slow_id]["queued"] <= QUEUE
    assert stats[slow_id]["sent"] + stats[slow_id]["dropped"] + stats[slow_id]["queued"] <= steps * per_step
    print("slow client:", stats[slow_id], "fast client:", stats[fast_id])
    stack.close()
    slow.close()
    wait_for(
        lambda: slow_id not in {c["id"] for c in httpx.get(f"{url}/api/health").json()["websocket"]["clients"]},
        timeout_s=20,
        what="the slow client to be gone",
    )
    assert httpx.get(f"{url}/api/health").json()["websocket"]["dropped_total"] >= stats[slow_id]["dropped"]


def test_the_jobs_packed_predictions_reach_clients_one_event_per_reading(
    live: tuple[Settings, str], producer: ReliableProducer
) -> None:
    """The job sends a sensor's predictions of a micro-batch as one message (jobs.sink.prediction_messages);
    clients get one event per reading, per sensor in event-time order, filtered as single predictions are."""
    s, url = live
    stack = ExitStack()
    every = _ws(stack, url, ["sensors"])
    loc02 = _ws(stack, url, ["sensors"], {"location": "loc-02"})
    t0 = pd.Timestamp("2026-03-01T12:00:00", tz="UTC")
    sensors = [("dev-0001-temperature", "temperature", "loc-01")] * 3 + [
        ("dev-0002-humidity", "humidity", "loc-02")
    ] * 2
    readings = pd.DataFrame(
        {
            "sensor_id": [sid for sid, _, _ in sensors],
            "device_id": [sid.rsplit("-", 1)[0] for sid, _, _ in sensors],
            "sensor_type": [kind for _, kind, _ in sensors],
            "location": [loc for _, _, loc in sensors],
            "timestamp": t0 + pd.to_timedelta([2, 0, 1, 1, 0], unit="s"),
            "value": [22.0, 20.0, 21.0, 41.0, 40.0],
            "score": [9.0, 0.1, 0.2, 0.3, 0.4],
            "is_anomaly": [True, False, False, False, False],
            "anomaly_kind": ["spike", None, None, None, None],
            "interpolated": [False, False, False, True, False],
        }
    )
    values, keys = prediction_messages(readings)
    assert len(values) == 2
    for value, key in zip(values, keys, strict=True):
        producer.produce(s.topics.predictions, value, key=key)
    assert producer.flush(30) == 0
    got = [m["data"] for m in _recv(every, 5)]
    by_sensor = {
        sid: [(d["timestamp"][17:19], d["value"], d["score"]) for d in got if d["sensor_id"] == sid] for sid in keys
    }
    assert by_sensor == {
        "dev-0001-temperature": [("00", 20.0, 0.1), ("01", 21.0, 0.2), ("02", 22.0, 9.0)],
        "dev-0002-humidity": [("00", 40.0, 0.4), ("01", 41.0, 0.3)],
    }
    spike = next(d for d in got if d["score"] == 9.0)
    assert spike == {
        "sensor_id": "dev-0001-temperature",
        "timestamp": "2026-03-01T12:00:02.000Z",
        "device_id": "dev-0001",
        "sensor_type": "temperature",
        "location": "loc-01",
        "value": 22.0,
        "score": 9.0,
        "is_anomaly": True,
        "anomaly_kind": "spike",
        "interpolated": False,
    }
    assert [(m["data"]["sensor_id"], m["data"]["interpolated"]) for m in _recv(loc02, 2)] == [
        ("dev-0002-humidity", False),
        ("dev-0002-humidity", True),
    ]
    stack.close()
