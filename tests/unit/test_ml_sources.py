"""``ml train --source store`` trains on the most recent window of readings (a real SQLite store)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from millrace.config import Settings, load_settings
from millrace.errors import DataError, UsageError
from millrace.ml import sources
from millrace.ml.sources import store_readings
from millrace.stores.sqlite import SqliteStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def readings(sensor: str, start: pd.Timestamp, hours: int, *, interpolated: set[int] = frozenset()) -> pd.DataFrame:  # type: ignore[assignment]
    """One reading an hour; ``value`` is the hour's number since T0, so a row says where it came from."""
    times = pd.date_range(start, periods=hours, freq="h")
    device, _, kind = sensor.rpartition("-")
    return pd.DataFrame(
        {
            "sensor_id": sensor,
            "device_id": device,
            "sensor_type": kind,
            "location": "loc-01",
            "timestamp": times,
            "value": ((times - pd.Timestamp(T0)) / pd.Timedelta(hours=1)).astype(float),
            "interpolated": [i in interpolated for i in range(hours)],
        }
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(state_dir=tmp_path, store={"backend": "sqlite"})


def fill(settings: Settings, *frames: pd.DataFrame) -> None:
    store = SqliteStore(settings.sqlite_path)
    try:
        for frame in frames:
            store.upsert_readings(frame)
    finally:
        store.close()


def used(frame: pd.DataFrame) -> dict[str, list[float]]:
    return {sid: sorted(group["value"].tolist()) for sid, group in frame.groupby("sensor_id")}


def test_the_window_ends_at_the_newest_reading_of_any_sensor(settings: Settings) -> None:
    # Three days of hourly readings for one sensor, the last two days for another (ending 5 h earlier), and a
    # third sensor that stopped reporting long before: nothing of it is in the window.
    fill(
        settings,
        readings("dev-1-temperature", pd.Timestamp(T0), 72),  # hours 0..71
        readings("dev-2-pressure", pd.Timestamp(T0) + pd.Timedelta(hours=19), 48),  # hours 19..66
        readings("dev-3-vibration", pd.Timestamp(T0), 10),  # hours 0..9
    )
    frame = store_readings(settings, window_hours=24)
    # newest reading: hour 71; the window is [47, 71], its start included
    assert used(frame) == {
        "dev-1-temperature": [float(h) for h in range(47, 72)],
        "dev-2-pressure": [float(h) for h in range(47, 67)],
    }
    assert list(frame.columns) == list(sources.COLUMNS)
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert frame["timestamp"].min() == pd.Timestamp(T0) + pd.Timedelta(hours=47)


def test_the_default_window_is_24_hours(settings: Settings) -> None:
    fill(settings, readings("dev-1-temperature", pd.Timestamp(T0), 100))
    assert sources.DEFAULT_WINDOW_HOURS == 24.0
    assert used(store_readings(settings)) == {"dev-1-temperature": [float(h) for h in range(75, 100)]}


def test_the_cap_keeps_each_sensors_newest_readings_across_pages(settings: Settings, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(sources, "PAGE", 7)  # several pages per sensor
    fill(settings, readings("dev-1-temperature", pd.Timestamp(T0), 50), readings("dev-2-current", pd.Timestamp(T0), 20))
    frame = store_readings(settings, window_hours=1000, per_sensor=16)
    assert used(frame) == {
        "dev-1-temperature": [float(h) for h in range(34, 50)],
        "dev-2-current": [float(h) for h in range(4, 20)],
    }


def test_interpolated_readings_are_left_out(settings: Settings) -> None:
    fill(settings, readings("dev-1-temperature", pd.Timestamp(T0), 30, interpolated={27, 29}))
    frame = store_readings(settings, window_hours=5)
    assert used(frame) == {"dev-1-temperature": [24.0, 25.0, 26.0, 28.0]}
    assert np.isin([27.0, 29.0], frame["value"]).sum() == 0


def test_an_empty_store_or_window_and_a_bad_window(settings: Settings) -> None:
    with pytest.raises(DataError, match="the store has no readings yet"):
        store_readings(settings)
    fill(settings, readings("dev-1-temperature", pd.Timestamp(T0), 3, interpolated={0, 1, 2}))
    with pytest.raises(DataError, match="no measured readings in the 24 h before its newest one"):
        store_readings(settings)
    with pytest.raises(UsageError, match="^--window: expected hours > 0"):
        store_readings(settings, window_hours=0)
