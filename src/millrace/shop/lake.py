"""The orders lake: every order event of the orders topic as Parquet rows, one row per order line.

Where: ``lake.url`` — empty is ``<state_dir>/lake`` (a local directory); ``hdfs://host:rpc_port/path`` (the
NameNode's RPC address, through hdfs-native) or ``webhdfs://host:http_port/path`` (WebHDFS) put it on HDFS.
:func:`open_lake` gives the fsspec filesystem, the root path in it and the URL Spark reads.

Layout (Hive-style partition directories, so Spark and pyarrow discover ``order_date``)::

    <root>/orders/order_date=YYYY-MM-DD/part-p<partition>-<first offset:020d>-<last offset:020d>.parquet

A file holds the rows of consecutive records (in offset order) of one Kafka partition whose events fall on
one order date; ``first`` and ``last`` are the Kafka offsets of its first and last record. Files are written
under a hidden temporary name (``.tmp-...``, which Spark and pyarrow skip) and renamed when complete, so a
reader never sees a partial file. ``shop archive`` (shop/archive.py) explains why the names make the archive
exactly-once.

Columns of a row (one per line of an order event; every status change of an order is one event, so an order
created, paid and delivered appears three times — count sales on one status, e.g. ``created``):

    order_id         string             the order
    customer_id      string             the buyer (the record's key)
    status           string             created | paid | shipped | delivered | cancelled
    event_ts         timestamp[ms, UTC] the event's time: the order's ``updated_at``
    order_date       string             YYYY-MM-DD of event_ts (UTC): the partition directory
    created_at       timestamp[ms, UTC] when the order was created (the same in every event of the order)
    product_id       string             the line's product
    sku              string             the line's product SKU
    name             string, nullable   the product's name in the catalog when archived (null: not in it)
    category         string, nullable   the product's category in the catalog when archived (null: not in it)
    quantity         int64
    price            float64            the unit price (the line's ``unit_price``)
    line_total       float64            quantity * price, rounded to cents
    order_total      float64            the order's ``total.amount`` (all its lines)
    currency         string             the order total's currency (ISO 4217)
    store_id         string             the store of the order
    kafka_partition  int32              where the event is in the orders topic
    kafka_offset     int64
    line_no          int32              the line's position in the event's ``lines``, from 0

Differences from issue 23's first column list: ``name`` and ``category`` are not in order events (the order
schema's lines carry product_id, sku, quantity, unit_price); they are looked up in the catalog when the event
is archived. ``created_at``, ``sku``, ``currency`` and ``store_id`` are added. ``order_date`` lives in the
directory name only (Hive style): :meth:`Lake.read_orders` gives it as a string; Spark's partition discovery
types it as ``date`` (``spark.sql.sources.partitionColumnTypeInference.enabled=false`` keeps it a string).
"""

from __future__ import annotations

import io
import logging
import re
import socket
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from millrace.config import Settings
from millrace.errors import ConfigError, DataError, StoreUnavailable
from millrace.records import parse_iso

log = logging.getLogger(__name__)

ORDERS = "orders"
SCHEMA = pa.schema(
    [
        ("order_id", pa.string()),
        ("customer_id", pa.string()),
        ("status", pa.string()),
        ("event_ts", pa.timestamp("ms", tz="UTC")),
        ("order_date", pa.string()),
        ("created_at", pa.timestamp("ms", tz="UTC")),
        ("product_id", pa.string()),
        ("sku", pa.string()),
        ("name", pa.string()),
        ("category", pa.string()),
        ("quantity", pa.int64()),
        ("price", pa.float64()),
        ("line_total", pa.float64()),
        ("order_total", pa.float64()),
        ("currency", pa.string()),
        ("store_id", pa.string()),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
        ("line_no", pa.int32()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
FILE_SCHEMA = SCHEMA.remove(SCHEMA.get_field_index("order_date"))  # the partition is the directory
FILE_RE = re.compile(r"^part-p(\d+)-(\d{20})-(\d{20})\.parquet$")
TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Product:
    """What a row takes from the catalog."""

    name: str
    category: str


def catalog_index(products: Iterable[Mapping[str, Any]]) -> dict[str, Product]:
    """product id -> name and category, from catalog products (the item schema)."""
    return {str(p["id"]): Product(str(p["name"]), str(p["category"])) for p in products}


def order_rows(
    event: Mapping[str, Any], partition: int, offset: int, products: Mapping[str, Product]
) -> list[dict[str, Any]]:
    """The lake rows of one order event (one per line). Raises DataError when the event is not an order
    (a field missing or of the wrong kind), naming what is wrong."""
    try:
        event_ts = _timestamp(event["updated_at"])
        created_at = _timestamp(event["created_at"])
        total = event["total"]
        order_total, currency = float(total["amount"]), str(total["currency"])
        base = {
            "order_id": str(event["order_id"]),
            "customer_id": str(event["customer_id"]),
            "status": str(event["status"]),
            "event_ts": event_ts,
            "order_date": event_ts.strftime("%Y-%m-%d"),
            "created_at": created_at,
            "order_total": order_total,
            "currency": currency,
            "store_id": str(event["store_id"]),
            "kafka_partition": partition,
            "kafka_offset": offset,
        }
        lines = event["lines"]
        if not isinstance(lines, list) or not lines:
            raise DataError("an order needs at least one line")
        rows = []
        for line_no, line in enumerate(lines):
            product_id = str(line["product_id"])
            quantity, price = int(line["quantity"]), float(line["unit_price"])
            product = products.get(product_id)
            rows.append(
                {
                    **base,
                    "product_id": product_id,
                    "sku": str(line["sku"]),
                    "name": product.name if product else None,
                    "category": product.category if product else None,
                    "quantity": quantity,
                    "price": price,
                    "line_total": round(quantity * price, 2),
                    "line_no": line_no,
                }
            )
        return rows
    except KeyError as exc:
        raise DataError(f"not an order: no {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise DataError(f"not an order: {exc}") from None


def _timestamp(text: object) -> datetime:
    if not isinstance(text, str):
        raise DataError(f"a time must be ISO 8601 text (got {text!r})")
    try:
        return parse_iso(text).astimezone(UTC)
    except ValueError:
        raise DataError(f"not an ISO 8601 time: {text!r}") from None


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The rows as stored in a file (without ``order_date``, which the directory names)."""
    return pa.Table.from_pylist(rows, schema=FILE_SCHEMA)


def file_name(partition: int, first: int, last: int) -> str:
    return f"part-p{partition}-{first:020d}-{last:020d}.parquet"


@dataclass(frozen=True)
class ArchivedFile:
    path: str
    order_date: str
    partition: int
    first: int
    last: int


def parse_file(path: str) -> ArchivedFile | None:
    """The file's place in the archive from its path, or None when it is not an archive file."""
    parent, _, name = path.rstrip("/").rpartition("/")
    match = FILE_RE.match(name)
    date_dir = parent.rpartition("/")[2]
    if match is None or not date_dir.startswith("order_date="):
        return None
    return ArchivedFile(path, date_dir.removeprefix("order_date="), int(match[1]), int(match[2]), int(match[3]))


@dataclass(frozen=True)
class Lake:
    """The lake of ``open_lake``: ``fs`` (fsspec) holds it under ``root``; Spark reads ``spark_url``."""

    fs: AbstractFileSystem
    root: str
    spark_url: str

    @property
    def orders_dir(self) -> str:
        return f"{self.root}/{ORDERS}"

    def files(self) -> list[ArchivedFile]:
        """Every complete archive file, by (partition, first offset)."""
        found = [parse_file(p) for p in self.fs.glob(f"{self.orders_dir}/order_date=*/part-p*.parquet")]
        return sorted((f for f in found if f is not None), key=lambda f: (f.partition, f.first, f.order_date))

    def archived_offsets(self) -> dict[int, int]:
        """Kafka partition -> the highest offset in the lake (each partition's files cover a prefix of it)."""
        highest: dict[int, int] = {}
        for f in self.files():
            highest[f.partition] = max(f.last, highest.get(f.partition, -1))
        return highest

    def write(self, partition: int, rows: list[dict[str, Any]]) -> ArchivedFile:
        """Write the rows of consecutive records of ``partition`` that share one order date as one file,
        atomically: under a hidden name first, then renamed. Rows must be in offset order."""
        first, last = rows[0]["kafka_offset"], rows[-1]["kafka_offset"]
        order_date = rows[0]["order_date"]
        directory = f"{self.orders_dir}/order_date={order_date}"
        name = file_name(partition, first, last)
        final = f"{directory}/{name}"
        temp = f"{directory}/{TEMP_PREFIX}{name}.{uuid.uuid4().hex[:8]}"
        buffer = io.BytesIO()
        pq.write_table(rows_table(rows), buffer, compression="snappy")
        self.fs.makedirs(directory, exist_ok=True)
        self.fs.pipe_file(temp, buffer.getvalue())
        if self.fs.exists(final):  # written before a crash that came ahead of its commit: the same records
            self.fs.rm(temp)
        else:
            self.fs.mv(temp, final)
        return ArchivedFile(final, order_date, partition, first, last)

    def remove_temp_files(self, partitions: Iterable[int]) -> int:
        """Remove the temporary files a killed writer of ``partitions`` left behind; returns how many."""
        removed = 0
        for partition in partitions:
            for path in self.fs.glob(f"{self.orders_dir}/order_date=*/{TEMP_PREFIX}part-p{partition}-*"):
                self.fs.rm(path)
                removed += 1
        if removed:
            log.info("removed %d unfinished files of partitions %s", removed, sorted(partitions))
        return removed

    def read_orders(self) -> pd.DataFrame:
        """Every archived row, in (kafka_partition, kafka_offset, line_no) order, with the columns above."""
        tables = []
        at = SCHEMA.get_field_index("order_date")
        for f in self.files():
            with self.fs.open(f.path, "rb") as handle:
                table = pq.read_table(handle, schema=FILE_SCHEMA)
            tables.append(table.add_column(at, SCHEMA.field(at), pa.array([f.order_date] * len(table), pa.string())))
        table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        frame = table.to_pandas()
        return frame.sort_values(["kafka_partition", "kafka_offset", "line_no"], ignore_index=True)


def open_lake(settings: Settings) -> Lake:
    """The configured lake: ``lake.url`` (empty: ``<state_dir>/lake``). ConfigError names ``lake.url`` when it
    is not a URL the lake can use; StoreUnavailable when its HDFS does not answer."""
    url = settings.lake.url.strip()
    if not url:
        return _local((Path(settings.state_dir) / "lake").resolve())
    parts = urlsplit(url)
    if parts.scheme == "file":
        return _local(Path(parts.path).resolve())
    if parts.scheme in ("hdfs", "webhdfs"):
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or not port:
            raise ConfigError(f"lake.url: {parts.scheme}:// needs host:port (got {url!r})")
        from millrace.runtime.hdfs import hdfs_filesystem

        _require_reachable(parts.hostname, port, url)
        fs = hdfs_filesystem(url, settings.lake.hdfs_user)
        path = parts.path.strip("/")
        return Lake(fs, f"/{path}" if path else "", url.rstrip("/"))
    raise ConfigError(
        f"lake.url: not a lake URL: {url!r} (empty for <state_dir>/lake, hdfs://host:port/path or "
        "webhdfs://host:port/path)"
    )


def _require_reachable(host: str, port: int, url: str, timeout_s: float = 5.0) -> None:
    """Fail fast when the NameNode does not answer: hdfs-native retries an unreachable one without end."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise StoreUnavailable(
            f"the lake's HDFS at {host}:{port} (lake.url {url}) does not answer ({exc.strerror or exc}); "
            "is it running? `millrace stack up --with hdfs` starts a local one"
        ) from None


def _local(root: Path) -> Lake:
    from fsspec.implementations.local import LocalFileSystem

    fs = LocalFileSystem()
    fs.makedirs(str(root), exist_ok=True)
    return Lake(fs, str(root), root.as_uri())
