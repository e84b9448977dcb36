"""One behavioural suite for every store backend: SQLite on a temp file, MongoDB against a real wire server.

The MongoDB server is a real ``mongod`` when one is on PATH, otherwise FerretDB 1.24 (SQLite backend) built
and started through millrace.runtime on a free port; each test gets its own database.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from millrace.config import Settings, load_settings
from millrace.runtime.mongodb import mongodb_spec
from millrace.runtime.process import ProcessManager, free_port
from millrace.stores.base import COLLECTIONS, READING_COLUMNS, Store
from millrace.stores.factory import open_store
from millrace.stores.sqlite import SqliteStore
from tests.helpers import unique

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def mongo_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A MongoDB-wire server for the session, started by the same code as ``stack up --with mongodb``."""
    state = tmp_path_factory.mktemp("mongo-state")
    settings = load_settings(
        state_dir=state,
        store={"backend": "mongodb", "mongodb_uri": f"mongodb://127.0.0.1:{free_port()}"},
        runtime={"start_timeout_s": 60.0},
    )
    manager = ProcessManager(settings.state_dir)
    manager.start(mongodb_spec(settings))
    try:
        yield settings
    finally:
        manager.stop("mongodb")


@pytest.fixture(params=["sqlite", "mongodb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    """(backend name, settings naming a fresh database of that backend)."""
    if request.param == "sqlite":
        yield "sqlite", load_settings(state_dir=tmp_path, store={"sqlite_path": tmp_path / "store.db"})
    else:
        base: Settings = request.getfixturevalue("mongo_settings")
        settings = load_settings(
            state_dir=tmp_path,
            store={"backend": "mongodb", "mongodb_uri": base.store.mongodb_uri, "mongodb_database": unique("t")},
        )
        yield "mongodb", settings
        from millrace.stores.mongo import MongoStore

        cleanup = MongoStore(settings.store.mongodb_uri, settings.store.mongodb_database)
        cleanup.drop()


@pytest.fixture
def store(backend: tuple[str, Settings]) -> Iterator[Store]:
    st = open_store(backend[1])
    try:
        yield st
    finally:
        st.close()


def readings(sensors: list[str], times: list[datetime], *, value: float = 1.0, **extra: Any) -> pd.DataFrame:
    """One row per (sensor, time), values value + index so every row is distinguishable."""
    rows = []
    for s in sensors:
        for i, ts in enumerate(times):
            rows.append(
                {
                    "sensor_id": s,
                    "device_id": s.rsplit("-", 1)[0],
                    "sensor_type": s.rsplit("-", 1)[1],
                    "location": "loc-01",
                    "unit": "°C",
                    "timestamp": ts,
                    "value": value + i,
                    "status": "ok",
                    "interpolated": False,
                    "score": 0.5,
                    "is_anomaly": False,
                    "anomaly_kind": None,
                    "features": "{}",
                    "ground_truth": "normal",
                    "kafka_partition": 0,
                    "kafka_offset": i,
                    "ingested_at": T0,
                }
            )
    frame = pd.DataFrame(rows)
    for key, val in extra.items():
        frame[key] = val
    return frame


def seconds(n: int, start: datetime = T0, step_s: float = 1.0) -> list[datetime]:
    return [start + timedelta(seconds=i * step_s) for i in range(n)]


def alert(alert_id: str, **fields: Any) -> dict[str, Any]:
    base = {
        "alert_id": alert_id,
        "device_id": "dev-0001",
        "sensor_ids": ["dev-0001-temperature"],
        "kind": "spike",
        "severity": "warning",
        "score": 7.0,
        "reason": "value jumped",
        "location": "loc-01",
        "opened_at": T0,
        "updated_at": T0,
        "closed_at": None,
        "status": "open",
        "readings": 1,
        "top_features": ["robust_z"],
    }
    base.update(fields)
    return base


# ---- readings ----


def test_upsert_twice_keeps_one_row_per_key_with_latest_values(store: Store) -> None:
    sensors = ["dev-0001-temperature", "dev-0002-humidity"]
    times = seconds(150)  # 300 rows: more updates of existing keys than one FerretDB command can take
    assert store.upsert_readings(readings(sensors, times, value=1.0)) == 300
    assert store.upsert_readings(readings(sensors, times, value=1.0)) == 300
    assert store.count("sensor_metrics") == 300
    newer = readings(sensors, times[10:20], value=500.0, anomaly_kind="spike", is_anomaly=True)
    assert store.upsert_readings(newer) == 20
    assert store.count("sensor_metrics") == 300
    got = store.readings("dev-0002-humidity", limit=1000)
    expected = [1.0 + i for i in range(10)] + [500.0 + i for i in range(10)] + [1.0 + i for i in range(20, 150)]
    assert [r["value"] for r in got] == expected
    assert [r["is_anomaly"] for r in got].count(True) == 10
    assert got[15]["anomaly_kind"] == "spike"
    assert got[0]["anomaly_kind"] is None


def test_duplicate_keys_within_one_batch_keep_the_last(store: Store) -> None:
    frame = pd.concat(
        [readings(["dev-0001-current"], seconds(3), value=1.0), readings(["dev-0001-current"], seconds(3), value=10.0)]
    )
    assert store.upsert_readings(frame) == 3
    assert [r["value"] for r in store.readings("dev-0001-current")] == [10.0, 11.0, 12.0]


def test_reading_positions_are_one_per_measured_row(store: Store) -> None:
    assert store.reading_positions() == []
    measured = readings(["dev-0001-current"], seconds(4), kafka_partition=2)
    interpolated = readings(["dev-0001-current"], seconds(2, T0 + timedelta(seconds=10)), interpolated=True)
    interpolated["kafka_partition"] = interpolated["kafka_offset"] = None
    repeat = readings(["dev-0002-current"], seconds(1), kafka_partition=2)  # claims (2, 0) as well
    store.upsert_readings(pd.concat([measured, interpolated, repeat], ignore_index=True))
    assert sorted(store.reading_positions()) == [(2, 0), (2, 0), (2, 1), (2, 2), (2, 3)]


def test_readings_are_ordered_by_event_time_with_filters_and_pages(store: Store) -> None:
    times = seconds(40)
    frame = readings(["dev-0003-pressure"], times).sample(frac=1.0, random_state=7)  # arrival order shuffled
    store.upsert_readings(frame.iloc[:20])
    store.upsert_readings(frame.iloc[20:])
    got = store.readings("dev-0003-pressure")
    assert [r["timestamp"] for r in got] == times
    assert all(r["timestamp"].tzinfo is not None and r["timestamp"].utcoffset() == timedelta(0) for r in got)
    window = store.readings("dev-0003-pressure", start=times[5], end=times[15])  # [start, end)
    assert [r["timestamp"] for r in window] == times[5:15]
    page = store.readings("dev-0003-pressure", start=times[5], limit=4, offset=3)
    assert [r["timestamp"] for r in page] == times[8:12]
    assert store.readings("dev-9999-pressure") == []


def test_reading_fields_round_trip(store: Store) -> None:
    ts = pd.Timestamp("2026-03-01T12:00:00.123456789Z")  # floored to milliseconds
    frame = readings(["dev-0004-voltage"], [ts.to_pydatetime(warn=False)])
    frame["timestamp"] = pd.Series([ts], dtype="datetime64[ns, UTC]")
    frame["features"] = '{"robust_z": 1.5}'
    frame["kafka_partition"] = 2
    frame["kafka_offset"] = 123456789
    frame["interpolated"] = True
    frame["score"] = np.nan
    store.upsert_readings(frame)
    (row,) = store.readings("dev-0004-voltage")
    assert set(row) == set(READING_COLUMNS)
    assert row["timestamp"] == datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert row["features"] == '{"robust_z": 1.5}'
    assert (row["kafka_partition"], row["kafka_offset"]) == (2, 123456789)
    assert row["interpolated"] is True and row["is_anomaly"] is False
    assert row["score"] is None
    assert row["ingested_at"] == T0


def test_missing_optional_columns_are_null_and_iso_strings_are_accepted(store: Store) -> None:
    frame = pd.DataFrame(
        {
            "sensor_id": ["dev-0005-vibration"] * 2,
            "timestamp": ["2026-03-01T12:00:00Z", "2026-03-01T12:00:01.5Z"],
            "value": [0.5, 0.7],
        }
    )
    assert store.upsert_readings(frame) == 2
    got = store.readings("dev-0005-vibration")
    assert [r["timestamp"] for r in got] == [T0, T0 + timedelta(seconds=1.5)]
    assert got[0]["device_id"] is None and got[0]["score"] is None and got[0]["kafka_offset"] is None


def test_latest_reading_per_sensor_is_by_event_time_not_arrival(store: Store) -> None:
    sensors = ["dev-0001-temperature", "dev-0001-humidity", "dev-0002-temperature"]
    late = seconds(10, start=T0 + timedelta(minutes=5))
    early = seconds(10)
    store.upsert_readings(readings(sensors, late, value=100.0))
    store.upsert_readings(readings(sensors, early, value=0.0))  # arrives last but is older
    latest = store.latest_readings()
    assert [r["sensor_id"] for r in latest] == sorted(sensors)
    assert all(r["timestamp"] == late[-1] and r["value"] == 109.0 for r in latest)


# ---- windows ----


def window_frame(keys: list[tuple[str, str]], starts: list[datetime], *, mean: float = 1.0) -> pd.DataFrame:
    rows = []
    for scope, key in keys:
        for i, start in enumerate(starts):
            rows.append(
                {
                    "scope": scope,
                    "key": key,
                    "sensor_type": "temperature",
                    "location": "loc-01",
                    "window_start": start,
                    "window_end": start + timedelta(minutes=1),
                    "count": 60 + i,
                    "mean": mean + i,
                    "min": 0.0,
                    "max": 2.0 * (mean + i),
                    "stddev": 0.1,
                    "anomaly_count": i % 2,
                }
            )
    return pd.DataFrame(rows)


def test_windows_upsert_filters_and_pages(store: Store) -> None:
    keys = [("sensor", "dev-0001-temperature"), ("type_location", "temperature|loc-01")]
    starts = seconds(10, step_s=60)
    assert store.upsert_windows(window_frame(keys, starts)) == 20
    assert store.upsert_windows(window_frame(keys, starts[:3], mean=50.0)) == 6
    assert store.count("windowed_metrics") == 20
    sensor = store.windows(scope="sensor")
    assert [w["window_start"] for w in sensor] == starts
    assert [w["mean"] for w in sensor[:4]] == [50.0, 51.0, 52.0, 4.0]
    assert sensor[0]["count"] == 60 and sensor[0]["window_end"] == starts[1]
    both = store.windows(start=starts[2], end=starts[5])
    assert [(w["window_start"], w["scope"]) for w in both] == [
        (s, scope) for s in starts[2:5] for scope in ("sensor", "type_location")
    ]
    assert len(store.windows(key="temperature|loc-01", limit=3, offset=8)) == 2
    assert store.windows(scope="sensor", key="nope") == []


# ---- alerts ----


def test_alert_filters_newest_first_and_pagination(store: Store) -> None:
    alerts = [
        alert(
            f"a{i:02d}",
            kind="spike" if i % 2 else "drift",
            severity="critical" if i % 3 == 0 else "warning",
            location=f"loc-0{i % 2 + 1}",
            sensor_ids=[f"dev-000{i % 4}-temperature", "dev-0009-current"],
            opened_at=T0 + timedelta(minutes=i),
            updated_at=T0 + timedelta(minutes=i, seconds=30),
        )
        for i in range(12)
    ]
    assert store.upsert_alerts(alerts) == 12
    assert store.count("anomaly_alerts") == 12
    everything = store.alerts(limit=100)
    assert [a["alert_id"] for a in everything] == [f"a{i:02d}" for i in reversed(range(12))]
    assert [a["alert_id"] for a in store.alerts(limit=5, offset=5)] == ["a06", "a05", "a04", "a03", "a02"]
    assert [a["alert_id"] for a in store.alerts(kind="drift", severity="critical")] == ["a06", "a00"]
    assert [a["alert_id"] for a in store.alerts(sensor_id="dev-0001-temperature")] == ["a09", "a05", "a01"]
    assert len(store.alerts(sensor_id="dev-0009-current")) == 12
    assert [a["alert_id"] for a in store.alerts(location="loc-02", kind="spike", limit=2)] == ["a11", "a09"]
    # [start, end) selects episodes overlapping the range: updated_at >= start and opened_at < end
    got = store.alerts(start=T0 + timedelta(minutes=3), end=T0 + timedelta(minutes=6))
    assert [a["alert_id"] for a in got] == ["a05", "a04", "a03"]
    one = store.alert("a03")
    assert one is not None
    assert one["sensor_ids"] == ["dev-0003-temperature", "dev-0009-current"]
    assert one["top_features"] == ["robust_z"] and one["readings"] == 1 and one["status"] == "open"
    assert store.alert("nope") is None


def test_alert_lifecycle_is_recorded_and_never_moves_backwards(store: Store) -> None:
    store.upsert_alerts([alert("life")])
    acked = store.set_alert_status("life", "acknowledged", by="оператор", note="смотрю")
    assert acked["status"] == "acknowledged"
    assert store.set_alert_status("life", "acknowledged", by="someone")["status"] == "acknowledged"  # no-op
    with pytest.raises(KeyError):
        store.set_alert_status("missing", "acknowledged", by="x")
    resolved = store.set_alert_status("life", "resolved", by="ops", note="replaced bearing")
    assert resolved["status"] == "resolved"
    with pytest.raises(ValueError):
        store.set_alert_status("life", "acknowledged", by="x")
    with pytest.raises(ValueError):
        store.set_alert_status("life", "open", by="x")  # type: ignore[arg-type]
    events = store.alert_events("life")
    assert [(e["event"], e["by"], e["note"]) for e in events] == [
        ("opened", "millrace", ""),
        ("acknowledged", "оператор", "смотрю"),
        ("resolved", "ops", "replaced bearing"),
    ]
    assert events[0]["at"] == T0
    assert all(e["at"].tzinfo is not None for e in events)
    assert store.alerts(status="resolved")[0]["alert_id"] == "life"


def test_operator_status_survives_job_updates(store: Store) -> None:
    store.upsert_alerts([alert("ack"), alert("plain")])
    store.set_alert_status("ack", "acknowledged", by="ops")
    later = T0 + timedelta(minutes=2)
    store.upsert_alerts(
        [
            alert("ack", status="open", updated_at=later, readings=7, score=9.0),
            alert("plain", status="open", updated_at=later, readings=3),
        ]
    )
    ack = store.alert("ack")
    assert ack is not None and ack["status"] == "acknowledged"
    assert (ack["readings"], ack["score"], ack["updated_at"]) == (7, 9.0, later)
    end = T0 + timedelta(minutes=3)
    store.upsert_alerts(
        [alert("ack", status="closed", updated_at=end, closed_at=end), alert("plain", status="closed", updated_at=end)]
    )
    ack, plain = store.alert("ack"), store.alert("plain")
    assert ack is not None and plain is not None
    assert (ack["status"], ack["closed_at"]) == ("acknowledged", end)
    assert (plain["status"], plain["closed_at"]) == ("closed", end)
    # a replayed older job update moves nothing back
    store.upsert_alerts([alert("plain", status="open", updated_at=later)])
    plain = store.alert("plain")
    assert plain is not None and (plain["status"], plain["closed_at"]) == ("closed", end)
    # the operator may still handle a closed episode
    assert store.set_alert_status("plain", "resolved", by="ops")["status"] == "resolved"
    assert [e["event"] for e in store.alert_events("plain")] == ["opened", "closed", "resolved"]
    # events in time order: the job's close (event time) precedes the operator's wall-clock acknowledgement
    assert [e["event"] for e in store.alert_events("ack")] == ["opened", "closed", "acknowledged"]
    assert store.count("alert_events") == 6


def test_job_may_reject_operator_statuses(store: Store) -> None:
    with pytest.raises(ValueError):
        store.upsert_alerts([alert("bad", status="acknowledged")])
    assert store.count("anomaly_alerts") == 0


# ---- quality, sensor status ----


def test_quality_totals_sum_batches_and_a_replayed_batch_replaces(store: Store) -> None:
    store.record_quality(0, {"valid": 100, "invalid_range": 3, "duplicates": 2})
    store.record_quality(1, {"valid": 50, "late": 1})
    assert store.quality_totals() == {"duplicates": 2, "invalid_range": 3, "late": 1, "valid": 150}
    store.record_quality(1, {"valid": 40, "interpolated": 4})  # replay of batch 1 after a crash
    assert store.quality_totals() == {"duplicates": 2, "interpolated": 4, "invalid_range": 3, "valid": 140}
    assert store.count("data_quality") == 5


def test_sensor_status_newest_report_wins(store: Store) -> None:
    row = {
        "sensor_id": "dev-0001-temperature",
        "device_id": "dev-0001",
        "sensor_type": "temperature",
        "location": "loc-01",
        "last_event_time": T0,
        "state": "active",
        "expected_interval_s": 1.0,
        "updated_at": T0 + timedelta(seconds=5),
    }
    assert store.upsert_sensor_status([row, dict(row, sensor_id="dev-0002-temperature")]) == 2
    store.upsert_sensor_status([dict(row, state="inactive", updated_at=T0 + timedelta(seconds=90))])
    store.upsert_sensor_status([dict(row, state="active", updated_at=T0 + timedelta(seconds=1))])  # stale replay
    got = store.sensor_status()
    assert [(s["sensor_id"], s["state"]) for s in got] == [
        ("dev-0001-temperature", "inactive"),
        ("dev-0002-temperature", "active"),
    ]
    assert got[0]["updated_at"] == T0 + timedelta(seconds=90) and got[0]["last_event_time"] == T0
    assert got[1]["expected_interval_s"] == 1.0


# ---- housekeeping ----


def test_retention_deletes_only_old_rows(store: Store) -> None:
    now = T0 + timedelta(days=10)
    old, new = T0, now - timedelta(days=1)
    store.upsert_readings(readings(["dev-0001-temperature"], seconds(5, start=old)))
    store.upsert_readings(readings(["dev-0001-temperature"], seconds(3, start=new)))
    store.upsert_windows(window_frame([("sensor", "dev-0001-temperature")], [old, new]))
    store.upsert_alerts([alert("old"), alert("new", opened_at=new, updated_at=new)])
    store.set_alert_status("old", "acknowledged", by="ops")
    status = {"sensor_id": "s-old", "last_event_time": old, "state": "inactive", "updated_at": old}
    store.upsert_sensor_status([status, dict(status, sensor_id="s-new", last_event_time=new, updated_at=new)])
    store.record_quality(1, {"valid": 5})  # recorded now (wall clock): newer than any cutoff here
    deleted = store.apply_retention(now, 7.0)
    assert deleted == {
        "sensor_metrics": 5,
        "anomaly_alerts": 1,
        "alert_events": 2,
        "windowed_metrics": 1,
        "data_quality": 0,
        "sensor_status": 1,
        "shop_analytics": 0,
    }
    assert [r["timestamp"] for r in store.readings("dev-0001-temperature")] == seconds(3, start=new)
    assert [a["alert_id"] for a in store.alerts()] == ["new"]
    assert store.alert_events("old") == []
    assert [w["window_start"] for w in store.windows()] == [new]
    assert [s["sensor_id"] for s in store.sensor_status()] == ["s-new"]
    assert [r["timestamp"] for r in store.latest_readings()] == [new + timedelta(seconds=2)]
    again = store.apply_retention(now, 7.0, per_collection={"sensor_metrics": 0.5})
    assert again["sensor_metrics"] == 3 and again["anomaly_alerts"] == 0
    assert store.latest_readings() == []
    with pytest.raises(KeyError):
        store.apply_retention(now, 7.0, per_collection={"nope": 1.0})


def test_counts_and_unknown_collection(store: Store) -> None:
    assert {name: store.count(name) for name in COLLECTIONS} == dict.fromkeys(COLLECTIONS, 0)
    with pytest.raises(KeyError):
        store.count("sensor_metrics; DROP TABLE x")


def test_non_ascii_strings_round_trip(store: Store) -> None:
    sensor = "цех-1-temperature"
    frame = readings([sensor], seconds(2), location="Цех №1 — печь", status="норма")
    frame["features"] = '{"z": 1.0, "примечание": "тест"}'
    store.upsert_readings(frame)
    got = store.readings(sensor)
    assert [(r["location"], r["status"], r["unit"]) for r in got] == [("Цех №1 — печь", "норма", "°C")] * 2
    assert got[0]["features"] == '{"z": 1.0, "примечание": "тест"}'
    assert store.latest_readings()[0]["sensor_id"] == sensor
    store.upsert_alerts([alert("тревога-1", reason="резкий скачок температуры", sensor_ids=[sensor])])
    found = store.alerts(sensor_id=sensor)
    assert [(a["alert_id"], a["reason"]) for a in found] == [("тревога-1", "резкий скачок температуры")]
    store.record_quality(3, {"недопустимо": 2})
    assert store.quality_totals() == {"недопустимо": 2}


# ---- concurrency ----

WRITER_BATCHES = 5
WRITER_ROWS = 60  # rows per batch, per sensor


def _writer(state_dir: str, store_settings: dict[str, Any], writer: int) -> None:
    """A separate process: writes its own sensors plus keys shared with the other writer."""
    st = open_store(load_settings(state_dir=Path(state_dir), store=store_settings))
    try:
        for batch in range(WRITER_BATCHES):
            start = T0 + timedelta(seconds=batch * WRITER_ROWS)
            times = seconds(WRITER_ROWS, start=start)
            st.upsert_readings(readings([f"w{writer}-temperature", "shared-temperature"], times))
            st.record_quality(writer * 1000 + batch, {"valid": 2 * WRITER_ROWS})
    finally:
        st.close()


def test_concurrent_writer_processes_and_a_reader_lose_nothing(store: Store, backend: tuple[str, Settings]) -> None:
    ctx = multiprocessing.get_context("spawn")
    settings = backend[1]
    args = (str(settings.state_dir), settings.store.model_dump(mode="json"))
    writers = [ctx.Process(target=_writer, args=(*args, w)) for w in (1, 2)]
    for proc in writers:
        proc.start()
    seen = []
    deadline = time.monotonic() + 180
    while any(proc.is_alive() for proc in writers):  # the reader: counts never go down, never fail
        seen.append(store.count("sensor_metrics"))
        store.latest_readings()
        if time.monotonic() > deadline:
            for proc in writers:
                proc.kill()
            raise AssertionError("the writer processes did not finish within 180 s")
    for proc in writers:
        proc.join(timeout=10)
        assert proc.exitcode == 0
    per_sensor = WRITER_BATCHES * WRITER_ROWS
    assert seen == sorted(seen)
    assert store.count("sensor_metrics") == 3 * per_sensor
    for sensor in ("w1-temperature", "w2-temperature", "shared-temperature"):
        got = store.readings(sensor, limit=per_sensor + 10)
        assert [r["timestamp"] for r in got] == seconds(per_sensor, start=T0)
    assert store.quality_totals() == {"valid": 2 * 2 * WRITER_BATCHES * WRITER_ROWS}


def test_sqlite_store_is_shared_by_threads(tmp_path: Path) -> None:
    import threading

    st = SqliteStore(tmp_path / "threads.db")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for b in range(5):
                st.upsert_readings(readings([f"t{n}-current"], seconds(40, start=T0 + timedelta(minutes=b))))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert st.count("sensor_metrics") == 4 * 5 * 40
    st.close()


def test_random_replays_converge_to_one_row_per_reading(store: Store) -> None:
    """Replaying overlapping batches in random order (a crash and restart) ends with exactly the readings."""
    sensors = ["dev-0001-temperature", "dev-0001-current"]
    frame = readings(sensors, seconds(120))
    rng = random.Random(3)
    for _ in range(6):
        lo = rng.randrange(0, 200)
        store.upsert_readings(frame.iloc[lo : lo + 60])
    store.upsert_readings(frame)
    assert store.count("sensor_metrics") == 240
    assert [r["value"] for r in store.readings("dev-0001-current")] == [1.0 + i for i in range(120)]
