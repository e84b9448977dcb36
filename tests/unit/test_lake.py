"""The orders lake without Kafka: order events flattened to one row per line, file names that carry the
offsets, runs of one order date, the resume offset read back from a local lake, and unfinished files."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from millrace.config import load_settings
from millrace.errors import ConfigError, DataError
from millrace.runtime.process import free_port
from millrace.shop.archive import runs
from millrace.shop.catalog import load_products, sample_catalog_path
from millrace.shop.lake import (
    COLUMNS,
    Lake,
    Product,
    catalog_index,
    file_name,
    open_lake,
    order_rows,
    parse_file,
)
from millrace.shop.orders import OrderGenerator

START = datetime(2026, 6, 1, 23, 58, tzinfo=UTC)


@pytest.fixture(scope="module")
def products() -> list[dict[str, Any]]:
    return load_products(sample_catalog_path())


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return open_lake(load_settings(state_dir=tmp_path))


def _event() -> dict[str, Any]:
    return {
        "order_id": "o1-0000001",
        "customer_id": "c00042",
        "status": "paid",
        "lines": [
            {"product_id": "p00001", "sku": "KB-1", "quantity": 3, "unit_price": 10.1},
            {"product_id": "p99999", "sku": "X-9", "quantity": 1, "unit_price": 5.0},
        ],
        "total": {"amount": 35.3, "currency": "RUB"},
        "store_id": "store-05",
        "created_at": "2026-06-01T23:59:59.500Z",
        "updated_at": "2026-06-02T00:00:01.250+00:00",
    }


def test_an_event_becomes_one_row_per_line() -> None:
    rows = order_rows(_event(), 2, 1234, {"p00001": Product("Клавиатура", "Компьютеры")})
    assert [set(r) for r in rows] == [set(COLUMNS)] * 2
    first, second = rows
    assert first == {
        "order_id": "o1-0000001",
        "customer_id": "c00042",
        "status": "paid",
        "event_ts": datetime(2026, 6, 2, 0, 0, 1, 250000, tzinfo=UTC),
        "order_date": "2026-06-02",  # of the event's time, not of the order's creation
        "created_at": datetime(2026, 6, 1, 23, 59, 59, 500000, tzinfo=UTC),
        "product_id": "p00001",
        "sku": "KB-1",
        "name": "Клавиатура",
        "category": "Компьютеры",
        "quantity": 3,
        "price": 10.1,
        "line_total": 30.3,
        "order_total": 35.3,
        "currency": "RUB",
        "store_id": "store-05",
        "kafka_partition": 2,
        "kafka_offset": 1234,
        "line_no": 0,
    }
    # a product the catalog does not know keeps its line, without name and category
    assert (second["product_id"], second["name"], second["category"], second["line_no"]) == ("p99999", None, None, 1)
    assert second["line_total"] == 5.0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"updated_at": "yesterday"}, "not an ISO 8601 time: 'yesterday'"),
        ({"updated_at": 17}, "a time must be ISO 8601 text (got 17)"),
        ({"lines": []}, "an order needs at least one line"),
        ({"total": {"currency": "RUB"}}, "not an order: no 'amount'"),
        ({"lines": [{"product_id": "p1", "sku": "s", "quantity": "many", "unit_price": 1}]}, "not an order: "),
    ],
)
def test_what_is_not_an_order_says_why(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(DataError, match="^" + reason.replace("(", r"\(").replace(")", r"\)")):
        order_rows({**_event(), **change}, 0, 0, {})


def test_file_names_carry_partition_and_offsets() -> None:
    name = file_name(3, 17, 12_345_678_901)
    assert name == "part-p3-00000000000000000017-00000000012345678901.parquet"
    found = parse_file(f"/lake/orders/order_date=2026-06-02/{name}")
    assert found is not None
    assert (found.order_date, found.partition, found.first, found.last) == ("2026-06-02", 3, 17, 12_345_678_901)
    # names sort in offset order within a partition
    assert sorted([file_name(0, 100, 150), file_name(0, 9, 99)]) == [file_name(0, 9, 99), file_name(0, 100, 150)]
    for other in (
        f"/lake/orders/order_date=2026-06-02/.tmp-{name}.ab12cd34",
        f"/lake/orders/2026-06-02/{name}",
        "/lake/orders/order_date=2026-06-02/part-p3-17-18.parquet",
    ):
        assert parse_file(other) is None


def test_runs_cut_at_each_change_of_date() -> None:
    def event(offset: int, date: str) -> list[dict[str, Any]]:
        return [{"kafka_offset": offset, "order_date": date, "line_no": n} for n in range(2)]

    dates = ["06-01", "06-01", "06-02", "06-02", "06-01", "06-02"]  # a late event at offset 4
    cut = runs([event(i, d) for i, d in enumerate(dates)])
    assert [[(r["kafka_offset"], r["line_no"]) for r in run] for run in cut] == [
        [(0, 0), (0, 1), (1, 0), (1, 1)],
        [(2, 0), (2, 1), (3, 0), (3, 1)],
        [(4, 0), (4, 1)],
        [(5, 0), (5, 1)],
    ]
    assert runs([]) == []


def _archive(lake: Lake, products: list[dict[str, Any]], partition: int, offsets: range) -> list[dict[str, Any]]:
    """Write the events at ``offsets`` of ``partition`` as the archiver does; returns their rows."""
    index = catalog_index(products)
    generator = OrderGenerator(products, seed=partition, start=START, rate=0.5)
    events = [order_rows(e, partition, o, index) for e, o in zip(generator, offsets, strict=False)]
    for run in runs(events):
        lake.write(partition, run)
    return [row for rows in events for row in rows]


def test_resume_offsets_and_rows_read_back(lake: Lake, products: list[dict[str, Any]]) -> None:
    assert lake.archived_offsets() == {}
    assert list(lake.read_orders().columns) == list(COLUMNS)
    assert len(lake.read_orders()) == 0
    rows = _archive(lake, products, 0, range(0, 150))  # 300 s of events from 23:58: two order dates
    rows += _archive(lake, products, 1, range(40, 60))
    assert lake.archived_offsets() == {0: 149, 1: 59}
    dirs = sorted(Path(lake.orders_dir).iterdir())
    assert [d.name for d in dirs] == ["order_date=2026-06-01", "order_date=2026-06-02"]
    assert [f.name for f in sorted(dirs[0].iterdir())][:1] == [file_name(0, 0, 59)]
    frame = lake.read_orders()
    expected = pd.DataFrame(rows, columns=list(COLUMNS)).sort_values(["kafka_partition", "kafka_offset", "line_no"])
    assert len(frame) == len(rows)
    assert frame["order_date"].tolist() == expected["order_date"].tolist()
    assert frame[["order_id", "kafka_offset", "line_no", "quantity"]].values.tolist() == (
        expected[["order_id", "kafka_offset", "line_no", "quantity"]].values.tolist()
    )
    assert str(frame["event_ts"].dtype) == "datetime64[ms, UTC]"
    assert frame["category"].notna().all()  # every generated product is in the catalog
    # a file holds the rows without the partition column (the directory names it)
    one = lake.files()[0]
    assert "order_date" not in pq.read_schema(one.path).names


def test_unfinished_files_are_invisible_and_removed(lake: Lake, products: list[dict[str, Any]]) -> None:
    _archive(lake, products, 0, range(0, 10))
    directory = Path(lake.orders_dir) / "order_date=2026-06-01"
    (directory / f".tmp-{file_name(0, 10, 19)}.dead0001").write_bytes(b"PAR1 half a file")
    (directory / f".tmp-{file_name(2, 10, 19)}.dead0002").write_bytes(b"PAR1 another writer's")
    assert lake.archived_offsets() == {0: 9}
    assert len(lake.read_orders()) > 0
    assert lake.remove_temp_files([0, 1]) == 1
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith(".tmp-")) == [
        f".tmp-{file_name(2, 10, 19)}.dead0002"
    ]


def test_writing_a_file_again_keeps_one(lake: Lake, products: list[dict[str, Any]]) -> None:
    index = catalog_index(products)
    events = [order_rows(e, 0, o, index) for o, e in enumerate(itertools.islice(OrderGenerator(products), 5))]
    rows = [r for e in events for r in e]
    lake.write(0, rows)
    lake.write(0, rows)  # a replay of a batch whose commit was lost
    assert len(lake.files()) == 1
    assert len(lake.read_orders()) == len(rows)
    assert not [p for p in Path(lake.orders_dir).rglob(".tmp-*")]


def test_open_lake_local_default_and_bad_urls(tmp_path: Path) -> None:
    lake = open_lake(load_settings(state_dir=tmp_path))
    assert lake.root == str((tmp_path / "lake").resolve())
    assert lake.spark_url == (tmp_path / "lake").resolve().as_uri()
    assert Path(lake.root).is_dir()
    other = open_lake(load_settings(state_dir=tmp_path, lake={"url": (tmp_path / "elsewhere").as_uri()}))
    assert other.root == str((tmp_path / "elsewhere").resolve())
    for url, says in (
        ("s3://bucket/lake", "lake.url: not a lake URL: 's3://bucket/lake'"),
        ("hdfs:///lake", "lake.url: hdfs:// needs host:port"),
        ("webhdfs://namenode:port/lake", "lake.url: webhdfs:// needs host:port"),
    ):
        with pytest.raises(ConfigError, match=says):
            open_lake(load_settings(state_dir=tmp_path, lake={"url": url}))


def _archive_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    return subprocess.run(
        [sys.executable, "-m", "millrace.cli.main", "--state-dir", str(tmp_path / "state"), "shop", "archive", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {}), "COLUMNS": "200"},
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "code", "line"),
    [
        (("--instance", "a b"), {}, 2, "error: --instance: an instance name without spaces"),
        (("--catalog", "nowhere.json"), {}, 2, "error: --catalog: catalog file not found: nowhere.json"),
        ((), {"MILLRACE_LAKE__URL": "s3://bucket/lake"}, 2, "error: lake.url: not a lake URL: 's3://bucket/lake'"),
        ((), {"MILLRACE_LAKE__URL": "hdfs://127.0.0.1:{port}/lake"}, 1, "error: the lake's HDFS at 127.0.0.1:{port}"),
    ],
)
def test_archive_says_what_is_wrong_in_one_line(
    args: tuple[str, ...], env: dict[str, str], code: int, line: str, tmp_path: Path
) -> None:
    port = str(free_port())  # nothing listens there
    result = _archive_cli(tmp_path, *args, env={k: v.replace("{port}", port) for k, v in env.items()})
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith(line.replace("{port}", port)), result.stderr


def test_archive_help_names_the_options(tmp_path: Path) -> None:
    result = _archive_cli(tmp_path, "--help")
    assert result.returncode == 0
    for option in (
        "--until-idle",
        "--follow",
        "--group",
        "--instance",
        "--batch-size",
        "--batch-seconds",
        "--registry",
    ):
        assert option in result.stdout
    assert "exactly once" in result.stdout
