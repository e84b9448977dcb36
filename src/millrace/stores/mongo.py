"""The MongoDB store: the seed's collections and indexes, written with bulk upserts on natural keys.

Works against MongoDB and against FerretDB 1.x (which millrace runs locally when no ``mongod`` exists), so
it keeps to commands both implement: no ``$first``/``$replaceRoot`` aggregations, no pipeline updates.
Each document's ``_id`` is its natural key (``sensor_id|epoch_ms`` for readings), so an upsert is a write by
``_id``; unique indexes on the natural-key fields guard the same invariant for other writers. Times are BSON
dates (millisecond precision) and come back as aware UTC datetimes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import pandas as pd

from millrace.errors import StoreUnavailable, missing_extra
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

try:
    import pymongo
    from pymongo import ASCENDING, DESCENDING, UpdateOne
    from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure, PyMongoError
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise missing_extra("pymongo", "mongodb") from exc

log = logging.getLogger(__name__)

T = TypeVar("T")
DUPLICATE_KEY = 11000
JOB_ACTOR = "millrace"
BATCH = 5000  # operations per bulk_write: keeps each command well under the 48 MB message limit
# FerretDB 1.x keeps a pooled SQLite connection open for every matched update until the whole command ends
# (100 connections at most), so a command with ~100 updates of existing documents deadlocks: send less.
FERRETDB_BATCH = 50
LATEST = "sensor_latest"  # internal: sensor_id -> newest event time (epoch ms) stored in sensor_metrics

INDEXES: dict[str, list[tuple[list[tuple[str, int]], bool]]] = {
    "sensor_metrics": [
        ([("sensor_id", ASCENDING), ("timestamp", ASCENDING)], True),
        ([("timestamp", ASCENDING)], False),
        ([("sensor_type", ASCENDING), ("location", ASCENDING)], False),
    ],
    "anomaly_alerts": [
        ([("alert_id", ASCENDING)], True),
        ([("kind", ASCENDING), ("updated_at", DESCENDING)], False),
        ([("updated_at", DESCENDING)], False),
        ([("status", ASCENDING)], False),
    ],
    "alert_events": [([("alert_id", ASCENDING), ("event", ASCENDING)], True)],
    "windowed_metrics": [
        ([("scope", ASCENDING), ("key", ASCENDING), ("window_start", ASCENDING)], True),
        ([("window_start", ASCENDING)], False),
    ],
    "data_quality": [
        ([("batch_id", ASCENDING), ("counter", ASCENDING)], True),
        ([("recorded_at", ASCENDING)], False),
    ],
    "sensor_status": [([("sensor_id", ASCENDING)], True), ([("state", ASCENDING)], False)],
    "shop_analytics": [
        ([("metric", ASCENDING), ("computed_at", ASCENDING), ("dimensions", ASCENDING)], True),
        ([("computed_at", ASCENDING)], False),
    ],
}
STATUS_FIELDS = (
    "sensor_id", "device_id", "sensor_type", "location", "last_event_time", "state", "expected_interval_s",
    "updated_at",
)  # fmt: skip
ALERT_JOB_FIELDS = tuple(f for f in ALERT_FIELDS if f not in ("alert_id", "status", "closed_at", "opened_at"))


class MongoStore:
    """The Store protocol on a MongoDB database. Thread-safe (one client per process, reopened after fork)."""

    def __init__(self, uri: str, database: str = "millrace", *, timeout_s: float = 10.0) -> None:
        self.uri = uri
        self.database = database
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._client: pymongo.MongoClient | None = None
        self._pid = 0
        self._indexed = False
        self._batch = BATCH
        self._ferretdb = False
        self._db()  # fail at construction when no server answers

    # ---- connection ----
    def _db(self) -> Any:
        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    ms = int(self.timeout_s * 1000)
                    client: pymongo.MongoClient = pymongo.MongoClient(
                        self.uri, tz_aware=True, tzinfo=UTC, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms
                    )
                    try:
                        info = client.admin.command("buildInfo")
                        self._ferretdb = "ferretdbVersion" in info
                        self._batch = FERRETDB_BATCH if self._ferretdb else BATCH
                        if not self._indexed:
                            _ensure_indexes(client[self.database])
                            self._indexed = True
                    except PyMongoError as exc:
                        client.close()
                        raise StoreUnavailable(f"cannot reach MongoDB at {self.uri}: {exc}") from exc
                    self._client, self._pid = client, os.getpid()
        assert self._client is not None
        return self._client[self.database]

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except ConnectionFailure as exc:
            raise StoreUnavailable(f"MongoDB at {self.uri} is unreachable while {what}: {exc}") from exc

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        with self._guard(what):
            return fn(self._db())

    def _bulk(self, collection: str, ops: list[Any], *, ordered: bool = True, ignore_duplicates: bool = False) -> None:
        db = self._db()
        for i in range(0, len(ops), self._batch):
            chunk = ops[i : i + self._batch]
            with self._guard(f"writing {collection}"):
                self._bulk_chunk(db[collection], chunk, ordered=ordered)

    @staticmethod
    def _bulk_chunk(coll: Any, ops: list[Any], *, ordered: bool, attempts: int = 5) -> None:
        """Write one chunk, retrying when concurrent upserts of one new key race to insert it.

        MongoDB retries such upserts itself; FerretDB reports a duplicate key (and leaves ``nModified`` out
        of the reply, which pymongo's bulk code trips over with a KeyError). Every operation here is an
        idempotent upsert or conditional update, so writing the chunk again is safe.
        """
        for attempt in range(1, attempts + 1):
            try:
                coll.bulk_write(ops, ordered=ordered)
                return
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if attempt == attempts or not all(e.get("code") == DUPLICATE_KEY for e in errors):
                    raise
            except KeyError as exc:
                if exc.args != ("nModified",):
                    raise
                if attempt == attempts:
                    raise StoreUnavailable(f"MongoDB rejected a write to {coll.name} {attempts} times") from exc
            log.debug("retrying a bulk write to %s after a concurrent insert of the same key", coll.name)

    # ---- writes ----
    def upsert_readings(self, rows: pd.DataFrame) -> int:
        if rows.empty:
            return 0
        cols = convert.reading_columns(rows)
        ms = list(cols["timestamp"])
        for name in convert.READING_TIME_COLUMNS:
            cols[name] = [convert.dt_of(v) for v in cols[name]]
        ops = [
            UpdateOne({"_id": f"{doc['sensor_id']}|{key_ms}"}, {"$set": doc}, upsert=True)
            for doc, key_ms in zip(_records(cols, READING_COLUMNS), ms, strict=True)
        ]
        self._bulk("sensor_metrics", ops, ordered=False)
        # The newest event time per sensor, moved only forward ($max): latest_readings() reads these
        # markers and then fetches by _id, instead of a sorted query per sensor.
        newest: dict[str, int] = {}
        for sensor_id, key_ms in zip(cols["sensor_id"], ms, strict=True):
            if key_ms > newest.get(sensor_id, key_ms - 1):
                newest[sensor_id] = key_ms
        marks = [UpdateOne({"_id": sid}, {"$max": {"timestamp": t}}, upsert=True) for sid, t in newest.items()]
        self._bulk(LATEST, marks, ordered=False)
        return len(ops)

    def upsert_windows(self, rows: pd.DataFrame) -> int:
        if rows.empty:
            return 0
        cols = convert.window_columns(rows)
        starts = list(cols["window_start"])
        for name in convert.WINDOW_TIME_COLUMNS:
            cols[name] = [convert.dt_of(v) for v in cols[name]]
        ops = [
            UpdateOne({"_id": f"{doc['scope']}|{doc['key']}|{start}"}, {"$set": doc}, upsert=True)
            for doc, start in zip(_records(cols, WINDOW_COLUMNS), starts, strict=True)
        ]
        self._bulk("windowed_metrics", ops, ordered=False)
        return len(ops)

    def upsert_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> int:
        values = {v["alert_id"]: v for v in map(convert.alert_values, alerts)}
        if not values:
            return 0
        ops: list[Any] = []
        events: list[Any] = []
        for v in values.values():
            aid = v["alert_id"]
            doc = _alert_doc(v)
            job = {f: doc[f] for f in ALERT_JOB_FIELDS}
            # Same rules as SQLite: job fields replace, status only moves forward, closed_at once set stays.
            ops.append(
                UpdateOne(
                    {"_id": aid},
                    {
                        "$set": job,
                        "$min": {"opened_at": doc["opened_at"]},
                        "$setOnInsert": {"alert_id": aid, "status": "open", "closed_at": None},
                    },
                    upsert=True,
                )
            )
            if doc["closed_at"] is not None:
                ops.append(UpdateOne({"_id": aid, "closed_at": None}, {"$set": {"closed_at": doc["closed_at"]}}))
            if v["status"] == "closed":
                ops.append(UpdateOne({"_id": aid, "status": "open"}, {"$set": {"status": "closed"}}))
            events.append(_event_op(aid, "opened", "open", JOB_ACTOR, doc["opened_at"], ""))
            if v["status"] == "closed":
                events.append(_event_op(aid, "closed", "closed", JOB_ACTOR, doc["closed_at"], ""))
        self._bulk("anomaly_alerts", ops, ordered=True)
        self._bulk("alert_events", events, ordered=False)
        return len(values)

    def record_quality(self, batch_id: int, counters: Mapping[str, int]) -> None:
        batch = int(batch_id)
        now = datetime.now(UTC)
        ops = [
            UpdateOne(
                {"_id": f"{batch}|{name}"},
                {"$set": {"batch_id": batch, "counter": str(name), "value": int(value), "recorded_at": now}},
                upsert=True,
            )
            for name, value in counters.items()
        ]
        if ops:
            self._bulk("data_quality", ops, ordered=False)
        # Then drop counters the replayed batch no longer has: readers never see the batch missing.
        names = [str(n) for n in counters]
        self._call(
            "replacing quality counters",
            lambda db: db.data_quality.delete_many({"batch_id": batch, "counter": {"$nin": names}}),
        )

    def upsert_sensor_status(self, rows: Sequence[Mapping[str, Any]]) -> int:
        values = {v["sensor_id"]: v for v in map(convert.status_values, rows)}
        if not values:
            return 0
        ops = []
        for v in values.values():
            doc = dict(
                v,
                last_event_time=convert.dt_of(v["last_event_time"]),
                updated_at=convert.dt_of(v["updated_at"]),
            )
            # Create if missing, then overwrite only with a report at least as new (a stale replay matches
            # nothing). No upsert races on a non-_id filter, so no duplicate-key errors to sort out.
            ops.append(UpdateOne({"_id": v["sensor_id"]}, {"$setOnInsert": doc}, upsert=True))
            ops.append(UpdateOne({"_id": v["sensor_id"], "updated_at": {"$lte": doc["updated_at"]}}, {"$set": doc}))
        self._bulk("sensor_status", ops, ordered=True)
        return len(values)

    def set_alert_status(self, alert_id: str, status: AlertLifecycle, *, by: str, note: str = "") -> Mapping[str, Any]:
        db = self._db()
        with self._guard("changing an alert's status"):
            while True:
                current = db.anomaly_alerts.find_one({"_id": alert_id}, {"status": 1})
                if current is None:
                    raise KeyError(alert_id)
                if not convert.check_lifecycle(alert_id, current["status"], status):
                    break
                # Compare-and-set: a concurrent change makes this match nothing, and the loop re-checks.
                done = db.anomaly_alerts.update_one(
                    {"_id": alert_id, "status": current["status"]}, {"$set": {"status": status}}
                )
                if done.modified_count == 1:
                    now = convert.dt_of(convert.ms_of(datetime.now(UTC)))
                    db.alert_events.update_one(*_event_args(alert_id, status, status, by, now, note), upsert=True)
                    break
        found = self.alert(alert_id)
        assert found is not None
        return found

    # ---- reads ----
    def count(self, collection: str) -> int:
        convert.check_collection(collection)
        return int(self._call(f"counting {collection}", lambda db: db[collection].count_documents({})))

    def latest_readings(self) -> list[dict[str, Any]]:
        def query(db: Any) -> list[dict[str, Any]]:
            ids = [f"{m['_id']}|{m['timestamp']}" for m in db[LATEST].find({})]
            if self._batch == FERRETDB_BATCH:  # FerretDB pushes down only a single _id equality
                docs = [db.sensor_metrics.find_one({"_id": i}) for i in ids]
            else:
                docs = list(db.sensor_metrics.find({"_id": {"$in": ids}}))
            return sorted((_reading(d) for d in docs if d is not None), key=lambda r: r["sensor_id"])

        return self._call("reading the latest readings", query)

    def reading_positions(self) -> list[tuple[int, int]]:
        def query(db: Any) -> list[tuple[int, int]]:
            cursor = db.sensor_metrics.find(
                {"kafka_offset": {"$ne": None}}, {"_id": 0, "kafka_partition": 1, "kafka_offset": 1}
            )
            return [(int(d["kafka_partition"]), int(d["kafka_offset"])) for d in cursor]

        return self._call("reading stored positions", query)

    def readings(
        self,
        sensor_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        flt: dict[str, Any] = {"sensor_id": sensor_id}
        _time_range(flt, "timestamp", start, end)
        return self._find("sensor_metrics", flt, [("timestamp", ASCENDING)], limit, offset, _reading)

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
        flt: dict[str, Any] = {k: v for k, v in (("scope", scope), ("key", key)) if v is not None}
        _time_range(flt, "window_start", start, end)
        order = [("window_start", ASCENDING), ("scope", ASCENDING), ("key", ASCENDING)]
        return self._find("windowed_metrics", flt, order, limit, offset, _window)

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
        pairs = (("severity", severity), ("kind", kind), ("location", location), ("status", status))
        flt: dict[str, Any] = {k: v for k, v in pairs if v is not None}
        if sensor_id is not None:
            flt["sensor_ids"] = sensor_id  # matches an element of the array
        # An episode [opened_at, updated_at] is selected when it overlaps [start, end).
        if start is not None:
            flt["updated_at"] = {"$gte": convert.dt_of(convert.ms_of(start))}
        if end is not None:
            flt["opened_at"] = {"$lt": convert.dt_of(convert.ms_of(end))}
        order = [("updated_at", DESCENDING), ("alert_id", ASCENDING)]
        return self._find("anomaly_alerts", flt, order, limit, offset, _alert)

    def alert(self, alert_id: str) -> dict[str, Any] | None:
        doc = self._call("reading an alert", lambda db: db.anomaly_alerts.find_one({"_id": alert_id}))
        return None if doc is None else _alert(doc)

    def alert_events(self, alert_id: str) -> list[dict[str, Any]]:
        docs = self._call("reading alert events", lambda db: list(db.alert_events.find({"alert_id": alert_id})))
        return convert.order_events([_event(d) for d in docs])

    def quality_totals(self) -> dict[str, int]:
        pipeline = [{"$group": {"_id": "$counter", "total": {"$sum": "$value"}}}]
        docs = self._call("summing quality counters", lambda db: list(db.data_quality.aggregate(pipeline)))
        return {d["_id"]: int(d["total"]) for d in sorted(docs, key=lambda d: d["_id"])}

    def sensor_status(self) -> list[dict[str, Any]]:
        return self._find("sensor_status", {}, [("sensor_id", ASCENDING)], 0, 0, _status)

    # ---- shop analytics ----
    def upsert_analytics(self, rows: Sequence[Mapping[str, Any]]) -> int:
        values = {(v["metric"], v["computed_at"], v["dimensions"]): v for v in map(convert.analytics_values, rows)}
        if not values:
            return 0
        ops = []
        for (metric, computed_ms, dims), v in values.items():
            doc = dict(v)
            for f in ("computed_at", "window_start", "window_end"):
                doc[f] = convert.dt_of(v[f])
            ops.append(UpdateOne({"_id": f"{metric}|{computed_ms}|{dims}"}, {"$set": doc}, upsert=True))
        self._bulk("shop_analytics", ops, ordered=False)
        return len(ops)

    def latest_analytics(self, metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
        def query(db: Any) -> list[dict[str, Any]]:
            # One indexed lookup per metric (few): no $group, which FerretDB 1.x implements only in part.
            names = sorted(db.shop_analytics.distinct("metric")) if metrics is None else sorted(set(metrics))
            rows: list[dict[str, Any]] = []
            for name in names:
                newest = db.shop_analytics.find_one({"metric": name}, sort=[("computed_at", DESCENDING)])
                if newest is None:
                    continue
                found = db.shop_analytics.find({"metric": name, "computed_at": newest["computed_at"]})
                shaped = [_analytics(d) for d in found]
                rows.extend(sorted(shaped, key=lambda r: (r["window_start"], r["dimensions"])))
            return [convert.analytics_row(r) for r in rows]

        return self._call("reading shop analytics", query)

    def _find(
        self,
        collection: str,
        flt: Mapping[str, Any],
        order: list[tuple[str, int]],
        limit: int,
        offset: int,
        shape: Callable[[Mapping[str, Any]], dict[str, Any]],
    ) -> list[dict[str, Any]]:
        def query(db: Any) -> list[dict[str, Any]]:
            cursor = db[collection].find(flt).sort(order).skip(offset)
            if limit:
                cursor = cursor.limit(limit)
            return [shape(doc) for doc in cursor]

        return self._call(f"reading {collection}", query)

    # ---- browsing ----
    def collections(self) -> dict[str, int]:
        return {name: self.count(name) for name in FIELD_KINDS}

    def browse(self, collection: str, query: BrowseQuery) -> BrowsePage:
        query = browsing.validate(collection, query)
        flt = _browse_filter(collection, query)
        order = _browse_order(collection, query)

        def run(db: Any) -> BrowsePage:
            cursor = db[collection].find(flt).sort(order).skip(query.offset).limit(query.limit)
            rows = [_browsed(collection, doc) for doc in cursor]
            return BrowsePage(rows, int(db[collection].count_documents(flt)))

        return self._call(f"browsing {collection}", run)

    def scan(self, collection: str, query: BrowseQuery) -> Iterator[dict[str, Any]]:
        query = browsing.validate(collection, query)  # errors now, not at the first row
        return self._scan(collection, _browse_filter(collection, query), _browse_order(collection, query))

    def _scan(self, collection: str, flt: dict[str, Any], order: list[tuple[str, int]]) -> Iterator[dict[str, Any]]:
        db = self._db()
        with self._guard(f"exporting {collection}"):
            cursor = db[collection].find(flt).sort(order).batch_size(1000)
            try:
                for doc in cursor:
                    yield _browsed(collection, doc)
            finally:
                cursor.close()

    def document(self, collection: str, key: str) -> dict[str, Any] | None:
        browsing.parse_key(collection, key)  # ValueError for what cannot be a key of the collection
        doc = self._call(f"reading {collection}", lambda db: db[collection].find_one({"_id": key}))
        return None if doc is None else _browsed(collection, doc)

    # ---- housekeeping ----
    def ensure_ttl(self, retention_days: float, *, per_collection: Mapping[str, float] | None = None) -> dict[str, int]:
        days = convert.retention_by_collection(retention_days, per_collection)
        db = self._db()
        if self._ferretdb:  # FerretDB 1.x answers NotImplemented to expireAfterSeconds
            log.info("the MongoDB-wire server (FerretDB) has no TTL indexes: the retention task deletes old rows")
            return {}
        seconds = {name: max(1, round(d * 86_400)) for name, d in days.items()}
        with self._guard("creating TTL indexes"):
            for name, after in seconds.items():
                _ttl_index(db[name], convert.RETENTION_FIELDS[name], after)
        return seconds

    def apply_retention(
        self, now: datetime, retention_days: float, *, per_collection: Mapping[str, float] | None = None
    ) -> dict[str, int]:
        limits = convert.cutoffs(now, retention_days, per_collection)

        def run(db: Any) -> dict[str, int]:
            deleted: dict[str, int] = {}
            stale = {"updated_at": {"$lt": convert.dt_of(limits["anomaly_alerts"])}}
            old = [d["_id"] for d in db.anomaly_alerts.find(stale, {"_id": 1})]
            for name, cutoff in limits.items():
                field = convert.RETENTION_FIELDS[name]
                deleted[name] = db[name].delete_many({field: {"$lt": convert.dt_of(cutoff)}}).deleted_count
            db[LATEST].delete_many({"timestamp": {"$lt": limits["sensor_metrics"]}})
            deleted["alert_events"] = 0
            for i in range(0, len(old), 1000):
                chunk = old[i : i + 1000]
                deleted["alert_events"] += db.alert_events.delete_many({"alert_id": {"$in": chunk}}).deleted_count
            return deleted

        return self._call("applying retention", run)

    def drop(self) -> None:
        """Drop the whole database (tests and ``reset`` commands)."""
        self._call("dropping the database", lambda db: db.client.drop_database(self.database))
        self._indexed = False
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client = None

    def __repr__(self) -> str:
        return f"MongoStore({self.uri!r}, {self.database!r})"


def _ensure_indexes(db: Any) -> None:
    for collection, specs in INDEXES.items():
        # A key that has an index already keeps it, whatever its options (a TTL index replaces the plain
        # time index of the same key: see _ttl_index).
        existing = {tuple(info["key"].items()) for info in db[collection].list_indexes()}
        for keys, unique in specs:
            if tuple(keys) in existing:
                continue
            try:
                db[collection].create_index(keys, unique=unique)
            except OperationFailure as exc:  # an index of the same keys with other options: keep it
                log.warning("index %s on %s not created: %s", keys, collection, exc)


def _ttl_index(coll: Any, field: str, seconds: int) -> None:
    """A TTL index on ``field`` expiring documents ``seconds`` after its value; it takes the place of a plain
    index on the same key (one index per key; a TTL index serves the same range queries)."""
    for info in coll.list_indexes():
        if dict(info["key"]) != {field: ASCENDING}:
            continue
        if info.get("expireAfterSeconds") == seconds:
            return
        if "expireAfterSeconds" in info:
            coll.database.command(
                {"collMod": coll.name, "index": {"name": info["name"], "expireAfterSeconds": seconds}}
            )
            return
        coll.drop_index(info["name"])
        break
    coll.create_index([(field, ASCENDING)], expireAfterSeconds=seconds)
    log.info("TTL index on %s.%s: documents expire %d s after it", coll.name, field, seconds)


OPERATORS = {"=": "$eq", "!=": "$ne", "<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}


def _browse_filter(collection: str, query: BrowseQuery) -> dict[str, Any]:
    """The find() filter of a validated query; values go in as values, never as operators or names."""
    conditions: list[dict[str, Any]] = []
    for flt in query.filters:
        if FIELD_KINDS[collection][flt.field] == "list":
            conditions.append({flt.field: {"$eq": flt.value}})  # an array field: one element equals it
        else:
            conditions.append({flt.field: {OPERATORS[flt.op]: flt.value}})
    span: dict[str, Any] = {}
    _time_range(span, TIME_FIELDS[collection], query.time_from, query.time_to)
    if span:
        conditions.append(span)
    if not conditions:
        return {}
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}


def _browse_order(collection: str, query: BrowseQuery) -> list[tuple[str, int]]:
    return [(f, DESCENDING if desc else ASCENDING) for f, desc in browsing.sort_keys(collection, query)]


def _browsed(collection: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    out = SHAPES[collection](doc)
    out["_key"] = str(doc["_id"])
    return out


def _quality(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "batch_id": doc.get("batch_id"),
        "counter": doc.get("counter"),
        "value": doc.get("value"),
        "recorded_at": _utc(doc.get("recorded_at")),
    }


def _records(cols: dict[str, list[Any]], names: Sequence[str]) -> Iterator[dict[str, Any]]:
    for values in zip(*(cols[c] for c in names), strict=True):
        yield dict(zip(names, values, strict=True))


def _time_range(flt: dict[str, Any], field: str, start: datetime | None, end: datetime | None) -> None:
    """[start, end) at millisecond precision, as stored."""
    cond: dict[str, Any] = {}
    if start is not None:
        cond["$gte"] = convert.dt_of(convert.ms_of(start))
    if end is not None:
        cond["$lt"] = convert.dt_of(convert.ms_of(end))
    if cond:
        flt[field] = cond


def _alert_doc(v: Mapping[str, Any]) -> dict[str, Any]:
    doc = dict(v)
    for f in convert.ALERT_TIME_FIELDS:
        doc[f] = convert.dt_of(v[f])
    return doc


def _event_args(
    alert_id: str, event: str, status: str, by: str, at: datetime | None, note: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    doc = {"alert_id": alert_id, "event": event, "status": status, "by": by, "at": at, "note": note}
    return {"_id": f"{alert_id}|{event}"}, {"$setOnInsert": doc}


def _event_op(alert_id: str, event: str, status: str, by: str, at: datetime | None, note: str) -> UpdateOne:
    return UpdateOne(*_event_args(alert_id, event, status, by, at, note), upsert=True)


def _utc(value: Any) -> datetime | None:
    """BSON dates come back aware; normalise the tzinfo object to datetime.UTC."""
    return None if value is None else value.astimezone(UTC)


def _reading(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = {c: doc.get(c) for c in READING_COLUMNS}
    for c in convert.READING_TIME_COLUMNS:
        out[c] = _utc(out[c])
    return out


def _window(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = {c: doc.get(c) for c in WINDOW_COLUMNS}
    for c in convert.WINDOW_TIME_COLUMNS:
        out[c] = _utc(out[c])
    return out


def _alert(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = {f: doc.get(f) for f in ALERT_FIELDS}
    for f in convert.ALERT_TIME_FIELDS:
        out[f] = _utc(out[f])
    out["sensor_ids"] = list(out["sensor_ids"] or [])
    out["top_features"] = list(out["top_features"] or [])
    return out


def _event(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "alert_id": doc["alert_id"],
        "event": doc["event"],
        "status": doc["status"],
        "by": doc.get("by"),
        "at": _utc(doc.get("at")),
        "note": doc.get("note") or "",
    }


def _status(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = {c: doc.get(c) for c in STATUS_FIELDS}
    out["last_event_time"] = _utc(out["last_event_time"])
    out["updated_at"] = _utc(out["updated_at"])
    return out


def _analytics(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = {f: doc.get(f) for f in ANALYTICS_FIELDS}
    for f in ("computed_at", "window_start", "window_end"):
        out[f] = _utc(out[f])
    return out


SHAPES: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "sensor_metrics": _reading,
    "anomaly_alerts": _alert,
    "alert_events": _event,
    "windowed_metrics": _window,
    "data_quality": _quality,
    "sensor_status": _status,
    "shop_analytics": _analytics,
}
assert set(SHAPES) == set(KEYS), "every collection has a row shape"
