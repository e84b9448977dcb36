"""The driver's foreachBatch writer (jobs.writers.BatchWriter) on a fake store and producer, and the progress
mirror's construction (jobs.progress.progress_offsets), from the narrow settings each takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from millrace.config import KafkaSettings, ProcessingSettings, TopicSettings
from millrace.jobs.progress import ProgressOffsets, progress_offsets
from millrace.jobs.writers import BatchWriter
from millrace.processing.output import frame, payload_rows, window_rows

T0 = pd.Timestamp("2026-03-01T12:00:00", tz="UTC")


class FakeStore:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def upsert_windows(self, windows: pd.DataFrame) -> int:
        self.calls.append(("windows", windows))
        return len(windows)

    def upsert_sensor_status(self, statuses: list[dict[str, Any]]) -> int:
        self.calls.append(("status", statuses))
        return len(statuses)

    def record_quality(self, batch_id: int, quality: dict[str, int]) -> None:
        self.calls.append(("quality", (batch_id, dict(quality))))

    def close(self) -> None:
        self.calls.append(("close", None))


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, Any]] = []

    def produce(self, topic: str, value: bytes, key: Any = None) -> None:
        self.sent.append((topic, value, key))

    def flush(self, timeout_s: float = 60.0) -> int:
        return 0


def step_rows() -> pd.DataFrame:
    readings = pd.DataFrame(
        {
            "sensor_id": ["dev-0001-temperature"] * 3,
            "sensor_type": "temperature",
            "location": "loc-01",
            "timestamp": T0 + pd.to_timedelta([0, 10, 70], unit="s"),
            "value": [20.0, 22.0, 30.0],
            "is_anomaly": [False, False, True],
            "interpolated": False,
        }
    )
    status = {"sensor_id": "dev-0001-temperature", "device_id": "dev-0001", "state": "active"}
    dead = {"reason": "malformed", "stage": "validation", "source": "r", "position": "0:7", "raw": "{", "at": "x"}
    quality = frame({"out": ["quality"], "payload": [orjson.dumps({"valid": 3, "invalid": 1}).decode()]}, 1)
    return pd.concat(
        [
            window_rows(readings, 60),
            payload_rows("status", [status], ["dev-0001"]),
            payload_rows("dead", [dead]),
            payload_rows("alert_sent", [{"kind": "spike", "severity": "critical"}]),
            quality,
        ],
        ignore_index=True,
    )


def test_the_writer_stores_then_produces_what_the_step_left(tmp_path: Path) -> None:
    store, producer, topics = FakeStore(), FakeProducer(), TopicSettings()
    writer = BatchWriter(
        store,  # type: ignore[arg-type]
        producer,  # type: ignore[arg-type]
        processing=ProcessingSettings(window_s=60),
        topics=topics,
        store_backend="sqlite",
        ledger_path=tmp_path / "windows.db",
    )
    stats = writer.write(step_rows(), 4)
    assert (stats.input_rows, stats.readings, stats.dead_letters, stats.alerts) == (4, 3, 1, 1)
    assert [kind for kind, _ in store.calls] == ["windows", "status", "quality"]
    windows = store.calls[0][1]
    sensor = windows[windows["scope"] == "sensor"].sort_values("window_start")
    assert sensor["count"].tolist() == [2, 1] and sensor["mean"].tolist() == [21.0, 30.0]
    assert store.calls[2][1] == (4, {"valid": 3, "invalid": 1, "input": 4})
    by_topic = [t for t, _, _ in producer.sent]
    assert by_topic == [topics.windowed_metrics] * len(windows) + [topics.dead_letter, topics.quality]
    assert producer.sent[-2][2] == "0:7" and orjson.loads(producer.sent[-1][1])["batch_id"] == 4
    writer.close()
    assert store.calls[-1] == ("close", None)


def test_the_progress_mirror_is_off_without_a_group() -> None:
    assert progress_offsets(KafkaSettings(), "") is None
    mirror = progress_offsets(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "millrace-iot-process")
    assert isinstance(mirror, ProgressOffsets)
    assert mirror.committer.group_id == "millrace-iot-process"  # type: ignore[attr-defined]
