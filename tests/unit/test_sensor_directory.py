"""The service's shared sensor list: computed once, served at once, refreshed in the background."""

from __future__ import annotations

import threading
from typing import Any

from millrace.services.api import SensorDirectory
from tests.helpers import wait_for


class CountingStore:
    """latest_readings/sensor_status of a store whose value goes up by one on each read."""

    def __init__(self) -> None:
        self.reads = 0
        self.started = 0
        self.release = threading.Event()
        self.release.set()

    def latest_readings(self) -> list[dict[str, Any]]:
        self.started += 1
        self.release.wait(10)
        self.reads += 1
        return [{"sensor_id": "s-1", "value": float(self.reads), "features": "{}"}]

    def sensor_status(self) -> list[dict[str, Any]]:
        return [{"sensor_id": "s-1", "state": "active", "last_event_time": None}]


def test_first_call_computes_then_serves_the_copy() -> None:
    store = CountingStore()
    directory = SensorDirectory(fresh_s=60, max_age_s=120)
    first = directory.get(store)  # type: ignore[arg-type]
    assert first == [{"sensor_id": "s-1", "value": 1.0, "state": "active", "last_event_time": None}]
    first[0]["value"] = -1.0  # callers get copies
    assert directory.get(store)[0]["value"] == 1.0 and store.reads == 1  # type: ignore[arg-type]


def test_stale_copy_is_served_while_one_refresh_runs() -> None:
    store = CountingStore()
    directory = SensorDirectory(fresh_s=0, max_age_s=120)
    assert directory.get(store)[0]["value"] == 1.0  # type: ignore[arg-type]
    store.release.clear()  # the refresh blocks inside the store
    assert directory.get(store)[0]["value"] == 1.0  # type: ignore[arg-type]
    assert directory.get(store)[0]["value"] == 1.0  # type: ignore[arg-type]
    wait_for(lambda: store.started == 2, timeout_s=5, what="the refresh to start")
    assert directory.get(store)[0]["value"] == 1.0 and store.started == 2  # type: ignore[arg-type]  # just one
    store.release.set()
    wait_for(lambda: directory.get(store)[0]["value"] == 2.0, timeout_s=5, what="the background refresh")  # type: ignore[arg-type]
    assert store.reads in (2, 3)  # the refresh, plus at most one started by the polling above


def test_too_old_copy_waits_for_a_fresh_one() -> None:
    store = CountingStore()
    directory = SensorDirectory(fresh_s=0, max_age_s=0)
    assert [directory.get(store)[0]["value"] for _ in range(3)] == [1.0, 2.0, 3.0]  # type: ignore[arg-type]
