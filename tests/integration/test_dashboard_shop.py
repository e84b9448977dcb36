"""The dashboard's Shop tab in headless Chromium against a real API and broker: the catalog filtered and paged,
a product blocked and unblocked by an operator (and refused to a viewer), and a client's search query shown
live from client-search. Chromium and Playwright are required (scripts/setup.sh); missing, the test fails."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from millrace.config import ApiToken, Settings
from millrace.services.app import create_app
from millrace.services.auth import new_token, token_hash
from millrace.shop.client import query_record, record_query
from tests.helpers import unique
from tests.integration.fixtures_service import fresh_topics, seeded_store, served
from tests.integration.test_api_shop import _catalog
from tests.integration.test_dashboard import ARTIFACTS, page, sync_api  # noqa: F401 - page is a fixture

pytestmark = pytest.mark.integration

TOKENS = {role: new_token() for role in ("viewer", "operator")}


@pytest.fixture(scope="module")
def shop_app(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    state_dir = Path(tmp_path_factory.mktemp("dash-shop"))
    catalog = state_dir / "catalog.json"
    catalog.write_text(json.dumps(_catalog(), ensure_ascii=False), encoding="utf-8")
    tokens = tuple(ApiToken(name=f"t-{r}", role=r, sha256=token_hash(t)) for r, t in TOKENS.items())  # type: ignore[arg-type]
    own = fresh_topics(settings).model_copy(
        update={
            "state_dir": state_dir,
            "api": settings.api.model_copy(update={"auth": "token", "tokens": tokens}),
            "shop": settings.shop.model_copy(update={"catalog_path": catalog}),
        }
    )
    store = seeded_store(state_dir / "millrace.db")
    try:
        with served(create_app(own, store=store, live=False)) as url:
            yield url, own
    finally:
        store.close()


def _blocked(url: str) -> list[str]:
    r = httpx.get(f"{url}/api/shop/blocked", headers={"Authorization": f"Bearer {TOKENS['viewer']}"})
    return [e["product_id"] for e in r.json()]


def _open_shop(tab: Any, url: str, role: str) -> None:
    tab.goto(f"{url}/#token={TOKENS[role]}")
    tab.evaluate("location.hash = '#shop'")


def test_shop_tab(shop_app: tuple[str, Settings], page: Any) -> None:  # noqa: F811
    url, settings = shop_app
    expect = sync_api.expect
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _open_shop(page, url, "operator")
    rows = page.locator("#shop-products tbody tr")
    expect(rows).to_have_count(4, timeout=15_000)
    expect(page.locator("#shop-page")).to_have_text("1–4 of 4")
    # filters: a category, then a part of the name (ё/е folded by the API)
    page.select_option("#shop-category", "Компьютеры")
    expect(rows).to_have_count(2)
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.productId)") == ["k1", "m1"]
    page.select_option("#shop-category", "")
    page.fill("#shop-q", "ежик")  # no product
    expect(page.locator("#shop-products tbody")).to_contain_text("no product matches")
    page.fill("#shop-q", "")
    expect(rows).to_have_count(4)

    # block k1 from its row, with a reason; then unblock it from the stop list
    page.fill("#shop-reason", "подделка")
    page.locator('#shop-products tr[data-product-id="k1"] button.shop-block').click()
    expect(page.locator('#shop-blocked tr[data-product-id="k1"]')).to_contain_text("подделка", timeout=15_000)
    expect(page.locator('#shop-products tr[data-product-id="k1"]')).to_contain_text("blocked")
    assert _blocked(url) == ["k1"]
    page.locator('#shop-blocked tr[data-product-id="k1"] button.shop-unblock').click()
    expect(page.locator("#shop-blocked tbody")).to_contain_text("no product is blocked", timeout=15_000)
    assert _blocked(url) == []

    # a client's query appears in the live list while the tab is shown
    user = unique("dash")
    record_query(
        settings.kafka.client_config(),
        settings.topics.shop_client_search,
        query_record(user=user, text="умные часы", results=2),
    )
    expect(page.locator("#shop-queries tbody tr").first).to_contain_text(user, timeout=15_000)
    expect(page.locator("#shop-queries tbody tr").first).to_contain_text("умные часы")
    page.screenshot(path=str(ARTIFACTS / "dashboard-shop.png"), full_page=True)

    # a viewer sees the tab, but a block is refused with the API's reason
    viewer = page.context.browser.new_page()  # a tab of its own: its own sessionStorage, its own token
    try:
        _open_shop(viewer, url, "viewer")
        expect(viewer.locator("#shop-products tbody tr")).to_have_count(4, timeout=15_000)
        viewer.fill("#shop-block-id", "w1")
        viewer.click("#shop-block-submit")
        expect(viewer.locator("#shop-notice")).to_contain_text("needs the operator role", timeout=15_000)
        assert _blocked(url) == []
    finally:
        viewer.close()
    assert errors == []
