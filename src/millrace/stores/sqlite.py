"""The embedded store: one SQLite file in WAL mode, so the dashboard reads while the job writes.

Tables are named as the collections in :mod:`millrace.stores.base`. Times are INTEGER epoch milliseconds
(UTC), lists are JSON text. Every write is ``INSERT ... ON CONFLICT DO UPDATE`` on the natural key inside a
``BEGIN IMMEDIATE`` transaction (the write lock is taken up front, so concurrent writers queue instead of failing
on a lock upgrade; :meth:`SqliteStore._begin` waits for it). Each thread and each process gets its own connection.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from millrace.errors import StoreUnavailable
from millrace.records import WINDOW_COLUMNS
from millrace.stores import browse as browsing
from millrace.stores import convert
from millrace.stores.base import (
    ALERT_FIELDS,
    ANALYTICS_FIELDS,
    FIELD_KINDS,
    KEYS,
    READING_COLUMNS,
    TIME_FIELDS,
    AlertLifecycle,
    BrowsePage,
    BrowseQuery,
)

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS sensor_metrics (
    sensor_id TEXT NOT NULL, timestamp INTEGER NOT NULL, device_id TEXT, sensor_type TEXT, location TEXT,
    unit TEXT, value REAL, status TEXT, interpolated INTEGER, score REAL, is_anomaly INTEGER,
    anomaly_kind TEXT, features TEXT, ground_truth TEXT, kafka_partition INTEGER, kafka_offset INTEGER,
    ingested_at INTEGER
);
{key_index}
CREATE INDEX IF NOT EXISTS sensor_metrics_time ON sensor_metrics (timestamp);
DROP INDEX IF EXISTS sensor_metrics_type_location;

CREATE TABLE IF NOT EXISTS windowed_metrics (
    scope TEXT NOT NULL, key TEXT NOT NULL, window_start INTEGER NOT NULL, sensor_type TEXT, location TEXT,
    window_end INTEGER, count INTEGER, mean REAL, min REAL, max REAL, stddev REAL, anomaly_count INTEGER,
    PRIMARY KEY (scope, key, window_start)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS windowed_metrics_start ON windowed_metrics (window_start);

CREATE TABLE IF NOT EXISTS anomaly_alerts (
    alert_id TEXT PRIMARY KEY, device_id TEXT, sensor_ids TEXT, kind TEXT, severity TEXT, score REAL,
    reason TEXT, location TEXT, opened_at INTEGER, updated_at INTEGER, closed_at INTEGER,
    status TEXT NOT NULL, readings INTEGER, top_features TEXT, recommendation TEXT, recommendation_id TEXT
);
CREATE INDEX IF NOT EXISTS anomaly_alerts_kind_time ON anomaly_alerts (kind, updated_at);
CREATE INDEX IF NOT EXISTS anomaly_alerts_time ON anomaly_alerts (updated_at);
CREATE INDEX IF NOT EXISTS anomaly_alerts_status ON anomaly_alerts (status, updated_at);

CREATE TABLE IF NOT EXISTS alert_events (
    alert_id TEXT NOT NULL, event TEXT NOT NULL, status TEXT NOT NULL, by TEXT, at INTEGER NOT NULL,
    note TEXT,
    PRIMARY KEY (alert_id, event)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS data_quality (
    batch_id INTEGER NOT NULL, counter TEXT NOT NULL, value INTEGER NOT NULL, recorded_at INTEGER NOT NULL,
    PRIMARY KEY (batch_id, counter)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS data_quality_time ON data_quality (recorded_at);

CREATE TABLE IF NOT EXISTS sensor_status (
    sensor_id TEXT PRIMARY KEY, device_id TEXT, sensor_type TEXT, location TEXT, last_event_time INTEGER,
    state TEXT, expected_interval_s REAL, updated_at INTEGER
);
CREATE INDEX IF NOT EXISTS sensor_status_state ON sensor_status (state);

CREATE TABLE IF NOT EXISTS shop_analytics (
    metric TEXT NOT NULL, computed_at INTEGER NOT NULL, dimensions TEXT NOT NULL, window_start INTEGER,
    window_end INTEGER, value REAL,
    PRIMARY KEY (metric, computed_at, dimensions)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS shop_analytics_time ON shop_analytics (computed_at);
"""
# The key of a row-id sensor_metrics. A file of the earlier layout (a WITHOUT ROWID table whose primary key is
# this) does not get it: it would be a second copy of the key to maintain.
KEY_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS sensor_metrics_key ON sensor_metrics (sensor_id, timestamp);"

# Pages of a new store file. Larger pages than SQLite's 4 KiB mean fewer page splits and cell moves per
# inserted reading (rows are ~300 bytes with their features JSON): ~15 % less CPU per upsert here. An
# existing file keeps the page size it was created with (WAL mode cannot change it).
PAGE_SIZE = 16384

JOB_ACTOR = "millrace"  # the "by" of lifecycle events the job causes (opened, closed)


def _upsert_sql(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    cols = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    conflict = ", ".join(key)
    return f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT ({conflict}) DO UPDATE SET {updates}"


READINGS_SQL = _upsert_sql("sensor_metrics", READING_COLUMNS, ("sensor_id", "timestamp"))
# Readings per upsert statement. Within a statement SQLite keeps its cursors from row to row, so a reading that
# follows one of a sensor of the same device (the stateful step's order) finds its place in the key index next
# to the previous one; a statement per row starts each from the root, plus sqlite3's work per statement (reset,
# bind, step). A few hundred rows per statement take a quarter off the statements' CPU for the step's readings
# (readings in time order across all sensors gain nothing). Fewer when the connection allows fewer parameters.
READINGS_PER_STATEMENT = 500
WINDOWS_SQL = _upsert_sql("windowed_metrics", WINDOW_COLUMNS, ("scope", "key", "window_start"))
STATUS_COLUMNS = (
    "sensor_id", "device_id", "sensor_type", "location", "last_event_time", "state", "expected_interval_s",
    "updated_at",
)  # fmt: skip
# Newest report wins: replaying an older micro-batch does not overwrite a sensor's newer status.
STATUS_SQL = _upsert_sql("sensor_status", STATUS_COLUMNS, ("sensor_id",)) + (
    " WHERE excluded.updated_at >= sensor_status.updated_at"
)
# The job's fields replace the stored ones; the status only moves forward (an operator's acknowledged or
# resolved survives, a job-side close is kept in closed_at), closed_at once set stays set.
ALERT_JOB_FIELDS = tuple(f for f in ALERT_FIELDS if f not in ("alert_id", "status", "closed_at", "opened_at"))
ALERTS_SQL = (
    f"INSERT INTO anomaly_alerts ({', '.join(ALERT_FIELDS)}) VALUES ({', '.join('?' for _ in ALERT_FIELDS)}) "
    "ON CONFLICT (alert_id) DO UPDATE SET "
    + ", ".join(f"{f} = excluded.{f}" for f in ALERT_JOB_FIELDS)
    + ", opened_at = min(opened_at, excluded.opened_at)"
    + ", closed_at = coalesce(closed_at, excluded.closed_at)"
    + ", status = CASE WHEN status = 'open' AND excluded.status = 'closed' THEN 'closed' ELSE status END"
)
EVENT_SQL = (
    "INSERT INTO alert_events (alert_id, event, status, by, at, note) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (alert_id, event) DO NOTHING"
)
ANALYTICS_SQL = _upsert_sql("shop_analytics", ANALYTICS_FIELDS, ("metric", "computed_at", "dimensions"))
# The latest run of each metric: the primary key's (metric, computed_at) prefix answers the max per metric.
LATEST_ANALYTICS_SQL = """
SELECT a.* FROM shop_analytics a
  JOIN (SELECT metric, max(computed_at) AS computed_at FROM shop_analytics GROUP BY metric) m
    ON a.metric = m.metric AND a.computed_at = m.computed_at
"""
LATEST_SQL = """
WITH RECURSIVE ids(id) AS (
    SELECT min(sensor_id) FROM sensor_metrics
    UNION ALL
    SELECT (SELECT min(sensor_id) FROM sensor_metrics WHERE sensor_id > ids.id)
      FROM ids WHERE ids.id IS NOT NULL
)
SELECT m.* FROM ids JOIN sensor_metrics m ON m.sensor_id = ids.id
 AND m.timestamp = (SELECT max(timestamp) FROM sensor_metrics WHERE sensor_id = ids.id)
ORDER BY m.sensor_id
"""


class SqliteStore:
    """The Store protocol on one SQLite file. Safe to share between threads; each uses its own connection.

    After a fork the child opens fresh connections (an inherited SQLite handle must not be used).
    """

    def __init__(self, path: Path | str, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._schema_ready = False
        self._conn()  # fail at construction when the file cannot be opened

    # ---- connections ----
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # takes effect only while the file is empty
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; WAL keeps it consistent
            conn.execute("PRAGMA foreign_keys = OFF")
            conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: keeps the indexes of a busy day in memory
            if not self._schema_ready:
                conn.executescript(SCHEMA.format(key_index="" if _clustered_readings(conn) else KEY_INDEX))
                _add_alert_columns(conn)
                self._schema_ready = True
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open the SQLite store {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        self._local.conn = conn
        self._local.pid = os.getpid()
        with self._lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        t0 = time.perf_counter()
        self._begin(conn)
        t1 = time.perf_counter()
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            t2 = time.perf_counter()
            try:
                conn.execute("COMMIT")  # in WAL mode, now and then with a checkpoint of the WAL (and its fsync)
            except sqlite3.OperationalError as exc:
                conn.execute("ROLLBACK")
                raise StoreUnavailable(f"commit to the SQLite store {self.path} failed: {exc}") from exc
            # This thread's last write, in seconds: waiting for the lock, writing, committing (timing logs).
            self._local.last_write = (t1 - t0, t2 - t1, time.perf_counter() - t2)

    def last_write_s(self) -> tuple[float, float, float] | None:
        """(lock wait, statements, commit) seconds of this thread's last write transaction, if any."""
        return getattr(self._local, "last_write", None)

    def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, waiting up to the busy timeout for another connection's write to end.

        SQLite's own busy handler sleeps in growing steps (up to 100 ms each), so a writer queued behind
        another one's 0.2 s upsert typically starts 50-100 ms after the lock was released; with several
        processes writing each micro-batch (the job's Python workers, its driver) those idle gaps add up.
        Retrying every millisecond wakes the waiter within about a millisecond, at the cost of a few hundred
        cheap lock attempts per second of waiting."""
        conn.execute("PRAGMA busy_timeout = 0")  # a busy lock raises at once instead of SQLite's sleeps
        try:
            deadline = time.monotonic() + self.busy_timeout_s
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or time.monotonic() >= deadline:
                        raise StoreUnavailable(f"the SQLite store {self.path} is locked or unwritable: {exc}") from exc
                time.sleep(0.001)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"reading the SQLite store {self.path} failed: {exc}") from exc

    # ---- writes ----
    def upsert_readings(self, rows: pd.DataFrame) -> int:
        if rows.empty:
            return 0
        values = convert.reading_arrays(rows, sqlite=True)  # nulls as NaN, booleans as 0/1: see convert
        per_statement = _readings_per_statement(self._conn())
        # The parameters built before the write lock is taken: other processes wait while it is held.
        many, rest = _reading_params(values, per_statement)
        with self._write() as conn:
            conn.executemany(_readings_sql(per_statement), many)
            conn.executemany(READINGS_SQL, rest)
        return len(values["sensor_id"])

    def upsert_windows(self, rows: pd.DataFrame) -> int:
        if rows.empty:
            return 0
        cols = convert.window_columns(rows, sqlite=True)
        with self._write() as conn:
            conn.executemany(WINDOWS_SQL, zip(*(cols[c] for c in WINDOW_COLUMNS), strict=True))
        return len(cols["scope"])

    def upsert_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> int:
        values = {v["alert_id"]: v for v in map(convert.alert_values, alerts)}  # last update of an id wins
        if not values:
            return 0
        params = []
        events = []
        for v in values.values():
            row = dict(v, sensor_ids=json.dumps(v["sensor_ids"]), top_features=json.dumps(v["top_features"]))
            params.append(tuple(row[f] for f in ALERT_FIELDS))
            events.append((v["alert_id"], "opened", "open", JOB_ACTOR, v["opened_at"], ""))
            if v["status"] == "closed":
                at = v["closed_at"] if v["closed_at"] is not None else v["updated_at"]
                events.append((v["alert_id"], "closed", "closed", JOB_ACTOR, at, ""))
        with self._write() as conn:
            conn.executemany(ALERTS_SQL, params)
            conn.executemany(EVENT_SQL, events)
        return len(params)

    def record_quality(self, batch_id: int, counters: Mapping[str, int]) -> None:
        now = convert.ms_of(datetime.now(UTC))
        params = [(int(batch_id), str(name), int(value), now) for name, value in counters.items()]
        with self._write() as conn:
            conn.execute("DELETE FROM data_quality WHERE batch_id = ?", (int(batch_id),))
            conn.executemany(
                "INSERT INTO data_quality (batch_id, counter, value, recorded_at) VALUES (?, ?, ?, ?)", params
            )

    def upsert_sensor_status(self, rows: Sequence[Mapping[str, Any]]) -> int:
        values = {v["sensor_id"]: v for v in map(convert.status_values, rows)}
        if not values:
            return 0
        params = [tuple(v[c] for c in STATUS_COLUMNS) for v in values.values()]
        with self._write() as conn:
            conn.executemany(STATUS_SQL, params)
        return len(params)

    def set_alert_status(self, alert_id: str, status: AlertLifecycle, *, by: str, note: str = "") -> Mapping[str, Any]:
        with self._write() as conn:
            row = conn.execute("SELECT status FROM anomaly_alerts WHERE alert_id = ?", (alert_id,)).fetchone()
            if row is None:
                raise KeyError(alert_id)
            if convert.check_lifecycle(alert_id, row["status"], status):
                now = convert.ms_of(datetime.now(UTC))
                conn.execute("UPDATE anomaly_alerts SET status = ? WHERE alert_id = ?", (status, alert_id))
                conn.execute(EVENT_SQL, (alert_id, status, status, by, now, note))
        found = self.alert(alert_id)
        assert found is not None
        return found

    # ---- reads ----
    def count(self, collection: str) -> int:
        convert.check_collection(collection)
        return int(self._read(f"SELECT count(*) FROM {collection}")[0][0])

    def latest_readings(self) -> list[dict[str, Any]]:
        return [_reading(r) for r in self._read(LATEST_SQL)]

    def reading_positions(self) -> list[tuple[int, int]]:
        sql = "SELECT kafka_partition, kafka_offset FROM sensor_metrics WHERE kafka_offset IS NOT NULL"
        try:  # plain tuples: no Row objects for what may be millions of rows
            cursor = self._conn().execute(sql)
            cursor.row_factory = None
            return [(int(p), int(o)) for p, o in cursor.fetchall()]
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"reading the SQLite store {self.path} failed: {exc}") from exc

    def readings(
        self,
        sensor_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        where, params = ["sensor_id = ?"], [sensor_id]
        _time_range(where, params, "timestamp", start, end)
        sql = f"SELECT * FROM sensor_metrics WHERE {' AND '.join(where)} ORDER BY timestamp LIMIT ? OFFSET ?"
        return [_reading(r) for r in self._read(sql, [*params, limit, offset])]

    def windows(
        self,
        *,
        scope: str | None = None,
        key: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("scope", scope), ("key", key)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        _time_range(where, params, "window_start", start, end)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT * FROM windowed_metrics {clause} ORDER BY window_start, scope, key LIMIT ? OFFSET ?"
        return [_window(r) for r in self._read(sql, [*params, limit, offset])]

    def alerts(
        self,
        *,
        severity: str | None = None,
        kind: str | None = None,
        sensor_id: str | None = None,
        location: str | None = None,
        status: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("severity", severity),
            ("kind", kind),
            ("location", location),
            ("status", status),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if sensor_id is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(anomaly_alerts.sensor_ids) WHERE value = ?)")
            params.append(sensor_id)
        # An episode [opened_at, updated_at] is selected when it overlaps [start, end).
        if start is not None:
            where.append("updated_at >= ?")
            params.append(convert.ms_of(start))
        if end is not None:
            where.append("opened_at < ?")
            params.append(convert.ms_of(end))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT * FROM anomaly_alerts {clause} ORDER BY updated_at DESC, alert_id LIMIT ? OFFSET ?"
        return [_alert(r) for r in self._read(sql, [*params, limit, offset])]

    def alert(self, alert_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT * FROM anomaly_alerts WHERE alert_id = ?", (alert_id,))
        return _alert(rows[0]) if rows else None

    def alert_events(self, alert_id: str) -> list[dict[str, Any]]:
        rows = self._read("SELECT * FROM alert_events WHERE alert_id = ?", (alert_id,))
        return convert.order_events([_event(r) for r in rows])

    def quality_totals(self) -> dict[str, int]:
        rows = self._read("SELECT counter, sum(value) FROM data_quality GROUP BY counter ORDER BY counter")
        return {r[0]: int(r[1]) for r in rows}

    def sensor_status(self) -> list[dict[str, Any]]:
        rows = self._read("SELECT * FROM sensor_status ORDER BY sensor_id")
        return [_status(r) for r in rows]

    # ---- shop analytics ----
    def upsert_analytics(self, rows: Sequence[Mapping[str, Any]]) -> int:
        values = {(v["metric"], v["computed_at"], v["dimensions"]): v for v in map(convert.analytics_values, rows)}
        if not values:
            return 0
        with self._write() as conn:
            conn.executemany(ANALYTICS_SQL, [tuple(v[f] for f in ANALYTICS_FIELDS) for v in values.values()])
        return len(values)

    def latest_analytics(self, metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
        sql, params = LATEST_ANALYTICS_SQL, list(metrics or [])
        if metrics is not None:
            sql += f" WHERE a.metric IN ({', '.join('?' for _ in params)})" if params else " WHERE 0"
        rows = self._read(sql + " ORDER BY a.metric, a.window_start, a.dimensions", params)
        return [convert.analytics_row(_analytics(r)) for r in rows]

    # ---- browsing ----
    def collections(self) -> dict[str, int]:
        return {name: self.count(name) for name in FIELD_KINDS}

    def browse(self, collection: str, query: BrowseQuery) -> BrowsePage:
        query = browsing.validate(collection, query)
        where, params = _browse_where(collection, query)
        order = _browse_order(collection, query)
        sql = f"SELECT * FROM {collection}{where} ORDER BY {order} LIMIT ? OFFSET ?"
        rows = self._read(sql, [*params, query.limit, query.offset])
        total = int(self._read(f"SELECT count(*) FROM {collection}{where}", params)[0][0])
        return BrowsePage([_browsed(collection, r) for r in rows], total)

    def scan(self, collection: str, query: BrowseQuery) -> Iterator[dict[str, Any]]:
        query = browsing.validate(collection, query)  # errors now, not at the first row
        where, params = _browse_where(collection, query)
        sql = f"SELECT * FROM {collection}{where} ORDER BY {_browse_order(collection, query)}"
        return self._scan(collection, sql, params)

    def _scan(self, collection: str, sql: str, params: Sequence[Any]) -> Iterator[dict[str, Any]]:
        # A connection of its own, read-only, in one read transaction: the export is one snapshot of the
        # file however long the client takes, and the thread-local connections stay free for other calls
        # (a streamed response advances this generator from whichever worker thread is at hand).
        try:
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the SQLite store {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("BEGIN")
            cursor = conn.execute(sql, params)
            while batch := cursor.fetchmany(500):
                for row in batch:
                    yield _browsed(collection, row)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"reading the SQLite store {self.path} failed: {exc}") from exc
        finally:
            conn.close()

    def document(self, collection: str, key: str) -> dict[str, Any] | None:
        fields = browsing.parse_key(collection, key)  # times as epoch ms, as stored
        where = " AND ".join(f'"{name}" = ?' for name in fields)
        rows = self._read(f"SELECT * FROM {collection} WHERE {where}", list(fields.values()))
        return _browsed(collection, rows[0]) if rows else None

    # ---- housekeeping ----
    def ensure_ttl(self, retention_days: float, *, per_collection: Mapping[str, float] | None = None) -> dict[str, int]:
        convert.cutoffs(datetime.now(UTC), retention_days, per_collection)  # the same checks as apply_retention
        return {}  # SQLite cannot expire rows by itself: apply_retention does it

    def apply_retention(
        self, now: datetime, retention_days: float, *, per_collection: Mapping[str, float] | None = None
    ) -> dict[str, int]:
        limits = convert.cutoffs(now, retention_days, per_collection)
        deleted: dict[str, int] = {}
        with self._write() as conn:
            for name, cutoff in limits.items():
                field = convert.RETENTION_FIELDS[name]
                cur = conn.execute(f"DELETE FROM {name} WHERE {field} < ?", (cutoff,))
                deleted[name] = cur.rowcount
            cur = conn.execute("DELETE FROM alert_events WHERE alert_id NOT IN (SELECT alert_id FROM anomaly_alerts)")
            deleted["alert_events"] = cur.rowcount
        return deleted

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            # A connection of another thread may be mid-use; then it goes with its thread.
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY or "locked" in str(exc)


def _readings_per_statement(conn: sqlite3.Connection) -> int:
    most = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(READING_COLUMNS)
    return max(1, min(READINGS_PER_STATEMENT, most))


@functools.cache
def _readings_sql(rows: int) -> str:
    """READINGS_SQL for ``rows`` readings at a time, their values one row after the other."""
    one = "(" + ", ".join("?" for _ in READING_COLUMNS) + ")"
    head, upsert = READINGS_SQL.split(f" VALUES {one} ")
    return f"{head} VALUES {', '.join([one] * rows)} {upsert}"


def _reading_params(values: Mapping[str, np.ndarray], per_statement: int) -> tuple[list[Any], list[Any]]:
    """The readings' parameters, columns in READING_COLUMNS order: a list of ``per_statement`` rows' values
    for each whole statement of _readings_sql, then one list per row left over (for READINGS_SQL).

    Filled from the columns' arrays into object arrays of a few statements' rows at a time (small enough to
    stay in the CPU's cache while they are filled column by column): no Python list or tuple per row.
    """
    columns = [values[name] for name in READING_COLUMNS]
    n = len(columns[0])
    whole = n - n % per_statement
    block = per_statement * 4
    many: list[Any] = []
    for start in range(0, whole, block):
        rows = _rows(columns, start, min(start + block, whole))
        many += rows.reshape(-1, per_statement * len(columns)).tolist()
    return many, _rows(columns, whole, n).tolist()


def _rows(columns: Sequence[np.ndarray], start: int, stop: int) -> np.ndarray:
    """Rows ``start`` to ``stop`` of ``columns`` as a 2-D object array, row by row."""
    rows = np.empty((stop - start, len(columns)), dtype=object)
    for j, column in enumerate(columns):
        rows[:, j] = column[start:stop]
    return rows


def _clustered_readings(conn: sqlite3.Connection) -> bool:
    """Whether the file has sensor_metrics in the earlier layout (WITHOUT ROWID, clustered on its key)."""
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'sensor_metrics'").fetchone()
    return row is not None and "WITHOUT ROWID" in row[0].upper()


def _time_range(where: list[str], params: list[Any], column: str, start: datetime | None, end: datetime | None) -> None:
    """[start, end): start inclusive, end exclusive."""
    if start is not None:
        where.append(f"{column} >= ?")
        params.append(convert.ms_of(start))
    if end is not None:
        where.append(f"{column} < ?")
        params.append(convert.ms_of(end))


def _browse_where(collection: str, query: BrowseQuery) -> tuple[str, list[Any]]:
    """The WHERE clause of a validated query (names from FIELD_KINDS only, quoted) and its bound values."""
    kinds = FIELD_KINDS[collection]
    where: list[str] = []
    params: list[Any] = []
    for flt in query.filters:
        column = f'"{flt.field}"'
        kind = kinds[flt.field]
        if kind == "list":  # JSON text: the list contains the value
            where.append(f"EXISTS (SELECT 1 FROM json_each({column}) WHERE value = ?)")
        elif flt.op == "!=":
            where.append(f"{column} IS NOT ?")  # null-safe: a null field differs from any value (as MongoDB)
        else:
            where.append(f"{column} {flt.op} ?")
        params.append(_bound(kind, flt.value))
    _time_range(where, params, f'"{TIME_FIELDS[collection]}"', query.time_from, query.time_to)
    return (f" WHERE {' AND '.join(where)}" if where else ""), params


def _bound(kind: str, value: Any) -> Any:
    if kind == "time":
        return convert.ms_of(value)
    if kind == "bool":
        return int(bool(value))
    return value


def _browse_order(collection: str, query: BrowseQuery) -> str:
    return ", ".join(f'"{f}" {"DESC" if desc else "ASC"}' for f, desc in browsing.sort_keys(collection, query))


def _browsed(collection: str, row: sqlite3.Row) -> dict[str, Any]:
    out = SHAPES[collection](row)
    out["_key"] = browsing.key_of(collection, out)
    return out


def _quality(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "batch_id": row["batch_id"],
        "counter": row["counter"],
        "value": row["value"],
        "recorded_at": convert.dt_of(row["recorded_at"]),
    }


def _reading(row: sqlite3.Row) -> dict[str, Any]:
    out = {c: row[c] for c in READING_COLUMNS}
    for c in convert.READING_TIME_COLUMNS:
        out[c] = convert.dt_of(out[c])
    for c in convert.READING_BOOL_COLUMNS:
        out[c] = None if out[c] is None else bool(out[c])
    return out


def _window(row: sqlite3.Row) -> dict[str, Any]:
    out = {c: row[c] for c in WINDOW_COLUMNS}
    for c in convert.WINDOW_TIME_COLUMNS:
        out[c] = convert.dt_of(out[c])
    return out


def _add_alert_columns(conn: sqlite3.Connection) -> None:
    """Columns added to anomaly_alerts since a file was created (the recommendation), added to an older file."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(anomaly_alerts)")}
    for name in ("recommendation", "recommendation_id"):
        if name not in have:
            try:
                conn.execute(f"ALTER TABLE anomaly_alerts ADD COLUMN {name} TEXT")
            except sqlite3.OperationalError as exc:  # another process (a Spark worker) added it meanwhile
                if "duplicate column" not in str(exc):
                    raise


def _alert(row: sqlite3.Row) -> dict[str, Any]:
    out = {f: row[f] for f in ALERT_FIELDS}
    for f in convert.ALERT_TIME_FIELDS:
        out[f] = convert.dt_of(out[f])
    out["sensor_ids"] = json.loads(out["sensor_ids"] or "[]")
    out["top_features"] = json.loads(out["top_features"] or "[]")
    return out


def _event(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "alert_id": row["alert_id"],
        "event": row["event"],
        "status": row["status"],
        "by": row["by"],
        "at": convert.dt_of(row["at"]),
        "note": row["note"] or "",
    }


def _status(row: sqlite3.Row) -> dict[str, Any]:
    out = {c: row[c] for c in STATUS_COLUMNS}
    out["last_event_time"] = convert.dt_of(out["last_event_time"])
    out["updated_at"] = convert.dt_of(out["updated_at"])
    return out


def _analytics(row: sqlite3.Row) -> dict[str, Any]:
    out = {f: row[f] for f in ANALYTICS_FIELDS}
    for f in ("computed_at", "window_start", "window_end"):
        out[f] = convert.dt_of(out[f])
    return out


SHAPES: dict[str, Callable[[sqlite3.Row], dict[str, Any]]] = {
    "sensor_metrics": _reading,
    "anomaly_alerts": _alert,
    "alert_events": _event,
    "windowed_metrics": _window,
    "data_quality": _quality,
    "sensor_status": _status,
    "shop_analytics": _analytics,
}
assert set(SHAPES) == set(KEYS), "every collection has a row shape"
