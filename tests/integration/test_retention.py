"""Retention on SQLite and on a real MongoDB-wire server: exactly the expired rows go, the periodic task runs
within its deadline, the stream job runs it, and TTL indexes are what the server can hold."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from millrace.config import Settings, load_settings
from millrace.jobs.retention import RetentionTask, start_retention
from millrace.runtime.mongodb import mongodb_spec
from millrace.runtime.process import ProcessManager, free_port
from millrace.stores.base import Store
from millrace.stores.browse import make_query
from millrace.stores.convert import RETENTION_FIELDS, dt_of, ms_of
from millrace.stores.factory import open_store
from tests.helpers import unique, wait_for

pytestmark = pytest.mark.integration

# "Now" for retention, at the stores' millisecond precision; recent enough that data_quality's recorded_at
# (the wall clock at write time) is within a day of it.
NOW = dt_of(ms_of(datetime.now(UTC)))
assert NOW is not None
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("retention-mongo")
    uri = f"mongodb://127.0.0.1:{free_port()}"
    manager = ProcessManager(state)
    manager.start(mongodb_spec(load_settings(state_dir=state, store={"backend": "mongodb", "mongodb_uri": uri})))
    try:
        yield uri
    finally:
        manager.stop("mongodb")


@pytest.fixture(params=["sqlite", "mongodb"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings naming a fresh store of the backend; the retention task polls every 0.3 s."""
    store: dict[str, Any] = {"retention_interval_s": 0.3, "retention": {"sensor_metrics": 2.0}}
    if request.param == "sqlite":
        store["sqlite_path"] = tmp_path / "store.db"
    else:
        store |= {
            "backend": "mongodb",
            "mongodb_uri": request.getfixturevalue("mongodb_uri"),
            "mongodb_database": unique("ret"),
        }
    s = load_settings(state_dir=tmp_path, store=store)
    yield s
    if request.param == "mongodb":
        from millrace.stores.mongo import MongoStore

        MongoStore(s.store.mongodb_uri, s.store.mongodb_database).drop()


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    st = open_store(settings)
    yield st
    st.close()


def readings(rows: list[tuple[str, datetime]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"sensor_id": s, "timestamp": ts, "value": float(i), "kafka_partition": 0, "kafka_offset": i}
            for i, (s, ts) in enumerate(rows)
        ]
    )


def alert(alert_id: str, opened: datetime, updated: datetime, status: str = "open") -> dict[str, Any]:
    return {
        "alert_id": alert_id,
        "device_id": "dev-0001",
        "sensor_ids": ["dev-0001-temperature"],
        "kind": "spike",
        "severity": "warning",
        "score": 7.0,
        "reason": "jump",
        "location": "loc-01",
        "opened_at": opened,
        "updated_at": updated,
        "status": status,
    }


def window(key: str, end: datetime) -> dict[str, Any]:
    return {
        "scope": "sensor", "key": key, "sensor_type": "temperature", "location": "loc-01",
        "window_start": end - timedelta(minutes=1), "window_end": end, "count": 60, "mean": 1.0, "min": 0.0,
        "max": 2.0, "stddev": 0.5, "anomaly_count": 0,
    }  # fmt: skip


def status(sensor_id: str, last: datetime) -> dict[str, Any]:
    return {"sensor_id": sensor_id, "last_event_time": last, "state": "active", "updated_at": last}


def keys(store: Store, collection: str) -> list[str]:
    return [r["_key"] for r in store.scan(collection, make_query(collection, sort=RETENTION_FIELDS[collection]))]


def key(sensor_id: str, ts: datetime) -> str:
    return f"{sensor_id}|{ms_of(ts)}"


def seed(store: Store) -> None:
    """Rows on both sides of each cutoff: sensor_metrics keeps 2 days, everything else 7."""
    store.upsert_readings(
        readings(
            [
                ("a", NOW - 10 * DAY),
                ("a", NOW - 3 * DAY),
                ("a", NOW - DAY),
                ("a", NOW - timedelta(hours=1)),
                ("b", NOW - 2 * DAY - timedelta(seconds=1)),
                ("b", NOW - 2 * DAY + timedelta(seconds=1)),
                ("c", NOW - 2 * DAY),  # exactly at the cutoff: kept
            ]
        )
    )
    store.upsert_alerts(
        [
            alert("al-old", NOW - 8 * DAY - timedelta(hours=1), NOW - 8 * DAY, status="closed"),
            alert("al-long", NOW - 9 * DAY, NOW - DAY),  # opened long ago, still updated: kept
        ]
    )
    store.upsert_windows(pd.DataFrame([window("a", NOW - 7 * DAY - timedelta(minutes=1)), window("a", NOW - 6 * DAY)]))
    store.record_quality(1, {"valid": 5, "late": 1})
    store.upsert_sensor_status([status("a", NOW - timedelta(hours=1)), status("z", NOW - 8 * DAY)])


def test_retention_removes_exactly_the_expired_rows(store: Store) -> None:
    seed(store)
    assert store.collections() == {
        "sensor_metrics": 7, "anomaly_alerts": 2, "alert_events": 3, "windowed_metrics": 2, "data_quality": 2,
        "sensor_status": 2, "shop_analytics": 0,
    }  # fmt: skip
    deleted = store.apply_retention(NOW, 7.0, per_collection={"sensor_metrics": 2.0})
    assert deleted == {
        "sensor_metrics": 3, "anomaly_alerts": 1, "alert_events": 2, "windowed_metrics": 1, "data_quality": 0,
        "sensor_status": 1, "shop_analytics": 0,
    }  # fmt: skip
    assert keys(store, "sensor_metrics") == [  # by timestamp
        key("c", NOW - 2 * DAY),
        key("b", NOW - 2 * DAY + timedelta(seconds=1)),
        key("a", NOW - DAY),
        key("a", NOW - timedelta(hours=1)),
    ]
    assert keys(store, "anomaly_alerts") == ["al-long"]
    assert keys(store, "alert_events") == ["al-long|opened"]
    assert keys(store, "windowed_metrics") == [f"sensor|a|{ms_of(NOW - 6 * DAY - timedelta(minutes=1))}"]
    assert keys(store, "data_quality") == ["1|late", "1|valid"]
    assert keys(store, "sensor_status") == ["a"]
    assert [r["sensor_id"] for r in store.latest_readings()] == ["a", "b", "c"]
    # a second run finds nothing; a later "now" with one day for data_quality takes the counters
    assert sum(store.apply_retention(NOW, 7.0, per_collection={"sensor_metrics": 2.0}).values()) == 0
    later_now = NOW + timedelta(hours=36)
    later = store.apply_retention(later_now, 7.0, per_collection={"sensor_metrics": 2.0, "data_quality": 1.0})
    assert later == {
        "sensor_metrics": 3, "anomaly_alerts": 0, "alert_events": 0, "windowed_metrics": 1, "data_quality": 2,
        "sensor_status": 0, "shop_analytics": 0,
    }  # fmt: skip
    assert keys(store, "sensor_metrics") == [key("a", NOW - timedelta(hours=1))]
    assert keys(store, "windowed_metrics") == [] and keys(store, "anomaly_alerts") == ["al-long"]


def test_the_periodic_task_runs_within_its_deadline(settings: Settings, store: Store) -> None:
    task = start_retention(settings, clock=lambda: NOW)
    assert task is not None and task.interval_s == 0.3 and task.per_collection == {"sensor_metrics": 2.0}
    try:
        wait_for(lambda: task.runs >= 1, timeout_s=15, what="the first retention run")
        seed(store)  # expired rows written while the task runs
        written = time.monotonic()
        wait_for(lambda: store.count("sensor_metrics") == 4, timeout_s=5, interval_s=0.05, what="the next run")
        took = time.monotonic() - written
        assert took < 0.3 + 2.0, f"expired rows went {took:.2f} s after they were written"
        wait_for(lambda: store.count("sensor_status") == 1, timeout_s=5, what="the same run's other collections")
        assert store.count("anomaly_alerts") == 1 and store.count("alert_events") == 1
        assert task.deleted["sensor_metrics"] == 3 and task.deleted["alert_events"] == 2
    finally:
        stopped = time.monotonic()
        task.stop(timeout_s=10)
    assert time.monotonic() - stopped < 5 and task._thread is not None and not task._thread.is_alive()


def test_a_store_outage_is_retried_at_the_next_interval(settings: Settings, store: Store) -> None:
    from millrace.errors import StoreUnavailable

    attempts: list[float] = []

    def flaky() -> Store:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise StoreUnavailable("down for the test")
        return open_store(settings)

    seed(store)
    task = RetentionTask(
        flaky, retention_days=7.0, per_collection={"sensor_metrics": 2.0}, interval_s=0.2, clock=lambda: NOW
    )
    task.start()
    try:
        wait_for(lambda: task.runs >= 1, timeout_s=10, what="a run after two failed attempts")
    finally:
        task.stop()
    assert len(attempts) == 3 and store.count("sensor_metrics") == 4
    assert attempts[2] - attempts[0] >= 2 * 0.2 - 0.05  # retried at the interval, not in a tight loop


def test_ttl_indexes_on_mongodb(mongodb_uri: str) -> None:
    from millrace.stores.mongo import MongoStore

    store = MongoStore(mongodb_uri, unique("ttl"))
    try:
        ttl = store.ensure_ttl(7.0, per_collection={"sensor_metrics": 2.0})
        db = store._db()
        indexes = {name: list(db[name].list_indexes()) for name in RETENTION_FIELDS}
        ttl_fields = {
            name: [(dict(i["key"]), i["expireAfterSeconds"]) for i in found if "expireAfterSeconds" in i]
            for name, found in indexes.items()
        }
        if store._ferretdb:
            # FerretDB 1.x has no TTL indexes (expireAfterSeconds is NotImplemented): nothing is set, the plain
            # time indexes stay, and the retention task alone bounds the store.
            assert ttl == {} and all(found == [] for found in ttl_fields.values())
            assert any(dict(i["key"]) == {"timestamp": 1} for i in indexes["sensor_metrics"])
        else:
            expected = {name: 7 * 86_400 for name in RETENTION_FIELDS if name != "alert_events"}
            expected["sensor_metrics"] = 2 * 86_400
            assert ttl == expected
            assert ttl_fields == {
                name: ([({RETENTION_FIELDS[name]: 1}, expected[name])] if name in expected else [])
                for name in RETENTION_FIELDS
            }
            again = store.ensure_ttl(3.0)  # changed retention: the same indexes, new expiry
            db = store._db()
            assert again["sensor_metrics"] == 3 * 86_400
            found = [i for i in db.sensor_metrics.list_indexes() if dict(i["key"]) == {"timestamp": 1}]
            assert len(found) == 1 and found[0]["expireAfterSeconds"] == 3 * 86_400
    finally:
        store.drop()
        store.close()


def test_the_stream_job_applies_retention(stack: Any, tmp_path: Path) -> None:
    """`iot process` runs the task: expired rows in its store go while it runs (SQLite here; the task is the
    same for both backends)."""
    from millrace.jobs.iot_stream import default_options, run
    from tests.integration.fixtures_service import fresh_topics

    base = fresh_topics(stack.settings)
    s = base.model_copy(
        update={
            "state_dir": tmp_path / "state",
            "store": base.store.model_copy(update={"sqlite_path": tmp_path / "job.db", "retention_interval_s": 1.0}),
            "spark": base.spark.model_copy(update={"driver_memory": "1g"}),
        }
    )
    now = datetime.now(UTC)
    store = open_store(s)
    store.upsert_readings(
        readings([("old", now - 8 * DAY), ("old", now - 7 * DAY - timedelta(minutes=5)), ("new", now)])
    )
    store.upsert_sensor_status([status("old", now - 8 * DAY)])
    try:
        run(s, default_options(s), duration_s=20)
        assert keys(store, "sensor_metrics") == [key("new", dt_of(ms_of(now)))]  # type: ignore[arg-type]
        assert store.count("sensor_status") == 0
    finally:
        store.close()
