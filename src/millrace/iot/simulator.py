"""The device-fleet simulator: labelled readings as a DataFrame (training, evaluation) or as Kafka messages.

Time advances in *steps*: at every step each sensor takes one reading (``interval_s`` of event time apart),
devices staggered within the step. Steps are generated in fixed-size chunks, each with its own random
generator derived from the seed, so the data depend only on the :class:`FleetConfig` - not on how much of it
is asked for. Messages are encoded column-wise with Arrow (no per-reading Python dict), which is what lets
one core produce several hundred thousand readings per second.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from millrace.iot.anomalies import LABELS, AnomalySchedule
from millrace.iot.faults import FaultInjector
from millrace.iot.fleet import Fleet, FleetConfig
from millrace.iot.messages import Message, MessageBatch
from millrace.records import UNITS

__all__ = ["FleetConfig", "Message", "MessageBatch", "Simulator", "simulate_frame"]

# Readings per generated chunk (rounded to whole steps). Part of the data's definition: changing it changes
# the random draws, so it is a constant, not an option.
_CHUNK_READINGS = 60_000
_LOW_BATTERY = 15.0


@dataclass
class _Chunk:
    """Emitted readings of one chunk, in production order, as arrays."""

    sensor: np.ndarray  # int, index into the fleet's sensors
    step: np.ndarray  # int64, global step (the reading's seq)
    time_ms: np.ndarray  # int64, event time
    value: np.ndarray  # float64, rounded to 3 decimals
    label: np.ndarray  # int8, index into LABELS
    battery: np.ndarray  # float64
    time_index: np.ndarray  # int, index of the reading's time in grid_ms
    grid_ms: np.ndarray  # int64, event times of the chunk's (step, device) grid, flattened

    def head(self, n: int) -> _Chunk:
        return _Chunk(
            self.sensor[:n],
            self.step[:n],
            self.time_ms[:n],
            self.value[:n],
            self.label[:n],
            self.battery[:n],
            self.time_index[:n],
            self.grid_ms,
        )


class Simulator:
    """Generates a fleet's readings. ``duration_s`` or ``count`` (readings, before faults) bound the run;
    with neither it runs until the consumer of :meth:`messages` stops."""

    def __init__(
        self,
        cfg: FleetConfig,
        *,
        duration_s: float | None = None,
        count: int | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.cfg = cfg
        self.count = count
        # Shard (i, n): only devices with index % n == i (for parallel producers). Every shard draws the whole
        # fleet, so the union of all shards is exactly the unsharded data.
        self.shard = shard
        if not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard {shard} must be (i, n) with 0 <= i < n")
        # A count bounds the run by readings (dropouts emit none), so its step total is open.
        self.steps: int | None = max(1, math.ceil(duration_s / cfg.interval_s)) if duration_s is not None else None
        span_steps = self.steps if self.steps is not None else math.ceil((count or 0) / cfg.sensors)
        start = cfg.start or datetime.now(UTC) - timedelta(seconds=span_steps * cfg.interval_s)
        self.fleet = Fleet(cfg, start)
        self.chunk_steps = max(1, _CHUNK_READINGS // cfg.sensors)
        self._static = _StaticParts(self.fleet)

    @property
    def start(self) -> datetime:
        return self.fleet.start

    def _chunks(self) -> Iterator[_Chunk]:
        fleet, cfg = self.fleet, self.cfg
        schedule = AnomalySchedule(fleet)
        n_sensors = cfg.sensors
        produced, chunk_no = 0, 0
        while True:
            step0 = chunk_no * self.chunk_steps
            steps = self.chunk_steps
            if self.steps is not None:
                steps = min(steps, self.steps - step0)
                if steps <= 0:
                    return
            # Draws are made for a full chunk even when the run ends inside it, so a shorter run is an
            # exact prefix of a longer one.
            rng = np.random.default_rng([cfg.seed, 1, chunk_no])
            values, t_ms = fleet.normal(step0, self.chunk_steps, rng)
            schedule.schedule(step0, self.chunk_steps, rng)
            labels, emitted = schedule.apply(step0, values, rng)
            values, t_ms, labels, emitted = values[:steps], t_ms[:steps], labels[:steps], emitted[:steps]
            values = np.round(fleet.clip(values), 3)
            battery = fleet.battery(t_ms)
            idx = np.flatnonzero(emitted.ravel())
            sensor = idx % n_sensors
            local_step = idx // n_sensors
            device = fleet.sensor_device[sensor]
            time_index = local_step * cfg.devices + device
            grid_ms = t_ms.ravel()
            chunk = _Chunk(
                sensor=sensor,
                step=local_step + step0,
                time_ms=grid_ms[time_index],
                time_index=time_index,
                grid_ms=grid_ms,
                value=values.ravel()[idx],
                label=labels.ravel()[idx],
                battery=battery[local_step, device],
            )
            last = self.count is not None and produced + len(idx) >= self.count
            if last:
                chunk = chunk.head(self.count - produced)  # type: ignore[operator]
            produced += len(idx)
            yield self._shard(chunk)
            if last:
                return
            chunk_no += 1

    def _shard(self, chunk: _Chunk) -> _Chunk:
        index, of = self.shard
        if of == 1:
            return chunk
        keep = self.fleet.sensor_device[chunk.sensor] % of == index
        return _Chunk(
            chunk.sensor[keep],
            chunk.step[keep],
            chunk.time_ms[keep],
            chunk.value[keep],
            chunk.label[keep],
            chunk.battery[keep],
            chunk.time_index[keep],
            chunk.grid_ms,
        )

    def frame(self) -> pd.DataFrame:
        """All readings as a long DataFrame (clean: no faults). Needs a bounded run."""
        if self.steps is None and self.count is None:
            raise ValueError("simulate_frame needs duration_s or count")
        parts = [self._frame(chunk) for chunk in self._chunks()]
        if not parts:
            empty = (np.array([], dtype=d) for d in ("i8", "i8", "i8", "f8", "i1", "f8", "i8", "i8"))
            return self._frame(_Chunk(*empty))
        return pd.concat(parts, ignore_index=True)

    def _frame(self, chunk: _Chunk) -> pd.DataFrame:
        st = self._static
        return pd.DataFrame(
            {
                "sensor_id": st.sensor_ids_np[chunk.sensor],
                "device_id": st.device_ids_np[chunk.sensor],
                "sensor_type": st.types_np[chunk.sensor],
                "value": chunk.value,
                "unit": st.units_np[chunk.sensor],
                "location": st.locations_np[chunk.sensor],
                "timestamp": pd.to_datetime(chunk.time_ms, unit="ms", utc=True).as_unit("ns"),
                "status": np.where(chunk.battery < _LOW_BATTERY, "low_battery", "ok").astype(object),
                "sensor_model": st.models_np[chunk.sensor],
                "battery_level": chunk.battery,
                "seq": chunk.step.astype(np.int64),
                "ground_truth": st.labels_np[chunk.label],
            }
        )

    def batches(self) -> Iterator[MessageBatch]:
        """Messages in production order, in batches, with the configured faults injected."""
        faults = FaultInjector(self.cfg, self.fleet) if any(self.cfg.fault_rates.values()) else None
        for chunk_no, chunk in enumerate(self._chunks()):
            batch = self._encode(chunk)
            if faults is not None:
                batch = faults.apply(batch, np.random.default_rng([self.cfg.seed, 2, chunk_no]))
            if len(batch):
                yield batch
        if faults is not None:
            rest = faults.drain()
            if len(rest):
                yield rest

    def messages(self) -> Iterator[Message]:
        """Messages one by one, in production order, including faults."""
        for batch in self.batches():
            yield from batch

    def _encode(self, chunk: _Chunk) -> MessageBatch:
        st = self._static
        sensor = pa.array(chunk.sensor)
        # All sensors of a device share a time: format the (step, device) grid once, then take.
        grid = np.datetime_as_string(chunk.grid_ms.astype("datetime64[ms]"), unit="ms")
        ts = pc.take(pa.array(grid, type=pa.string()), pa.array(chunk.time_index))
        low = chunk.battery < _LOW_BATTERY
        parts = [
            pc.take(st.prefix, sensor),
            pc.cast(pa.array(chunk.value), pa.string()),
            pc.take(st.middle, sensor),
            ts,
            pc.if_else(pa.array(low), st.status_low, st.status_ok),
            pc.take(st.metadata, sensor),
            pc.cast(pa.array(chunk.battery), pa.string()),
            _SEQ,
            pc.cast(pa.array(chunk.step), pa.string()),
            _GT,
            pc.take(st.labels, pa.array(chunk.label)),
            _END,
        ]
        joined = pc.binary_join_element_wise(*parts, "").cast(pa.binary())
        # Per-sensor strings come from object arrays (fancy indexing + tolist is far cheaper than Arrow's
        # to_pylist, which builds a new str per element).
        return MessageBatch(
            keys=st.sensor_ids_np[chunk.sensor].tolist(),
            values=joined.to_pylist(),
            sensor_types=st.types_np[chunk.sensor].tolist(),
            kinds=st.labels_np[chunk.label].tolist(),
            locations=st.locations_np[chunk.sensor].tolist(),
            device_ids=st.device_ids_np[chunk.sensor].tolist(),
            key_bytes=st.key_bytes_np[chunk.sensor].tolist(),
        )


_SEQ = pa.scalar('},"seq":')
_GT = pa.scalar(',"ground_truth":"')
_END = pa.scalar('"}')


class _StaticParts:
    """Per-sensor constant strings and JSON fragments (the wire layout of SensorReading.to_dict)."""

    def __init__(self, fleet: Fleet) -> None:
        def q(text: str) -> str:
            return text.replace("\\", "\\\\").replace('"', '\\"')

        rows = list(
            zip(
                fleet.sensor_ids,
                fleet.sensor_devices,
                fleet.sensor_types,
                fleet.sensor_locations,
                fleet.models,
                strict=True,
            )
        )
        self.prefix = pa.array(
            [f'{{"sensor_id":"{q(s)}","device_id":"{q(d)}","sensor_type":"{t}","value":' for s, d, t, _, _ in rows]
        )
        self.middle = pa.array(
            [f',"unit":"{UNITS[t]}","location":"{q(loc)}","timestamp":"' for _, _, t, loc, _ in rows]
        )
        self.metadata = pa.array(
            [f'","metadata":{{"unit":"{UNITS[t]}","sensor_model":"{m}","battery_level":' for _, _, t, _, m in rows]
        )
        self.status_ok = pa.scalar('Z","status":"ok')
        self.status_low = pa.scalar('Z","status":"low_battery')
        self.labels = pa.array(list(LABELS))
        self.labels_np = np.asarray(LABELS, dtype=object)
        self.sensor_ids_np = np.asarray(fleet.sensor_ids, dtype=object)
        self.key_bytes_np = np.asarray([s.encode() for s in fleet.sensor_ids], dtype=object)
        self.device_ids_np = np.asarray(fleet.sensor_devices, dtype=object)
        self.types_np = np.asarray(fleet.sensor_types, dtype=object)
        self.units_np = np.asarray([UNITS[t] for t in fleet.sensor_types], dtype=object)
        self.locations_np = np.asarray(fleet.sensor_locations, dtype=object)
        self.models_np = np.asarray(fleet.models, dtype=object)


def simulate_frame(cfg: FleetConfig, *, duration_s: float | None = None, count: int | None = None) -> pd.DataFrame:
    """Clean, labelled readings in long format, one row per reading, in production order (time, device, type).

    Columns: sensor_id, device_id, sensor_type, value, unit, location, timestamp (datetime64[ns, UTC]),
    status, sensor_model, battery_level, seq, ground_truth. Deterministic per ``cfg`` (give ``cfg.start``
    for the same timestamps across runs).
    """
    return Simulator(cfg, duration_s=duration_s, count=count).frame()
