"""The dashboard in headless Debian Chromium (Playwright): it loads offline, charts render with the store's
data, a live anomaly and an alert produced to Kafka appear highlighted within seconds, Acknowledge works.
Screenshots go to test-artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
import pytest

from millrace.config import Settings
from millrace.kafka.producer import make_producer
from millrace.records import to_iso
from millrace.services.app import create_app
from millrace.stores.sqlite import SqliteStore
from tests.helpers import wait_for
from tests.integration.fixtures_service import T0, fresh_topics, seeded_store, served

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

if not CHROMIUM.exists():
    pytest.skip(
        "Debian chromium is not installed (/usr/bin/chromium): apt-get install chromium", allow_module_level=True
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (millrace[dev])")

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
def page(live: tuple[Settings, str, SqliteStore]) -> Iterator[Any]:
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
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
    }
    store.upsert_alerts([alert])
    producer.produce(s.topics.alerts, orjson.dumps(alert), key="al-live")
    assert producer.flush(30) == 0

    row = page.locator('#alerts tr[data-alert-id="al-live"]')
    expect(row).to_have_class("alert-new", timeout=8_000)
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

    assert errors == []
    assert all(r.startswith((url, "ws://127.0.0.1")) for r in requests), [r for r in requests if not r.startswith(url)]
    assert f"{url}/static/vendor/plotly.min.js" in requests
