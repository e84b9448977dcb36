"""Data faults injected into the simulator's message stream on request (per-reading probabilities).

- ``duplicate``: the same key and value sent again a few messages later (the copy is the fault);
- ``out_of_order``: the reading is held back by 2-5 steps, behind newer readings of its sensor (within the
  usual allowed lateness);
- ``late``: held back by ``late_by_s`` of event time (beyond the usual allowed lateness);
- ``malformed``: the payload is broken, cycling through :data:`MALFORMED_VARIANTS`;
- ``impossible``: a physically impossible value for the sensor type (e.g. -300 degC, 150 % humidity);
- ``future``: the event time lies ``future_by_s`` ahead of the wall clock at start.

A faulty message's ``kind`` is ``"fault:<name>"``; a row gets at most one fault (first in the order
malformed, impossible, future, late, out_of_order; duplicate may come on top).
"""

from __future__ import annotations

import heapq
import itertools
from datetime import UTC, datetime

import numpy as np
import orjson

from millrace.iot.fleet import Fleet, FleetConfig
from millrace.iot.messages import Message, MessageBatch

MALFORMED_VARIANTS: tuple[str, ...] = (
    "bad_json",  # truncated JSON text
    "wrong_type",  # value is a string, not a number
    "missing_field",  # a required field (value, timestamp or sensor_type) is absent
    "bad_timestamp",  # timestamp is not ISO 8601
    "not_object",  # valid JSON, but an array instead of an object
    "not_utf8",  # bytes that are not UTF-8 text
)
IMPOSSIBLE: dict[str, tuple[float, float]] = {  # two impossible values per type (below / above physics)
    "temperature": (-300.0, 2000.0),
    "humidity": (-20.0, 150.0),
    "pressure": (-5.0, 20000.0),
    "vibration": (-3.0, 5000.0),
    "voltage": (-500.0, 100000.0),
    "current": (-400.0, 50000.0),
}
_REPLACING = ("malformed", "impossible", "future")
_MOVING = ("late", "out_of_order")


def classify_malformed(value: bytes) -> str:
    """Which MALFORMED_VARIANTS entry a payload shows, or "ok" for a well-formed reading."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "bad_json"
    if not isinstance(data, dict):
        return "not_object"
    if any(name not in data for name in ("value", "timestamp", "sensor_type")):
        return "missing_field"
    if not isinstance(data["value"], int | float) or isinstance(data["value"], bool):
        return "wrong_type"
    try:
        datetime.fromisoformat(str(data["timestamp"]).replace("Z", "+00:00"))
    except ValueError:
        return "bad_timestamp"
    return "ok"


class FaultInjector:
    """Applies faults batch by batch; held-back messages are released by stream position."""

    def __init__(self, cfg: FleetConfig, fleet: Fleet) -> None:
        self.cfg = cfg
        self.rates = np.array([cfg.fault_rates[name] for name in (*_REPLACING, *_MOVING, "duplicate")])
        self.sensors = cfg.sensors
        self.now_ms = int(datetime.now(UTC).timestamp() * 1000)
        self.position = 0  # messages seen so far (the stream position of the next input message)
        self.pending: list[tuple[int, int, Message]] = []  # (release position, tie-breaker, Message)
        self._tie = itertools.count()
        self._variant = itertools.cycle(MALFORMED_VARIANTS)

    def apply(self, batch: MessageBatch, rng: np.random.Generator) -> MessageBatch:
        n = len(batch)
        hits = rng.random((n, len(self.rates))) < self.rates[None, :]
        faulty = set(np.flatnonzero(hits.any(axis=1)).tolist())
        out = MessageBatch()
        for i, msg in enumerate(batch):
            pos = self.position + i
            while self.pending and self.pending[0][0] <= pos:
                out.append(heapq.heappop(self.pending)[2])
            if i not in faulty:
                out.append(msg)
                continue
            row = hits[i]
            out_msg: Message | None = msg
            if row[0]:
                out_msg = msg._replace(value=self._malformed(msg.value), kind="fault:malformed")
            elif row[1]:
                low, high = IMPOSSIBLE[msg.sensor_type]
                out_msg = self._with(msg, "fault:impossible", value=low if rng.random() < 0.5 else high)
            elif row[2]:
                ahead_ms = int(rng.uniform(*self.cfg.future_by_s) * 1000)
                stamp = np.datetime_as_string(np.datetime64(self.now_ms + ahead_ms, "ms"), unit="ms") + "Z"
                out_msg = self._with(msg, "fault:future", timestamp=stamp)
            elif row[3]:
                delay_steps = rng.uniform(*self.cfg.late_by_s) / self.cfg.interval_s
                self._hold(pos + int(delay_steps * self.sensors) + 1, self._relabel(msg, "fault:late"))
                out_msg = None
            elif row[4]:
                delay = int(rng.integers(2, 6)) * self.sensors
                self._hold(pos + delay, self._relabel(msg, "fault:out_of_order"))
                out_msg = None
            if out_msg is not None:
                out.append(out_msg)
                if row[5]:
                    self._hold(pos + int(rng.integers(1, 20)), self._relabel(out_msg, "fault:duplicate"))
        self.position += n
        return out

    def drain(self) -> MessageBatch:
        """Everything still held back, in release order (call at the end of the run)."""
        out = MessageBatch()
        while self.pending:
            out.append(heapq.heappop(self.pending)[2])
        return out

    def _hold(self, release: int, msg: Message) -> None:
        heapq.heappush(self.pending, (release, next(self._tie), msg))

    @staticmethod
    def _relabel(msg: Message, kind: str) -> Message:
        return msg._replace(kind=kind)

    @staticmethod
    def _with(msg: Message, kind: str, **changes: object) -> Message:
        data = orjson.loads(msg.value)
        data.update(changes)
        return msg._replace(value=orjson.dumps(data), kind=kind)

    def _malformed(self, value: bytes) -> bytes:
        variant = next(self._variant)
        if variant == "bad_json":
            return value[: len(value) // 2]
        if variant == "not_utf8":
            return b"\xff\xfe" + value[:20] + b"\xc3\x28"
        data = orjson.loads(value)
        if variant == "wrong_type":
            data["value"] = f"{data['value']}!"
        elif variant == "missing_field":
            del data[("value", "timestamp", "sensor_type")[len(value) % 3]]
        elif variant == "bad_timestamp":
            data["timestamp"] = "yesterday at noon"
        elif variant == "not_object":
            return orjson.dumps([data])
        return orjson.dumps(data)
