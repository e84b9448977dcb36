"""The shop's analytics (``millrace shop analytics``; docs/shop-analytics.md): Spark over the orders lake, the
catalog and the clients' queries, each result one metric record on the analytics topic and in the store.

What counts as a sale: an order whose *latest* event (greatest event time, then Kafka position) is ``paid``,
``shipped`` or ``delivered``. A cancelled order never counts; an order only ``created`` is still pending (the
shop cancels only unpaid orders) and counts once paid. A sale's lines are those of its latest event, and its
day is the UTC day of its first paid/shipped/delivered event — the day the money came in.

Metrics (names and dimensions as issue 23's contract; every dimension value is a string):

- ``sales_revenue`` / ``sales_orders`` / ``sales_units`` (category, day): the sum of line totals, the orders
  with a line in the category, the units, per category and sale day;
- ``top_products`` (product_id, name, category, rank): the ``top_n`` products by units sold (ties: revenue,
  then product id), value = units;
- ``category_product_count`` / ``category_avg_price`` / ``category_total_available`` (category): from the
  catalog (the filtered-items topic, latest record per product, or a catalog file);
- ``search_queries`` / ``zero_result_queries`` (query, rank): the ``top_n`` search texts (trimmed, lower
  case) by count, all searches / those that found nothing; ``searches_per_hour``, ``active_users_per_hour``
  (hour) and ``searches_per_user_hour`` (user, hour) from the client-search topic (``search`` records only,
  by the hour of the record's own timestamp).

Besides the metric records, each category gets the issue's category message (category, product_count,
avg_price, total_available, timestamp) on the topic. :func:`publish_metrics` is the one writer, also used by
``shop recommend-train`` for ``recommendation_coverage``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message

from millrace.config import Settings
from millrace.errors import DataError, KafkaUnavailable, MillraceError
from millrace.records import parse_iso, to_iso

log = logging.getLogger(__name__)

SALE_STATUSES = ("paid", "shipped", "delivered")
UNKNOWN_CATEGORY = "unknown"  # an archived line whose product was not in the catalog when archived
SALES_METRICS = ("sales_revenue", "sales_orders", "sales_units")
CATEGORY_METRICS = {
    "category_product_count": "product_count",
    "category_avg_price": "avg_price",
    "category_total_available": "total_available",
}
QUERY_METRICS = (
    "search_queries",
    "zero_result_queries",
    "searches_per_hour",
    "active_users_per_hour",
    "searches_per_user_hour",
)
Progress = Callable[[str], None]


# ---- records ----


def metric_record(
    metric: str,
    dimensions: Mapping[str, object],
    value: float,
    window_start: datetime,
    window_end: datetime,
    computed_at: datetime,
) -> dict[str, Any]:
    """One metric record of the analytics schema (times as ISO 8601 UTC text, dimensions as strings)."""
    return {
        "metric": metric,
        "window_start": to_iso(window_start),
        "window_end": to_iso(window_end),
        "dimensions": {str(k): str(v) for k, v in dimensions.items()},
        "value": float(value),
        "computed_at": to_iso(computed_at),
    }


def category_messages(metrics: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The issue's per-category message, one per category, from the run's ``category_*`` metric records."""
    merged: dict[str, dict[str, Any]] = {}
    for m in metrics:
        name = CATEGORY_METRICS.get(str(m.get("metric")))
        if name is None:
            continue
        category = m["dimensions"]["category"]
        entry = merged.setdefault(category, {"category": category, "timestamp": m["computed_at"]})
        entry[name] = round(float(m["value"]), 2) if name == "avg_price" else int(m["value"])
    return [merged[c] for c in sorted(merged) if len(merged[c]) == 2 + len(CATEGORY_METRICS)]


def _is_metric(record: Mapping[str, Any]) -> bool:
    return "metric" in record


# ---- publishing ----


@dataclass
class Published:
    delivered: int = 0  # records delivered to the analytics topic
    stored: int = 0  # metric rows written to the store


def publish_records(settings: Settings, records: Sequence[Mapping[str, Any]], *, timeout_s: float = 60.0) -> Published:
    """Validate every record against the analytics schema (DataError naming the first that fails: nothing is
    written then), store the metric records, and produce every record to the analytics topic — framed with the
    registered analytics schema when ``shop.use_registry``, plain JSON otherwise; metric records keyed by metric,
    category messages by category. Raises KafkaUnavailable when a record is not delivered."""
    from millrace.kafka.producer import make_producer
    from millrace.shop.schemas import Validator, load_schema
    from millrace.stores.factory import open_store

    schema = load_schema("analytics")
    validator = Validator(schema)
    for i, record in enumerate(records):
        reason = validator.error(record)
        if reason is not None:
            raise DataError(f"analytics record {i + 1} ({_label(record)}) fails the analytics schema: {reason}")
    topic = settings.topics.shop_analytics
    serialize = _serializer(settings, schema)
    metric_rows = [r for r in records if _is_metric(r)]
    outcome = Published()
    store = open_store(settings)
    try:
        outcome.stored = store.upsert_analytics(metric_rows)
    finally:
        store.close()
    k = settings.kafka
    producer = make_producer(k.client_config(), compression=k.compression, linger_ms=k.linger_ms)
    failed: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            outcome.delivered += 1
        else:
            failed.append(err.str())

    for record in records:
        key = str(record["metric"] if _is_metric(record) else record["category"])
        producer.produce(topic, serialize(dict(record), topic), key, on_delivery=delivered)
    remaining = producer.flush(timeout_s)
    if failed or remaining:
        reason = failed[0] if failed else f"{remaining} not delivered within {timeout_s:.0f} s"
        raise KafkaUnavailable(f"{len(failed) + remaining} analytics records did not reach {topic}: {reason}")
    return outcome


def publish_metrics(settings: Settings, metrics: list[dict[str, Any]]) -> int:
    """Write metric records (the analytics schema's metric shape: metric, window_start, window_end, dimensions,
    value, computed_at — times as ISO text or aware datetimes, computed_at defaulting to now) to the store and
    the analytics topic; category messages may be among them (topic only). Returns the records delivered."""
    now = datetime.now(UTC)
    records = []
    for m in metrics:
        record = dict(m)
        if _is_metric(record):
            record.setdefault("computed_at", now)
            for name in ("window_start", "window_end", "computed_at"):
                if isinstance(record.get(name), datetime):
                    record[name] = to_iso(record[name])
            record["dimensions"] = {str(k): str(v) for k, v in (record.get("dimensions") or {}).items()}
        records.append(record)
    return publish_records(settings, records).delivered


def _label(record: Mapping[str, Any]) -> str:
    return str(record.get("metric") or record.get("category") or "no metric")


def _serializer(settings: Settings, schema: dict[str, Any]) -> Callable[[dict[str, Any], str], bytes]:
    if not settings.shop.use_registry:
        return lambda value, _topic: json.dumps(value, ensure_ascii=False).encode("utf-8")
    from millrace.kafka.schema_registry import json_serializer, register, registry_client, subject_for

    shop = settings.shop
    client = registry_client(shop.registry_url)
    register(client, shop.registry_url, subject_for(settings.topics.shop_analytics), schema, shop.compatibility)
    return json_serializer(client, schema, validate=False)  # validated above


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


# ---- Spark ----


ORDER_COLUMNS = (
    ("order_id", "string"),
    ("customer_id", "string"),
    ("status", "string"),
    ("event_ts", "timestamp"),
    ("product_id", "string"),
    ("name", "string"),
    ("category", "string"),
    ("quantity", "bigint"),
    ("line_total", "double"),
    ("kafka_partition", "int"),
    ("kafka_offset", "bigint"),
    ("line_no", "int"),
)


def read_orders(spark: Any, lake_url: str) -> Any:
    """The lake's order lines as a DataFrame (the columns analytics uses); empty when the lake has no orders.
    Only complete archive files (``part-p*.parquet``) are read; the date directories are not parsed (the sale
    day comes from the events' times)."""
    from pyspark.errors import AnalysisException

    schema = ", ".join(f"{name} {kind}" for name, kind in ORDER_COLUMNS)
    try:
        return (
            spark.read.schema(schema)
            .option("recursiveFileLookup", "true")
            .option("pathGlobFilter", "part-p*.parquet")
            .parquet(f"{lake_url.rstrip('/')}/orders")
        )
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" not in str(exc) and "does not exist" not in str(exc):
            raise
        log.info("no orders in the lake at %s", lake_url)
        return _no_orders(spark)


def _has_orders(lake: Any) -> bool:
    try:
        return bool(lake.fs.exists(lake.orders_dir))
    except OSError as exc:  # hdfs-native and WebHDFS report an unreachable NameNode as OSError
        raise MillraceError(f"cannot reach the orders lake at {lake.spark_url} (lake.url): {exc}") from None


def _no_orders(spark: Any) -> Any:
    return spark.createDataFrame([], ", ".join(f"{name} {kind}" for name, kind in ORDER_COLUMNS))


def sales_lines(orders: Any) -> Any:
    """The lines of every sale (see the module docstring) with its ``day`` (yyyy-MM-dd) and order id."""
    from pyspark.sql import functions as F

    position = F.struct("event_ts", "kafka_partition", "kafka_offset")
    events = orders.select("order_id", "status", "event_ts", "kafka_partition", "kafka_offset").distinct()
    per_order = events.groupBy("order_id").agg(
        F.max_by(F.struct("status", "kafka_partition", "kafka_offset"), position).alias("latest"),
        F.min(F.when(F.col("status").isin(*SALE_STATUSES), F.col("event_ts"))).alias("paid_ts"),
    )
    sales = per_order.where(F.col("latest.status").isin(*SALE_STATUSES)).select(
        "order_id",
        F.col("latest.kafka_partition").alias("sale_partition"),
        F.col("latest.kafka_offset").alias("sale_offset"),
        F.date_format("paid_ts", "yyyy-MM-dd").alias("day"),
    )
    return (
        orders.join(sales, "order_id")
        .where((F.col("kafka_partition") == F.col("sale_partition")) & (F.col("kafka_offset") == F.col("sale_offset")))
        .select(
            "order_id",
            "day",
            "product_id",
            F.coalesce("name", F.lit("")).alias("name"),
            F.coalesce("category", F.lit(UNKNOWN_CATEGORY)).alias("category"),
            "quantity",
            "line_total",
        )
    )


def _day(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)


def _hour(text: str) -> datetime:
    return parse_iso(text)


def sales_metrics(lines: Any, computed_at: datetime, top_n: int) -> list[dict[str, Any]]:
    from pyspark.sql import functions as F

    out: list[dict[str, Any]] = []
    rows = (
        lines.groupBy("category", "day")
        .agg(
            F.sum("line_total").alias("revenue"),
            F.countDistinct("order_id").alias("orders"),
            F.sum("quantity").alias("units"),
        )
        .orderBy("day", "category")
        .collect()
    )
    for r in rows:
        start = _day(r["day"])
        dims = {"category": r["category"], "day": r["day"]}
        for metric, value in zip(SALES_METRICS, (r["revenue"], r["orders"], r["units"]), strict=True):
            out.append(metric_record(metric, dims, value, start, start + timedelta(days=1), computed_at))
    if not rows:
        return out
    first, last = _day(min(r["day"] for r in rows)), _day(max(r["day"] for r in rows)) + timedelta(days=1)
    top = (
        lines.groupBy("product_id")
        .agg(
            F.sum("quantity").alias("units"),
            F.sum("line_total").alias("revenue"),
            F.max("name").alias("name"),
            F.max("category").alias("category"),
        )
        .orderBy(F.desc("units"), F.desc("revenue"), "product_id")
        .limit(top_n)
        .collect()
    )
    for rank, r in enumerate(top, start=1):
        dims = {"product_id": r["product_id"], "name": r["name"], "category": r["category"], "rank": rank}
        out.append(metric_record("top_products", dims, r["units"], first, last, computed_at))
    return out


def category_metrics(spark: Any, products: Sequence[Mapping[str, Any]], computed_at: datetime) -> list[dict[str, Any]]:
    from pyspark.sql import functions as F

    rows = [
        (str(p["category"]), float(p["price"]["amount"]), int(p["stock"]["available"]))
        for p in products
        if isinstance(p.get("price"), Mapping) and isinstance(p.get("stock"), Mapping)
    ]
    frame = spark.createDataFrame(rows, "category string, price double, available bigint")
    stats = (
        frame.groupBy("category")
        .agg(F.count("*").alias("n"), F.avg("price").alias("avg_price"), F.sum("available").alias("available"))
        .orderBy("category")
        .collect()
    )
    out = []
    for r in stats:
        dims = {"category": r["category"]}
        for metric, value in zip(CATEGORY_METRICS, (r["n"], r["avg_price"], r["available"]), strict=True):
            out.append(metric_record(metric, dims, value, computed_at, computed_at, computed_at))
    return out


def read_queries(spark: Any, settings: Settings) -> Any:
    """The client-search topic's ``search`` records (framed or plain JSON) as user, query (trimmed, lower
    case), results (null when not recorded) and hour (its start, ISO text), read with Spark's Kafka batch
    source. Records that are not JSON, or have no query or no valid timestamp, are left out."""
    from pyspark.sql import functions as F

    from millrace.kafka.client_config import java_client_config

    # The Java client settings of every millrace Spark job (TLS truststore, SASL login): secured clusters too.
    kafka_options = {f"kafka.{key}": value for key, value in java_client_config(settings.kafka).items()}
    raw = (
        spark.read.format("kafka")
        .options(**kafka_options)
        .option("subscribe", settings.topics.shop_client_search)
        .option("startingOffsets", "earliest")
        .option("endingOffsets", "latest")
        .load()
    )
    # A value framed by the registry starts with a zero byte and a 4-byte schema id: skip those 5 bytes.
    body = F.expr(
        "CASE WHEN length(value) > 5 AND substring(value, 1, 1) = X'00' THEN substring(value, 6) ELSE value END"
    )
    schema = "type string, user string, query string, timestamp string, results bigint"
    parsed = raw.select(F.from_json(body.cast("string"), schema).alias("q")).select("q.*")
    ts = F.col("timestamp").cast("timestamp")
    return parsed.where((F.col("type") == "search") & F.col("query").isNotNull() & ts.isNotNull()).select(
        "user",
        F.lower(F.trim("query")).alias("query"),
        "results",
        F.date_format(F.date_trunc("hour", ts), "yyyy-MM-dd'T'HH:00:00'Z'").alias("hour"),
    )


def query_metrics(queries: Any, computed_at: datetime, top_n: int) -> list[dict[str, Any]]:
    from pyspark.sql import functions as F

    queries = queries.cache()
    per_hour = (
        queries.groupBy("hour")
        .agg(F.count("*").alias("searches"), F.countDistinct("user").alias("users"))
        .orderBy("hour")
        .collect()
    )
    out: list[dict[str, Any]] = []
    for r in per_hour:
        start = _hour(r["hour"])
        end = start + timedelta(hours=1)
        out.append(metric_record("searches_per_hour", {"hour": r["hour"]}, r["searches"], start, end, computed_at))
        out.append(metric_record("active_users_per_hour", {"hour": r["hour"]}, r["users"], start, end, computed_at))
    if per_hour:
        first, last = _hour(per_hour[0]["hour"]), _hour(per_hour[-1]["hour"]) + timedelta(hours=1)
        for metric, subset in (("search_queries", queries), ("zero_result_queries", queries.where("results = 0"))):
            top = subset.groupBy("query").count().orderBy(F.desc("count"), "query").limit(top_n).collect()
            for rank, r in enumerate(top, start=1):
                dims = {"query": r["query"], "rank": rank}
                out.append(metric_record(metric, dims, r["count"], first, last, computed_at))
    per_user = (
        queries.where(F.col("user").isNotNull()).groupBy("user", "hour").count().orderBy("hour", "user").collect()
    )
    for r in per_user:
        start = _hour(r["hour"])
        dims = {"user": r["user"], "hour": r["hour"]}
        out.append(
            metric_record("searches_per_user_hour", dims, r["count"], start, start + timedelta(hours=1), computed_at)
        )
    queries.unpersist()
    return out


# ---- the run ----


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
        orders = read_orders(spark, lake.spark_url) if has_orders else _no_orders(spark)
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
