"""The shop analytics' computations with Spark (docs/shop-analytics.md): sales from the orders lake, the
catalog's categories and the clients' queries, each function returning metric records (analytics_records).

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
  catalog's products as given;
- ``search_queries`` / ``zero_result_queries`` (query, rank): the ``top_n`` search texts (trimmed, lower
  case) by count, all searches / those that found nothing; ``searches_per_hour``, ``active_users_per_hour``
  (hour) and ``searches_per_user_hour`` (user, hour) from the client-search topic (``search`` records only,
  by the hour of the record's own timestamp).

The functions take the caller's SparkSession or DataFrames and never create a session; the ``*_metrics``
functions collect their results to the driver (the metrics are small) and write nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from millrace.config import Settings
from millrace.records import parse_iso
from millrace.shop.analytics_records import CATEGORY_METRICS, metric_record

log = logging.getLogger(__name__)

SALE_STATUSES = ("paid", "shipped", "delivered")
UNKNOWN_CATEGORY = "unknown"  # an archived line whose product was not in the catalog when archived
SALES_METRICS = ("sales_revenue", "sales_orders", "sales_units")
QUERY_METRICS = (
    "search_queries",
    "zero_result_queries",
    "searches_per_hour",
    "active_users_per_hour",
    "searches_per_user_hour",
)


# ---- sales ----


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
        return empty_orders(spark)


def empty_orders(spark: Any) -> Any:
    """An order-lines DataFrame with no rows (the columns of :func:`read_orders`)."""
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


# ---- the catalog's categories ----


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


# ---- the clients' queries ----


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
