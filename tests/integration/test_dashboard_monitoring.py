"""The dashboard's Monitoring tab in headless Chromium (the browser helpers of test_dashboard.py): with
Prometheus and Alertmanager running (as `stack up --with monitoring` starts them) and a simulator producing
while no stream job runs, the throughput chart draws the produced series, PipelineStalled shows as firing in
Prometheus and, delivered by Alertmanager, in the infrastructure alert list; without Prometheus the tab says
monitoring is not running. The query route passes Prometheus' answers (instant, range) and its parse errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from millrace.config import Settings
from millrace.runtime.process import free_port
from millrace.services.app import create_app
from millrace.stores.sqlite import SqliteStore
from tests.helpers import wait_for
from tests.integration import test_dashboard
from tests.integration.fixtures_alerting import (
    clean_env,
    monitoring_servers,
    prom_value,
    routed_to,
    simulate,
    stop,
    with_monitoring,
)
from tests.integration.fixtures_service import fresh_topics, seeded_store, served
from tests.integration.test_dashboard import ARTIFACTS, sync_api
from tests.integration.test_process import env_of

pytestmark = pytest.mark.integration
page = test_dashboard.page  # the headless Chromium page (a missing browser fails, as there)

THROUGHPUT = """() => {
  const d = document.getElementById('mon-throughput').data;
  return d ? d.map(t => [t.name, [t.x.length, Math.max(0, ...t.y.filter(v => v !== null))]]) : null;
}"""


@pytest.fixture(scope="module")
def monitored(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str]]:
    tmp = Path(tmp_path_factory.mktemp("dash-monitoring"))
    s = with_monitoring(fresh_topics(settings).model_copy(update={"state_dir": tmp / "state"}))
    store = seeded_store(tmp / "millrace.db")
    with served(create_app(s, store=store, live=False)) as url:
        routed = routed_to(s, url, token_file=None)  # api.auth is "none" in the test session
        with monitoring_servers(routed):
            producer = simulate(
                clean_env(env_of(s)),
                tmp / "simulate.log",
                *("--rate", "40", "--forever", "--devices", "2"),
            )
            try:
                wait_for(
                    lambda: (prom_value(routed, "sum(rate(millrace_produced_total[5s]))") or 0) > 0,
                    timeout_s=60,
                    what="Prometheus to scrape the simulator's produced records",
                )
                yield routed, url
            finally:
                stop(producer)
    store.close()


def test_the_monitoring_tab_draws_prometheus_series_and_alerts(monitored: tuple[Settings, str], page: Any) -> None:
    s, url = monitored
    expect = sync_api.expect
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/#monitoring")
    expect(page.locator("#tab-monitoring")).to_be_visible()
    expect(page.locator('#tabs a[data-tab="monitoring"]')).to_have_class("active")
    expect(page.locator("#mon-notice")).to_be_hidden()
    expect(page.locator("#mon-info")).to_have_text(
        f"Prometheus {s.monitoring.prometheus_url}, last 15 min, step 4 s", timeout=15_000
    )
    # the produced series of the readings topic, with points; nothing read or stored (no stream job)
    produced = wait_for(
        lambda: dict(page.evaluate(THROUGHPUT) or []).get(f"produced {s.topics.readings}"),
        timeout_s=30,
        what="the throughput chart",
    )
    assert produced[0] >= 1 and produced[1] > 0  # points, and a rate above 0
    # every millrace process exports the job's counters at 0 (one registry): drawn, and flat at 0
    lines = dict(page.evaluate(THROUGHPUT))
    assert lines["stored by the job"][1] == 0 and lines["read by the job"][1] == 0
    # the session's broker runs without the JMX exporter
    expect(page.locator("#mon-brokers tbody td")).to_have_text(
        "no broker serves JMX metrics (start the stack with --with monitoring)"
    )
    # input without a stream job: PipelineStalled fires in Prometheus and Alertmanager delivers it to the list
    firing = page.locator('#mon-firing tr[data-alertname="PipelineStalled"] td')
    expect(firing.nth(1)).to_have_text("firing", timeout=45_000)
    expect(firing.nth(2)).to_have_text("critical")
    infra = page.locator("#mon-infra tbody tr[data-alert-id] td")
    expect(infra.nth(1)).to_have_text("PipelineStalled", timeout=30_000)
    expect(infra.nth(4)).to_have_text("no readings processed for 10s while input arrives")
    expect(infra.nth(5)).to_have_text("open")
    page.screenshot(path=str(ARTIFACTS / "dashboard-monitoring.png"), full_page=True)
    assert errors == []


def test_the_monitoring_tab_says_when_monitoring_is_not_running(settings: Settings, tmp_path: Path, page: Any) -> None:
    port = free_port()  # nothing listens there
    s = settings.model_copy(update={"monitoring": settings.monitoring.model_copy(update={"prometheus_port": port})})
    store = SqliteStore(tmp_path / "millrace.db")
    try:
        with served(create_app(s, store=store, live=False)) as url:
            page.goto(url + "/#monitoring")
            notice = page.locator("#mon-notice")
            sync_api.expect(notice).to_be_visible(timeout=15_000)
            sync_api.expect(notice).to_contain_text(
                f"Monitoring is not running: Prometheus does not answer at http://127.0.0.1:{port}"
            )
            sync_api.expect(notice).to_contain_text("start it with `millrace stack up --with monitoring`")
            sync_api.expect(page.locator("#mon-infra tbody td")).to_have_text("Alertmanager has delivered no alert")
    finally:
        store.close()


def test_the_query_route_answers_with_prometheus_data_and_errors(monitored: tuple[Settings, str]) -> None:
    s, url = monitored
    instant = httpx.get(f"{url}/api/monitoring/query", params={"q": 'up{job="prometheus"}'}, timeout=30).json()
    assert (instant["range"], instant["step"], instant["data"]["resultType"]) == (None, None, "vector")
    ((metric, value),) = [(r["metric"], r["value"]) for r in instant["data"]["result"]]
    assert metric["instance"] == f"{s.monitoring.host}:{s.monitoring.prometheus_port}" and value[1] == "1"
    ranged = httpx.get(
        f"{url}/api/monitoring/query", params={"q": 'up{job="prometheus"}', "range": "60"}, timeout=30
    ).json()
    assert (ranged["range"], ranged["step"], ranged["data"]["resultType"]) == (60, 1.0, "matrix")
    points = ranged["data"]["result"][0]["values"]
    assert 1 <= len(points) <= 61 and {v for _, v in points} == {"1"}
    bad = httpx.get(f"{url}/api/monitoring/query", params={"q": "sum("}, timeout=30)
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["detail"].startswith("Prometheus: ") and "parse error" in bad.json()["detail"]
    no_range = httpx.get(f"{url}/api/monitoring/query", params={"q": "up", "range": "0"}, timeout=30)
    assert no_range.status_code == 422 and no_range.json()["detail"].startswith("query.range: ")
