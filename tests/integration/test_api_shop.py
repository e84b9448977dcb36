"""The shop's REST routes on a real server, broker and search index: search with facets and highlights (the query
recorded in client-search), the catalog, the stop list with roles, recommendations with their fallback, and
`millrace shop recommend` on the same topics."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from millrace.config import ApiToken, Settings
from millrace.services.app import create_app
from millrace.services.auth import new_token, token_hash
from millrace.shop.catalog import load_products, sample_catalog_path
from millrace.shop.search import product_doc
from millrace.shop.search_tantivy import TantivyBackend
from millrace.stores.sqlite import SqliteStore
from tests.helpers import unique
from tests.integration.fixtures_service import fresh_topics, seeded_store, served
from tests.integration.fixtures_shop import read_topic

pytestmark = pytest.mark.integration

TOKENS = {role: new_token() for role in ("viewer", "operator")}
MILLRACE = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "millrace")


def _auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def _catalog() -> list[dict[str, Any]]:
    """Four products made from the sample's first (so that they pass the item schema)."""
    base = load_products(sample_catalog_path())[0]
    rows = []
    for pid, name, category, brand, price in (
        ("k1", "Клавиатура YZA", "Компьютеры", "Logik", 3500.0),
        ("w1", "Умные часы Ёж", "Умные часы", "Tick", 12000.0),
        ("w2", "Наручные часы", "Аксессуары", "Tick", 4500.0),
        ("m1", "Мышь беспроводная", "Компьютеры", "Logik", 900.0),
    ):
        p = copy.deepcopy(base)
        p.update(id=pid, name=name, category=category, brand=brand, description=f"{name}. Описание.", tags=[])
        p["price"]["amount"] = price
        rows.append(p)
    return rows


@pytest.fixture(scope="module")
def shop(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    state_dir = Path(tmp_path_factory.mktemp("shop-api"))
    catalog = state_dir / "catalog.json"
    products = _catalog()
    catalog.write_text(json.dumps(products, ensure_ascii=False), encoding="utf-8")
    backend = TantivyBackend(state_dir / "search")
    backend.upsert_products([product_doc(p["id"], p) for p in products])
    backend.commit()
    backend.close()
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
        with served(create_app(own, store=store, live=False)) as base:
            yield base, own
    finally:
        store.close()


def _problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"].endswith("/" + kind), body
    return body


def test_search_answers_and_records_the_query(shop: tuple[str, Settings]) -> None:
    url, settings = shop
    user = unique("u")
    r = httpx.get(f"{url}/api/shop/search", params={"q": "клавиатуры", "user": user}, headers=_auth("viewer"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["message"], body["total"], [h["id"] for h in body["hits"]]) == ("Нашлось 1 товаров", 1, ["k1"])
    assert "<b>" in body["hits"][0]["highlight"]
    assert body["facets"]["category"] == {"Компьютеры": 1}
    # ё/е folded, a price range, a brand
    r = httpx.get(
        f"{url}/api/shop/search",
        params={"q": "часы", "brand": "Tick", "price_min": 1000, "price_max": 5000},
        headers=_auth("viewer"),
    )
    assert [h["id"] for h in r.json()["hits"]] == ["w2"]
    # the first query is in client-search, with what it found
    records = [
        json.loads(m.value()) for m in read_topic(settings.kafka.client_config(), settings.topics.shop_client_search)
    ]
    mine = [r for r in records if r["user"] == user]
    assert [(r["type"], r["query"], r["results"]) for r in mine] == [("search", "клавиатуры", 1)]
    assert len(records) == 2
    live = httpx.get(f"{url}/api/shop/queries", headers=_auth("viewer")).json()
    assert [(q["user"], q["query"]) for q in live] == [("anonymous", "часы"), (user, "клавиатуры")]  # newest first
    # bad input: 422 naming the parameter
    assert (
        "price_min"
        in _problem(
            httpx.get(
                f"{url}/api/shop/search", params={"q": "x", "price_min": 5, "price_max": 5}, headers=_auth("viewer")
            ),
            422,
            "validation",
        )["detail"]
    )
    assert "q" in _problem(httpx.get(f"{url}/api/shop/search", headers=_auth("viewer")), 422, "validation")["detail"]
    assert httpx.get(f"{url}/api/shop/search", params={"q": "x"}).status_code == 401


def test_products_filtered_and_paged(shop: tuple[str, Settings]) -> None:
    url, _ = shop
    get = lambda **p: httpx.get(f"{url}/api/shop/products", params=p, headers=_auth("viewer")).json()  # noqa: E731
    everything = get()
    assert (everything["total"], [p["id"] for p in everything["items"]]) == (4, ["k1", "w1", "w2", "m1"])
    page = get(limit=3, offset=0)
    assert ([p["id"] for p in page["items"]], page["next_offset"]) == (["k1", "w1", "w2"], 3)
    last = get(limit=3, offset=3)
    assert ([p["id"] for p in last["items"]], last["next_offset"]) == (["m1"], None)
    assert [p["id"] for p in get(category="Компьютеры")["items"]] == ["k1", "m1"]
    assert [p["id"] for p in get(q="ЧАСЫ ёж")["items"]] == ["w1"]  # case and ё folded
    assert [p["id"] for p in get(price_min=1000, price_max=4500)["items"]] == ["k1"]  # high bound exclusive


def test_block_and_unblock_need_the_operator(shop: tuple[str, Settings]) -> None:
    url, _ = shop
    pid = unique("p")
    blocked = f"{url}/api/shop/blocked"
    _problem(httpx.post(blocked, json={"product_id": pid}, headers=_auth("viewer")), 403, "forbidden")
    r = httpx.post(blocked, json={"product_id": pid, "reason": "подделка"}, headers=_auth("operator"))
    assert r.status_code == 201, r.text
    assert (r.json()["product_id"], r.json()["blocked"], r.json()["reason"]) == (pid, True, "подделка")
    listed = httpx.get(blocked, headers=_auth("viewer")).json()
    assert [e["product_id"] for e in listed if e["product_id"] == pid] == [pid]
    _problem(httpx.delete(f"{blocked}/{pid}", headers=_auth("viewer")), 403, "forbidden")
    r = httpx.delete(f"{blocked}/{pid}", headers=_auth("operator"))
    assert (r.status_code, r.json()["blocked"]) == (200, False)
    assert pid not in [e["product_id"] for e in httpx.get(blocked, headers=_auth("viewer")).json()]
    _problem(httpx.delete(f"{blocked}/{pid}", headers=_auth("operator")), 404, "not-found")
    _problem(httpx.post(blocked, json={"product_id": "a b"}, headers=_auth("operator")), 422, "validation")


def _produce(settings: Settings, topic: str, records: list[tuple[str, dict[str, Any]]]) -> None:
    producer = Producer(settings.kafka.client_config())
    for key, value in records:
        producer.produce(topic, json.dumps(value, ensure_ascii=False).encode(), key.encode())
    assert producer.flush(30) == 0


def _recommend_cli(settings: Settings, user: str) -> subprocess.CompletedProcess[str]:
    env = {
        "MILLRACE_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "MILLRACE_TOPICS__SHOP_ORDERS": settings.topics.shop_orders,
        "MILLRACE_TOPICS__SHOP_RECOMMENDATIONS": settings.topics.shop_recommendations,
        "MILLRACE_SHOP__CATALOG_PATH": str(settings.shop.catalog_path),
        "MILLRACE_STATE_DIR": str(settings.state_dir),
        "PYTHONIOENCODING": "utf-8",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [MILLRACE, "shop", "recommend", "--user", user],
        env=env,
        cwd=settings.state_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_recommend_latest_then_popular_then_none(shop: tuple[str, Settings]) -> None:
    url, settings = shop
    topics = settings.topics
    get = lambda user: httpx.get(f"{url}/api/shop/recommend", params={"user": user}, headers=_auth("viewer"))  # noqa: E731
    body = _problem(get("nobody"), 404, "no-recommendations")
    assert "no recommendations for 'nobody' yet" in body["detail"]
    cli = _recommend_cli(settings, "nobody")
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1 and "no recommendations" in cli.stderr

    def order(oid: str, *lines: tuple[str, int]) -> tuple[str, dict[str, Any]]:
        return "c1", {"order_id": oid, "lines": [{"product_id": p, "quantity": q} for p, q in lines]}

    _produce(
        settings,
        topics.shop_orders,
        [order("o1", ("w2", 1), ("m1", 1)), order("o2", ("m1", 2)), order("o3", ("k1", 1))],
    )
    popular = get("nobody").json()
    assert popular["source"] == "popular"
    assert [(i["product_id"], i["score"]) for i in popular["items"]] == [("m1", 3.0), ("k1", 1.0), ("w2", 1.0)]
    assert popular["items"][0]["name"] == "Мышь беспроводная"

    def rec(items: list[str], at: str) -> tuple[str, dict[str, Any]]:
        scored = [{"product_id": p, "score": 1.0 - i / 10} for i, p in enumerate(items)]
        return "alice", {"user": "alice", "items": scored, "model": "als-1", "generated_at": at}

    _produce(
        settings,
        topics.shop_recommendations,
        [rec(["k1"], "2026-01-01T00:00:00Z"), rec(["w1", "w2"], "2026-01-02T00:00:00Z")],
    )
    latest = get("alice").json()
    assert (latest["source"], latest["model"], latest["generated_at"]) == (
        "recommendations",
        "als-1",
        "2026-01-02T00:00:00Z",
    )
    assert [(i["product_id"], i["name"]) for i in latest["items"]] == [("w1", "Умные часы Ёж"), ("w2", "Наручные часы")]
    assert get("nobody").json()["source"] == "popular"  # others still get the fallback
    cli = _recommend_cli(settings, "alice")
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.splitlines()[1:] == [
        "w1  Умные часы -> Умные часы Ёж  (1)",
        "w2  Аксессуары -> Наручные часы  (0.9)",
    ]


def test_search_without_an_index_is_503(settings: Settings, tmp_path: Path) -> None:
    own = settings.model_copy(update={"state_dir": tmp_path})
    store = SqliteStore(tmp_path / "m.db")
    try:
        with served(create_app(own, store=store, live=False)) as url:
            body = _problem(httpx.get(f"{url}/api/shop/search", params={"q": "часы"}), 503, "search-unavailable")
            assert "run `millrace shop index` first" in body["detail"]
    finally:
        store.close()
