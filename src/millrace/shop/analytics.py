"""``millrace shop analytics`` (docs/shop-analytics.md): one run over the orders lake, the catalog and the
clients' queries, each result one metric record on the analytics topic and in the store.

:func:`run_analytics` checks Kafka, the client-search topic and the lake before Spark starts (an unreachable
one is named in seconds), reads the catalog, computes the metrics with analytics_spark (what counts as a sale
and every metric's dimensions are stated there), builds the category messages and, with ``publish``, writes
them through analytics_records.publish_records — the one writer, also used by ``shop recommend-train`` for
``recommendation_coverage``. Every metric of a run shares its ``computed_at``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from millrace.config import Settings
from millrace.errors import DataError, MillraceError
from millrace.shop.analytics_records import Published, category_messages, publish_records
from millrace.shop.analytics_spark import (
    category_metrics,
    empty_orders,
    query_metrics,
    read_orders,
    read_queries,
    sales_lines,
    sales_metrics,
)

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


# ---- the catalog ----


def catalog_products(settings: Settings, catalog: Path | None = None) -> tuple[list[dict[str, Any]], str]:
    """The products the category metrics describe and where they came from: the file ``catalog`` when given,
    else the filtered-items topic as it stands (the latest record per product; a tombstone removes it)."""
    if catalog is not None:
        from millrace.shop.catalog import load_products

        return load_products(catalog), str(catalog)
    from millrace.kafka.reader import read_all
    from millrace.shop.search import decode_json

    topic = settings.topics.shop_filtered_items
    latest: dict[bytes | None, dict[str, Any] | None] = {}
    for msg in read_all(settings.kafka.client_config(), topic):
        value = msg.value()
        try:
            latest[msg.key()] = None if value is None else decode_json(value)
        except DataError as exc:
            log.warning("%s[%s]@%s skipped: %s", topic, msg.partition(), msg.offset(), exc)
    return [p for p in latest.values() if p is not None and "category" in p], topic


# ---- the run ----


def _has_orders(lake: Any) -> bool:
    try:
        return bool(lake.fs.exists(lake.orders_dir))
    except OSError as exc:  # hdfs-native and WebHDFS report an unreachable NameNode as OSError
        raise MillraceError(f"cannot reach the orders lake at {lake.spark_url} (lake.url): {exc}") from None


@dataclass
class AnalyticsRun:
    computed_at: datetime
    lake_url: str
    catalog_source: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    categories: list[dict[str, Any]] = field(default_factory=list)  # the per-category messages
    sale_lines: int = 0
    searches: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> wall seconds
    published: Published | None = None

    def values(self, metric: str) -> list[dict[str, Any]]:
        return [m for m in self.metrics if m["metric"] == metric]


def run_analytics(
    settings: Settings,
    session: Callable[[], Any],
    *,
    catalog: Path | None = None,
    publish: bool = True,
    progress: Progress | None = None,
) -> AnalyticsRun:
    """Compute every metric and, with ``publish``, write them and the category messages to the analytics topic
    and the store. ``session()`` gives the SparkSession (the caller's wiring: jobs.session.build_session on a
    master URL); it is called once Kafka, the client-search topic and the lake have answered."""
    from millrace.kafka.admin import require_kafka
    from millrace.kafka.reader import watermarks
    from millrace.shop.lake import open_lake

    say = progress or (lambda _text: None)
    client_config = settings.kafka.client_config()
    require_kafka(client_config)
    watermarks(client_config, settings.topics.shop_client_search)  # names a missing topic before Spark does
    lake = open_lake(settings)
    has_orders = _has_orders(lake)  # before Spark starts: an unreachable lake is named in seconds
    top_n = settings.analytics.top_n
    computed_at = datetime.now(UTC)
    seconds: dict[str, float] = {}
    with _timed(seconds, "catalog"):
        say(f"reading the catalog ({catalog or settings.topics.shop_filtered_items})")
        products, source = catalog_products(settings, catalog)
    run = AnalyticsRun(computed_at, lake.spark_url, source)
    with _timed(seconds, "spark session"):
        say("starting Spark")
        spark = session()
    with _timed(seconds, "sales"):
        say(f"sales and top products from {lake.spark_url}")
        # A lake nothing was archived to yet has no orders directory: no sales, not an error.
        orders = read_orders(spark, lake.spark_url) if has_orders else empty_orders(spark)
        lines = sales_lines(orders).cache()
        run.sale_lines = lines.count()
        run.metrics += sales_metrics(lines, computed_at, top_n)
        lines.unpersist()
    with _timed(seconds, "categories"):
        say(f"categories of {len(products)} products")
        run.metrics += category_metrics(spark, products, computed_at)
    with _timed(seconds, "queries"):
        say(f"client queries from {settings.topics.shop_client_search}")
        queries = read_queries(spark, settings)
        run.metrics += query_metrics(queries, computed_at, top_n)
        run.searches = int(sum(m["value"] for m in run.values("searches_per_hour")))
    run.categories = category_messages(run.metrics)
    if publish:
        with _timed(seconds, "publish"):
            say(f"publishing {len(run.metrics) + len(run.categories)} records")
            run.published = publish_records(settings, [*run.metrics, *run.categories])
    run.seconds = seconds
    return run


@contextmanager
def _timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] = time.perf_counter() - start
