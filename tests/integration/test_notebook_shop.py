"""examples/shop_lake.ipynb runs against the session's broker and registry (Spark local, a local lake): orders
archived, analytics computed, the recommenders compared, and the user it shows answered from the published
recommendations."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from millrace.config import Settings
from millrace.kafka.admin import apply_topics
from millrace.kafka.topics import declared_topics
from tests.helpers import unique
from tests.integration.fixtures_shop import read_topic, shop_env

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 6000


def test_the_shop_notebook_walks_lake_analytics_recommendations(shop_settings: Settings, tmp_path: Path) -> None:
    topics = shop_settings.topics.model_copy(update={"shop_analytics": unique("shop-analytics")})
    specs = [t for t in declared_topics(topics) if t.name == topics.shop_analytics]
    apply_topics(shop_settings.kafka.client_config(), specs)
    settings = shop_settings.model_copy(update={"topics": topics})
    env = shop_env(settings, tmp_path) | {
        "MILLRACE_TOPICS__SHOP_ANALYTICS": topics.shop_analytics,
        "MILLRACE_LAKE__URL": (tmp_path / "lake").as_uri(),
        "NOTEBOOK_ORDERS": str(EVENTS),
    }
    nb = nbformat.read(ROOT / "examples" / "shop_lake.ipynb", as_version=4)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    text = "\n".join(
        out.get("text", "") + json.dumps(out.get("data", {}), ensure_ascii=False)
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert f"produced {EVENTS} order events to {topics.shop_orders}" in text
    assert f"archived {EVENTS} order events" in text
    assert len(list((tmp_path / "lake" / "orders").glob("order_date=*/part-p*.parquet"))) >= 42
    assert "metrics over" in text and "Телефоны" in text  # revenue by category
    for model in ("als", "cooccurrence", "popularity"):
        assert model in text
    assert "NDCG@10" in text

    latest = {}
    for msg in read_topic(settings.kafka.client_config(), topics.shop_recommendations):
        latest[msg.key().decode()] = json.loads(msg.value())
    assert len(latest) >= 150
    best = next(iter(latest.values()))["model"]
    assert f"best: {best}; published {len(latest)} users" in text
    # the user the notebook shows: its products in the published order
    shown = next(line for line in text.splitlines() if line.startswith("recommended for "))
    user = shown.split()[2]
    assert shown == f"recommended for {user} by {best} (recommendations):"
    table = nb.cells[-1]["outputs"][-1]["data"]["text/plain"]
    assert re.findall(r"\bp\d{5}\b", table) == [i["product_id"] for i in latest[user]["items"]]
    analytics = [json.loads(m.value()) for m in read_topic(settings.kafka.client_config(), topics.shop_analytics)]
    coverage = [m for m in analytics if m.get("metric") == "recommendation_coverage"]
    assert [(m["dimensions"], m["value"]) for m in coverage] == [({"model": best}, 1.0)]
    assert any(m.get("metric") == "sales_revenue" for m in analytics)
