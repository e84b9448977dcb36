"""The store interface shared by the Spark job (writer), the API and the tests (readers).

Collections (MongoDB names; SQLite uses the same names as tables):

- ``sensor_metrics``   one row per cleaned, enriched reading; natural key (sensor_id, timestamp)
- ``anomaly_alerts``   one row per alert episode; key alert_id; lifecycle history in ``alert_events``
- ``windowed_metrics`` one row per window; key (scope, key, window_start)
- ``data_quality``     counters per micro-batch; key (batch_id, counter); totals are sums
- ``sensor_status``    one row per sensor: last event time, active/inactive, expected interval

Timestamps cross this interface as timezone-aware UTC datetimes (or pandas datetime64[ns, UTC] columns) and
come back the same way. Every write is an idempotent upsert on the natural key, so replaying a micro-batch
after a crash changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
)  # fmt: skip

AlertLifecycle = Literal["acknowledged", "resolved"]


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

    # ---- housekeeping ----
    def apply_retention(self, now: datetime, retention_days: float) -> dict[str, int]:
        """Delete rows older than the retention; returns deleted counts per collection."""
        ...

    def close(self) -> None: ...
