"""Anomaly episodes: scheduled per chunk of time steps, applied to the normal values, labelled per reading.

An episode has a sensor, a kind, a start step, a duration (steps) and a magnitude (noise sigmas), drawn from
the ranges in :class:`~millrace.iot.fleet.FleetConfig`. Episodes start as a Poisson process per sensor with a
rate chosen so that about ``anomaly_rate`` of sensor-time is anomalous; a sensor has at most one episode at
a time. What each kind does:

- ``spike``: value jumps by +-magnitude for 1-3 readings;
- ``level_shift``: value offset by +-magnitude for the whole episode;
- ``drift``: offset grows linearly to +-magnitude by the end of the episode;
- ``stuck``: value frozen at its last reading before the episode;
- ``dropout``: no readings at all; the first reading after the gap is labelled ``dropout`` (it is the
  reading on which a detector can notice the gap);
- ``noise_burst``: extra noise of magnitude sigmas;
- ``correlation_break``: on a temperature sensor only, temperature rises by magnitude (ramping up over the
  first fifth) while load - and so vibration and current - stays normal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from millrace.iot.fleet import Fleet
from millrace.records import ANOMALY_KINDS, NORMAL

LABELS: tuple[str, ...] = (NORMAL, *ANOMALY_KINDS)
CODE: dict[str, int] = {name: i for i, name in enumerate(LABELS)}


@dataclass
class Episode:
    sensor: int
    kind: str
    start: int  # first step
    end: int  # first step after the episode
    magnitude: float  # in noise sigmas, signed for offsets
    frozen: float | None = None  # stuck: the frozen value


class AnomalySchedule:
    """Draws episodes chunk by chunk (deterministically from the chunk's generator) and applies them."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        cfg = fleet.cfg
        self.kinds = [k for k in cfg.anomaly_kinds if k != "correlation_break" or "temperature" in fleet.types]
        self.temperature_k = fleet.types.index("temperature") if "temperature" in fleet.types else -1
        steps = {k: self._steps(cfg.durations_s[k]) for k in self.kinds}
        mean_steps = float(np.mean([(lo + hi) / 2 for lo, hi in steps.values()])) if self.kinds else 1.0
        self.start_prob = cfg.anomaly_rate / mean_steps if self.kinds else 0.0
        self.active: list[Episode] = []
        self.busy_until = np.zeros(cfg.sensors, dtype=np.int64)
        self.last_value = np.full(cfg.sensors, np.nan)  # for stuck episodes crossing chunk boundaries
        self.pending_dropout_label: set[int] = set()  # sensors whose gap ended exactly at a chunk boundary

    def _steps(self, range_s: tuple[float, float]) -> tuple[int, int]:
        lo, hi = range_s
        interval = self.fleet.cfg.interval_s
        return max(1, round(lo / interval)), max(1, round(hi / interval))

    def schedule(self, step0: int, steps: int, rng: np.random.Generator) -> None:
        """Add the episodes that start in [step0, step0 + steps)."""
        if self.start_prob <= 0:
            return
        cfg, fleet = self.fleet.cfg, self.fleet
        n_types = len(fleet.types)
        counts = rng.binomial(steps, min(1.0, self.start_prob), size=cfg.sensors)
        for sensor in np.flatnonzero(counts):
            for offset in np.sort(rng.integers(0, steps, size=counts[sensor])):
                kind = self.kinds[int(rng.integers(0, len(self.kinds)))]
                target = int(sensor)
                if kind == "correlation_break":  # a device-level pattern shown on its temperature sensor
                    target = int(fleet.sensor_device[sensor]) * n_types + self.temperature_k
                start = step0 + int(offset)
                lo, hi = self._steps(cfg.durations_s[kind])
                length = int(rng.integers(lo, hi + 1))
                m_lo, m_hi = cfg.magnitudes[kind]
                magnitude = float(rng.uniform(m_lo, m_hi)) * (1.0 if rng.random() < 0.5 else -1.0)
                if kind in ("correlation_break", "noise_burst"):
                    magnitude = abs(magnitude)
                # One episode per sensor at a time; a dropout also needs its labelled reading after the gap.
                if start < self.busy_until[target] or start == 0:
                    continue
                self.busy_until[target] = start + length + 1
                self.active.append(Episode(target, kind, start, start + length, magnitude))

    def apply(self, step0: int, values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Modify ``values`` (steps, sensors) in place; return (labels int8, emitted bool), same shape."""
        steps = values.shape[0]
        stop = step0 + steps
        labels = np.zeros(values.shape, dtype=np.int8)
        emitted = np.ones(values.shape, dtype=bool)
        sigma = self.fleet.sigma
        for sensor in self.pending_dropout_label:
            labels[0, sensor] = CODE["dropout"]
        self.pending_dropout_label = set()
        keep: list[Episode] = []
        for ep in self.active:
            if ep.start >= stop:
                keep.append(ep)
                continue
            a, b = max(ep.start, step0) - step0, min(ep.end, stop) - step0
            s = ep.sensor
            scale = ep.magnitude * sigma[s]
            if b > a:
                labels[a:b, s] = CODE[ep.kind]
                if ep.kind in ("spike", "level_shift"):
                    values[a:b, s] += scale
                elif ep.kind == "drift":
                    pos = np.arange(max(ep.start, step0), min(ep.end, stop)) - ep.start + 1
                    values[a:b, s] += scale * pos / (ep.end - ep.start)
                elif ep.kind == "stuck":
                    if ep.frozen is None:
                        ep.frozen = float(values[a - 1, s]) if a > 0 else float(self.last_value[s])
                    values[a:b, s] = ep.frozen
                elif ep.kind == "dropout":
                    emitted[a:b, s] = False
                elif ep.kind == "noise_burst":
                    values[a:b, s] += rng.standard_normal(b - a) * scale
                elif ep.kind == "correlation_break":
                    ramp = max(1, (ep.end - ep.start) // 5)
                    pos = np.arange(max(ep.start, step0), min(ep.end, stop)) - ep.start + 1
                    values[a:b, s] += scale * np.minimum(1.0, pos / ramp)
            if ep.kind == "dropout" and step0 <= ep.end < stop:
                labels[ep.end - step0, s] = CODE["dropout"]
            elif ep.kind == "dropout" and ep.end == stop:
                self.pending_dropout_label.add(s)
            if ep.end > stop:
                keep.append(ep)
        self.active = keep
        self.last_value = values[-1].copy()
        return labels, emitted
