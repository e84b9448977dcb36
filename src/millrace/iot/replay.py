"""Replay a recorded data set (see :mod:`millrace.iot.tabular`) to Kafka with its original timing.

Readings go out in file order. With ``speed`` > 0 a reading recorded ``dt`` after the first one is sent
``dt / speed`` after the start (1 = real time, 10 = ten times faster); readings whose time is earlier than
an already sent one go out at once (the data set's own disorder is kept). ``speed`` 0 sends as fast as
possible. Every bad row becomes a dead letter (reason, ``row N``, raw text) on the dead-letter topic at its
place in the file order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd

from millrace import telemetry
from millrace.iot.live_stats import LiveStats
from millrace.iot.messages import Message
from millrace.iot.sinks import KafkaSink
from millrace.iot.tabular import TableReadings
from millrace.records import GENERIC_TYPE, DeadLetter, SensorReading

UNLABELLED = "unlabelled"
DEAD_LETTER_KIND = "dead_letter"


@dataclass
class ReplayResult:
    readings: int = 0
    dead_letters: int = 0
    stopped: bool = False
    max_behind_s: float = 0.0  # worst lag behind the scaled schedule


def types_without_range(table: TableReadings, ranged: Collection[str]) -> list[str]:
    """The sensor types of ``table`` the stream job dead-letters as unknown_sensor_type: those with no range
    among ``ranged`` (processing.ranges) other than the generic type, which declares that it has none."""
    return sorted(set(table.frame["sensor_type"].astype(str)) - set(ranged) - {GENERIC_TYPE})


def reading_messages(frame: pd.DataFrame) -> list[Message]:
    """Encode a tabular frame's rows as reading messages (key sensor_id, value SensorReading JSON)."""
    out = []
    labels = frame["ground_truth"] if "ground_truth" in frame else pd.Series(None, index=frame.index)
    for row, label in zip(frame.itertuples(index=False), labels, strict=True):
        gt = None if label is None or (isinstance(label, float) and np.isnan(label)) else str(label)
        reading = SensorReading(
            sensor_id=row.sensor_id,
            device_id=row.device_id,
            sensor_type=row.sensor_type,
            value=float(row.value),
            unit=row.unit,
            location=row.location,
            timestamp=row.timestamp.to_pydatetime(),
            ground_truth=gt,
        )
        out.append(
            Message(
                row.sensor_id,
                orjson.dumps(reading.to_dict()),
                row.sensor_type,
                gt or UNLABELLED,
                row.location,
                row.device_id,
            )
        )
    return out


def replay(
    table: TableReadings,
    sink: KafkaSink,
    *,
    source: str,
    speed: float = 0.0,
    live: LiveStats | None = None,
    stop: threading.Event | None = None,
    chunk: int = 5000,
) -> ReplayResult:
    """Send ``table``'s readings and dead letters through ``sink``; returns what was sent (flush after)."""
    stop = stop or threading.Event()
    result = ReplayResult()
    frame = table.frame
    bad = sorted(table.bad_rows)
    next_bad = 0
    times_s = frame["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9
    rows = frame["row"].to_numpy()
    t0_event = float(times_s[0]) if len(frame) else 0.0
    t0_wall = time.monotonic()

    def send_dead_letters(up_to_row: float) -> None:
        nonlocal next_bad
        while next_bad < len(bad) and bad[next_bad][0] < up_to_row:
            number, reason, raw = bad[next_bad]
            position = f"row {number}"
            letter = DeadLetter(reason=reason, stage="replay", source=source, position=position, raw=raw)
            sink.produce(sink.dead_letter_topic, orjson.dumps(letter.to_dict()), position)
            if live is not None:
                live.record(Message(position, b"", "(bad row)", DEAD_LETTER_KIND, "", ""))
            result.dead_letters += 1
            telemetry.DEAD_LETTERS.labels("bad_row").inc()  # the row's own reason text names columns
            next_bad += 1

    for begin in range(0, len(frame), chunk):
        messages = reading_messages(frame.iloc[begin : begin + chunk])
        for offset, msg in enumerate(messages):
            i = begin + offset
            if speed > 0:
                target = t0_wall + (times_s[i] - t0_event) / speed
                while (ahead := target - time.monotonic()) > 0 and not stop.is_set():
                    sink.poll()
                    stop.wait(min(ahead, 0.05))
                result.max_behind_s = max(result.max_behind_s, time.monotonic() - target)
            if stop.is_set():
                result.stopped = True
                return result
            send_dead_letters(rows[i])
            sink.send(msg)
            if live is not None:
                live.record(msg)
            result.readings += 1
    send_dead_letters(float("inf"))
    return result
