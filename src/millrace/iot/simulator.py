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
from millrace.records import GROUND_TRUTH_FIELD, READING_WIRE, UNITS, WireField, wire_leaves

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
        row_values = {
            "value": pc.cast(pa.array(chunk.value), pa.string()),
            "timestamp": pc.take(pa.array(grid, type=pa.string()), pa.array(chunk.time_index)),
            "status": pc.if_else(pa.array(chunk.battery < _LOW_BATTERY), *st.statuses),
            "battery_level": pc.cast(pa.array(chunk.battery), pa.string()),
            "seq": pc.cast(pa.array(chunk.step), pa.string()),
            GROUND_TRUTH_FIELD: pc.take(st.labels, pa.array(chunk.label)),
        }
        parts = [
            row_values[part] if isinstance(part, str) else pc.take(part, sensor) if isinstance(part, pa.Array) else part
            for part in st.layout
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


# The wire fields whose text _encode computes per reading; every other field of records.READING_WIRE is a
# constant of its sensor (_StaticParts).
_ROW_FIELDS = ("value", "timestamp", "status", "battery_level", "seq", GROUND_TRUTH_FIELD)


def _json_quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _wire_tokens(spec: tuple[WireField, ...]) -> list[str | WireField]:
    """The JSON text of a record as literal pieces and value slots (a leaf field), in wire order: string and
    timestamp slots sit between quotes, a timestamp's Z outside the slot. Every field is written (the
    simulator always has a value for each)."""
    out: list[str | WireField] = ["{"]
    for i, f in enumerate(spec):
        out.append(f'{"," if i else ""}"{f.name}":')
        if f.fields:
            out += _wire_tokens(f.fields)
        elif f.value_type is str:
            out += ['"', f, '"']
        elif f.value_type is datetime:
            out += ['"', f, 'Z"']
        else:
            out.append(f)
    out.append("}")
    return out


class _StaticParts:
    """Per-sensor constants and the encoder's layout of records.READING_WIRE.

    ``layout`` is the message as consecutive parts joined per reading: the name of a per-reading field
    (``_ROW_FIELDS``), a scalar (text the same for every reading) or an array indexed by sensor (text holding
    constants of the sensor: its id, device, type, unit, location, model)."""

    def __init__(self, fleet: Fleet) -> None:
        constants: dict[str, list[str]] = {
            "sensor_id": list(fleet.sensor_ids),
            "device_id": list(fleet.sensor_devices),
            "sensor_type": list(fleet.sensor_types),
            "unit": [UNITS[t] for t in fleet.sensor_types],
            "location": list(fleet.sensor_locations),
            "sensor_model": list(fleet.models),
        }
        unknown = [f.name for f in wire_leaves(READING_WIRE) if f.name not in constants and f.name not in _ROW_FIELDS]
        if unknown:
            raise ValueError(f"the simulator has no value for the reading's wire fields {unknown}")
        n = len(fleet.sensor_ids)
        self.layout: list[str | pa.Scalar | pa.Array] = []
        texts: list[str] | None = None  # the literal text being collected, per sensor
        for token in _wire_tokens(READING_WIRE):
            if isinstance(token, WireField) and token.name in _ROW_FIELDS:
                if texts is not None:
                    self.layout.append(self._literal(texts))
                    texts = None
                self.layout.append(token.name)
                continue
            texts = texts or [""] * n
            if isinstance(token, WireField):
                texts = [t + _json_quote(v) for t, v in zip(texts, constants[token.name], strict=True)]
            else:
                texts = [t + token for t in texts]
        if texts is not None:
            self.layout.append(self._literal(texts))
        # The status is one of two texts: the constant text before it goes into both (one part less to join).
        status = self.layout.index("status")
        before = self.layout[status - 1] if status else None
        prefix = before.as_py() if isinstance(before, pa.Scalar) else ""
        if prefix:
            del self.layout[status - 1]
        self.statuses = (pa.scalar(prefix + "low_battery"), pa.scalar(prefix + "ok"))
        self.labels = pa.array(list(LABELS))
        self.labels_np = np.asarray(LABELS, dtype=object)
        self.sensor_ids_np = np.asarray(fleet.sensor_ids, dtype=object)
        self.key_bytes_np = np.asarray([s.encode() for s in fleet.sensor_ids], dtype=object)
        self.device_ids_np = np.asarray(fleet.sensor_devices, dtype=object)
        self.types_np = np.asarray(fleet.sensor_types, dtype=object)
        self.units_np = np.asarray(constants["unit"], dtype=object)
        self.locations_np = np.asarray(fleet.sensor_locations, dtype=object)
        self.models_np = np.asarray(fleet.models, dtype=object)

    @staticmethod
    def _literal(texts: list[str]) -> pa.Scalar | pa.Array:
        return pa.scalar(texts[0]) if len(set(texts)) == 1 else pa.array(texts)


def simulate_frame(cfg: FleetConfig, *, duration_s: float | None = None, count: int | None = None) -> pd.DataFrame:
    """Clean, labelled readings in long format, one row per reading, in production order (time, device, type).

    Columns: sensor_id, device_id, sensor_type, value, unit, location, timestamp (datetime64[ns, UTC]),
    status, sensor_model, battery_level, seq, ground_truth. Deterministic per ``cfg`` (give ``cfg.start``
    for the same timestamps across runs).
    """
    return Simulator(cfg, duration_s=duration_s, count=count).frame()
