"""Recommendations trained on the orders lake against real servers: the broker, the registry, Spark local and
(once) HDFS. Generated orders are produced framed to the orders topic and archived to the lake by the real
archiver; the metrics each model reports are recomputed here from the lake's files and the models' top-10
lists with pandas and numpy only; blocked products (ones the unblocked run did recommend) never appear in a
published record; the topic is compacted and keyed by user; ``shop recommend`` answers with the published
list."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from confluent_kafka.admin import AdminClient

from millrace.config import Settings
from millrace.jobs.session import build_session
from millrace.kafka.admin import apply_topics, topic_configs
from millrace.kafka.producer import make_producer
from millrace.kafka.schema_registry import json_serializer, register, registry_client, schema_id_of, subject_for
from millrace.kafka.topics import declared_topics
from millrace.services.app import create_app
from millrace.shop.archive import OrderArchiver
from millrace.shop.catalog import load_products, sample_catalog_path
from millrace.shop.lake import catalog_index, open_lake
from millrace.shop.orders import OrderGenerator
from millrace.shop.recsys import TrainResult, train_and_publish
from millrace.shop.schemas import load_schema
from millrace.shop.stoplist import block
from millrace.stores.sqlite import SqliteStore
from tests.helpers import unique
from tests.integration.fixtures_service import served
from tests.integration.fixtures_shop import read_topic, shop_env

EVENTS = 8000
DAYS = 42.0
CUSTOMERS = 200
START = datetime(2026, 10, 1, tzinfo=UTC)


def produce_orders(settings: Settings, *, events: int = EVENTS, seed: int = 3) -> int:
    """Generated order events over ``DAYS`` days, framed with the order schema, keyed by customer."""
    products = load_products(sample_catalog_path())
    topic, url = settings.topics.shop_orders, settings.shop.registry_url
    client = registry_client(url)
    schema = load_schema("order")
    register(client, url, subject_for(topic), schema, settings.shop.compatibility)
    serialize = json_serializer(client, schema)
    generator = OrderGenerator(products, seed=seed, customers=CUSTOMERS, start=START, rate=events / (DAYS * 86400))
    producer = make_producer(settings.kafka.client_config())
    for _ in range(events):
        event = generator.next_event()
        producer.produce(topic, serialize(event, topic), event["customer_id"])
    assert producer.flush(60.0) == 0 and producer.stats.failed == 0
    return producer.stats.delivered


def archive(settings: Settings) -> int:
    """The orders topic into ``settings``' lake by the archiver, until caught up; returns events archived."""
    archiver = OrderArchiver(
        settings.kafka.client_config(),
        open_lake(settings),
        topic=settings.topics.shop_orders,
        dead_letter_topic=settings.topics.shop_dead_letter,
        products=catalog_index(load_products(sample_catalog_path())),
        group=unique("archive"),
        registry_url=settings.shop.registry_url,
        batch_seconds=1.0,
    )
    return archiver.run(threading.Event(), until_idle=True).archived


# ------------------------------------------------------------- the independent computation (no recsys code)


def lake_frame(settings: Settings) -> pd.DataFrame:
    """Every row of every Parquet file of the lake, read with pyarrow through the lake's filesystem."""
    lake = open_lake(settings)
    paths = sorted(p for p in lake.fs.find(f"{lake.root}/orders") if p.endswith(".parquet"))
    frames = []
    for path in paths:
        with lake.fs.open(path, "rb") as handle:
            frames.append(pq.read_table(handle).to_pandas())
    return pd.concat(frames, ignore_index=True)


def purchases(orders: pd.DataFrame) -> pd.DataFrame:
    """(order, user, product, created) of every order never cancelled; each product once per order."""
    cancelled = orders.loc[orders["status"].eq("cancelled"), "order_id"].unique()
    live = orders[~orders["order_id"].isin(cancelled)]
    return live.drop_duplicates(["order_id", "product_id"])[["order_id", "customer_id", "product_id", "created_at"]]


def expected_relevant(bought: pd.DataFrame, days: float, blocked: set[str]) -> tuple[pd.Timestamp, dict[str, set[str]]]:
    cutoff = bought["created_at"].max() - pd.Timedelta(days=days)
    before = bought[bought["created_at"] < cutoff].groupby("customer_id")["product_id"].agg(set)
    after = bought[bought["created_at"] >= cutoff].groupby("customer_id")["product_id"].agg(set)
    relevant = {}
    for user in before.index.intersection(after.index):
        new = after[user] - before[user] - blocked
        if new:
            relevant[user] = new
    return cutoff, relevant


def expected_metrics(lists: Mapping[str, Sequence[str]], relevant: Mapping[str, set[str]]) -> tuple[float, ...]:
    discounts = 1.0 / np.log2(np.arange(2, 12))  # ranks 1..10
    p, r, n = [], [], []
    for user, rel in relevant.items():
        hits = np.isin(np.array(list(lists.get(user, []))[:10], dtype=object), list(rel)).astype(float)
        p.append(hits.sum() / 10)
        r.append(hits.sum() / len(rel))
        n.append((hits * discounts[: len(hits)]).sum() / discounts[: min(10, len(rel))].sum())
    return float(np.mean(p)), float(np.mean(r)), float(np.mean(n))


def check_against_independent(result: TrainResult, orders: pd.DataFrame, days: float, blocked: set[str]) -> None:
    bought = purchases(orders)
    cutoff, relevant = expected_relevant(bought, days, blocked)
    assert result.holdout.cutoff == cutoff
    assert result.holdout.relevant == relevant and len(relevant) >= 30
    before = bought[bought["created_at"] < cutoff].groupby("customer_id")["product_id"].agg(set)
    for report in result.reports:
        lists = result.lists[report.model]
        assert set(lists) == set(relevant)
        for user, items in lists.items():
            assert len(items) == 10 and len(set(items)) == 10
            assert not set(items) & before[user], f"{report.model} recommends {user} what they bought"
            assert not set(items) & blocked
        precision, recall, ndcg = expected_metrics(lists, relevant)
        assert report.users == len(relevant)
        assert report.precision == pytest.approx(precision, abs=1e-12)
        assert report.recall == pytest.approx(recall, abs=1e-12)
        assert report.ndcg == pytest.approx(ndcg, abs=1e-12)
    assert result.best == max(result.reports, key=lambda r: r.ndcg).model


def published(settings: Settings) -> dict[str, dict[str, Any]]:
    """The latest record per key of the recommendations topic, each checked to be keyed by its user."""
    latest: dict[str, dict[str, Any]] = {}
    for msg in read_topic(settings.kafka.client_config(), settings.topics.shop_recommendations):
        value = msg.value()
        assert value is not None and msg.key() is not None
        framed = schema_id_of(value) is not None
        assert framed == settings.shop.use_registry
        record = json.loads(value[5:] if framed else value)
        assert record["user"] == msg.key().decode()
        latest[record["user"]] = record
    return latest


def check_published(
    settings: Settings, result: TrainResult, orders: pd.DataFrame, blocked: set[str]
) -> dict[str, dict[str, Any]]:
    bought = purchases(orders).groupby("customer_id")["product_id"].agg(set)
    latest = published(settings)
    assert set(latest) == set(bought.index)  # every user with an order that was not cancelled
    assert result.published == len(latest) and result.coverage == 1.0
    for user, record in latest.items():
        items = [i["product_id"] for i in record["items"]]
        assert record["model"] == result.best
        assert items == [p for p, _ in result.records[user]]
        assert len(items) == settings.analytics.top_n
        assert not set(items) & blocked, f"a blocked product recommended to {user}"
        assert not set(items) & bought[user]
    admin = AdminClient(settings.kafka.client_config())
    assert topic_configs(admin, settings.topics.shop_recommendations)["cleanup.policy"] == "compact"
    return latest


def recommend_cli(settings: Settings, state_dir: Path, user: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "millrace.cli.main", "shop", "recommend", "--user", user, "--json"],
        env=shop_env(settings, state_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -------------------------------------------------------------------------------------------------- tests


def test_models_compared_blocked_never_recommended_best_published(shop_settings: Settings, tmp_path: Path) -> None:
    settings = shop_settings.model_copy(
        update={
            "state_dir": tmp_path,
            "lake": shop_settings.lake.model_copy(update={"url": (tmp_path / "lake").as_uri()}),
            "shop": shop_settings.shop.model_copy(update={"use_registry": True}),
            "topics": shop_settings.topics.model_copy(update={"shop_analytics": unique("shop-analytics")}),
        }
    )
    analytics_topic = settings.topics.shop_analytics
    apply_topics(
        settings.kafka.client_config(), [t for t in declared_topics(settings.topics) if t.name == analytics_topic]
    )
    assert produce_orders(settings) == EVENTS
    assert archive(settings) == EVENTS
    orders = lake_frame(settings)
    days = settings.analytics.holdout_days

    unblocked = train_and_publish(settings, lambda: build_session(settings), publish=False)
    check_against_independent(unblocked, orders, days, set())
    assert unblocked.published == 0 and published(settings) == {}
    # block the three products the models recommended most, and check that every model did recommend them
    counts = Counter(p for lists in unblocked.lists.values() for items in lists.values() for p in items)
    blocked = {p for p, _ in counts.most_common(3)}
    for model, lists in unblocked.lists.items():
        assert any(set(items) & blocked for items in lists.values()), f"{model} recommended none of {blocked}"
    assert len(block(settings.kafka.client_config(), settings.topics.shop_stop_list, sorted(blocked))) == 3

    result = train_and_publish(settings, lambda: build_session(settings))
    assert set(result.blocked) == blocked
    check_against_independent(result, orders, days, blocked)
    latest = check_published(settings, result, orders, blocked)
    [coverage] = read_topic(settings.kafka.client_config(), analytics_topic)
    assert schema_id_of(coverage.value()) is not None
    metric = json.loads(coverage.value()[5:])
    assert (metric["metric"], metric["dimensions"], metric["value"]) == (
        "recommendation_coverage",
        {"model": result.best},
        1.0,
    )
    assert result.analytics_published == 1

    user = max(latest, key=lambda u: (len(purchases(orders).query("customer_id == @u")), u))
    expected = [i["product_id"] for i in latest[user]["items"]]
    answer = recommend_cli(settings, tmp_path, user)
    assert answer["source"] == "recommendations" and answer["model"] == result.best
    assert [i["product_id"] for i in answer["items"]] == expected
    api_settings = settings.model_copy(update={"api": settings.api.model_copy(update={"auth": "none"})})
    store = SqliteStore(tmp_path / "api.db")
    try:
        with served(create_app(api_settings, store=store, live=False)) as url:
            response = httpx.get(f"{url}/api/shop/recommend", params={"user": user}, timeout=60)
    finally:
        store.close()
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["source"], body["model"]) == ("recommendations", result.best)
    assert [i["product_id"] for i in body["items"]] == expected


def test_recommend_train_cli_on_the_hdfs_lake(shop_settings: Settings, hdfs: Any, tmp_path: Path) -> None:
    lake = hdfs.settings.lake.model_copy(update={"url": f"{hdfs.rpc_url}/{unique('recsys')}"})
    topics = shop_settings.topics.model_copy(update={"shop_analytics": unique("shop-analytics")})
    settings = shop_settings.model_copy(update={"state_dir": tmp_path, "lake": lake, "topics": topics})
    specs = [t for t in declared_topics(topics) if t.name == topics.shop_analytics]
    apply_topics(settings.kafka.client_config(), specs)
    assert settings.lake.url.startswith("hdfs://")
    assert produce_orders(settings, seed=5) == EVENTS
    assert archive(settings) == EVENTS
    orders = lake_frame(settings)
    blocked = {"p00001", "p00002"}
    block(settings.kafka.client_config(), settings.topics.shop_stop_list, sorted(blocked))

    env = shop_env(settings, tmp_path) | {
        "MILLRACE_LAKE__URL": settings.lake.url,
        "MILLRACE_LAKE__HDFS_USER": settings.lake.hdfs_user,
        "MILLRACE_ANALYTICS__HOLDOUT_DAYS": "10",
        "MILLRACE_TOPICS__SHOP_ANALYTICS": topics.shop_analytics,
    }
    done = subprocess.run(
        [sys.executable, "-m", "millrace.cli.main", "shop", "recommend-train", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    bought = purchases(orders)
    cutoff, relevant = expected_relevant(bought, 10.0, blocked)
    assert report["cutoff"] == cutoff.isoformat() and report["users_evaluated"] == len(relevant)
    assert {m["model"] for m in report["models"]} == {"als", "cooccurrence", "popularity"}
    assert report["published_users"] == bought["customer_id"].nunique() and report["blocked"] == sorted(blocked)
    assert report["analytics_published"] == 1
    latest = published(settings)
    assert len(latest) == report["published_users"]
    assert all(
        not {i["product_id"] for i in r["items"]} & blocked and r["model"] == report["best"] for r in latest.values()
    )

    human = subprocess.run(
        [sys.executable, "-m", "millrace.cli.main", "shop", "recommend-train", "--model", "popularity", "--no-publish"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert human.returncode == 0, human.stderr
    assert "reading the orders lake at hdfs://" in human.stderr  # progress on stderr
    assert "popularity (best)" in human.stdout and "NDCG@10" in human.stdout
    popularity = next(m for m in report["models"] if m["model"] == "popularity")
    assert f"{popularity['ndcg']:.4f}" in human.stdout
    assert "nothing published (--no-publish)" in human.stdout
