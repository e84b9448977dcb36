"""`millrace shop analytics` against the session broker, registry and HDFS, with Spark local: every number equals
an independent pandas computation over the same order events, catalog and client queries; the records reach the
analytics topic (framed, valid for the registered schema) and the store, and GET /api/shop/analytics serves them.

The analytics command runs once for the module, in a child process (its own Spark session, as a user runs it).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from millrace.config import Settings, load_settings
from millrace.kafka.admin import apply_topics
from millrace.kafka.producer import make_producer
from millrace.kafka.schema_registry import json_serializer, register, registry_client, subject_for
from millrace.kafka.topics import declared_topics
from millrace.records import to_iso
from millrace.runtime.mongodb import mongodb_spec
from millrace.runtime.process import ProcessManager, free_port
from millrace.services.app import create_app
from millrace.shop.analytics_records import metric_record, publish_metrics
from millrace.shop.catalog import load_products, sample_catalog_path
from millrace.shop.client import query_record, query_serializer
from millrace.shop.decode import SchemaDecoder
from millrace.shop.lake import catalog_index, open_lake, order_rows
from millrace.shop.orders import OrderGenerator
from millrace.shop.schemas import load_schema
from millrace.stores.base import Store
from millrace.stores.browse import make_query
from millrace.stores.convert import ms_of
from millrace.stores.sqlite import SqliteStore
from tests.helpers import unique
from tests.integration.fixtures_hdfs import ManagedHdfs
from tests.integration.fixtures_shop import SHOP_TOPICS, read_topic, shop_env

pytestmark = pytest.mark.integration

TOP_N = 5
EVENTS = 2400  # at 0.01 events/s: order events over ~2.8 days
START = datetime(2026, 6, 1, 6, 0, tzinfo=UTC)
SALE = {"paid", "shipped", "delivered"}
PARTITIONS = 3


@dataclass
class Run:
    settings: Settings
    events: list[dict[str, Any]]
    products: list[dict[str, Any]]  # the catalog as filtered-items holds it in the end
    catalog: dict[str, dict[str, Any]]  # the sample catalog the lake's names and categories come from
    queries: list[dict[str, Any]]
    output: dict[str, Any]  # the command's --json document
    store_path: Path


def _settings(base: Settings, registry: str, hdfs: ManagedHdfs, tmp: Path) -> Settings:
    names = {f: unique(f"shop-{f.removeprefix('shop_')}") for f in (*SHOP_TOPICS, "shop_analytics")}
    topics = base.topics.model_copy(update=names)
    apply_topics(base.kafka.client_config(), [s for s in declared_topics(topics) if s.name in names.values()])
    lake = hdfs.settings.lake.model_copy(update={"url": f"{hdfs.rpc_url}/millrace/analytics-{uuid.uuid4().hex[:8]}"})
    return base.model_copy(
        update={
            "topics": topics,
            "shop": base.shop.model_copy(update={"registry_url": registry, "use_registry": True}),
            "lake": lake,
            "store": base.store.model_copy(update={"sqlite_path": tmp / "store.db"}),
            "analytics": base.analytics.model_copy(update={"top_n": TOP_N}),
            "state_dir": tmp / "state",
        }
    )


def _archive(settings: Settings, events: list[dict[str, Any]], products: list[dict[str, Any]]) -> None:
    """The events in the lake as the archiver lays them out: customers spread over partitions, each
    partition's consecutive records of one order date in one file."""
    lake = open_lake(settings)
    index = catalog_index(products)
    runs: dict[int, list[list[dict[str, Any]]]] = {p: [] for p in range(PARTITIONS)}
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    for event in events:
        p = int(event["customer_id"][1:]) % PARTITIONS
        rows = order_rows(event, p, offsets[p], index)
        offsets[p] += 1
        if runs[p] and runs[p][-1][0]["order_date"] == rows[0]["order_date"]:
            runs[p][-1].extend(rows)
        else:
            runs[p].append(rows)
    for p, chunks in runs.items():
        for chunk in chunks:
            lake.write(p, chunk)


def _publish_catalog(settings: Settings, products: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sample catalog on filtered-items (framed), then one product re-published with a new price and stock
    and one removed by a tombstone: the category metrics must use the latest record of each product."""
    topic, url = settings.topics.shop_filtered_items, settings.shop.registry_url
    schema = load_schema("item")
    client = registry_client(url)
    register(client, url, subject_for(topic), schema, "BACKWARD")
    serialize = json_serializer(client, schema)
    producer = make_producer(settings.kafka.client_config())
    for p in products:
        producer.produce(topic, serialize(p, topic), p["id"])
    changed = {**products[0], "price": {"amount": 12345.5, "currency": "RUB"}, "stock": {"available": 7, "reserved": 0}}
    producer.produce(topic, serialize(changed, topic), changed["id"])
    producer.produce(topic, None, products[1]["id"])  # type: ignore[arg-type]  # a tombstone: a delete
    assert producer.flush(30) == 0
    return [changed, *products[2:]]


def _queries() -> list[dict[str, Any]]:
    texts = ["телефон", "Телефон ", "  ноутбук", "умные часы", "наушники", "qwertyzzz", "ЧАСЫ", "xiaomi"]
    found = {"qwertyzzz": 0, "xiaomi": 0, "наушники": 3}
    out = []
    for i in range(157):
        text = texts[(i * 7 + i // 5) % len(texts)]
        user = None if i % 23 == 0 else f"u{i % 11}"
        at = START + timedelta(minutes=3 * i + (i % 4))
        results = found.get(text.strip().lower(), 12 + i % 5)
        record = query_record(user=user or "x", text=text, results=results, at=at)
        record["user"] = user
        if i % 13 == 0:
            record["type"] = "recommend"
        if i % 31 == 0:
            del record["results"]  # an older client that did not record the count
        out.append(record)
    return out


def _publish_queries(settings: Settings, queries: list[dict[str, Any]]) -> None:
    topic, shop = settings.topics.shop_client_search, settings.shop
    serialize = query_serializer(shop.registry_url, topic, shop.compatibility)
    producer = make_producer(settings.kafka.client_config())
    for i, q in enumerate(queries):
        # Most framed, as the REST search records them with shop.use_registry; some plain, as without it.
        value = json.dumps(q, ensure_ascii=False).encode() if i % 10 == 3 else serialize(q, topic)
        producer.produce(topic, value, q["user"] or "anonymous")
    assert producer.flush(30) == 0


@pytest.fixture(scope="module")
def run(
    settings: Settings, registry: str, hdfs: ManagedHdfs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("analytics")
    s = _settings(settings, registry, hdfs, tmp)
    catalog = load_products(sample_catalog_path())
    events = list(itertools.islice(OrderGenerator(catalog, seed=23, start=START, rate=0.01), EVENTS))
    _archive(s, events, catalog)
    products = _publish_catalog(s, catalog)
    queries = _queries()
    _publish_queries(s, queries)
    env = shop_env(s, s.state_dir)
    env.update(
        {
            "MILLRACE_TOPICS__SHOP_ANALYTICS": s.topics.shop_analytics,
            "MILLRACE_SHOP__USE_REGISTRY": "true",
            "MILLRACE_LAKE__URL": s.lake.url,
            "MILLRACE_STORE__SQLITE_PATH": str(s.sqlite_path),
            "MILLRACE_ANALYTICS__TOP_N": str(TOP_N),
            "MILLRACE_SPARK__DRIVER_MEMORY": "1g",
            "MILLRACE_CACHE_DIR": str(s.cache_dir),
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "millrace.cli.main", "shop", "analytics", "--json"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=600,
        cwd=tmp,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    yield Run(s, events, products, {p["id"]: p for p in catalog}, queries, json.loads(done.stdout), s.sqlite_path)


def values(output: dict[str, Any], metric: str, *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(m["dimensions"][k] for k in keys): m["value"] for m in output["metrics"].get(metric, [])}


# ---- the independent reference ----


def sale_lines(events: list[dict[str, Any]], catalog: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per line of each sale: the order's latest event (by event time, then its place in its
    partition — the position the lake records) is paid, shipped or delivered; the day is that of its first
    paid/shipped/delivered event."""
    frame = pd.DataFrame(
        {
            "order_id": e["order_id"],
            "status": e["status"],
            "ts": pd.Timestamp(e["updated_at"]),
            "seq": i,  # the same order of events as the partitions' offsets (one customer, one partition)
            "lines": e["lines"],
        }
        for i, e in enumerate(events)
    )
    latest = frame.sort_values(["ts", "seq"]).groupby("order_id").tail(1)
    latest = latest[latest["status"].isin(SALE)]
    paid = frame[frame["status"].isin(SALE)].groupby("order_id")["ts"].min()
    lines = latest.explode("lines")
    out = pd.DataFrame(
        {
            "order_id": lines["order_id"].to_numpy(),
            "day": lines["order_id"].map(paid).dt.strftime("%Y-%m-%d").to_numpy(),
            "product_id": [line["product_id"] for line in lines["lines"]],
            "quantity": [line["quantity"] for line in lines["lines"]],
            "line_total": [round(line["quantity"] * line["unit_price"], 2) for line in lines["lines"]],
        }
    )
    out["category"] = out["product_id"].map(lambda p: catalog[p]["category"])
    out["name"] = out["product_id"].map(lambda p: catalog[p]["name"])
    return out


# ---- the tests ----


def test_sales_by_category_and_day_equal_pandas(run: Run) -> None:
    lines = sale_lines(run.events, run.catalog)
    expected = lines.groupby(["category", "day"]).agg(
        revenue=("line_total", "sum"), orders=("order_id", "nunique"), units=("quantity", "sum")
    )
    assert len(expected) > 8 and lines["day"].nunique() >= 3  # several categories over several days
    revenue = values(run.output, "sales_revenue", "category", "day")
    assert set(revenue) == set(expected.index)
    for key, row in expected.iterrows():
        assert revenue[key] == pytest.approx(row["revenue"], rel=1e-12), key
    assert values(run.output, "sales_orders", "category", "day") == expected["orders"].astype(float).to_dict()
    assert values(run.output, "sales_units", "category", "day") == expected["units"].astype(float).to_dict()
    for m in run.output["metrics"]["sales_orders"]:
        day = datetime.fromisoformat(m["dimensions"]["day"]).replace(tzinfo=UTC)
        assert (m["window_start"], m["window_end"]) == (to_iso(day), to_iso(day + timedelta(days=1)))
    # Cancelled and still-unpaid orders are not sales.
    statuses = pd.DataFrame(run.events).sort_values("updated_at", kind="stable").groupby("order_id")["status"].last()
    assert set(lines["order_id"]) == set(statuses[statuses.isin(SALE)].index)
    assert (statuses == "cancelled").any() and (statuses == "created").any()


def test_top_products_equal_pandas(run: Run) -> None:
    lines = sale_lines(run.events, run.catalog)
    per_product = lines.groupby("product_id").agg(units=("quantity", "sum"), revenue=("line_total", "sum"))
    ranked = per_product.reset_index().sort_values(["units", "revenue", "product_id"], ascending=[False, False, True])
    expected = [
        {
            "product_id": r.product_id,
            "name": run.catalog[r.product_id]["name"],
            "category": run.catalog[r.product_id]["category"],
            "rank": str(rank),
            "units": float(r.units),
        }
        for rank, r in enumerate(ranked.head(TOP_N).itertuples(), start=1)
    ]
    got = sorted(run.output["metrics"]["top_products"], key=lambda m: int(m["dimensions"]["rank"]))
    assert [{**m["dimensions"], "units": m["value"]} for m in got] == expected


def test_category_figures_equal_pandas(run: Run) -> None:
    frame = pd.DataFrame(
        {"category": p["category"], "price": p["price"]["amount"], "available": p["stock"]["available"]}
        for p in run.products
    )
    expected = frame.groupby("category").agg(n=("price", "size"), avg=("price", "mean"), available=("available", "sum"))
    counts = values(run.output, "category_product_count", "category")
    assert counts == {(c,): float(n) for c, n in expected["n"].items()}
    prices = values(run.output, "category_avg_price", "category")
    assert set(prices) == {(c,) for c in expected.index}
    for c, avg in expected["avg"].items():
        assert prices[(c,)] == pytest.approx(avg, rel=1e-12)
    stock = values(run.output, "category_total_available", "category")
    assert stock == {(c,): float(v) for c, v in expected["available"].items()}
    messages = {m["category"]: m for m in run.output["categories"]}
    assert set(messages) == set(expected.index)
    for c, row in expected.iterrows():
        m = messages[c]
        assert (m["product_count"], m["total_available"]) == (row["n"], row["available"])
        assert m["avg_price"] == round(row["avg"], 2)
        assert m["timestamp"] == run.output["computed_at"]


def test_query_statistics_equal_pandas(run: Run) -> None:
    q = pd.DataFrame(run.queries)
    q = q[q["type"] == "search"].copy()
    q["text"] = q["query"].str.strip().str.lower()
    q["hour"] = pd.to_datetime(q["timestamp"]).dt.floor("h").dt.strftime("%Y-%m-%dT%H:00:00Z")
    per_hour = q.groupby("hour").size()
    assert values(run.output, "searches_per_hour", "hour") == {(h,): float(n) for h, n in per_hour.items()}
    users = q.groupby("hour")["user"].nunique()
    assert values(run.output, "active_users_per_hour", "hour") == {(h,): float(n) for h, n in users.items()}
    per_user = q.dropna(subset=["user"]).groupby(["user", "hour"]).size()
    assert values(run.output, "searches_per_user_hour", "user", "hour") == {k: float(n) for k, n in per_user.items()}
    assert run.output["searches"] == len(q)

    def top(frame: pd.DataFrame) -> list[tuple[str, str, float]]:
        counts = frame.groupby("text").size().reset_index(name="n").sort_values(["n", "text"], ascending=[False, True])
        return [(str(i), r.text, float(r.n)) for i, r in enumerate(counts.head(TOP_N).itertuples(), start=1)]

    def got(metric: str) -> list[tuple[str, str, float]]:
        rows = sorted(run.output["metrics"][metric], key=lambda m: int(m["dimensions"]["rank"]))
        return [(m["dimensions"]["rank"], m["dimensions"]["query"], m["value"]) for m in rows]

    assert got("search_queries") == top(q)
    zero = q[q["results"] == 0]
    assert len(zero) > 0 and got("zero_result_queries") == top(zero)


def test_records_reach_the_topic_and_the_store_and_the_api_serves_them(run: Run) -> None:
    s = run.settings
    out = run.output
    n_metrics = sum(len(v) for v in out["metrics"].values())
    assert out["published"] == {"delivered": n_metrics + len(out["categories"]), "stored": n_metrics}

    sent: list[Any] = []
    decoder = SchemaDecoder(
        s.shop.registry_url, lambda *a: sent.append(a), dead_letter_topic=s.topics.shop_dead_letter, stage="test"
    )
    messages = read_topic(s.kafka.client_config(), s.topics.shop_analytics)
    records = decoder.decode_all(messages)
    assert sent == [] and len(records) == out["published"]["delivered"]
    metrics = [r for r in records if "metric" in r]
    assert [m.key().decode() for m in messages] == [r.get("metric") or r["category"] for r in records]
    expected = {
        (name, json.dumps(m, sort_keys=True, ensure_ascii=False)) for name, ms in out["metrics"].items() for m in ms
    }
    on_topic = {
        (r["metric"], json.dumps({k: r[k] for k in ("dimensions", "value", "window_start", "window_end")},
                                 sort_keys=True, ensure_ascii=False))
        for r in metrics
    }  # fmt: skip
    assert on_topic == expected
    assert {r["computed_at"] for r in metrics} == {out["computed_at"]}
    assert [r for r in records if "category" in r] == out["categories"]

    store = SqliteStore(run.store_path)
    try:
        app = create_app(s, store=store, live=False)
        with TestClient(app) as client:
            answer = client.get("/api/shop/analytics").json()
            assert answer["computed_at"] == out["computed_at"]
            assert {name: sorted(map(_canon, ms)) for name, ms in answer["metrics"].items()} == {
                name: sorted(map(_canon, ms)) for name, ms in out["metrics"].items()
            }
            ranks = [m["dimensions"]["rank"] for m in answer["metrics"]["top_products"]]
            assert ranks == [str(i) for i in range(1, TOP_N + 1)]
            assert store.count("shop_analytics") == n_metrics

            # The writer of other jobs (shop recommend-train): one more metric beside this run's.
            later = datetime.now(UTC).replace(microsecond=0)
            coverage = {
                "metric": "recommendation_coverage",
                "dimensions": {"model": "als"},
                "value": 0.75,
                "window_start": START,
                "window_end": START + timedelta(days=3),
                "computed_at": later,
            }
            assert publish_metrics(s, [coverage]) == 1
            both = client.get("/api/shop/analytics", params={"metric": ["recommendation_coverage", "top_products"]})
            assert both.status_code == 200
            body = both.json()
            assert set(body["metrics"]) == {"recommendation_coverage", "top_products"}
            assert body["computed_at"] == to_iso(later)
            assert body["metrics"]["recommendation_coverage"] == [
                {
                    "dimensions": {"model": "als"},
                    "value": 0.75,
                    "window_start": to_iso(START),
                    "window_end": to_iso(START + timedelta(days=3)),
                }
            ]
    finally:
        store.close()
    last = decoder.decode_all(read_topic(s.kafka.client_config(), s.topics.shop_analytics)[-1:])
    assert last[0]["metric"] == "recommendation_coverage" and last[0]["value"] == 0.75


def _canon(m: dict[str, Any]) -> str:
    return json.dumps(m, sort_keys=True, ensure_ascii=False)


# ---- the store collection on both backends ----


@pytest.fixture(scope="module")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB-wire server (FerretDB unless a mongod is on PATH) through millrace.runtime, for this module."""
    state = tmp_path_factory.mktemp("analytics-mongo")
    uri = f"mongodb://127.0.0.1:{free_port()}"
    settings = load_settings(state_dir=state, store={"backend": "mongodb", "mongodb_uri": uri})
    manager = ProcessManager(state)
    manager.start(mongodb_spec(settings))
    try:
        yield uri
    finally:
        assert manager.stop("mongodb"), "the MongoDB-wire server did not stop"


@pytest.fixture(params=["sqlite", "mongodb"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        store: Store = SqliteStore(tmp_path / "store.db")
    else:
        from millrace.stores.mongo import MongoStore

        store = MongoStore(request.getfixturevalue("mongo_uri"), unique("analytics"))
    try:
        yield store
    finally:
        if request.param == "mongodb":
            store.drop()  # type: ignore[attr-defined]
        store.close()


def test_every_backend_keeps_runs_and_answers_the_latest(any_store: Store) -> None:
    t0 = START
    first = [
        metric_record("top_products", {"product_id": "p|1", "name": "Телефон", "rank": 1}, 9, t0, t0, t0),
        metric_record("top_products", {"rank": 2, "product_id": "p2", "name": "x"}, 5, t0, t0, t0),
        metric_record("searches_per_hour", {"hour": "2026-06-01T06:00:00Z"}, 4, t0, t0 + timedelta(hours=1), t0),
    ]
    later = t0 + timedelta(minutes=5)
    second = [metric_record("top_products", {"product_id": "p2", "name": "x", "rank": 1}, 11, t0, t0, later)]
    assert any_store.upsert_analytics(first) == 3
    assert any_store.upsert_analytics(first) == 3  # idempotent: the same keys
    assert any_store.upsert_analytics(second) == 1
    assert any_store.count("shop_analytics") == 4
    assert any_store.collections()["shop_analytics"] == 4
    latest = any_store.latest_analytics()
    assert [(r["metric"], r["dimensions"], r["value"], r["computed_at"]) for r in latest] == [
        ("searches_per_hour", {"hour": "2026-06-01T06:00:00Z"}, 4.0, t0),
        ("top_products", {"name": "x", "product_id": "p2", "rank": "1"}, 11.0, later),
    ]
    assert latest[0]["window_end"] == t0 + timedelta(hours=1)
    assert any_store.latest_analytics(["top_products"]) == latest[1:]
    page = any_store.browse("shop_analytics", make_query("shop_analytics", sort="-value"))
    assert [r["value"] for r in page.rows] == [11.0, 9.0, 5.0, 4.0] and page.total == 4
    key = page.rows[1]["_key"]
    assert key == f'top_products|{ms_of(t0)}|{{"name":"Телефон","product_id":"p|1","rank":"1"}}'
    assert any_store.document("shop_analytics", key) == page.rows[1]
    assert any_store.apply_retention(later + timedelta(days=1), 1.0)["shop_analytics"] == 3
    assert [r["value"] for r in any_store.latest_analytics()] == [11.0]
