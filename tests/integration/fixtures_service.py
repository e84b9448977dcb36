"""Helpers for the service tests: a uvicorn server on a free port, a seeded SQLite store, fresh topics."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import uvicorn
from fastapi import FastAPI

from millrace.config import Settings, TopicSettings
from millrace.kafka.admin import admin_client, apply_topics
from millrace.kafka.topics import declared_topics
from millrace.runtime.process import free_port
from millrace.stores.base import Store
from millrace.stores.sqlite import SqliteStore
from tests.helpers import unique, wait_for

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SENSORS = (  # sensor_id, device_id, sensor_type, location, unit, base value
    ("dev-0001-temperature", "dev-0001", "temperature", "loc-01", "°C", 20.0),
    ("dev-0001-humidity", "dev-0001", "humidity", "loc-01", "%", 40.0),
    ("dev-0002-temperature", "dev-0002", "temperature", "loc-02", "°C", 30.0),
    ("dev-0002-humidity", "dev-0002", "humidity", "loc-02", "%", 60.0),
)
READINGS_PER_SENSOR = 10


@contextmanager
def served(
    app: FastAPI, *, timeout_s: float = 30.0, log_level: str = "warning", tls: tuple[Path, Path] | None = None
) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread on a free port; yields the base URL (https with ``tls``: the
    certificate and key files, as ``millrace serve`` passes api.tls_cert and api.tls_key)."""
    port = free_port()
    ssl = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])} if tls else {}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, **ssl))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout_s=timeout_s, what="uvicorn to start")
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


def fresh_topics(settings: Settings) -> Settings:
    """Settings whose topics are new, uniquely named and created on the broker (tests never share data)."""
    tag = unique("t")
    topics = TopicSettings(
        **{name: f"{value}.{tag}" for name, value in settings.topics.model_dump().items() if isinstance(value, str)}
    )
    specs = declared_topics(topics)
    apply_topics(settings.kafka.client_config(), specs)
    admin = admin_client(settings.kafka.client_config())

    def led() -> bool:
        found = admin.list_topics(timeout=5).topics
        return all(
            s.name in found
            and found[s.name].partitions
            and all(p.leader >= 0 for p in found[s.name].partitions.values())
            for s in specs
        )

    wait_for(led, timeout_s=30, what="leaders for the fresh topics")
    return settings.model_copy(update={"topics": topics})


def reading_rows() -> pd.DataFrame:
    """10 readings per sensor, 1 s apart from T0; reading 7 of dev-0002-temperature is an anomaly (spike).

    Rows are in reverse event-time order so "latest" must come from event time, not insertion order.
    """
    rows: list[dict[str, Any]] = []
    for sensor_id, device_id, sensor_type, location, unit, base in SENSORS:
        for i in range(READINGS_PER_SENSOR):
            anomaly = sensor_id == "dev-0002-temperature" and i == 7
            rows.append(
                {
                    "sensor_id": sensor_id,
                    "device_id": device_id,
                    "sensor_type": sensor_type,
                    "location": location,
                    "unit": unit,
                    "timestamp": T0 + timedelta(seconds=i),
                    "value": base + 95.0 if anomaly else base + i / 10,
                    "status": "ok",
                    "interpolated": False,
                    "score": 9.5 if anomaly else 0.5,
                    "is_anomaly": anomaly,
                    "anomaly_kind": "spike" if anomaly else None,
                    "features": "{}",
                    "ground_truth": None,
                    "kafka_partition": 0,
                    "kafka_offset": i,
                    "ingested_at": T0 + timedelta(seconds=i, milliseconds=500),
                }
            )
    return pd.DataFrame(rows[::-1])


def alert_rows() -> list[dict[str, Any]]:
    def alert(
        n: int,
        device: str,
        sensor: str,
        kind: str,
        severity: str,
        location: str,
        minute: int,
        status: str = "open",
    ) -> dict[str, Any]:
        opened = T0 + timedelta(minutes=minute)
        return {
            "alert_id": f"al-{n}",
            "device_id": device,
            "sensor_ids": [sensor],
            "kind": kind,
            "severity": severity,
            "score": 5.0 + n,
            "reason": f"{kind} on {sensor}",
            "location": location,
            "opened_at": opened,
            "updated_at": opened + timedelta(seconds=30),
            "closed_at": opened + timedelta(seconds=30) if status == "closed" else None,
            "status": status,
            "readings": n,
            "top_features": ["robust_z", "rate"],
        }

    return [
        alert(1, "dev-0001", "dev-0001-temperature", "spike", "critical", "loc-01", 0),
        alert(2, "dev-0002", "dev-0002-temperature", "drift", "warning", "loc-02", 5),
        alert(3, "dev-0002", "dev-0002-humidity", "spike", "warning", "loc-02", 10, status="closed"),
    ]


def window_rows() -> pd.DataFrame:
    rows = []
    for sensor_id, _device, sensor_type, location, _unit, base in SENSORS:
        for w in range(3):
            start = T0 + timedelta(minutes=w)
            rows.append(
                {
                    "scope": "sensor",
                    "key": sensor_id,
                    "sensor_type": sensor_type,
                    "location": location,
                    "window_start": start,
                    "window_end": start + timedelta(minutes=1),
                    "count": 60,
                    "mean": base + w,
                    "min": base - 1,
                    "max": base + 2 + w,
                    "stddev": 0.5,
                    "anomaly_count": 1 if w == 1 else 0,
                }
            )
    start = T0
    rows.append(
        {
            "scope": "type_location",
            "key": "temperature|loc-01",
            "sensor_type": "temperature",
            "location": "loc-01",
            "window_start": start,
            "window_end": start + timedelta(minutes=1),
            "count": 60,
            "mean": 20.5,
            "min": 19.0,
            "max": 22.0,
            "stddev": 0.4,
            "anomaly_count": 0,
        }
    )
    return pd.DataFrame(rows)


def seeded_store(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    seed(store)
    return store


def seed(store: Store) -> None:
    """Write the test data set into any Store backend."""
    store.upsert_readings(reading_rows())
    store.upsert_windows(window_rows())
    store.upsert_alerts(alert_rows())
    store.record_quality(1, {"valid": 30, "duplicates": 2, "out_of_range": 1})
    store.record_quality(2, {"valid": 10, "late": 3})
    store.upsert_sensor_status(
        [
            {
                "sensor_id": s,
                "device_id": d,
                "sensor_type": t,
                "location": loc,
                "last_event_time": T0 + timedelta(seconds=READINGS_PER_SENSOR - 1),
                "state": "inactive" if s == "dev-0002-humidity" else "active",
                "expected_interval_s": 1.0,
                "updated_at": T0 + timedelta(seconds=READINGS_PER_SENSOR),
            }
            for s, d, t, loc, _u, _b in SENSORS
        ]
    )
