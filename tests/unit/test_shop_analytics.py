"""The shop analytics' pure parts: its records and the analytics schema, the writer's validation, the store's
shop_analytics collection on SQLite and the API's answer built from it (Spark and Kafka: the integration test)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from millrace.config import load_settings
from millrace.errors import DataError
from millrace.services.shop_analytics import analytics_answer
from millrace.shop.analytics_records import category_messages, metric_record, publish_metrics
from millrace.shop.schemas import Validator, load_schema
from millrace.stores import convert
from millrace.stores.browse import make_query
from millrace.stores.sqlite import SqliteStore

T0 = datetime(2026, 6, 1, tzinfo=UTC)
T1 = T0 + timedelta(days=1)


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(load_schema("analytics"))


def category_metrics(category: str, at: datetime) -> list[dict[str, Any]]:
    return [
        metric_record("category_product_count", {"category": category}, 3, at, at, at),
        metric_record("category_avg_price", {"category": category}, 1234.5678, at, at, at),
        metric_record("category_total_available", {"category": category}, 42, at, at, at),
    ]


def test_a_metric_record_has_the_schema_fields_with_string_dimensions(validator: Validator) -> None:
    record = metric_record("top_products", {"product_id": "p1", "rank": 1}, 7, T0, T1, T1)
    assert record == {
        "metric": "top_products",
        "window_start": "2026-06-01T00:00:00.000Z",
        "window_end": "2026-06-02T00:00:00.000Z",
        "dimensions": {"product_id": "p1", "rank": "1"},
        "value": 7.0,
        "computed_at": "2026-06-02T00:00:00.000Z",
    }
    assert validator.error(record) is None


def test_category_messages_merge_the_three_category_metrics(validator: Validator) -> None:
    metrics = [
        *category_metrics("Телефоны", T1),
        *category_metrics("Аудио", T1),
        metric_record("category_product_count", {"category": "half"}, 1, T1, T1, T1),  # incomplete: left out
        metric_record("sales_units", {"category": "Аудио", "day": "2026-06-01"}, 5, T0, T1, T1),
    ]
    messages = category_messages(metrics)
    assert messages == [
        {"category": c, "timestamp": "2026-06-02T00:00:00.000Z", "product_count": 3, "avg_price": 1234.57,
         "total_available": 42}
        for c in ("Аудио", "Телефоны")
    ]  # fmt: skip
    assert all(validator.error(m) is None for m in messages)


def test_the_schema_takes_exactly_one_of_the_two_shapes(validator: Validator) -> None:
    metric = metric_record("sales_orders", {"category": "Аудио", "day": "2026-06-01"}, 2, T0, T1, T1)
    (category,) = category_messages(category_metrics("Аудио", T1))
    mixed = {**metric, "category": "Аудио"}
    assert validator.error(mixed) is not None
    assert validator.error({**category, "value": 1.0}) is not None
    assert validator.error({k: v for k, v in metric.items() if k != "value"}) is not None
    assert validator.error({k: v for k, v in category.items() if k != "avg_price"}) is not None
    assert validator.error({**metric, "extra": 1}) is not None
    assert validator.error({**metric, "dimensions": {"rank": 1}}) is not None  # dimension values are strings


def test_publish_refuses_an_invalid_record_before_writing_anything(tmp_path: Path) -> None:
    settings = load_settings(
        state_dir=tmp_path,
        store={"sqlite_path": tmp_path / "store.db"},
        kafka={"bootstrap_servers": "127.0.0.1:1"},
    )
    good = {"metric": "recommendation_coverage", "dimensions": {"model": "als"}, "value": 0.5,
            "window_start": T0, "window_end": T1}  # fmt: skip
    bad = {**good, "value": "most"}
    with pytest.raises(DataError, match=r"analytics record 2 \(recommendation_coverage\) fails the analytics schema"):
        publish_metrics(settings, [good, bad])
    assert not (tmp_path / "store.db").exists()


def test_sqlite_keeps_every_run_and_answers_the_latest_of_each_metric(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    first = [
        metric_record("top_products", {"product_id": "p|1", "rank": 1}, 9, T0, T1, T0),
        metric_record("top_products", {"rank": 2, "product_id": "p2"}, 5, T0, T1, T0),
        metric_record("searches_per_hour", {"hour": "2026-06-01T00:00:00Z"}, 4, T0, T0, T0),
    ]
    second = [metric_record("top_products", {"product_id": "p2", "rank": 1}, 11, T0, T1, T1)]
    assert store.upsert_analytics(first) == 3
    assert store.upsert_analytics(first) == 3  # a replay writes the same rows again
    assert store.upsert_analytics(second) == 1
    assert store.count("shop_analytics") == 4
    latest = store.latest_analytics()
    assert [(r["metric"], r["dimensions"], r["value"], r["computed_at"]) for r in latest] == [
        ("searches_per_hour", {"hour": "2026-06-01T00:00:00Z"}, 4.0, T0),
        ("top_products", {"product_id": "p2", "rank": "1"}, 11.0, T1),
    ]
    assert store.latest_analytics(["searches_per_hour", "nothing"]) == latest[:1]
    assert store.latest_analytics([]) == []
    # Browsed as the Store tab shows it: dimensions as canonical JSON text, which may hold "|".
    page = store.browse("shop_analytics", make_query("shop_analytics", filters=["metric=top_products"], sort="value"))
    assert [r["dimensions"] for r in page.rows] == ['{"product_id":"p2","rank":"2"}', '{"product_id":"p|1","rank":"1"}',
                                                    '{"product_id":"p2","rank":"1"}']  # fmt: skip
    row = page.rows[1]
    assert row["_key"] == f'top_products|{convert.ms_of(T0)}|{{"product_id":"p|1","rank":"1"}}'
    assert store.document("shop_analytics", row["_key"]) == row
    # Runs expire by their computed_at with everything else.
    deleted = store.apply_retention(T1 + timedelta(hours=12), 1.0)
    assert deleted["shop_analytics"] == 3 and store.count("shop_analytics") == 1
    store.close()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"dimensions": {}}, "needs a metric name"),
        ({"metric": "m", "dimensions": {}, "window_start": T0, "window_end": T0, "value": 1}, "needs computed_at"),
        ({"metric": "m", "computed_at": T0, "window_start": T0, "window_end": T0, "value": float("nan")}, "finite"),
        ({"metric": "m", "dimensions": ["a"], "computed_at": T0}, "mapping of strings"),
    ],
)
def test_a_row_the_store_cannot_hold_is_refused(row: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        convert.analytics_values(row)


def test_the_api_answer_holds_each_metric_ranked_and_the_newest_run_time() -> None:
    rows = [
        {"metric": "top_products", "dimensions": {"product_id": f"p{r}", "rank": str(r)}, "value": 20.0 - r,
         "window_start": T0, "window_end": T1, "computed_at": T0}
        for r in (10, 2, 1)
    ] + [
        {"metric": "searches_per_hour", "dimensions": {"hour": h}, "value": 3.0,
         "window_start": T0 + timedelta(hours=i), "window_end": T0 + timedelta(hours=i + 1), "computed_at": T1}
        for i, h in enumerate(("2026-06-01T00:00:00Z", "2026-06-01T01:00:00Z"))
    ]  # fmt: skip
    answer = analytics_answer(rows)
    assert answer["computed_at"] == "2026-06-02T00:00:00.000Z"
    assert [m["dimensions"]["rank"] for m in answer["metrics"]["top_products"]] == ["1", "2", "10"]
    assert [m["window_start"] for m in answer["metrics"]["searches_per_hour"]] == [
        "2026-06-01T00:00:00.000Z",
        "2026-06-01T01:00:00.000Z",
    ]
    assert answer["metrics"]["top_products"][0] == {
        "dimensions": {"product_id": "p1", "rank": "1"},
        "value": 19.0,
        "window_start": "2026-06-01T00:00:00.000Z",
        "window_end": "2026-06-02T00:00:00.000Z",
    }
    assert analytics_answer([]) == {"computed_at": None, "metrics": {}}
