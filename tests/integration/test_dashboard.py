"""The dashboard in headless Debian Chromium (Playwright): it loads offline, charts render with the store's
data, a live anomaly, window and alert produced to Kafka appear within seconds, Acknowledge and Resolve work;
the Kafka tab shows brokers, partitions, a group's lag, browses messages and creates a topic; a fleet of
1,204 sensors is paged and searched, every sensor type has a distribution, a device page shows its sensors,
alerts and the model's shares (on SQLite and MongoDB).

Chromium and Playwright are installed by scripts/setup.sh; without them these tests fail (CI must not pass
without running them). Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
import pytest
from confluent_kafka import Consumer, TopicPartition

from millrace.config import Settings, load_settings
from millrace.kafka.producer import make_producer
from millrace.kafka.topics import declared_topics
from millrace.ml import registry
from millrace.records import to_iso
from millrace.runtime.mongodb import mongodb_spec
from millrace.runtime.process import ProcessManager, free_port
from millrace.services.app import create_app
from millrace.stores.base import Store
from millrace.stores.sqlite import SqliteStore
from tests.helpers import unique, wait_for
from tests.integration.fixtures_service import T0, fresh_topics, seed, seeded_store, served
from tests.integration.test_kafka_view import at as message_time
from tests.integration.test_kafka_view import produce_browsable

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _chromium() -> Path:
    """Debian's chromium (scripts/setup.sh installs it); a missing browser is a set-up error, not a skip."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        pytest.fail(
            "the dashboard browser tests need chromium, which is not installed: run scripts/setup.sh "
            "(or apt-get install chromium)",
            pytrace=False,
        )
    return Path(found)


try:
    from playwright import sync_api
except ModuleNotFoundError:  # reported by the page fixture, so every browser test fails with the reason
    sync_api = None  # type: ignore[assignment]

HIST_COUNTS = """() => Object.fromEntries(
  ['temperature', 'humidity', 'pressure', 'vibration', 'voltage', 'current'].map(
    t => [t, document.getElementById('hist-' + t).data[0].x.length]))"""
WINDOW_TRACES = """() => {
  const d = document.getElementById('win-chart').data;
  if (!d) return null;
  const by = Object.fromEntries(d.map(t => [t.name, t.y]));
  return {mean: by.mean, anomalies: by.anomalies};
}"""
SERIES_POINTS = """() => {
  const d = document.getElementById('ts-chart').data;
  if (!d) return null;
  return d.map(t => [t.name, t.x.length]);
}"""


@pytest.fixture(scope="module")
def live(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str, SqliteStore]]:
    s = fresh_topics(settings)
    store = seeded_store(Path(tmp_path_factory.mktemp("dash")) / "millrace.db")
    with served(create_app(s, store=store)) as url:
        wait_for(
            lambda: httpx.get(f"{url}/api/health").json()["feed"]["ready"],
            timeout_s=60,
            what="the live feed to be assigned its partitions",
        )
        yield s, url, store
    store.close()


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    if sync_api is None:
        pytest.fail(
            "the dashboard browser tests need playwright, which is not installed: run scripts/setup.sh "
            "(or pip install -e '.[dev]')",
            pytrace=False,
        )
    chromium = _chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(chromium),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        yield page
        browser.close()


def test_dashboard_live(live: tuple[Settings, str, SqliteStore], page: Any) -> None:
    s, url, store = live
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    expect = sync_api.expect
    expect(page.locator("#ws-status")).to_have_text("live", timeout=15_000)

    # current metrics and data table from the store
    expect(page.locator("#data-table tbody tr")).to_have_count(4, timeout=15_000)
    expect(page.locator('[data-cell="loc-01|temperature"]')).to_have_text("20.90 °C")
    expect(page.locator('[data-cell="loc-02|humidity"]')).to_have_text("60.90 %")
    # time series of the selected type (temperature): 2 sensors x 10 readings, one stored anomaly
    wait_for(
        lambda: (
            page.evaluate(SERIES_POINTS) == [["dev-0001-temperature", 10], ["dev-0002-temperature", 10], ["anomaly", 1]]
        ),
        timeout_s=15,
        what="the time series",
    )
    assert page.evaluate("document.getElementById('hist-temperature').data[0].x.length") == 20
    assert page.evaluate("document.getElementById('hist-humidity').data[0].x.length") == 20
    assert page.evaluate(HIST_COUNTS) == {
        "temperature": 20,
        "humidity": 20,
        "pressure": 0,
        "vibration": 0,
        "voltage": 0,
        "current": 0,
    }
    expect(page.locator("#alerts tbody tr")).to_have_count(3)
    expect(page.locator('[data-counter="valid"] b')).to_have_text("40")
    expect(page.locator("#importance")).to_contain_text("no model promoted yet")
    expect(page.locator("#kafka-topics tbody")).to_contain_text(s.topics.alerts)
    page.screenshot(path=str(ARTIFACTS / "dashboard-loaded.png"), full_page=True)

    # a live anomalous prediction for dev-0001-temperature → red marker, red row
    producer = make_producer(s.kafka.client_config(), linger_ms=0)
    ts = to_iso(T0 + timedelta(seconds=30))
    producer.produce(
        s.topics.predictions,
        orjson.dumps(
            {
                "sensor_id": "dev-0001-temperature",
                "timestamp": ts,
                "value": 88.0,
                "score": 12.0,
                "is_anomaly": True,
                "anomaly_kind": "spike",
            }
        ),
        key="dev-0001-temperature",
    )
    # the job stores an alert and produces it to Kafka
    alert = {
        "alert_id": "al-live",
        "device_id": "dev-0001",
        "sensor_ids": ["dev-0001-temperature"],
        "kind": "spike",
        "severity": "critical",
        "score": 12.0,
        "reason": "value 88.0 far above 20.9",
        "location": "loc-01",
        "opened_at": ts,
        "updated_at": ts,
        "closed_at": None,
        "status": "open",
        "readings": 1,
        "top_features": ["robust_z"],
        "recommendation": "Check the cooling of dev-0001 before it trips",
        "recommendation_id": "spike.temperature",
    }
    store.upsert_alerts([alert])
    producer.produce(s.topics.alerts, orjson.dumps(alert), key="al-live")
    assert producer.flush(30) == 0

    row = page.locator('#alerts tr[data-alert-id="al-live"]')
    expect(row).to_have_class("alert-new", timeout=8_000)
    expect(row.locator(".rec")).to_have_text("Check the cooling of dev-0001 before it trips (spike.temperature)")
    expect(page.locator('#alerts tr[data-alert-id="al-1"] .rec')).to_have_count(0)  # none known: nothing shown
    expect(page.locator('#data-table tr[data-sensor-id="dev-0001-temperature"]')).to_have_class(
        "anomaly", timeout=8_000
    )
    wait_for(lambda: page.evaluate(SERIES_POINTS)[-1] == ["anomaly", 2], timeout_s=8, what="the live anomaly")
    expect(page.locator('[data-cell="loc-01|temperature"]')).to_have_class("num anomaly")
    # a prediction as the job sends it (no value): the page fetches the stored reading it refers to
    later = T0 + timedelta(seconds=40)
    store.upsert_readings(
        pd.DataFrame(
            [
                {
                    "sensor_id": "dev-0002-temperature",
                    "device_id": "dev-0002",
                    "sensor_type": "temperature",
                    "location": "loc-02",
                    "unit": "°C",
                    "timestamp": later,
                    "value": 31.5,
                    "status": "ok",
                    "interpolated": False,
                    "score": 0.4,
                    "is_anomaly": False,
                }
            ]
        )
    )
    producer.produce(
        s.topics.predictions,
        orjson.dumps(
            {
                "sensor_id": "dev-0002-temperature",
                "timestamp": to_iso(later),
                "score": 0.4,
                "is_anomaly": False,
                "anomaly_kind": None,
                "interpolated": False,
            }
        ),
        key="dev-0002-temperature",
    )
    assert producer.flush(30) == 0
    wait_for(
        lambda: page.evaluate(SERIES_POINTS)[1] == ["dev-0002-temperature", 11],
        timeout_s=10,
        what="the stored reading behind a value-less prediction",
    )
    page.screenshot(path=str(ARTIFACTS / "dashboard-alert.png"), full_page=True)

    # acknowledge from the page → the store records who
    page.fill("#operator", "ops-playwright")
    row.locator("button.ack").click()
    expect(row.locator("td.status")).to_have_text("acknowledged", timeout=10_000)
    stored = store.alert("al-live")
    assert stored is not None and stored["status"] == "acknowledged"
    assert [(e["status"], e["by"]) for e in store.alert_events("al-live")] == [
        ("open", "millrace"),
        ("acknowledged", "ops-playwright"),
    ]
    page.screenshot(path=str(ARTIFACTS / "dashboard-acknowledged.png"), full_page=True)

    # resolve, then the detail of the alert: its recommendation and lifecycle
    expect(row.locator("button.ack")).to_have_count(0)
    page.fill("#operator", "ops-resolver")
    row.locator("button.resolve").click()
    expect(row.locator("td.status")).to_have_text("resolved", timeout=10_000)
    expect(row.locator("button")).to_have_count(0)
    assert [(e["status"], e["by"]) for e in store.alert_events("al-live")][-1] == ("resolved", "ops-resolver")
    row.locator("td.reason").click()
    detail = page.locator("#alert-detail")
    expect(detail.locator('[data-field="recommendation"]')).to_have_text(
        "Check the cooling of dev-0001 before it trips"
    )
    expect(detail.locator('[data-field="top features"]')).to_have_text("robust_z")
    expect(detail.locator("table.events tbody tr td:nth-child(2)")).to_have_text(["open", "acknowledged", "resolved"])
    expect(detail.locator("table.events tbody tr td:nth-child(3)")).to_have_text(
        ["millrace", "ops-playwright", "ops-resolver"]
    )

    # windowed metrics: the stored window of temperature|loc-01, then one more produced live
    page.select_option("#win-scope", "type_location")
    page.select_option("#win-key", "temperature|loc-01")
    wait_for(lambda: page.evaluate(WINDOW_TRACES) == {"mean": [20.5], "anomalies": [0]}, timeout_s=10, what="windows")
    window = {
        "scope": "type_location",
        "key": "temperature|loc-01",
        "sensor_type": "temperature",
        "location": "loc-01",
        "window_start": to_iso(T0 + timedelta(minutes=1)),
        "window_end": to_iso(T0 + timedelta(minutes=2)),
        "count": 60,
        "mean": 21.5,
        "min": 20.0,
        "max": 23.0,
        "stddev": 0.5,
        "anomaly_count": 2,
    }
    producer.produce(s.topics.windowed_metrics, orjson.dumps(window), key="temperature|loc-01")
    assert producer.flush(30) == 0
    wait_for(
        lambda: page.evaluate(WINDOW_TRACES) == {"mean": [20.5, 21.5], "anomalies": [0, 2]},
        timeout_s=10,
        what="the live window",
    )
    expect(page.locator("#win-info")).to_have_text("2 windows, 2026-03-01 12:00:00Z – 2026-03-01 12:02:00Z")

    assert errors == []
    assert all(r.startswith((url, "ws://127.0.0.1")) for r in requests), [r for r in requests if not r.startswith(url)]
    assert f"{url}/static/vendor/plotly.min.js" in requests


def _texts(locator: Any) -> list[str]:
    return [t.strip() for t in locator.all_inner_texts()]


def test_kafka_tab(live: tuple[Settings, str, SqliteStore], page: Any) -> None:
    s, url, _store = live
    expect = sync_api.expect
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/#kafka")
    expect(page.locator("#tab-kafka")).to_be_visible()
    expect(page.locator("#tab-overview")).to_be_hidden()
    expect(page.locator('#tabs a[data-tab="kafka"]')).to_have_class("active")

    broker = page.locator('#k-brokers tr[data-broker="1"] td')
    expect(broker).to_have_count(6, timeout=15_000)
    cells = _texts(broker)
    assert cells[:4] == ["1", "127.0.0.1", str(s.runtime.kafka_port), "–"] and cells[4] in ("yes", "")
    assert re.fullmatch(r"\d+(\.\d)? (B|KiB|MiB)", cells[5]), cells[5]
    declared = {t.name: t.partitions for t in declared_topics(s.topics)}
    expect(page.locator(f'#k-topics tr[data-topic="{s.topics.alerts}"] td:nth-child(2)')).to_have_text(
        str(declared[s.topics.alerts])
    )

    # create a topic from the form: 3 partitions with a config
    name = unique("millrace.test.ui")
    page.fill("#k-new-name", name)
    page.fill("#k-new-partitions", "3")
    page.fill("#k-new-configs", "retention.ms=3600000, cleanup.policy=delete")
    page.click("#k-create button[type=submit]")
    expect(page.locator("#k-create-result")).to_have_text(f"created {name}: 3 partitions, RF 1", timeout=30_000)
    expect(page.locator("#k-topic-name")).to_have_text(name)
    partitions = page.locator("#k-partitions tbody tr")
    expect(partitions).to_have_count(3, timeout=10_000)
    assert [_texts(partitions.nth(i).locator("td"))[:7] for i in range(3)] == [
        [str(i), "1", "1", "1", "0", "0", "0"] for i in range(3)
    ]
    expect(page.locator('#k-configs tr[data-config="retention.ms"] td:nth-child(2)')).to_have_text("3600000")
    expect(page.locator('#k-configs tr[data-config="cleanup.policy"] td:nth-child(2)')).to_have_text("delete")
    # the same name again: the API's reason is shown
    page.click("#k-create button[type=submit]")
    expect(page.locator("#k-create-result")).to_have_text(f"topic {name} already exists")
    expect(page.locator("#k-create-result")).to_have_class("error")

    # messages: 4 on partition 0, 3 on partition 1, with keys, times and headers
    produce_browsable(s, name)
    page.click("#k-refresh")
    expect(page.locator(f'#k-topics tr[data-topic="{name}"] td:nth-child(5)')).to_have_text("7", timeout=10_000)
    page.locator(f'#k-topics tr[data-topic="{name}"]').click()
    expect(page.locator("#k-partitions tbody tr td:nth-child(6)")).to_have_text(["4", "3", "0"])

    def browse(*, partition: str = "", mode: str = "latest", offset: str = "0", at: str = "", key: str = "") -> None:
        page.select_option("#k-msg-topic", name)
        page.select_option("#k-msg-partition", partition)
        page.select_option("#k-msg-mode", mode)
        page.fill("#k-msg-offset", offset)
        page.fill("#k-msg-time", at)
        page.fill("#k-msg-key", key)
        page.evaluate("document.getElementById('k-messages').innerHTML = ''")
        page.click("#k-browse button[type=submit]")

    def shown() -> list[tuple[str | None, str | None]]:
        cards = page.locator("#k-messages .message")
        return [
            (cards.nth(i).get_attribute("data-partition"), cards.nth(i).get_attribute("data-offset"))
            for i in range(cards.count())
        ]

    browse(partition="0", mode="offset", offset="1")
    expect(page.locator("#k-msg-info")).to_have_text("3 messages (3 read)", timeout=15_000)
    assert shown() == [("0", "1"), ("0", "2"), ("0", "3")]
    card = page.locator('#k-messages .message[data-offset="2"]')
    assert card.locator("pre.value").inner_text() == '{\n  "n": 2\n}'  # JSON pretty-printed
    assert card.locator("code.key").inner_text() == "alpha-2"
    assert [_texts(r.locator("td")) for r in card.locator("table.headers tr").all()] == [
        ["source", "lab"],
        ["trace", "t-2"],
    ]
    text = page.locator('#k-messages .message[data-offset="3"]')
    assert text.locator("pre.value").inner_text() == "plain text" and text.locator("table.headers").count() == 0

    browse(key="alpha")
    expect(page.locator("#k-msg-info")).to_have_text("4 messages (7 read)", timeout=15_000)
    assert shown() == [("1", "2"), ("0", "2"), ("1", "0"), ("0", "0")]
    nested = page.locator('#k-messages .message[data-partition="1"][data-offset="2"] pre.value').inner_text()
    assert orjson.loads(nested) == {"n": 12, "nested": {"a": [1, 2]}} and nested.count("\n") == 8

    browse(mode="timestamp", at=message_time(2000))
    expect(page.locator("#k-msg-info")).to_have_text("3 messages (3 read)", timeout=15_000)
    assert shown() == [("0", "2"), ("1", "2"), ("0", "3")]
    assert _texts(page.locator("#k-messages .message .meta span:nth-child(2)")) == [
        message_time(2000).replace("T", " "),
        message_time(2500).replace("T", " "),
        message_time(3000).replace("T", " "),
    ]

    # a consumer group's lag per partition: committed 2 of 4 on partition 0, 1 of 3 on partition 1
    group_id = unique("millrace-test-ui-group")
    consumer = Consumer({**s.kafka.client_config(), "group.id": group_id, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(name, 0, 2), TopicPartition(name, 1, 1)], asynchronous=False)
    consumer.close()
    page.click("#k-refresh")
    row = page.locator(f'#k-groups tr[data-group="{group_id}"]')
    expect(row.locator("td:nth-child(5)")).to_have_text("4", timeout=15_000)
    expect(row.locator("td:nth-child(4)")).to_have_text(name)
    row.click()
    expect(page.locator("#k-group-state")).to_have_text("EMPTY, total lag 4", timeout=10_000)
    offsets = page.locator("#k-offsets tbody tr")
    expect(offsets).to_have_count(2)
    assert [_texts(offsets.nth(i).locator("td")) for i in range(2)] == [
        [name, "0", "2", "4", "2"],
        [name, "1", "1", "3", "2"],
    ]
    expect(page.locator("#k-members tbody")).to_have_text("no active members")

    # a group with a live member: its assignment, and the lag after it read everything
    live_group = unique("millrace-test-ui-member")
    member = Consumer(
        {
            **s.kafka.client_config(),
            "group.id": live_group,
            "client.id": "ui-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    member.subscribe([name])
    read: list[Any] = []
    wait_for(
        lambda: read.extend(m for m in member.consume(10, 0.5) if m.error() is None) or len(read) >= 7,
        timeout_s=30,
        what="the member to read the 7 messages",
    )
    member.commit(asynchronous=False)
    try:
        page.click("#k-refresh")
        page.locator(f'#k-groups tr[data-group="{live_group}"]').click()
        expect(page.locator("#k-group-state")).to_have_text("STABLE, total lag 0", timeout=15_000)
        cells = page.locator("#k-members tbody tr td")
        expect(cells.nth(1)).to_have_text("ui-reader")
        expect(cells.nth(3)).to_have_text(f"{name}[0], {name}[1], {name}[2]")
        expect(page.locator("#k-offsets tbody tr td:nth-child(5)")).to_have_text(["0", "0"])
    finally:
        member.close()
    page.screenshot(path=str(ARTIFACTS / "dashboard-kafka.png"), full_page=True)
    assert errors == []


# ---- a fleet beyond 1,000 sensors, on both store backends ----

FLEET_DEVICES = range(100, 300)  # 200 devices x 6 sensor types = 1,200 sensors, plus the 4 seeded
FLEET_TYPES = (  # type, unit, base value
    ("temperature", "°C", 20.0),
    ("humidity", "%", 40.0),
    ("pressure", "hPa", 1000.0),
    ("vibration", "mm/s", 1.0),
    ("voltage", "V", 230.0),
    ("current", "A", 5.0),
)


def fleet_rows() -> pd.DataFrame:
    """One reading per sensor at T0 + 5 s, all at loc-03; value = base + (device % 10)."""
    return pd.DataFrame(
        [
            {
                "sensor_id": f"dev-{d:04d}-{t}",
                "device_id": f"dev-{d:04d}",
                "sensor_type": t,
                "location": "loc-03",
                "unit": unit,
                "timestamp": T0 + timedelta(seconds=5),
                "value": base + d % 10,
                "status": "ok",
                "interpolated": False,
                "score": 0.1,
                "is_anomaly": False,
                "anomaly_kind": None,
                "features": "{}",
                "ground_truth": None,
                "kafka_partition": 1,
                "kafka_offset": d,
                "ingested_at": T0 + timedelta(seconds=6),
            }
            for d in FLEET_DEVICES
            for t, unit, base in FLEET_TYPES
        ]
    )


@pytest.fixture(scope="module")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB-wire server on a free port, started like ``stack up --with mongodb``."""
    state = tmp_path_factory.mktemp("dash-mongo")
    uri = f"mongodb://127.0.0.1:{free_port()}"
    manager = ProcessManager(state)
    manager.start(mongodb_spec(load_settings(state_dir=state, store={"backend": "mongodb", "mongodb_uri": uri})))
    try:
        yield uri
    finally:
        manager.stop("mongodb")


@pytest.fixture(scope="module", params=["sqlite", "mongodb"])
def fleet(
    request: pytest.FixtureRequest, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Store, str]]:
    """The seeded store plus 1,200 sensors, a promoted model in a state dir of its own; REST + page only."""
    tmp = Path(tmp_path_factory.mktemp("fleet"))
    store: Store
    if request.param == "sqlite":
        store = SqliteStore(tmp / "millrace.db")
    else:
        from millrace.stores.mongo import MongoStore

        store = MongoStore(request.getfixturevalue("mongodb_uri"), unique("dash"))
    seed(store)
    store.upsert_readings(fleet_rows())
    own = settings.model_copy(update={"state_dir": tmp})
    root = registry.registry_root(own)
    info = {
        "detector": "device",
        "metrics": {},
        "importance": {"sensors": {"vibration": 0.5, "humidity": 0.3, "temperature": 0.2}, "features": {}},
    }
    version = registry.save_model(root, {"model": "placeholder"}, info)
    registry.promote(root, version)
    with served(create_app(own, store=store, live=False)) as url:
        yield url, store, version
    if request.param == "mongodb":
        store.drop()  # type: ignore[attr-defined]
    store.close()


def test_fleet_pages_distributions_windows_device(fleet: tuple[str, Store, str], page: Any) -> None:
    url, store, version = fleet
    expect = sync_api.expect
    # on FerretDB the sensor list costs a query per sensor (about 7 s for this fleet): allow for it
    expect.set_options(timeout=30_000)
    try:
        _fleet_page(url, store, version, page)
    finally:
        expect.set_options(timeout=5_000)


def _fleet_page(url: str, store: Store, version: str, page: Any) -> None:
    expect = sync_api.expect
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    info = page.locator("#sensor-page-info")
    expect(info).to_have_text("1–50 of 1,204", timeout=20_000)
    rows = page.locator("#data-table tbody tr")
    expect(rows).to_have_count(50)
    assert rows.first.get_attribute("data-sensor-id") == "dev-0001-humidity"
    expect(page.locator("#sensor-prev")).to_be_disabled()
    page.click("#sensor-next")
    expect(info).to_have_text("51–100 of 1,204")
    assert rows.first.get_attribute("data-sensor-id") == "dev-0107-vibration"
    page.fill("#sensor-search", "voltage")
    expect(info).to_have_text("1–50 of 200")
    for first in (51, 101, 151):
        page.click("#sensor-next")
        expect(info).to_have_text(f"{first}–{first + 49} of 200")
    expect(page.locator("#sensor-next")).to_be_disabled()
    assert rows.last.get_attribute("data-sensor-id") == "dev-0299-voltage"
    page.fill("#sensor-search", "DEV-0150")
    expect(info).to_have_text("1–6 of 6")
    assert [r.get_attribute("data-sensor-id") for r in rows.all()] == [
        f"dev-0150-{t}" for t in ("current", "humidity", "pressure", "temperature", "vibration", "voltage")
    ]
    page.fill("#sensor-search", "no-such-sensor")
    expect(info).to_have_text("no sensor matches")
    expect(rows).to_have_count(0)

    # every sensor counts, beyond the first 1,000: current metrics and a distribution per type
    expect(page.locator('[data-cell="loc-03|voltage"]')).to_have_text("234.50 V")
    expect(page.locator('[data-cell="loc-03|current"]')).to_have_text("9.50 A")
    # the 12 tracked sensors of a type bring their history (10 readings for the seeded ones), the rest 1 value
    wait_for(
        lambda: (
            page.evaluate(HIST_COUNTS)
            == {"temperature": 220, "humidity": 220, "pressure": 200, "vibration": 200, "voltage": 200, "current": 200}
        ),
        timeout_s=30,
        what="a distribution per sensor type",
    )

    # windowed metrics per sensor
    page.select_option("#win-scope", "sensor")
    page.select_option("#win-key", "dev-0001-humidity")
    wait_for(
        lambda: page.evaluate(WINDOW_TRACES) == {"mean": [40, 41, 42], "anomalies": [0, 1, 0]},
        timeout_s=10,
        what="a sensor's windows",
    )
    expect(page.locator("#win-info")).to_have_text("3 windows, 2026-03-01 12:00:00Z – 2026-03-01 12:03:00Z")
    page.select_option("#win-key", "dev-0150-voltage")
    expect(page.locator("#win-info")).to_have_text("no windows for this key yet")

    # resolve straight from open
    page.fill("#operator", "ops-fleet")
    al2 = page.locator('#alerts tr[data-alert-id="al-2"]')
    al2.locator("button.resolve").click()
    expect(al2.locator("td.status")).to_have_text("resolved", timeout=10_000)
    assert [(e["status"], e["by"]) for e in store.alert_events("al-2")] == [
        ("open", "millrace"),
        ("resolved", "ops-fleet"),
    ]
    page.locator('#alerts tr[data-alert-id="al-1"] td.reason').click()
    expect(page.locator('#alert-detail [data-field="recommendation"]')).to_have_text("none")
    page.screenshot(path=str(ARTIFACTS / "dashboard-fleet.png"), full_page=True)

    # the device page, opened from the sensor table
    page.fill("#sensor-search", "dev-0001-temp")
    expect(info).to_have_text("1–1 of 1")
    page.locator('#data-table a[href="#device/dev-0001"]').click()
    expect(page.locator("#tab-device")).to_be_visible()
    sensors = page.locator("#device-sensors tbody tr")
    expect(sensors).to_have_count(2, timeout=10_000)
    assert [_texts(r.locator("td")) for r in sensors.all()] == [
        ["dev-0001-humidity", "humidity", "loc-01", "40.90 %", "2026-03-01 12:00:09Z", "0.50", "", "active", "0.300"],
        [
            "dev-0001-temperature",
            "temperature",
            "loc-01",
            "20.90 °C",
            "2026-03-01 12:00:09Z",
            "0.50",
            "",
            "active",
            "0.200",
        ],
    ]
    expect(page.locator("#device-info")).to_have_text("loc-01 · 2 sensors · 1 alerts, 1 open")
    expect(page.locator("#device-model")).to_have_text(f"model {version}")
    assert [_texts(r.locator("td"))[:5] for r in page.locator("#device-alerts tbody tr").all()] == [
        ["2026-03-01 12:00:00Z", "critical", "spike", "dev-0001-temperature", "open"]
    ]
    assert [_texts(r.locator("td")) for r in page.locator("#device-top tbody tr").all()] == [
        ["rate", "1"],
        ["robust_z", "1"],
    ]
    contrib = "() => { const d = document.getElementById('device-contrib').data; return d && [d[0].y, d[0].x]; }"
    wait_for(
        lambda: page.evaluate(contrib) == [["dev-0001-temperature", "dev-0001-humidity"], [0.2, 0.3]],
        timeout_s=10,
        what="the device's contribution chart",
    )
    page.screenshot(path=str(ARTIFACTS / "dashboard-device.png"), full_page=True)
    # an unknown device says so
    page.goto(url + "/#device/dev-0404")
    expect(page.locator("#device-info")).to_have_text("no sensors for device 'dev-0404'")
    expect(page.locator("#device-sensors tbody tr")).to_have_count(0)
    assert errors == []
