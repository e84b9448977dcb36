"""The store interface shared by the Spark job (writer), the API and the tests (readers).

Collections (MongoDB names; SQLite uses the same names as tables):

- ``sensor_metrics``   one row per cleaned, enriched reading; natural key (sensor_id, timestamp)
- ``anomaly_alerts``   one row per alert episode; key alert_id; lifecycle history in ``alert_events``
- ``windowed_metrics`` one row per window; key (scope, key, window_start)
- ``data_quality``     counters per micro-batch; key (batch_id, counter); totals are sums
- ``sensor_status``    one row per sensor: last event time, active/inactive, expected interval
- ``shop_analytics``   one row per metric value of a shop analytics run; key (metric, computed_at, dimensions),
                       ``dimensions`` being canonical JSON text (see :func:`dimensions_text`), so runs never
                       overwrite one another and the latest run of each metric is the one readers want

Timestamps cross this interface as timezone-aware UTC datetimes (or pandas datetime64[ns, UTC] columns) and
come back the same way. Every write is an idempotent upsert on the natural key, so replaying a micro-batch
after a crash changes nothing.

The browsing part of the contract (``collections``, ``browse``, ``scan``, ``document``) reads any collection
generically for operators: only names from FIELD_KINDS are accepted (anything else is rejected before a backend
sees it) and values are always bound as parameters, never spliced into a query.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import pandas as pd

from millrace import records

# The columns of a processed reading (sensor_metrics) and the fields of an alert (anomaly_alerts) are defined
# with the records they store: records.READING_ROW (column types) and records.Alert.
READING_COLUMNS = records.READING_COLUMNS
ALERT_FIELDS = records.ALERT_FIELDS

COLLECTIONS: tuple[str, ...] = (
    "sensor_metrics", "anomaly_alerts", "alert_events", "windowed_metrics", "data_quality", "sensor_status",
    "shop_analytics",
)  # fmt: skip
# The fields of a shop analytics row (the analytics schema's metric record, dimensions as canonical JSON text).
ANALYTICS_FIELDS: tuple[str, ...] = ("metric", "computed_at", "dimensions", "window_start", "window_end", "value")

AlertLifecycle = Literal["acknowledged", "resolved"]

# ---- the browsing contract: what each collection holds, its key and its time field ----

# The kind of a field's values: how a filter value is read, how it is compared and how CSV writes it.
# "list" is a list of strings (an alert's sensor_ids); it can only be tested for containing a value.
FieldKind = Literal["str", "int", "float", "bool", "time", "list"]
_KIND_OF_TYPE: dict[type, FieldKind] = {
    str: "str", int: "int", float: "float", bool: "bool", datetime: "time", tuple: "list", list: "list",
}  # fmt: skip


def _kinds(types: Mapping[str, type]) -> dict[str, FieldKind]:
    return {name: _KIND_OF_TYPE[t] for name, t in types.items()}


# Every field of every collection, in column order, with its kind. Browsing accepts no other names.
FIELD_KINDS: dict[str, dict[str, FieldKind]] = {
    "sensor_metrics": _kinds(records.READING_ROW),
    "anomaly_alerts": _kinds(records.field_types(records.Alert)),
    "alert_events": {"alert_id": "str", "event": "str", "status": "str", "by": "str", "at": "time", "note": "str"},
    "windowed_metrics": _kinds(records.field_types(records.WindowMetric)),
    "data_quality": {"batch_id": "int", "counter": "str", "value": "int", "recorded_at": "time"},
    "sensor_status": {
        "sensor_id": "str", "device_id": "str", "sensor_type": "str", "location": "str", "last_event_time": "time",
        "state": "str", "expected_interval_s": "float", "updated_at": "time",
    },
    "shop_analytics": {
        "metric": "str", "computed_at": "time", "dimensions": "str", "window_start": "time", "window_end": "time",
        "value": "float",
    },
}  # fmt: skip
# The natural key of each collection. A row's key as one string (``document``) is these fields joined with
# "|", times as epoch milliseconds, e.g. ``dev-0001-temperature|1772366400000``: MongoDB's ``_id``.
KEYS: dict[str, tuple[str, ...]] = {
    "sensor_metrics": ("sensor_id", "timestamp"),
    "anomaly_alerts": ("alert_id",),
    "alert_events": ("alert_id", "event"),
    "windowed_metrics": ("scope", "key", "window_start"),
    "data_quality": ("batch_id", "counter"),
    "sensor_status": ("sensor_id",),
    "shop_analytics": ("metric", "computed_at", "dimensions"),
}
# The one key field that may itself contain "|" (the others are split off around it).
FREE_KEY_FIELD: dict[str, str] = {
    "sensor_metrics": "sensor_id",
    "anomaly_alerts": "alert_id",
    "alert_events": "alert_id",
    "windowed_metrics": "key",
    "data_quality": "counter",
    "sensor_status": "sensor_id",
    "shop_analytics": "dimensions",
}
# The field a time range selects on and a browse sorts by unless told otherwise (newest first).
TIME_FIELDS: dict[str, str] = {
    "sensor_metrics": "timestamp",
    "anomaly_alerts": "updated_at",
    "alert_events": "at",
    "windowed_metrics": "window_start",
    "data_quality": "recorded_at",
    "sensor_status": "last_event_time",
    "shop_analytics": "computed_at",
}


def dimensions_text(dimensions: Mapping[str, str]) -> str:
    """The stored form of a metric's dimensions: JSON with sorted keys and no spaces, so one set of dimensions
    has one key whatever order it came in."""
    return json.dumps({str(k): str(v) for k, v in dimensions.items()}, ensure_ascii=False, sort_keys=True,
                      separators=(",", ":"))  # fmt: skip


FilterOp = Literal["=", "!=", "<", "<=", ">", ">="]
FILTER_OPS: tuple[FilterOp, ...] = ("=", "!=", "<", "<=", ">", ">=")


@dataclass(frozen=True, slots=True)
class Filter:
    """``field op value`` with a value of the field's kind (a ``time`` is an aware datetime). ``!=`` also
    matches rows where the field is null; the ordering operators never do. A ``list`` field takes ``=`` only
    (the list contains the value); a ``bool`` field takes ``=`` and ``!=``."""

    field: str
    op: FilterOp
    value: Any


@dataclass(frozen=True, slots=True)
class BrowseQuery:
    """What ``browse`` and ``scan`` select: every filter (AND), ``time_from <= time field < time_to``, ordered
    by ``sort`` (default: the collection's time field) then by the key ascending, so pages are stable.
    Build it with ``stores.browse.make_query``, which checks every name and value against FIELD_KINDS."""

    filters: tuple[Filter, ...] = ()
    time_from: datetime | None = None
    time_to: datetime | None = None
    sort: str | None = None
    descending: bool = True
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True, slots=True)
class BrowsePage:
    rows: list[dict[str, Any]]  # FIELD_KINDS's fields in order, plus "_key" (the row's key string)
    total: int  # rows matching the query, all pages together


class Store(Protocol):
    """A backend for processed IoT data. Implementations: SqliteStore, MongoStore.

    Writers may call from several threads or processes (Spark executors); readers run concurrently with
    writers. Methods raise StoreUnavailable when the backend cannot be reached and never drop rows silently.
    """

    # ---- writes (idempotent upserts) ----
    def upsert_readings(self, rows: pd.DataFrame) -> int:
        """Insert or replace by (sensor_id, timestamp). ``rows`` has READING_COLUMNS (missing optional ones
        are null). Returns the number of rows written."""
        ...

    def upsert_windows(self, rows: pd.DataFrame) -> int:
        """Insert or replace by (scope, key, window_start). ``rows`` has records.WINDOW_COLUMNS."""
        ...

    def upsert_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> int:
        """Insert or update episodes by alert_id (ALERT_FIELDS). An update never moves an alert's lifecycle
        backwards: an operator's acknowledged/resolved status survives later updates from the job, except
        that a job-side "closed" is recorded in closed_at."""
        ...

    def record_quality(self, batch_id: int, counters: Mapping[str, int]) -> None:
        """Store one micro-batch's data-quality counters (replacing that batch_id's previous values)."""
        ...

    def upsert_sensor_status(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Rows: sensor_id, device_id, sensor_type, location, last_event_time, state ("active"|"inactive"),
        expected_interval_s, updated_at."""
        ...

    def set_alert_status(self, alert_id: str, status: AlertLifecycle, *, by: str, note: str = "") -> Mapping[str, Any]:
        """Operator lifecycle change open → acknowledged → resolved, recorded in alert_events with who/when.
        Raises KeyError for an unknown alert and ValueError for a backwards move. Returns the updated alert."""
        ...

    # ---- reads ----
    def count(self, collection: str) -> int: ...

    def latest_readings(self) -> list[dict[str, Any]]:
        """One row per sensor: its latest reading by *event* time."""
        ...

    def reading_positions(self) -> list[tuple[int, int]]:
        """``(kafka_partition, kafka_offset)`` of every stored measured reading, in no particular order.

        Reads only these two fields. Interpolated readings (no Kafka position) are left out. A position held
        by more than one row appears once per row: the store keys rows by (sensor_id, timestamp), not by
        position, so repeats are possible and are what an audit looks for. Not a snapshot across concurrent
        writes: rows upserted while it runs may or may not be included."""
        ...

    def readings(
        self,
        sensor_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """A sensor's readings ordered by event time."""
        ...

    def windows(
        self,
        *,
        scope: str | None = None,
        key: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[dict[str, Any]]: ...

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
        """Newest first (by updated_at)."""
        ...

    def alert(self, alert_id: str) -> dict[str, Any] | None: ...

    def alert_events(self, alert_id: str) -> list[dict[str, Any]]: ...

    def quality_totals(self) -> dict[str, int]: ...

    def sensor_status(self) -> list[dict[str, Any]]: ...

    # ---- shop analytics ----
    def upsert_analytics(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert or replace metric rows by (metric, computed_at, dimensions). A row has ANALYTICS_FIELDS with
        ``dimensions`` a mapping of strings (stored as :func:`dimensions_text`) and times as aware datetimes or
        ISO 8601 text. Returns the number of rows written."""
        ...

    def latest_analytics(self, metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The rows of the latest run (greatest computed_at) of each metric, or of the named ``metrics`` only,
        ordered by metric, window_start, dimensions; ``dimensions`` back as a dict, times as aware UTC
        datetimes."""
        ...

    # ---- browsing (operators' store browser) ----
    def collections(self) -> dict[str, int]:
        """Every collection of FIELD_KINDS with its row count, in FIELD_KINDS's order."""
        ...

    def browse(self, collection: str, query: BrowseQuery) -> BrowsePage:
        """One page of ``collection`` (``query.limit`` rows from ``query.offset``) and the total matching.
        Raises KeyError for a collection not in FIELD_KINDS and ValueError for a query naming unknown fields.
        Rows have the same values on every backend (times as aware UTC datetimes, lists as lists)."""
        ...

    def scan(self, collection: str, query: BrowseQuery) -> Iterator[dict[str, Any]]:
        """Every row matching ``query`` (its limit and offset are ignored), in its order, fetched lazily; for
        exports. The rows are browse's; SQLite reads them from one snapshot, MongoDB from one cursor."""
        ...

    def document(self, collection: str, key: str) -> dict[str, Any] | None:
        """The row whose key string (see KEYS) is ``key``, as browse returns it, or None. KeyError for an
        unknown collection, ValueError for a key that cannot be one of this collection's."""
        ...

    # ---- housekeeping ----
    def apply_retention(
        self, now: datetime, retention_days: float, *, per_collection: Mapping[str, float] | None = None
    ) -> dict[str, int]:
        """Delete the rows whose time field (stores.convert.RETENTION_FIELDS) is older than ``now`` minus the
        retention in days (``per_collection`` overrides it by collection name; KeyError for an unknown name);
        alert_events go with their alert. Returns deleted counts per collection. Idempotent."""
        ...

    def ensure_ttl(self, retention_days: float, *, per_collection: Mapping[str, float] | None = None) -> dict[str, int]:
        """Let the server expire rows by itself where it can: MongoDB gets a TTL index on each collection's
        retention field (alert_events excepted: they go with their alert) and this returns its
        ``expireAfterSeconds`` per collection. SQLite has no such thing and a server without TTL indexes
        (FerretDB) neither: they return {} and rely on apply_retention."""
        ...

    def close(self) -> None: ...
