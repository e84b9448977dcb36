"""REST API against the real SQLite store and the real broker: exact contents for every endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from millrace.config import Settings, load_settings
from millrace.kafka.consumer import make_consumer
from millrace.kafka.producer import make_producer
from millrace.runtime.mongodb import mongodb_spec
from millrace.runtime.process import ProcessManager, free_port
from millrace.services.app import create_app
from millrace.stores.base import Store
from millrace.stores.sqlite import SqliteStore
from tests.helpers import unique, wait_for
from tests.integration.fixtures_service import READINGS_PER_SENSOR, seed, seeded_store

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB-wire server (FerretDB or mongod) on a free port, started like ``stack up --with mongodb``."""
    state = tmp_path_factory.mktemp("api-mongo")
    uri = f"mongodb://127.0.0.1:{free_port()}"
    settings = load_settings(state_dir=state, store={"backend": "mongodb", "mongodb_uri": uri})
    manager = ProcessManager(state)
    manager.start(mongodb_spec(settings))
    try:
        yield uri
    finally:
        manager.stop("mongodb")


@pytest.fixture(scope="module", params=["sqlite", "mongodb"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The seeded store, once per backend: every REST test runs against SQLite and a real MongoDB server."""
    if request.param == "sqlite":
        sqlite = seeded_store(Path(tmp_path_factory.mktemp("api")) / "millrace.db")
        yield sqlite
        sqlite.close()
        return
    from millrace.stores.mongo import MongoStore

    mongo = MongoStore(request.getfixturevalue("mongodb_uri"), unique("api"))
    seed(mongo)
    yield mongo
    mongo.drop()
    mongo.close()


@pytest.fixture(scope="module")
def client(settings: Settings, store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(settings, store=store, live=False)) as client:
        yield client


def _problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    return body


def test_sensors_latest_by_event_time(client: TestClient) -> None:
    body = client.get("/api/sensors").json()
    assert body["total"] == 4 and body["next_offset"] is None
    latest = {s["sensor_id"]: (s["value"], s["timestamp"], s["state"]) for s in body["items"]}
    assert latest == {
        "dev-0001-humidity": (40.9, "2026-03-01T12:00:09.000Z", "active"),
        "dev-0001-temperature": (20.9, "2026-03-01T12:00:09.000Z", "active"),
        "dev-0002-humidity": (60.9, "2026-03-01T12:00:09.000Z", "inactive"),
        "dev-0002-temperature": (30.9, "2026-03-01T12:00:09.000Z", "active"),
    }
    assert [s["sensor_id"] for s in body["items"]] == sorted(latest)
    assert "features" not in body["items"][0]


def test_sensors_filters_and_pagination(client: TestClient) -> None:
    loc = client.get("/api/sensors", params={"location": "loc-02"}).json()
    assert [s["sensor_id"] for s in loc["items"]] == ["dev-0002-humidity", "dev-0002-temperature"]
    temp = client.get("/api/sensors", params={"sensor_type": "temperature", "location": "loc-01"}).json()
    assert [s["sensor_id"] for s in temp["items"]] == ["dev-0001-temperature"]
    page = client.get("/api/sensors", params={"limit": 1, "offset": 1}).json()
    assert [s["sensor_id"] for s in page["items"]] == ["dev-0001-temperature"]
    assert (page["total"], page["limit"], page["offset"], page["next_offset"]) == (4, 1, 1, 2)
    last = client.get("/api/sensors", params={"limit": 2, "offset": 2}).json()
    assert last["next_offset"] is None and len(last["items"]) == 2
    _problem(client.get("/api/sensors", params={"limit": 0}), 422)
    _problem(client.get("/api/sensors", params={"limit": 1001}), 422)
    body = _problem(client.get("/api/sensors", params={"offset": -1}), 422)
    assert body["errors"][0]["location"] == "query.offset"


def test_sensors_search(client: TestClient) -> None:
    def ids(**params: object) -> list[str]:
        response = client.get("/api/sensors", params=params)
        assert response.status_code == 200, response.text
        return [s["sensor_id"] for s in response.json()["items"]]

    assert ids(q="HUMID") == ["dev-0001-humidity", "dev-0002-humidity"]  # type, case-insensitive
    assert ids(q="dev-0002") == ["dev-0002-humidity", "dev-0002-temperature"]  # device
    assert ids(q="loc-01", sensor_type="temperature") == ["dev-0001-temperature"]  # location, with a filter
    page = client.get("/api/sensors", params={"q": "temp", "limit": 1, "offset": 1}).json()
    assert ([s["sensor_id"] for s in page["items"]], page["total"], page["next_offset"]) == (
        ["dev-0002-temperature"],
        2,
        None,
    )
    assert client.get("/api/sensors", params={"q": "nothing"}).json()["total"] == 0
    _problem(client.get("/api/sensors", params={"q": ""}), 422)
    _problem(client.get("/api/sensors", params={"q": "x" * 201}), 422)


def test_device(client: TestClient) -> None:
    body = client.get("/api/devices/dev-0002").json()
    assert body["device_id"] == "dev-0002" and body["locations"] == ["loc-02"]
    assert [(s["sensor_id"], s["value"], s["state"]) for s in body["sensors"]] == [
        ("dev-0002-humidity", 60.9, "inactive"),
        ("dev-0002-temperature", 30.9, "active"),
    ]
    assert [a["alert_id"] for a in body["alerts"]] == ["al-3", "al-2"]  # newest first, both sensors'
    assert body["alert_top_features"] == {"rate": 2, "robust_z": 2}
    assert body["model"] is None  # nothing promoted in the session's state dir
    one = client.get("/api/devices/dev-0001").json()
    assert [a["alert_id"] for a in one["alerts"]] == ["al-1"]
    assert "features" not in one["sensors"][0]
    assert "dev-404" in _problem(client.get("/api/devices/dev-404"), 404)["detail"]


def test_readings_time_range(client: TestClient) -> None:
    url = "/api/sensors/dev-0002-temperature/readings"
    body = client.get(url, params={"start": "2026-03-01T12:00:05Z", "end": "2026-03-01T12:00:08Z"}).json()
    rows = [(r["timestamp"], r["value"], r["is_anomaly"], r["anomaly_kind"]) for r in body["items"]]
    assert rows == [
        ("2026-03-01T12:00:05.000Z", 30.5, False, None),
        ("2026-03-01T12:00:06.000Z", 30.6, False, None),
        ("2026-03-01T12:00:07.000Z", 125.0, True, "spike"),
    ]
    # a naive time is taken as UTC
    naive = client.get(url, params={"start": "2026-03-01T12:00:08", "limit": 5}).json()
    assert [r["timestamp"] for r in naive["items"]] == [
        "2026-03-01T12:00:08.000Z",
        "2026-03-01T12:00:09.000Z",
    ]
    page = client.get(url, params={"limit": 4, "offset": 4}).json()
    assert [r["kafka_offset"] for r in page["items"]] == [4, 5, 6, 7] and page["next_offset"] == 8
    full = client.get(url, params={"limit": 1000}).json()
    assert len(full["items"]) == READINGS_PER_SENSOR and full["next_offset"] is None


def test_readings_errors(client: TestClient) -> None:
    body = _problem(client.get("/api/sensors/no-such-sensor/readings"), 404)
    assert "no-such-sensor" in body["detail"] and body["instance"] == "/api/sensors/no-such-sensor/readings"
    body = _problem(
        client.get(
            "/api/sensors/dev-0001-humidity/readings",
            params={"start": "2026-03-02T00:00:00Z", "end": "2026-03-01T00:00:00Z"},
        ),
        422,
    )
    assert body["detail"] == "start must not be after end"
    _problem(client.get("/api/sensors/dev-0001-humidity/readings", params={"start": "yesterday"}), 422)
    body = _problem(client.get("/api/windows", params={"start": "0001-01-01T00:00:00+21:21"}), 422)  # found by fuzzing
    assert "out of range" in body["detail"]
    # a known sensor with no readings in the range is an empty page, not a 404
    empty = client.get("/api/sensors/dev-0001-humidity/readings", params={"start": "2027-01-01T00:00:00Z"})
    assert empty.status_code == 200 and empty.json()["items"] == []


def test_windows(client: TestClient) -> None:
    body = client.get("/api/windows", params={"scope": "type_location"}).json()
    assert [(w["key"], w["count"], w["mean"]) for w in body["items"]] == [("temperature|loc-01", 60, 20.5)]
    one = client.get("/api/windows", params={"scope": "sensor", "key": "dev-0001-humidity"}).json()
    assert [(w["window_start"], w["mean"], w["anomaly_count"]) for w in one["items"]] == [
        ("2026-03-01T12:00:00.000Z", 40.0, 0),
        ("2026-03-01T12:01:00.000Z", 41.0, 1),
        ("2026-03-01T12:02:00.000Z", 42.0, 0),
    ]
    ranged = client.get("/api/windows", params={"start": "2026-03-01T12:02:00Z", "limit": 10}).json()
    assert len(ranged["items"]) == 4 and all(w["window_start"] == "2026-03-01T12:02:00.000Z" for w in ranged["items"])
    _problem(client.get("/api/windows", params={"scope": "galaxy"}), 422)


def test_alert_filters(client: TestClient) -> None:
    def ids(**params: object) -> list[str]:
        response = client.get("/api/alerts", params=params)
        assert response.status_code == 200, response.text
        return [a["alert_id"] for a in response.json()["items"]]

    assert ids() == ["al-3", "al-2", "al-1"]  # newest first
    assert ids(severity="warning") == ["al-3", "al-2"]
    assert ids(kind="spike") == ["al-3", "al-1"]
    assert ids(sensor_id="dev-0002-temperature") == ["al-2"]
    assert ids(location="loc-01") == ["al-1"]
    assert ids(status="closed") == ["al-3"]
    assert ids(start="2026-03-01T12:04:00Z", end="2026-03-01T12:06:00Z") == ["al-2"]
    assert ids(limit=1, offset=1) == ["al-2"]
    _problem(client.get("/api/alerts", params={"severity": "apocalyptic"}), 422)
    _problem(client.get("/api/alerts", params={"status": "deleted"}), 422)
    detail = client.get("/api/alerts/al-3").json()
    assert detail["sensor_ids"] == ["dev-0002-humidity"] and detail["top_features"] == ["robust_z", "rate"]
    assert [e["status"] for e in detail["events"]] == ["open", "closed"]
    _problem(client.get("/api/alerts/al-404"), 404)


def test_alert_lifecycle(client: TestClient, store: Store) -> None:
    ack = client.post("/api/alerts/al-2/acknowledge", json={"by": "ops-ana", "note": "looking"})
    assert ack.status_code == 200, ack.text
    assert ack.json()["status"] == "acknowledged"
    assert store.alert("al-2")["status"] == "acknowledged"  # type: ignore[index]
    resolved = client.post("/api/alerts/al-2/resolve", json={"by": "ops-ben", "note": "valve replaced"}).json()
    assert resolved["status"] == "resolved"
    events = [(e["status"], e["by"], e["note"]) for e in resolved["events"]]
    assert events == [
        ("open", "millrace", ""),
        ("acknowledged", "ops-ana", "looking"),
        ("resolved", "ops-ben", "valve replaced"),
    ]
    assert all(e["at"].endswith("Z") for e in resolved["events"])
    assert [e["status"] for e in store.alert_events("al-2")] == ["open", "acknowledged", "resolved"]
    body = _problem(client.post("/api/alerts/al-2/acknowledge", json={"by": "ops-ana"}), 409)
    assert body["type"].endswith("/lifecycle")
    _problem(client.post("/api/alerts/al-404/acknowledge", json={"by": "ops-ana"}), 404)
    _problem(client.post("/api/alerts/al-1/acknowledge", json={"by": ""}), 422)
    _problem(client.post("/api/alerts/al-1/acknowledge", json={"note": "who?"}), 422)
    _problem(client.post("/api/alerts/al-1/acknowledge", json={"by": "x", "extra": 1}), 422)
    _problem(
        client.post("/api/alerts/al-1/acknowledge", content=b"not json", headers={"content-type": "application/json"}),
        422,
    )
    assert store.alert("al-1")["status"] == "open"  # type: ignore[index]


def test_quality(client: TestClient) -> None:
    assert client.get("/api/quality").json() == {"totals": {"duplicates": 2, "late": 3, "out_of_range": 1, "valid": 40}}


def test_openapi_and_unknown_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/api/sensors", "/api/alerts/{alert_id}/acknowledge", "/api/kafka/topics"} <= set(spec["paths"])
    _problem(client.get("/api/nothing-here"), 404)
    _problem(client.delete("/api/sensors"), 405)


# ---- Kafka cluster view (real broker) ----


@pytest.fixture(scope="module")
def kafka_client(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The cluster view does not read the store: one client with an empty SQLite store is enough."""
    empty = SqliteStore(Path(tmp_path_factory.mktemp("api-kafka")) / "millrace.db")
    with TestClient(create_app(settings, store=empty, live=False)) as kafka_client:
        yield kafka_client
    empty.close()


def test_brokers(kafka_client: TestClient, settings: Settings) -> None:
    body = kafka_client.get("/api/kafka/brokers").json()
    port = settings.runtime.kafka_port
    assert [(b["id"], b["host"], b["port"]) for b in body["brokers"]] == [(1, "127.0.0.1", port)]
    assert body["cluster_id"] and body["controller_id"] in (1, -1, None)


def test_create_topic_validation(kafka_client: TestClient) -> None:
    name = unique("millrace.test.api")
    created = kafka_client.post(
        "/api/kafka/topics",
        json={"name": name, "partitions": 3, "replication_factor": 1, "configs": {"retention.ms": "3600000"}},
    )
    assert created.status_code == 201, created.text
    info = created.json()
    assert (info["name"], info["partition_count"], info["replication_factor"], info["messages"]) == (
        name,
        3,
        1,
        0,
    )
    assert info["configs"]["retention.ms"] == "3600000"
    assert [(p["partition"], p["leader"], p["isr"]) for p in info["partitions"]] == [
        (0, 1, [1]),
        (1, 1, [1]),
        (2, 1, [1]),
    ]
    assert _problem(kafka_client.post("/api/kafka/topics", json={"name": name}), 409)["detail"].endswith(
        "already exists"
    )
    _problem(kafka_client.post("/api/kafka/topics", json={"name": "bad name!"}), 422)
    _problem(kafka_client.post("/api/kafka/topics", json={"name": unique("t"), "partitions": 0}), 422)
    _problem(kafka_client.post("/api/kafka/topics", json={"name": unique("t"), "partitions": 101}), 422)
    body = _problem(kafka_client.post("/api/kafka/topics", json={"name": unique("t"), "replication_factor": 2}), 422)
    assert "number of brokers (1)" in body["detail"]
    _problem(
        kafka_client.post("/api/kafka/topics", json={"name": unique("t"), "configs": {"retention.ms": "soon"}}), 422
    )
    listed = {t["name"]: t for t in kafka_client.get("/api/kafka/topics").json()["topics"]}
    assert listed[name]["partition_count"] == 3 and not any(n.startswith("__") for n in listed)
    _problem(kafka_client.get(f"/api/kafka/topics/{unique('missing')}"), 404)


def test_topic_messages_groups_and_lag(kafka_client: TestClient, settings: Settings) -> None:
    name = unique("millrace.test.browse")
    assert kafka_client.post("/api/kafka/topics", json={"name": name, "partitions": 1}).status_code == 201
    producer = make_producer(settings.kafka.client_config())
    for i in range(5):
        producer.produce(name, orjson.dumps({"n": i}), key=f"k{i}")
    producer.produce(name, b"\xff\xfe binary", key="bin")
    assert producer.flush(30) == 0

    body = kafka_client.get(f"/api/kafka/topics/{name}/messages", params={"limit": 3}).json()
    assert [(m["offset"], m["key"], m["value"], m["format"]) for m in body["messages"]] == [
        (5, "bin", "//4gYmluYXJ5", "base64"),
        (4, "k4", {"n": 4}, "json"),
        (3, "k3", {"n": 3}, "json"),
    ]
    assert all(m["partition"] == 0 and m["timestamp"].endswith("Z") for m in body["messages"])
    assert (
        kafka_client.get(f"/api/kafka/topics/{name}/messages", params={"limit": 100}).json()["messages"][-1]["offset"]
        == 0
    )
    _problem(kafka_client.get(f"/api/kafka/topics/{name}/messages", params={"partition": 7}), 404)
    _problem(kafka_client.get(f"/api/kafka/topics/{name}/messages", params={"limit": 501}), 422)

    info = kafka_client.get(f"/api/kafka/topics/{name}").json()
    assert info["messages"] == 6 and info["partitions"][0]["high"] == 6
    assert info["size_bytes"] is not None and info["size_bytes"] > 0  # from the local broker's log dir

    group_id = unique("millrace-test-group")
    consumer = make_consumer(settings.kafka.client_config(), group_id)
    consumer.subscribe([name])
    seen: list = []
    wait_for(
        lambda: seen.extend(m for m in consumer.consume(10, 0.5) if m.error() is None) or len(seen) >= 2,
        timeout_s=30,
        what="two messages",
    )
    consumer.commit(message=seen[1], asynchronous=False)  # committed offset 2 → lag 4
    groups = {g["group_id"]: g for g in kafka_client.get("/api/kafka/groups").json()["groups"]}
    assert groups[group_id]["offsets"] == [{"topic": name, "partition": 0, "committed": 2, "high": 6, "lag": 4}]
    one = kafka_client.get(f"/api/kafka/groups/{group_id}").json()
    assert one["lag"] == 4 and one["state"] == "STABLE" and len(one["members"]) == 1
    assert one["members"][0]["assignment"] == [f"{name}[0]"]
    consumer.close()
    _problem(kafka_client.get(f"/api/kafka/groups/{unique('nobody')}"), 404)


def test_promoted_model_and_importance(settings: Settings, store: Store, tmp_path: Path) -> None:
    registry = pytest.importorskip("millrace.ml.registry")
    own = settings.model_copy(update={"state_dir": tmp_path})  # a registry of this test's own
    root = registry.registry_root(own)
    info = {
        "detector": "isolation_forest",
        "metrics": {"f1": 0.91, "precision": 0.9},
        "thresholds": {"score": 0.7},
        "features": ["robust_z", "rate"],
        "importance": {
            "sensors": {"temperature": 0.2, "vibration": 0.5, "humidity": 0.3},
            "features": {"rate": 0.4, "robust_z": 0.6},
        },
        "training": {"rows": 1000},
    }
    version = registry.save_model(root, {"model": "placeholder"}, info)
    with TestClient(create_app(own, store=store, live=False)) as c:
        for path in ("/api/model", "/api/model/importance"):  # saved but not promoted
            assert _problem(c.get(path), 404)["type"].endswith("/no-model")
        registry.promote(root, version)
        model = c.get("/api/model").json()
        assert (model["version"], model["detector"], model["metrics"]["f1"]) == (version, "isolation_forest", 0.91)
        assert "importance" not in model and model["thresholds"] == {"score": 0.7}
        imp = c.get("/api/model/importance").json()
        assert imp["version"] == version
        assert list(imp["sensors"].items()) == [("vibration", 0.5), ("humidity", 0.3), ("temperature", 0.2)]
        assert list(imp["features"].items()) == [("robust_z", 0.6), ("rate", 0.4)]
        # the device page maps the model's sensor-type shares onto the device's sensors
        dev = c.get("/api/devices/dev-0001").json()["model"]
        assert dev == {
            "version": version,
            "contributions": {"dev-0001-humidity": 0.3, "dev-0001-temperature": 0.2},
        }
