"""The SQLite store's own mechanics (file, pragmas, indexes, errors) and the shared value conversions.

The behaviour both backends share is tested once, for both, in tests/integration/test_store.py.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from millrace.config import load_settings
from millrace.errors import StoreUnavailable
from millrace.stores import convert
from millrace.stores import sqlite as sqlite_store
from millrace.stores.base import COLLECTIONS, Store
from millrace.stores.factory import open_store
from millrace.stores.sqlite import SqliteStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def frame(n: int, sensor: str = "dev-0001-temperature") -> pd.DataFrame:
    return pd.DataFrame(
        {"sensor_id": sensor, "timestamp": pd.date_range(T0, periods=n, freq="s"), "value": np.arange(n, dtype=float)}
    )


# ---- conversions ----


def test_ms_of_floors_every_timestamp_flavour_to_milliseconds() -> None:
    expected = 1772366400123
    assert convert.ms_of(datetime(2026, 3, 1, 12, 0, 0, 123999, tzinfo=UTC)) == expected
    assert convert.ms_of(datetime(2026, 3, 1, 12, 0, 0, 123000)) == expected  # naive = UTC
    assert convert.ms_of(datetime(2026, 3, 1, 15, 0, 0, 123000, tzinfo=timezone(timedelta(hours=3)))) == expected
    assert convert.ms_of("2026-03-01T12:00:00.123Z") == expected
    assert convert.ms_of(pd.Timestamp("2026-03-01T12:00:00.123456789Z")) == expected
    assert convert.ms_of(np.datetime64("2026-03-01T12:00:00.123456")) == expected
    assert convert.ms_of(None) is None and convert.ms_of(pd.NaT) is None and convert.ms_of(float("nan")) is None
    assert convert.ms_of(datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC)) == -1
    with pytest.raises(TypeError):
        convert.ms_of(12.5)


def test_dt_of_is_exact_and_aware() -> None:
    ms = 1772366400123
    value = convert.dt_of(ms)
    assert value == datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC) and value is not None
    assert value.utcoffset() == timedelta(0)
    assert convert.ms_of(value) == ms and convert.dt_of(None) is None


def test_ms_column_accepts_strings_naive_aware_and_nulls() -> None:
    aware = pd.Series(pd.to_datetime(["2026-03-01T12:00:00.0015Z", None], utc=True))
    assert convert.ms_column(aware) == [1772366400001, None]
    naive = pd.Series(pd.to_datetime(["2026-03-01T12:00:00"]))
    assert convert.ms_column(naive) == [1772366400000]
    strings = pd.Series(["2026-03-01T12:00:00Z", "2026-03-01T12:00:00.25+00:00"])
    assert convert.ms_column(strings) == [1772366400000, 1772366400250]
    objects = pd.Series([T0, None], dtype=object)
    assert convert.ms_column(objects) == [1772366400000, None]


def test_reading_columns_fill_missing_nullify_nan_and_keep_the_last_duplicate() -> None:
    rows = pd.DataFrame(
        {
            "sensor_id": ["a", "a", "b"],
            "timestamp": [T0, T0, T0],
            "value": [1.0, 2.0, np.nan],
            "is_anomaly": [True, False, pd.NA],
            "kafka_offset": [1, 2, None],
        }
    )
    cols = convert.reading_columns(rows)
    assert cols["value"] == [2.0, None]
    assert cols["is_anomaly"] == [False, None]
    assert cols["kafka_offset"] == [2, None]
    assert cols["device_id"] == [None, None]
    with pytest.raises(ValueError, match="sensor_id"):
        convert.reading_columns(pd.DataFrame({"timestamp": [T0]}))
    with pytest.raises(ValueError, match="null"):
        convert.reading_columns(pd.DataFrame({"sensor_id": ["a"], "timestamp": [None]}))


def test_rows_repeating_a_key_keep_the_last_one_wherever_they_are() -> None:
    t1 = pd.Timestamp(T0) + pd.Timedelta(microseconds=300)  # same millisecond as T0: the same key
    t2 = pd.Timestamp(T0) + pd.Timedelta(seconds=1)
    rows = pd.DataFrame(
        {"sensor_id": ["a", "b", "a", "a", "b"], "timestamp": [T0, T0, t2, t1, T0], "value": [1.0, 2.0, 3.0, 4.0, 5.0]}
    )
    for sqlite in (False, True):
        cols = convert.reading_columns(rows, sqlite=sqlite)
        assert list(zip(cols["sensor_id"], cols["value"], strict=True)) == [("a", 3.0), ("a", 4.0), ("b", 5.0)]
        assert cols["timestamp"] == [1772366401000, 1772366400000, 1772366400000]


def test_sqlite_shaped_columns_bind_nulls_as_nan_and_booleans_as_ints() -> None:
    rows = pd.DataFrame(
        {
            "sensor_id": ["a", "b"],
            "timestamp": [T0, T0],
            "value": [1.5, np.nan],
            "is_anomaly": [True, None],
            "interpolated": [False, True],
            "kafka_offset": [7, None],
            "anomaly_kind": [None, "spike"],
        }
    )
    cols = convert.reading_columns(rows, sqlite=True)
    null = convert.SQLITE_NULL
    assert cols["interpolated"] == [0, 1] and all(type(v) is int for v in cols["interpolated"])
    assert cols["is_anomaly"][0] == 1 and type(cols["is_anomaly"][0]) is int and cols["is_anomaly"][1] is null
    assert cols["kafka_offset"][0] == 7 and cols["kafka_offset"][1] is null
    assert cols["anomaly_kind"][0] is null and cols["anomaly_kind"][1] == "spike"
    assert cols["value"][0] == 1.5 and np.isnan(cols["value"][1])
    assert cols["device_id"] == [null, null]
    with pytest.raises(ValueError, match="null"):
        convert.reading_columns(pd.DataFrame({"sensor_id": [None], "timestamp": [T0]}), sqlite=True)


def test_nulls_and_booleans_are_stored_as_sql_null_and_integers(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    rows = frame(2).assign(
        value=[1.5, np.nan],
        is_anomaly=pd.array([True, None], dtype=object),
        interpolated=[False, True],
        kafka_offset=[7.0, np.nan],
        anomaly_kind=pd.array([None, "spike"], dtype="str"),
    )
    assert store.upsert_readings(rows) == 2
    conn = sqlite3.connect(tmp_path / "s.db")
    stored = conn.execute(
        "SELECT typeof(value), typeof(is_anomaly), is_anomaly, typeof(interpolated), interpolated, "
        "typeof(kafka_offset), typeof(anomaly_kind), typeof(device_id) FROM sensor_metrics ORDER BY timestamp"
    ).fetchall()
    assert stored == [
        ("real", "integer", 1, "integer", 0, "integer", "null", "null"),
        ("null", "null", None, "integer", 1, "null", "text", "null"),
    ]
    conn.close()
    got = store.readings("dev-0001-temperature")
    assert [(r["value"], r["is_anomaly"], r["interpolated"], r["kafka_offset"], r["anomaly_kind"]) for r in got] == [
        (1.5, True, False, 7, None),
        (None, None, True, None, "spike"),
    ]
    store.close()


def test_alert_values_and_lifecycle_rules() -> None:
    base = {"alert_id": "a", "opened_at": "2026-03-01T12:00:00Z", "status": "closed", "sensor_ids": ("s",)}
    v = convert.alert_values(base)
    assert (v["opened_at"], v["updated_at"], v["closed_at"]) == (1772366400000,) * 3
    assert v["sensor_ids"] == ["s"] and v["top_features"] == [] and v["readings"] == 1
    with pytest.raises(ValueError):
        convert.alert_values({**base, "status": "resolved"})
    with pytest.raises(ValueError):
        convert.alert_values({"alert_id": "x"})
    assert convert.check_lifecycle("a", "open", "acknowledged") is True
    assert convert.check_lifecycle("a", "closed", "resolved") is True
    assert convert.check_lifecycle("a", "acknowledged", "acknowledged") is False
    with pytest.raises(ValueError):
        convert.check_lifecycle("a", "resolved", "acknowledged")
    with pytest.raises(ValueError):
        convert.check_lifecycle("a", "open", "closed")


def test_retention_cutoffs_per_collection() -> None:
    cut = convert.cutoffs(T0, 7.0, {"data_quality": 1.0})
    assert set(cut) == set(COLLECTIONS) - {"alert_events"}
    assert cut["sensor_metrics"] == convert.ms_of(T0 - timedelta(days=7))
    assert cut["data_quality"] == convert.ms_of(T0 - timedelta(days=1))
    with pytest.raises(KeyError):
        convert.cutoffs(T0, 7.0, {"nope": 1.0})


# ---- the SQLite file ----


def test_factory_opens_sqlite_at_the_settings_path(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path / "state")
    store: Store = open_store(settings)
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "state" / "millrace.db" and store.path.is_file()
    store.close()


def _plan(conn: sqlite3.Connection, sql: str, params: tuple[object, ...] = ()) -> str:
    return " | ".join(str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


def test_wal_mode_tables_and_dashboard_indexes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA page_size").fetchone()[0] == sqlite_store.PAGE_SIZE
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert set(COLLECTIONS) <= tables
    indexed = {
        (table, tuple(c[2] for c in conn.execute(f"PRAGMA index_info({index[1]})")))
        for table in COLLECTIONS
        for index in conn.execute(f"PRAGMA index_list({table})")
    }
    for expected in [
        ("sensor_metrics", ("sensor_id", "timestamp")),
        ("sensor_metrics", ("timestamp",)),
        ("anomaly_alerts", ("kind", "updated_at")),
        ("anomaly_alerts", ("status", "updated_at")),
        ("windowed_metrics", ("window_start",)),
        ("windowed_metrics", ("scope", "key", "window_start")),
    ]:
        assert expected in indexed, expected
    # No read filters readings by type and location (windows carry those aggregates): no index to maintain.
    assert not any(table == "sensor_metrics" and cols[0] == "sensor_type" for table, cols in indexed)
    # Every read of sensor_metrics the store makes runs on an index, without a sort.
    page = _plan(
        conn, "SELECT * FROM sensor_metrics WHERE sensor_id = ? AND timestamp >= ? ORDER BY timestamp", ("x", 0)
    )
    assert "USING INDEX sensor_metrics_key (sensor_id=? AND timestamp>?)" in page and "TEMP B-TREE" not in page
    latest = _plan(conn, sqlite_store.LATEST_SQL)  # sorts only its one row per sensor
    assert "SCAN sensor_metrics" not in latest and "SCAN m" not in latest, latest
    retention = _plan(conn, "DELETE FROM sensor_metrics WHERE timestamp < ?", (0,))
    assert "USING COVERING INDEX sensor_metrics_time" in retention or "USING INDEX sensor_metrics_time" in retention
    conn.close()
    store.close()


def test_a_store_file_of_the_earlier_layout_keeps_working(tmp_path: Path) -> None:
    """Files created before the row-id layout keep their clustered table; only the unused index goes."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE sensor_metrics (
            sensor_id TEXT NOT NULL, timestamp INTEGER NOT NULL, device_id TEXT, sensor_type TEXT, location TEXT,
            unit TEXT, value REAL, status TEXT, interpolated INTEGER, score REAL, is_anomaly INTEGER,
            anomaly_kind TEXT, features TEXT, ground_truth TEXT, kafka_partition INTEGER, kafka_offset INTEGER,
            ingested_at INTEGER, PRIMARY KEY (sensor_id, timestamp)
        ) WITHOUT ROWID;
        CREATE INDEX sensor_metrics_time ON sensor_metrics (timestamp);
        CREATE INDEX sensor_metrics_type_location ON sensor_metrics (sensor_type, location, timestamp);
        INSERT INTO sensor_metrics (sensor_id, timestamp, value) VALUES ('dev-0001-temperature', 1772366400000, 7.0);
        """
    )
    old.close()
    store = SqliteStore(path)
    assert store.upsert_readings(frame(3)) == 3  # the first row replaces the stored one
    assert store.upsert_readings(frame(3)) == 3
    assert [r["value"] for r in store.readings("dev-0001-temperature")] == [0.0, 1.0, 2.0]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096  # an existing file keeps its pages
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "sensor_metrics_type_location" not in names and "sensor_metrics_time" in names
    assert "sensor_metrics_key" not in names  # its primary key already is the key
    conn.close()
    store.close()


def test_timestamps_are_stored_as_epoch_milliseconds(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.upsert_readings(frame(2))
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("SELECT timestamp FROM sensor_metrics ORDER BY timestamp").fetchall() == [
        (1772366400000,),
        (1772366401000,),
    ]
    conn.close()
    store.close()


def test_unopenable_path_raises_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable, match="cannot open"):
        SqliteStore(blocker / "sub" / "s.db")


def test_a_held_write_lock_times_out_as_store_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", busy_timeout_s=0.2)
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            store.upsert_readings(frame(1))
        assert store.count("sensor_metrics") == 0  # readers are not blocked by the writer (WAL)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.upsert_readings(frame(1)) == 1
    store.close()


def test_an_invalid_alert_rejects_its_whole_batch(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    bad = frame(3)
    bad["kafka_offset"] = [1, 2, "x"]  # not a number: stored as null, the batch still lands
    assert store.upsert_readings(bad) == 3
    with pytest.raises(ValueError):
        store.upsert_alerts([{"alert_id": "ok", "opened_at": T0}, {"alert_id": "bad", "opened_at": None}])
    assert store.count("anomaly_alerts") == 0
    store.close()


def test_each_thread_uses_its_own_connection(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    seen: list[int] = []

    def grab() -> None:
        seen.append(id(store._conn()))

    threads = [threading.Thread(target=grab) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 3 and id(store._conn()) not in seen
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.upsert_readings(frame(5))
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's handle
        code = 1
        try:
            store.upsert_readings(frame(5, sensor="child-temperature"))
            code = 0 if store.count("sensor_metrics") == 10 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.count("sensor_metrics") == 10
    store.close()


# ---- browsing: query checks, keys, and the SQLite side ----


def test_filters_parse_to_the_kind_of_their_field() -> None:
    from millrace.stores.base import Filter
    from millrace.stores.browse import parse_filter

    assert parse_filter("sensor_metrics", "value>=20.5") == Filter("value", ">=", 20.5)
    assert parse_filter("sensor_metrics", "sensor_id=a=b<c") == Filter("sensor_id", "=", "a=b<c")
    assert parse_filter("sensor_metrics", "kafka_offset!=-3") == Filter("kafka_offset", "!=", -3)
    assert parse_filter("sensor_metrics", "is_anomaly=TRUE") == Filter("is_anomaly", "=", True)
    assert parse_filter("sensor_metrics", "timestamp<2026-03-01T15:00:00+03:00") == Filter("timestamp", "<", T0)
    assert parse_filter("anomaly_alerts", "sensor_ids=x|y") == Filter("sensor_ids", "=", "x|y")
    assert parse_filter("sensor_metrics", "unit=°C") == Filter("unit", "=", "°C")
    for bad, words in [
        ("value", "field<op>value"),
        ("value=>1", "takes a number"),
        ("1value=1", "field<op>value"),
        ("kafka_offset=99999999999999999999", "whole number"),
        ("value=inf", "finite"),
        ("is_anomaly<1", "= and != only"),
        ("sensor_ids>a", "it takes = .contains. only"),
        ("timestamp=tomorrow", "ISO 8601"),
        ("Value=1", "no field 'Value'"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_filter("sensor_metrics" if "sensor_ids" not in bad else "anomaly_alerts", bad)


def test_queries_are_checked_and_default_to_newest_first() -> None:
    from millrace.stores.browse import make_query, sort_keys

    q = make_query("windowed_metrics")
    assert (q.sort, q.descending, q.limit, q.offset) == ("window_start", True, 50, 0)
    assert sort_keys("windowed_metrics", q) == [("window_start", True), ("scope", False), ("key", False)]
    q = make_query("sensor_metrics", sort="sensor_id", time_from="2026-03-01T12:00:00.1239Z")
    assert sort_keys("sensor_metrics", q) == [("sensor_id", False), ("timestamp", False)]
    assert q.time_from == T0 + timedelta(milliseconds=123)  # the stores' precision
    with pytest.raises(KeyError, match="unknown collection 'sensor_latest'"):
        make_query("sensor_latest")
    for kwargs, words in [
        ({"sort": "-nope"}, "no field 'nope'"),
        ({"time_from": T0 + timedelta(seconds=1), "time_to": T0}, "from must not be after to"),
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
        ({"filters": ["value>1"] * 21}, "at most 20 filters"),
    ]:
        with pytest.raises(ValueError, match=words):
            make_query("sensor_metrics", **kwargs)  # type: ignore[arg-type]


def test_row_keys_round_trip_even_with_bars_in_the_free_field() -> None:
    from millrace.stores.browse import key_of, parse_key

    cases = {
        "sensor_metrics": ({"sensor_id": "plant|a", "timestamp": T0}, "plant|a|1772366400000"),
        "anomaly_alerts": ({"alert_id": "al|1"}, "al|1"),
        "alert_events": ({"alert_id": "al|1", "event": "closed"}, "al|1|closed"),
        "windowed_metrics": (
            {"scope": "type_location", "key": "temperature|loc-01", "window_start": T0},
            "type_location|temperature|loc-01|1772366400000",
        ),
        "data_quality": ({"batch_id": 7, "counter": "late|x"}, "7|late|x"),
        "sensor_status": ({"sensor_id": "s|1"}, "s|1"),
    }
    for collection, (row, key) in cases.items():
        assert key_of(collection, row) == key
        parsed = parse_key(collection, key)
        assert parsed == {k: convert.ms_of(v) if isinstance(v, datetime) else v for k, v in row.items()}
    for collection, key in [("sensor_metrics", "nobar"), ("sensor_metrics", "a|12:00"), ("data_quality", "x|y")]:
        with pytest.raises(ValueError, match="is not a key of"):
            parse_key(collection, key)


def test_a_hand_built_query_with_a_foreign_name_never_reaches_sql(tmp_path: Path) -> None:
    from millrace.stores.base import BrowseQuery, Filter

    store = SqliteStore(tmp_path / "s.db")
    store.upsert_readings(frame(3))
    evil = [
        BrowseQuery(filters=(Filter("value = value OR 1", "=", 1),)),
        BrowseQuery(sort="timestamp; DROP TABLE sensor_metrics"),
        BrowseQuery(filters=(Filter("value", "= 1 OR 1 =", 1),)),  # type: ignore[arg-type]
    ]
    for query in evil:
        with pytest.raises(ValueError):
            store.browse("sensor_metrics", query)
        with pytest.raises(ValueError):
            store.scan("sensor_metrics", query)
    with pytest.raises(KeyError):
        store.browse("sensor_metrics --", BrowseQuery())
    assert store.count("sensor_metrics") == 3
    store.close()


def test_a_sqlite_export_reads_one_snapshot(tmp_path: Path) -> None:
    from millrace.stores.browse import make_query

    store = SqliteStore(tmp_path / "s.db")
    store.upsert_readings(frame(1200))
    rows = store.scan("sensor_metrics", make_query("sensor_metrics", sort="timestamp"))
    first = next(rows)
    store.upsert_readings(frame(5, sensor="dev-0009-current"))  # written while the export runs
    store.apply_retention(T0 + timedelta(days=7, seconds=600), 7.0)  # and the first 600 s deleted (5 new too)
    rest = list(rows)
    assert [r["value"] for r in [first, *rest]] == [float(i) for i in range(1200)]
    assert first["_key"] == f"dev-0001-temperature|{convert.ms_of(T0)}"
    assert store.count("sensor_metrics") == 600
    assert store.ensure_ttl(7.0) == {}  # SQLite cannot expire rows by itself
    store.close()


def test_retention_settings_name_the_stores_collections() -> None:
    from millrace.config import RETAINED_COLLECTIONS
    from millrace.errors import ConfigError

    assert set(RETAINED_COLLECTIONS) == set(convert.RETENTION_FIELDS) - {"alert_events"}
    s = load_settings(store={"retention": {"sensor_metrics": 2.5}, "retention_interval_s": 60})
    assert s.store.retention == {"sensor_metrics": 2.5} and s.store.retention_interval_s == 60.0
    with pytest.raises(ConfigError, match=r"store.retention: .*no retention for 'alert_events'"):
        load_settings(store={"retention": {"alert_events": 1.0}})
    with pytest.raises(ConfigError, match="more than 0 days"):
        load_settings(store={"retention": {"data_quality": 0}})
    with pytest.raises(ConfigError, match="store.retention_interval_s"):
        load_settings(store={"retention_interval_s": -1})


def test_mongodb_ttl_index_takes_the_place_of_the_plain_index() -> None:
    """The commands _ttl_index sends for each state a collection's indexes can be in (a recording stand-in for
    a pymongo collection; the real server's answers are tested in tests/integration/test_retention.py)."""
    from millrace.stores.mongo import _ttl_index

    class Recorder:
        name = "sensor_metrics"

        def __init__(self, indexes: list[dict[str, object]]) -> None:
            self.indexes = indexes
            self.calls: list[tuple[object, ...]] = []
            self.database = self

        def list_indexes(self) -> list[dict[str, object]]:
            return self.indexes

        def command(self, cmd: dict[str, object]) -> None:
            self.calls.append(("command", cmd))

        def drop_index(self, name: str) -> None:
            self.calls.append(("drop_index", name))

        def create_index(self, keys: list[tuple[str, int]], **options: object) -> None:
            self.calls.append(("create_index", keys, options))

    ident = {"key": {"_id": 1}, "name": "_id_"}
    plain = {"key": {"timestamp": 1}, "name": "timestamp_1"}
    create = ("create_index", [("timestamp", 1)], {"expireAfterSeconds": 600})
    cases = [
        ([ident], [create]),
        ([ident, plain], [("drop_index", "timestamp_1"), create]),
        ([ident, {**plain, "expireAfterSeconds": 600}], []),
        (
            [ident, {**plain, "expireAfterSeconds": 60}],
            [("command", {"collMod": "sensor_metrics", "index": {"name": "timestamp_1", "expireAfterSeconds": 600}})],
        ),
        ([ident, {"key": {"timestamp": -1}, "name": "timestamp_-1"}], [create]),  # another key: left alone
    ]
    for indexes, expected in cases:
        coll = Recorder(indexes)
        _ttl_index(coll, "timestamp", 600)
        assert coll.calls == expected, indexes
