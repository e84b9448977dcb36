"""The store browser's REST API (/api/store) on SQLite and on a real MongoDB-wire server, seeded alike: exact
collections and counts, rows in order, filters, time ranges, pages, one row by key, the CSV export, and bad
input answered with 404/422 problems that leave the data untouched."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from millrace.config import load_settings
from millrace.records import to_iso
from millrace.runtime.mongodb import mongodb_spec
from millrace.runtime.process import ProcessManager, free_port
from millrace.services.app import create_app
from millrace.stores.base import Store
from millrace.stores.browse import make_query
from millrace.stores.convert import ms_of
from millrace.stores.sqlite import SqliteStore
from tests.helpers import unique
from tests.integration.fixtures_service import SENSORS, T0, seed

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
ROWS = "/api/store/collections/{}/rows"
COUNTS = {
    "sensor_metrics": 40,
    "anomaly_alerts": 3,
    "alert_events": 4,  # opened x3, closed x1
    "windowed_metrics": 13,
    "data_quality": 5,
    "sensor_status": 4,
    "shop_analytics": 0,  # the shop's collection, empty in an IoT store
}
SENSOR_IDS = sorted(s[0] for s in SENSORS)


def key(sensor_id: str, second: int) -> str:
    return f"{sensor_id}|{ms_of(T0 + timedelta(seconds=second))}"


@pytest.fixture(scope="module")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB-wire server (FerretDB or mongod) on a free port, started like ``stack up --with mongodb``."""
    state = tmp_path_factory.mktemp("browser-mongo")
    uri = f"mongodb://127.0.0.1:{free_port()}"
    manager = ProcessManager(state)
    manager.start(mongodb_spec(load_settings(state_dir=state, store={"backend": "mongodb", "mongodb_uri": uri})))
    try:
        yield uri
    finally:
        manager.stop("mongodb")


@pytest.fixture(scope="module", params=["sqlite", "mongodb"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The seeded store of tests.integration.fixtures_service, once per backend."""
    if request.param == "sqlite":
        sqlite = SqliteStore(Path(tmp_path_factory.mktemp("browser")) / "millrace.db")
        seed(sqlite)
        yield sqlite
        sqlite.close()
        return
    from millrace.stores.mongo import MongoStore

    mongo = MongoStore(request.getfixturevalue("mongodb_uri"), unique("browser"))
    seed(mongo)
    yield mongo
    mongo.drop()
    mongo.close()


@pytest.fixture(scope="module")
def client(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = load_settings(state_dir=tmp_path_factory.mktemp("browser-app"))
    with TestClient(create_app(settings, store=store, live=False)) as client:
        yield client


def rows(client: TestClient, collection: str, **params: Any) -> dict[str, Any]:
    response = client.get(ROWS.format(collection), params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def problem(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["type"] and body["title"]
    return str(body["detail"])


def test_collections_with_exact_counts_and_fields(client: TestClient, store: Store) -> None:
    body = client.get("/api/store/collections").json()
    assert body["backend"] == type(store).__name__
    assert {c["name"]: c["count"] for c in body["collections"]} == COUNTS
    assert [c["name"] for c in body["collections"]] == list(COUNTS)
    metrics = body["collections"][0]
    assert metrics["time_field"] == "timestamp" and metrics["key"] == ["sensor_id", "timestamp"]
    kinds = {f["name"]: f["kind"] for f in metrics["fields"]}
    assert kinds["value"] == "float" and kinds["is_anomaly"] == "bool" and kinds["timestamp"] == "time"
    alerts = next(c for c in body["collections"] if c["name"] == "anomaly_alerts")
    assert {f["name"]: f["kind"] for f in alerts["fields"]}["sensor_ids"] == "list"


def test_default_order_is_newest_first_then_key(client: TestClient) -> None:
    body = rows(client, "sensor_metrics", limit=6)
    assert body["total"] == 40 and body["sort"] == "-timestamp" and body["next_offset"] == 6
    assert [r["_key"] for r in body["items"]] == [key(s, 9) for s in SENSOR_IDS] + [key(s, 8) for s in SENSOR_IDS[:2]]
    first = body["items"][0]
    assert first["sensor_id"] == "dev-0001-humidity" and first["timestamp"] == "2026-03-01T12:00:09.000Z"
    assert first["value"] == 40.9 and first["unit"] == "%" and first["is_anomaly"] is False


def test_sort_by_any_field_both_ways(client: TestClient) -> None:
    up = rows(client, "sensor_metrics", sort="value", limit=3)["items"]
    assert [r["value"] for r in up] == [20.0, 20.1, 20.2]
    down = rows(client, "sensor_metrics", sort="-value", limit=2)["items"]
    assert [(r["sensor_id"], r["value"]) for r in down] == [
        ("dev-0002-temperature", 125.0),
        ("dev-0002-humidity", 60.9),
    ]
    # ties broken by the key: all four sensors have readings at every second
    ties = rows(client, "sensor_metrics", sort="timestamp", limit=5)["items"]
    assert [r["_key"] for r in ties] == [key(s, 0) for s in SENSOR_IDS] + [key(SENSOR_IDS[0], 1)]
    # nulls first ascending, last descending, on both backends
    nulls = rows(client, "sensor_metrics", sort="anomaly_kind", limit=2)["items"]
    assert [(r["anomaly_kind"], r["_key"]) for r in nulls] == [
        (None, key(SENSOR_IDS[0], 0)),
        (None, key(SENSOR_IDS[0], 1)),
    ]
    spike = rows(client, "sensor_metrics", sort="-anomaly_kind", limit=2)["items"]
    assert [(r["anomaly_kind"], r["_key"]) for r in spike] == [
        ("spike", key("dev-0002-temperature", 7)),
        (None, key(SENSOR_IDS[0], 0)),
    ]
    windows = rows(client, "windowed_metrics", sort="-mean", limit=2)["items"]
    assert [(w["key"], w["mean"]) for w in windows] == [("dev-0002-humidity", 62.0), ("dev-0002-humidity", 61.0)]


def test_filters_equality_and_comparisons(client: TestClient) -> None:
    body = rows(
        client, "sensor_metrics", filter=["sensor_id=dev-0002-temperature", "value>25", "value<100"], sort="value"
    )
    assert body["total"] == 9
    assert [r["value"] for r in body["items"]] == [30.0 + i / 10 for i in range(10) if i != 7]
    anomalies = rows(client, "sensor_metrics", filter="is_anomaly=true")
    assert [r["_key"] for r in anomalies["items"]] == [key("dev-0002-temperature", 7)]
    assert anomalies["items"][0]["anomaly_kind"] == "spike" and anomalies["items"][0]["value"] == 125.0
    # != keeps rows where the field is null (anomaly_kind of normal readings), as on MongoDB
    assert rows(client, "sensor_metrics", filter="anomaly_kind!=spike")["total"] == 39
    assert rows(client, "sensor_metrics", filter=["location=loc-01", "kafka_offset>=8"])["total"] == 4
    assert rows(client, "sensor_metrics", filter="timestamp<=2026-03-01T12:00:01Z")["total"] == 8
    alerts = rows(client, "anomaly_alerts", filter="sensor_ids=dev-0002-humidity")["items"]
    assert [a["alert_id"] for a in alerts] == ["al-3"] and alerts[0]["sensor_ids"] == ["dev-0002-humidity"]
    events = rows(client, "alert_events", filter="event=closed")["items"]
    assert [(e["alert_id"], e["status"], e["by"]) for e in events] == [("al-3", "closed", "millrace")]
    quality = rows(client, "data_quality", filter=["counter=valid"], sort="batch_id")["items"]
    assert [(q["batch_id"], q["value"]) for q in quality] == [(1, 30), (2, 10)]
    inactive = rows(client, "sensor_status", filter="state!=active")["items"]
    assert [s["sensor_id"] for s in inactive] == ["dev-0002-humidity"]


def test_time_range_is_start_inclusive_end_exclusive(client: TestClient) -> None:
    body = rows(
        client,
        "sensor_metrics",
        sort="timestamp",
        limit=100,
        **{"from": "2026-03-01T12:00:02Z", "to": to_iso(T0 + timedelta(seconds=5))},
    )
    assert body["total"] == 12
    assert [r["_key"] for r in body["items"]] == [key(s, i) for i in (2, 3, 4) for s in SENSOR_IDS]
    alerts = rows(client, "anomaly_alerts", sort="updated_at", **{"from": "2026-03-01T12:05:30Z"})["items"]
    assert [a["alert_id"] for a in alerts] == ["al-2", "al-3"]


def test_pages_cover_every_row_once(client: TestClient) -> None:
    keys: list[str] = []
    offset: int | None = 0
    while offset is not None:
        body = rows(client, "sensor_metrics", sort="-value", limit=7, offset=offset)
        assert body["total"] == 40 and len(body["items"]) == min(7, 40 - offset)
        keys += [r["_key"] for r in body["items"]]
        offset = body["next_offset"]
    assert len(keys) == 40 == len(set(keys))
    assert keys == [r["_key"] for r in rows(client, "sensor_metrics", sort="-value", limit=1000)["items"]]
    past = rows(client, "sensor_metrics", offset=40)
    assert past["items"] == [] and past["total"] == 40 and past["next_offset"] is None


def test_one_row_by_key_in_every_collection(client: TestClient) -> None:
    expected = {
        "sensor_metrics": key("dev-0002-temperature", 7),
        "anomaly_alerts": "al-3",
        "alert_events": "al-3|closed",
        "windowed_metrics": f"type_location|temperature|loc-01|{ms_of(T0)}",  # a key containing "|"
        "data_quality": "2|late",
        "sensor_status": "dev-0002-humidity",
    }
    for collection, row_key in expected.items():
        response = client.get(ROWS.format(collection) + "/" + row_key)
        assert response.status_code == 200, (collection, response.text)
        row = response.json()
        assert row["_key"] == row_key
        listed = [r for r in rows(client, collection, limit=1000)["items"] if r["_key"] == row_key]
        assert listed == [row]
    reading = client.get(ROWS.format("sensor_metrics") + "/" + expected["sensor_metrics"]).json()
    assert reading["value"] == 125.0 and reading["is_anomaly"] is True and reading["unit"] == "°C"
    window = client.get(ROWS.format("windowed_metrics") + "/" + expected["windowed_metrics"]).json()
    assert (window["mean"], window["count"], window["window_end"]) == (20.5, 60, "2026-03-01T12:01:00.000Z")
    assert client.get(ROWS.format("data_quality") + "/2|late").json()["value"] == 3
    problem(client.get(ROWS.format("sensor_metrics") + "/" + key("dev-0009-temperature", 1)), 404)
    problem(client.get(ROWS.format("anomaly_alerts") + "/al-404"), 404)
    problem(client.get(ROWS.format("sensor_metrics") + "/no-time-here"), 422)
    problem(client.get(ROWS.format("data_quality") + "/x|valid"), 422)


def test_csv_export_is_utf8_with_a_header_and_the_rows_in_order(client: TestClient) -> None:
    response = client.get(
        "/api/store/collections/sensor_metrics/export.csv",
        params={"filter": "sensor_id=dev-0001-temperature", "sort": "timestamp"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="sensor_metrics.csv"'
    lines = list(csv.reader(io.StringIO(response.content.decode("utf-8"))))
    assert lines[0][:8] == ["sensor_id", "device_id", "sensor_type", "location", "unit", "timestamp", "value", "status"]
    assert len(lines) == 11
    first = dict(zip(lines[0], lines[1], strict=True))
    assert first["unit"] == "°C" and "°C".encode() in response.content
    assert (first["timestamp"], first["value"], first["is_anomaly"], first["anomaly_kind"]) == (
        "2026-03-01T12:00:00.000Z",
        "20.0",
        "false",
        "",
    )
    assert [row[6] for row in lines[1:]] == [repr(20.0 + i / 10) for i in range(10)]
    alerts = client.get("/api/store/collections/anomaly_alerts/export.csv", params={"sort": "alert_id"}).text
    table = list(csv.DictReader(io.StringIO(alerts)))
    assert [(a["alert_id"], a["sensor_ids"], a["status"]) for a in table] == [
        ("al-1", '["dev-0001-temperature"]', "open"),
        ("al-2", '["dev-0002-temperature"]', "open"),
        ("al-3", '["dev-0002-humidity"]', "closed"),
    ]
    assert table[2]["closed_at"] == "2026-03-01T12:10:30.000Z" and table[0]["closed_at"] == ""


def test_csv_export_streams_more_rows_than_a_chunk(store: Store, tmp_path: Path) -> None:
    if isinstance(store, SqliteStore):
        fresh: Store = SqliteStore(tmp_path / "big.db")
    else:
        from millrace.stores.mongo import MongoStore

        assert isinstance(store, MongoStore)
        fresh = MongoStore(store.uri, unique("browser-csv"))
    times = [T0 + timedelta(seconds=i) for i in range(1234)]
    fresh.upsert_readings(pd.DataFrame({"sensor_id": "dev-0100-current", "timestamp": times, "value": range(1234)}))
    try:
        with TestClient(create_app(load_settings(state_dir=tmp_path), store=fresh, live=False)) as client:
            response = client.get("/api/store/collections/sensor_metrics/export.csv", params={"filter": "value>=4"})
        lines = list(csv.reader(io.StringIO(response.text)))
        assert len(lines) == 1231
        assert [float(line[6]) for line in lines[1:]] == [float(v) for v in range(1233, 3, -1)]  # newest first
        assert lines[-1][5] == "2026-03-01T12:00:04.000Z"
    finally:
        if not isinstance(fresh, SqliteStore):
            fresh.drop()  # type: ignore[attr-defined]
        fresh.close()


BAD = [
    # (path, params, status, words in the detail)
    ("/api/store/collections/nope/rows", {}, 422, "path.collection: Input should be 'sensor_metrics'"),
    ("/api/store/collections/sensor_latest/rows", {}, 422, "path.collection"),  # MongoDB-internal
    ("/api/store/collections/sqlite_master/rows", {}, 422, "path.collection"),
    ("/api/store/collections/sensor_metrics; DROP TABLE sensor_metrics/rows", {}, 422, "path.collection"),
    ("/api/store/collections/nope/export.csv", {}, 422, "path.collection"),
    ("/api/store/collections/nope/rows/x", {}, 422, "path.collection"),
    (ROWS.format("sensor_metrics"), {"filter": "nope=1"}, 422, "no field 'nope'"),
    (ROWS.format("sensor_metrics"), {"filter": "value>abc"}, 422, "value takes a number"),
    (ROWS.format("sensor_metrics"), {"filter": "kafka_offset=1.5"}, 422, "kafka_offset takes a whole number"),
    (ROWS.format("sensor_metrics"), {"filter": "value=nan"}, 422, "finite"),
    (ROWS.format("sensor_metrics"), {"filter": "is_anomaly=maybe"}, 422, "true or false"),
    (ROWS.format("sensor_metrics"), {"filter": "is_anomaly>true"}, 422, "takes = and != only"),
    (ROWS.format("anomaly_alerts"), {"filter": "sensor_ids!=x"}, 422, "list"),
    (ROWS.format("sensor_metrics"), {"filter": "timestamp>yesterday"}, 422, "ISO 8601"),
    (ROWS.format("sensor_metrics"), {"filter": "value"}, 422, "field<op>value"),
    (ROWS.format("sensor_metrics"), {"filter": "$where=1"}, 422, "field<op>value"),
    (ROWS.format("sensor_metrics"), {"filter": "value) OR 1=1 --=1"}, 422, "field<op>value"),
    (ROWS.format("sensor_metrics"), {"sort": "value; DROP TABLE sensor_metrics"}, 422, "no field"),
    (ROWS.format("sensor_metrics"), {"sort": "-$natural"}, 422, "no field"),
    (ROWS.format("anomaly_alerts"), {"sort": "sensor_ids"}, 422, "cannot be sorted"),
    (ROWS.format("sensor_metrics"), {"from": "soon"}, 422, "from takes an ISO 8601 time"),
    (ROWS.format("sensor_metrics"), {"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, 422, "after"),
    (ROWS.format("sensor_metrics"), {"limit": 0}, 422, "limit"),
    (ROWS.format("sensor_metrics"), {"limit": 1001}, 422, "limit"),
    (ROWS.format("sensor_metrics"), {"offset": -1}, 422, "offset"),
    (ROWS.format("sensor_metrics"), {"filter": [f"value>{i}" for i in range(21)]}, 422, "filter"),
    ("/api/store/collections/sensor_metrics/export.csv", {"filter": "nope=1"}, 422, "no field 'nope'"),
]


@pytest.mark.parametrize(("path", "params", "status", "words"), BAD)
def test_bad_names_and_values_are_problems(
    client: TestClient, path: str, params: dict[str, Any], status: int, words: str
) -> None:
    assert words in problem(client.get(path, params=params), status)


def test_values_are_never_code(client: TestClient) -> None:
    for value in ("x' OR '1'='1", 'x" OR "1"="1', '{"$ne": null}', "'; DROP TABLE sensor_metrics; --", "%", "*"):
        assert rows(client, "sensor_metrics", filter=f"sensor_id={value}")["total"] == 0
        at_or_after = sum(10 for s in SENSOR_IDS if s >= value)  # compared as text, nothing more
        assert rows(client, "sensor_metrics", filter=f"sensor_id>={value}")["total"] == at_or_after
    assert rows(client, "sensor_metrics", filter="sensor_id!=x' OR '1'='1")["total"] == 40
    assert {c["name"]: c["count"] for c in client.get("/api/store/collections").json()["collections"]} == COUNTS


# ---- the dashboard's Store tab in headless Chromium ----

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def browser_page(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    """The dashboard served over the seeded store, in headless Debian Chromium. A missing Chromium or
    Playwright is a setup error: the test fails, it does not skip."""
    assert CHROMIUM.exists(), "Debian chromium is not installed (/usr/bin/chromium): apt-get install chromium"
    from playwright import sync_api  # millrace[dev]; an ImportError fails the test

    from tests.integration.fixtures_service import served

    settings = load_settings(
        state_dir=tmp_path_factory.mktemp("browser-ui"), kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"}
    )
    ARTIFACTS.mkdir(exist_ok=True)
    with served(create_app(settings, store=store, live=False)) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1400})
        yield page, url
        browser.close()


def test_store_tab_in_chromium(browser_page: tuple[Any, str], store: Store) -> None:
    from playwright.sync_api import expect

    page, url = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"{e}\n{e.stack or ''}"))
    page.goto(url + "/#store/sensor_metrics")
    expect(page.locator('#tabs a[data-tab="store"]')).to_have_class("active", timeout=15_000)
    expect(page.locator("#tab-store")).to_be_visible()
    expect(page.locator("#st-backend")).to_have_text(type(store).__name__)
    expect(page.locator("#st-collections tbody tr")).to_have_count(len(COUNTS))
    for name, count in COUNTS.items():
        expect(page.locator(f'#st-collections tr[data-collection="{name}"] td.num')).to_have_text(str(count))
    # first page: newest first, 25 rows of 40
    expect(page.locator("#st-info")).to_have_text("rows 1–25 of 40")
    shown = page.locator("#st-rows tbody tr").evaluate_all("rows => rows.map(r => r.dataset.key)")
    assert shown == [r["_key"] for r in store.browse("sensor_metrics", make_query("sensor_metrics", limit=25)).rows]
    expect(page.locator("#st-rows thead th").first).to_have_text("sensor_id")

    # filters, sort ascending by value
    page.fill("#st-filters", "sensor_id=dev-0002-temperature; value>25")
    page.select_option("#st-sort", "value")
    page.select_option("#st-dir", "")
    page.click("#st-query button[type=submit]")
    expect(page.locator("#st-info")).to_have_text("rows 1–10 of 10")
    keys = page.locator("#st-rows tbody tr").evaluate_all("rows => rows.map(r => r.dataset.key)")
    assert keys == [key("dev-0002-temperature", i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9, 7)]
    # one row as pretty JSON
    page.click(f'#st-rows tr[data-key="{key("dev-0002-temperature", 7)}"]')
    expect(page.locator("#st-doc")).to_be_visible()
    expect(page.locator("#st-doc")).to_contain_text('"anomaly_kind": "spike"')
    expect(page.locator("#st-doc")).to_contain_text('"value": 125')
    expect(page.locator("#st-doc")).to_contain_text('"unit": "°C"')
    # the CSV link exports the same selection
    href = page.locator("#st-csv").get_attribute("href")
    assert href is not None and "/export.csv?" in href
    lines = page.request.get(url + href).text().splitlines()
    assert len(lines) == 11 and lines[0].startswith("sensor_id,") and lines[-1].split(",")[6] == "125.0"
    page.screenshot(path=str(ARTIFACTS / f"store-tab-{type(store).__name__}.png"), full_page=True)

    # a time range, then pages of 10
    page.fill("#st-filters", "")
    page.fill("#st-from", "2026-03-01T12:00:02Z")
    page.fill("#st-to", "2026-03-01T12:00:05Z")
    page.click("#st-query button[type=submit]")
    expect(page.locator("#st-info")).to_have_text("rows 1–12 of 12")
    page.fill("#st-from", "")
    page.fill("#st-to", "")
    page.fill("#st-limit", "10")
    page.click("#st-query button[type=submit]")
    expect(page.locator("#st-info")).to_have_text("rows 1–10 of 40")
    page.click("#st-next")
    expect(page.locator("#st-info")).to_have_text("rows 11–20 of 40")
    second = page.locator("#st-rows tbody tr").evaluate_all("rows => rows.map(r => r.dataset.key)")
    query = make_query("sensor_metrics", sort="value", limit=10, offset=10)
    assert second == [r["_key"] for r in store.browse("sensor_metrics", query).rows]

    # a bad filter is shown, not thrown
    page.fill("#st-filters", "nope=1")
    page.click("#st-query button[type=submit]")
    expect(page.locator("#st-error")).to_contain_text("no field 'nope'")
    expect(page.locator("#st-rows tbody tr")).to_have_count(0)

    # another collection from the picker: alerts, with their lists
    page.select_option("#st-collection", "anomaly_alerts")
    expect(page.locator("#st-info")).to_have_text("rows 1–3 of 3")
    expect(page.locator("#st-error")).to_have_text("")
    keys = page.locator("#st-rows tbody tr").evaluate_all("rows => rows.map(r => r.dataset.key)")
    assert keys == ["al-3", "al-2", "al-1"]
    page.click('#st-rows tr[data-key="al-3"]')
    expect(page.locator("#st-doc")).to_contain_text('"sensor_ids": [\n    "dev-0002-humidity"\n  ]')
    assert not [e for e in errors if "store.js" in e], errors
