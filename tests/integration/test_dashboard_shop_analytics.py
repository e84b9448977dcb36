"""The dashboard's Shop analytics tab in headless Chromium (the browser helpers of test_dashboard.py) against the
real GET /api/shop/analytics: on an empty store the tab says to run `millrace shop analytics`; once a run's
metrics are written through millrace.shop.analytics_records.publish_metrics (the writer the analytics job and the
recommender use: the analytics topic and the store) a Refresh draws exactly those figures — revenue per
category summed over days, sales per day, top products, the catalog per category, searches and active users per
hour, top and zero-result queries — with the Russian names as written; the recommendation coverage, written
later by its own run (as `shop recommend-train` does), joins them on the next Refresh.
Chromium and Playwright are required (scripts/setup.sh); missing, the test fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from millrace.config import Settings
from millrace.services.app import create_app
from millrace.shop.analytics_records import publish_metrics
from tests.integration import test_dashboard
from tests.integration.fixtures_service import fresh_topics, served
from tests.integration.test_dashboard import ARTIFACTS, sync_api

pytestmark = pytest.mark.integration
page = test_dashboard.page  # the headless Chromium page (a missing browser fails, as there)

COMPUTED_AT = "2026-12-05T10:30:00Z"
COVERAGE_AT = "2026-12-05T10:40:00Z"  # the recommender's run, after the analytics run
DAYS = ("2026-12-01", "2026-12-02")


def _metric(metric: str, value: float, start: str, end: str, **dimensions: str) -> dict[str, Any]:
    return {
        "metric": metric,
        "window_start": start,
        "window_end": end,
        "dimensions": dimensions,
        "value": value,
        "computed_at": COVERAGE_AT if metric == "recommendation_coverage" else COMPUTED_AT,
    }


def _day(metric: str, category: str, day: str, value: float) -> dict[str, Any]:
    return _metric(metric, value, f"{day}T00:00:00Z", f"{day}T23:59:59Z", category=category, day=day)


def _hour(metric: str, hour: str, value: float) -> dict[str, Any]:
    return _metric(metric, value, hour, hour.replace(":00:00Z", ":59:59Z"), hour=hour)


def _whole(metric: str, value: float, **dimensions: str) -> dict[str, Any]:
    return _metric(metric, value, f"{DAYS[0]}T00:00:00Z", f"{DAYS[-1]}T23:59:59Z", **dimensions)


# One run of every metric the tab draws. Компьютеры sells on both days (120000 + 30500.5 = 150500.5), more
# than Смартфоны (99990) and Умные часы (15000), so it heads the revenue chart only when days are summed.
RUN: list[dict[str, Any]] = [
    _day("sales_revenue", "Компьютеры", DAYS[0], 120000.0),
    _day("sales_revenue", "Компьютеры", DAYS[1], 30500.5),
    _day("sales_revenue", "Смартфоны", DAYS[0], 99990.0),
    _day("sales_revenue", "Умные часы", DAYS[1], 15000.0),
    _day("sales_orders", "Компьютеры", DAYS[0], 2),
    _day("sales_orders", "Компьютеры", DAYS[1], 1),
    _day("sales_orders", "Смартфоны", DAYS[0], 1),
    _day("sales_orders", "Умные часы", DAYS[1], 1),
    _day("sales_units", "Компьютеры", DAYS[0], 3),
    _day("sales_units", "Компьютеры", DAYS[1], 1),
    _day("sales_units", "Смартфоны", DAYS[0], 2),
    _day("sales_units", "Умные часы", DAYS[1], 1),
    _whole("top_products", 4, product_id="k1", name="Клавиатура YZA", category="Компьютеры", rank="1"),
    _whole("top_products", 2, product_id="p1", name="Смартфон Ёлка", category="Смартфоны", rank="2"),
    _whole("top_products", 1, product_id="w1", name="Умные часы Ёж", category="Умные часы", rank="3"),
    _whole("category_product_count", 2, category="Компьютеры"),
    _whole("category_product_count", 1, category="Смартфоны"),
    _whole("category_product_count", 1, category="Умные часы"),
    _whole("category_avg_price", 2200.0, category="Компьютеры"),
    _whole("category_avg_price", 49995.0, category="Смартфоны"),
    _whole("category_avg_price", 15000.0, category="Умные часы"),
    _whole("category_total_available", 17, category="Компьютеры"),
    _whole("category_total_available", 3, category="Смартфоны"),
    _whole("category_total_available", 0, category="Умные часы"),
    _whole("search_queries", 12, query="клавиатура", rank="1"),
    _whole("search_queries", 5, query="умные часы", rank="2"),
    _whole("search_queries", 3, query="ёжик", rank="3"),
    _whole("search_queries", 2, query="летающая тарелка", rank="4"),
    _whole("zero_result_queries", 3, query="ёжик", rank="1"),
    _whole("zero_result_queries", 2, query="летающая тарелка", rank="2"),
    _hour("searches_per_hour", "2026-12-05T09:00:00Z", 15),
    _hour("searches_per_hour", "2026-12-05T10:00:00Z", 7),
    _hour("active_users_per_hour", "2026-12-05T09:00:00Z", 4),
    _hour("active_users_per_hour", "2026-12-05T10:00:00Z", 3),
    _whole("searches_per_user_hour", 9, user="u-1", hour="2026-12-05T09:00:00Z"),
]
COVERAGE: list[dict[str, Any]] = [
    _whole("recommendation_coverage", 0.875, model="als"),
    _whole("recommendation_coverage", 1.0, model="popularity"),
]

CHART = """id => { const d = document.getElementById(id).data;
  return d ? d.map(t => ({name: t.name ?? null, x: Array.from(t.x), y: Array.from(t.y)})) : null; }"""
ROWS = """sel => Array.from(document.querySelectorAll(sel + ' tbody tr'))
  .map(r => Array.from(r.cells).map(c => c.textContent))"""


def _refresh(page: Any) -> None:
    """Click Refresh and wait until the tab has drawn the answer to that request."""
    loaded = page.locator("#tab-shop-analytics").get_attribute("data-loaded")
    page.click("#sa-refresh")
    sync_api.expect(page.locator("#tab-shop-analytics")).not_to_have_attribute(
        "data-loaded", loaded or "", timeout=15_000
    )


@pytest.fixture(scope="module")
def analytics_app(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    """The API on fresh topics and a store of its own, opened from the settings as `millrace serve` does, so
    publish_metrics (which opens the settings' store) writes where the route reads."""
    state_dir = Path(tmp_path_factory.mktemp("dash-shop-analytics"))
    own = fresh_topics(settings).model_copy(
        update={
            "state_dir": state_dir,
            "store": settings.store.model_copy(update={"backend": "sqlite", "sqlite_path": state_dir / "millrace.db"}),
        }
    )
    with served(create_app(own, live=False)) as url:
        yield url, own


def test_the_shop_analytics_tab_shows_a_run_and_says_when_there_is_none(
    analytics_app: tuple[str, Settings],
    page: Any,  # noqa: F811
) -> None:
    url, settings = analytics_app
    expect = sync_api.expect
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/shop/analytics" in r.url else None)
    assert httpx.get(f"{url}/api/shop/analytics").json() == {"computed_at": None, "metrics": {}}

    page.goto(url + "/#shop-analytics")
    expect(page.locator('#tabs a[data-tab="shop-analytics"]')).to_have_class("active", timeout=15_000)
    expect(page.locator("#sa-empty")).to_be_visible(timeout=15_000)
    expect(page.locator("#sa-empty")).to_have_text("no analytics yet — run millrace shop analytics")
    expect(page.locator("#sa-notice")).to_be_hidden()
    expect(page.locator("#tab-shop-analytics section.sa-data:visible")).to_have_count(0)

    assert publish_metrics(settings, RUN) == len(RUN)
    _refresh(page)
    expect(page.locator("#sa-empty")).to_be_hidden()
    expect(page.locator("#sa-notice")).to_be_hidden()
    expect(page.locator("#sa-info")).to_have_text("computed 2026-12-05 10:30:00Z")

    # revenue summed over days per category, the largest on top (a horizontal bar chart lists bottom-up)
    expect(page.locator("#sa-top-category")).to_have_text("top: Компьютеры · 150,500.50")
    assert page.evaluate(CHART, "sa-categories") == [
        {"name": None, "x": [15000.0, 99990.0, 150500.5], "y": ["Умные часы", "Смартфоны", "Компьютеры"]}
    ]
    assert page.evaluate(CHART, "sa-sales-day") == [
        {"name": "revenue", "x": list(DAYS), "y": [219990.0, 45500.5]},
        {"name": "units", "x": list(DAYS), "y": [5, 2]},
    ]
    assert page.evaluate(ROWS, "#sa-products") == [
        ["1", "k1", "Клавиатура YZA", "Компьютеры", "4"],
        ["2", "p1", "Смартфон Ёлка", "Смартфоны", "2"],
        ["3", "w1", "Умные часы Ёж", "Умные часы", "1"],
    ]
    assert page.evaluate(ROWS, "#sa-category-table") == [
        ["Компьютеры", "2", "2,200.00", "17"],
        ["Смартфоны", "1", "49,995.00", "3"],
        ["Умные часы", "1", "15,000.00", "0"],
    ]
    assert page.evaluate(CHART, "sa-searches-hour") == [
        {"name": "searches", "x": ["2026-12-05T09:00:00Z", "2026-12-05T10:00:00Z"], "y": [15, 7]}
    ]
    assert page.evaluate(CHART, "sa-users-hour") == [
        {"name": "active users", "x": ["2026-12-05T09:00:00Z", "2026-12-05T10:00:00Z"], "y": [4, 3]}
    ]
    assert page.evaluate(ROWS, "#sa-queries") == [
        ["1", "клавиатура", "12"],
        ["2", "умные часы", "5"],
        ["3", "ёжик", "3"],
        ["4", "летающая тарелка", "2"],
    ]
    assert page.evaluate(ROWS, "#sa-zero") == [["1", "ёжик", "3"], ["2", "летающая тарелка", "2"]]
    expect(page.locator("#sa-coverage")).to_have_text(
        "no recommendation coverage yet (run millrace shop recommend-train)"
    )

    # the recommender's later run adds its coverage; the analytics run's figures stay
    assert publish_metrics(settings, COVERAGE) == len(COVERAGE)
    _refresh(page)
    expect(page.locator("#sa-info")).to_have_text("computed 2026-12-05 10:40:00Z")
    expect(page.locator("#sa-top-category")).to_have_text("top: Компьютеры · 150,500.50")
    assert page.evaluate(ROWS, "#sa-zero") == [["1", "ёжик", "3"], ["2", "летающая тарелка", "2"]]
    coverage = page.locator("#sa-coverage .counter")
    assert coverage.evaluate_all("cs => cs.map(c => [c.dataset.model, c.querySelector('b').textContent])") == [
        ["als", "87.5 %"],
        ["popularity", "100.0 %"],
    ]
    page.screenshot(path=str(ARTIFACTS / "dashboard-shop-analytics.png"), full_page=True)
    # the tab asks for the metrics it draws by name: never the per-user figures, nearly all of a real run
    assert len(asked) >= 3  # the first load and two refreshes (the 30 s timer may add one)
    assert all("metric=sales_revenue" in u and "searches_per_user_hour" not in u for u in asked)
    assert errors == []
