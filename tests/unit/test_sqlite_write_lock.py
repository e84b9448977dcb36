"""The SQLite store's writers queue on the write lock: a write waits for another connection's transaction,
starts as soon as it ends, and fails with StoreUnavailable once the busy timeout has passed."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from millrace.errors import StoreUnavailable
from millrace.stores.sqlite import SqliteStore

STATUS = {"sensor_id": "dev-0001-temperature", "device_id": "dev-0001", "state": "active"}


def _holder(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")  # another process's write transaction
    return conn


def test_a_write_starts_right_after_the_lock_is_released(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", busy_timeout_s=10.0)
    holder = _holder(tmp_path / "s.db")
    released = threading.Event()
    release_at: list[float] = []

    def release() -> None:
        release_at.append(time.monotonic())
        holder.execute("COMMIT")
        released.set()

    timer = threading.Timer(0.3, release)
    timer.start()
    assert store.upsert_sensor_status([STATUS]) == 1
    done = time.monotonic()
    assert released.wait(5)
    # SQLite's own busy handler would sleep in steps of up to 100 ms; the store retries every millisecond
    assert done - release_at[0] < 0.08
    lock_wait, _, _ = store.last_write_s() or (0.0, 0.0, 0.0)
    assert lock_wait >= 0.25
    assert [r["sensor_id"] for r in store.sensor_status()] == ["dev-0001-temperature"]
    # the connection's busy timeout is back for the statements that rely on it
    assert store._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    store.close()


def test_a_write_fails_once_the_busy_timeout_passed(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", busy_timeout_s=0.2)
    holder = _holder(tmp_path / "s.db")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="locked"):
        store.upsert_sensor_status([STATUS])
    assert 0.2 <= time.monotonic() - started < 2.0
    holder.execute("ROLLBACK")
    assert store.upsert_sensor_status([STATUS]) == 1
    store.close()
