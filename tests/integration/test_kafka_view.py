"""The Kafka view's REST against the real broker: broker log sizes and the message browser (newest first,
from an offset, from a time, key search, headers, formats)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from millrace.config import Settings
from millrace.records import to_iso
from millrace.services.app import create_app
from millrace.stores.sqlite import SqliteStore
from tests.helpers import unique

pytestmark = pytest.mark.integration

# Message times: recent, or the broker's retention (7 days by default, by message time) may delete them.
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
BASE_MS = int(BASE.timestamp() * 1000)
# partition, key, value, milliseconds after BASE, headers
MESSAGES: tuple[tuple[int, str, Any, int, list[tuple[str, bytes]]], ...] = (
    (0, "alpha-1", {"n": 0}, 0, []),
    (0, "beta-1", {"n": 1}, 1000, []),
    (0, "alpha-2", {"n": 2}, 2000, [("source", b"lab"), ("trace", b"t-2")]),
    (0, "gamma-1", "plain text", 3000, []),
    (1, "alpha-3", {"n": 10}, 500, []),
    (1, "beta-2", {"n": 11}, 1500, []),
    (1, "alpha-4", {"n": 12, "nested": {"a": [1, 2]}}, 2500, []),
)


def produce_browsable(settings: Settings, topic: str) -> None:
    """MESSAGES into ``topic`` (2 partitions) with explicit partitions and timestamps: offsets 0..3 on partition
    0 and 0..2 on partition 1."""
    producer = Producer({**settings.kafka.client_config(), "linger.ms": 0, "enable.idempotence": True})
    for partition, key, value, after_ms, headers in MESSAGES:
        raw = value.encode() if isinstance(value, str) else orjson.dumps(value)
        producer.produce(topic, raw, key, partition=partition, timestamp=BASE_MS + after_ms, headers=headers or None)
        producer.flush(30)  # one at a time: offsets follow the table's order
    assert producer.flush(30) == 0


@pytest.fixture(scope="module")
def client(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    empty = SqliteStore(Path(tmp_path_factory.mktemp("kafka-view")) / "millrace.db")
    with TestClient(create_app(settings, store=empty, live=False)) as c:
        yield c
    empty.close()


@pytest.fixture(scope="module")
def topic(client: TestClient, settings: Settings) -> str:
    name = unique("millrace.test.view")
    assert client.post("/api/kafka/topics", json={"name": name, "partitions": 2}).status_code == 201
    produce_browsable(settings, name)
    return name


def at(ms: int) -> str:
    """The time ``ms`` after BASE as the API writes it."""
    return to_iso(BASE + timedelta(milliseconds=ms))


def _positions(body: dict[str, Any]) -> list[tuple[int, int]]:
    return [(m["partition"], m["offset"]) for m in body["messages"]]


def test_brokers_log_size(client: TestClient, topic: str) -> None:
    (broker,) = client.get("/api/kafka/brokers").json()["brokers"]
    assert broker["id"] == 1 and broker["controller"] in (True, False) and broker["rack"] is None
    # the local broker's data dir holds at least this test topic's segments
    sizes = [t["size_bytes"] for t in client.get("/api/kafka/topics").json()["topics"] if t["name"] == topic]
    assert sizes[0] > 0 and broker["log_size_bytes"] >= sizes[0]


def test_browse_newest_offset_and_time(client: TestClient, topic: str) -> None:
    url = f"/api/kafka/topics/{topic}/messages"
    newest = client.get(url, params={"limit": 3}).json()
    assert _positions(newest) == [(0, 3), (1, 2), (0, 2)]
    assert (newest["scanned"], newest["complete"]) == (6, True)  # 3 newest of each partition
    from_offset = client.get(url, params={"partition": 0, "offset": 1}).json()
    assert _positions(from_offset) == [(0, 1), (0, 2), (0, 3)]
    both = client.get(url, params={"offset": 2}).json()
    assert _positions(both) == [(0, 2), (1, 2), (0, 3)]  # oldest first by timestamp
    assert _positions(client.get(url, params={"offset": 1, "limit": 2}).json()) == [(0, 1), (1, 1)]
    timed = client.get(url, params={"timestamp": at(1200)}).json()
    assert _positions(timed) == [(1, 1), (0, 2), (1, 2), (0, 3)]
    assert [m["timestamp"] for m in timed["messages"]] == [
        at(1500),
        at(2000),
        at(2500),
        at(3000),
    ]
    naive = client.get(url, params={"timestamp": at(2500).removesuffix("Z"), "partition": 1}).json()
    assert _positions(naive) == [(1, 2)]
    assert client.get(url, params={"timestamp": at(3001)}).json()["messages"] == []
    assert client.get(url, params={"offset": 99}).json()["messages"] == []


def test_browse_key_search_headers_and_formats(client: TestClient, topic: str) -> None:
    url = f"/api/kafka/topics/{topic}/messages"
    alpha = client.get(url, params={"key": "alpha"}).json()
    assert [(m["partition"], m["offset"], m["key"]) for m in alpha["messages"]] == [
        (1, 2, "alpha-4"),
        (0, 2, "alpha-2"),
        (1, 0, "alpha-3"),
        (0, 0, "alpha-1"),
    ]
    assert alpha["scanned"] == 7
    narrowed = client.get(url, params={"key": "alpha", "partition": 0, "offset": 1}).json()
    assert (_positions(narrowed), narrowed["scanned"]) == ([(0, 2)], 3)
    assert client.get(url, params={"key": "zzz"}).json()["messages"] == []
    limited = client.get(url, params={"key": "a", "scan": 2}).json()  # the newest 2 of each partition
    assert [m["key"] for m in limited["messages"]] == ["gamma-1", "alpha-4", "alpha-2", "beta-2"]
    assert limited["scanned"] == 4

    (two,) = client.get(url, params={"partition": 0, "offset": 2, "limit": 1}).json()["messages"]
    assert two["headers"] == {"source": "lab", "trace": "t-2"}
    assert (two["value"], two["format"], two["size"]) == ({"n": 2}, "json", len(b'{"n":2}'))
    (text,) = client.get(url, params={"partition": 0, "offset": 3}).json()["messages"]
    assert (text["value"], text["format"], text["headers"]) == ("plain text", "text", {})
    (nested,) = client.get(url, params={"key": "alpha-4"}).json()["messages"]
    assert nested["value"] == {"n": 12, "nested": {"a": [1, 2]}}


def test_browse_errors(client: TestClient, topic: str) -> None:
    url = f"/api/kafka/topics/{topic}/messages"
    for params, status in (
        ({"offset": -1}, 422),
        ({"timestamp": "yesterday"}, 422),
        ({"timestamp": "1969-12-31T23:59:59Z"}, 422),
        ({"key": ""}, 422),
        ({"key": "k" * 201}, 422),
        ({"scan": 0}, 422),
        ({"partition": 9}, 404),
    ):
        response = client.get(url, params=params)
        assert response.status_code == status, (params, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    missing = client.get(f"/api/kafka/topics/{unique('missing')}/messages", params={"key": "a"})
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
