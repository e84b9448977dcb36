"""The simulated device fleet: its configuration, its layout and its normal behaviour.

Normal behaviour per device, all functions of absolute event time (so any chunking gives the same numbers):

- a *load* in [0.05, 1]: a daily working cycle (peak mid-afternoon) plus slow per-device oscillations;
- temperature = location ambient (daily cycle) + heating under load; humidity falls as temperature rises;
- vibration and current rise together with load; voltage sags slightly under load;
- pressure follows a slow per-location weather pattern;
- every sensor has a calibration offset, a slow aging drift and Gaussian noise of a fixed sigma
  (``NOISE_SIGMA``). Anomaly magnitudes are expressed in these sigmas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from millrace.records import ANOMALY_KINDS, SENSOR_TYPES, UNITS

# Noise of a healthy sensor, in the sensor's unit. Anomaly magnitudes are multiples of these.
NOISE_SIGMA: dict[str, float] = {
    "temperature": 0.25,
    "humidity": 0.8,
    "pressure": 0.3,
    "vibration": 0.06,
    "voltage": 0.8,
    "current": 0.5,
}
SENSOR_MODELS: dict[str, str] = {
    "temperature": "TMP117",
    "humidity": "SHT45",
    "pressure": "BMP388",
    "vibration": "ADXL355",
    "voltage": "INA226",
    "current": "ACS758",
}
# Physical clip of normal values (never reached by a healthy sensor; keeps anomalies plausible).
_CLIP: dict[str, tuple[float, float]] = {
    "temperature": (-40.0, 140.0),
    "humidity": (1.0, 99.0),
    "pressure": (850.0, 1150.0),
    "vibration": (0.0, 45.0),
    "voltage": (0.0, 470.0),
    "current": (0.0, 190.0),
}

# Event-time duration ranges (seconds) and magnitude ranges (noise sigmas) per anomaly kind.
DEFAULT_DURATIONS_S: dict[str, tuple[float, float]] = {
    "spike": (1.0, 3.0),
    "level_shift": (60.0, 600.0),
    "drift": (120.0, 900.0),
    "stuck": (60.0, 600.0),
    "dropout": (30.0, 300.0),
    "noise_burst": (30.0, 300.0),
    "correlation_break": (120.0, 600.0),
}
DEFAULT_MAGNITUDES: dict[str, tuple[float, float]] = {
    "spike": (8.0, 15.0),
    "level_shift": (5.0, 10.0),
    "drift": (8.0, 20.0),  # total change reached at the end of the episode
    "stuck": (0.0, 0.0),  # unused: the value freezes
    "dropout": (0.0, 0.0),  # unused: no readings
    "noise_burst": (4.0, 8.0),  # noise multiplier
    "correlation_break": (10.0, 20.0),  # temperature rise while load (vibration, current) stays normal
}
FAULTS: tuple[str, ...] = ("duplicate", "out_of_order", "late", "malformed", "impossible", "future")


@dataclass(frozen=True)
class FleetConfig:
    """What to simulate. Everything random is drawn from ``seed``: same config, same data."""

    devices: int = 10
    locations: int = 3
    sensor_types: tuple[str, ...] = SENSOR_TYPES
    interval_s: float = 1.0  # event-time spacing of one sensor's readings
    start: datetime | None = None  # default: now - duration (so a finite run ends about now)
    seed: int = 42
    anomaly_rate: float = 0.02  # fraction of sensor-time inside anomaly episodes
    anomaly_kinds: tuple[str, ...] = ANOMALY_KINDS
    durations_s: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_DURATIONS_S))
    magnitudes: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_MAGNITUDES))
    # Per-reading probabilities of data faults (messages() only; simulate_frame is always clean).
    duplicate: float = 0.0
    out_of_order: float = 0.0
    late: float = 0.0
    malformed: float = 0.0
    impossible: float = 0.0
    future: float = 0.0
    late_by_s: tuple[float, float] = (120.0, 600.0)  # event-time lateness of a late reading
    future_by_s: tuple[float, float] = (3600.0, 86400.0)  # how far ahead of the wall clock

    def __post_init__(self) -> None:
        if self.devices < 1 or self.locations < 1:
            raise ValueError("devices and locations must be at least 1")
        if self.interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if not 0 <= self.anomaly_rate < 1:
            raise ValueError("anomaly_rate must be in [0, 1)")
        unknown = [t for t in self.sensor_types if t not in UNITS]
        if unknown or not self.sensor_types:
            raise ValueError(f"unknown sensor types {unknown}; known: {', '.join(SENSOR_TYPES)}")
        bad = [k for k in self.anomaly_kinds if k not in ANOMALY_KINDS]
        if bad:
            raise ValueError(f"unknown anomaly kinds {bad}; known: {', '.join(ANOMALY_KINDS)}")
        for name in FAULTS:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"fault rate {name} must be in [0, 1]")

    @property
    def fault_rates(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in FAULTS}

    @property
    def sensors(self) -> int:
        return self.devices * len(self.sensor_types)


class Fleet:
    """The static layout (ids, locations, per-device and per-sensor parameters) and normal values."""

    def __init__(self, cfg: FleetConfig, start: datetime) -> None:
        self.cfg = cfg
        self.start = start.astimezone(UTC)
        # Event times are whole milliseconds, as on the wire.
        self.start_ms = int(round(self.start.timestamp() * 1000))
        self.interval_ms = cfg.interval_s * 1000.0
        rng = np.random.default_rng([cfg.seed, 0])
        n_dev, types = cfg.devices, cfg.sensor_types
        n_types = len(types)
        self.types = types
        self.device_ids = [f"dev-{i + 1:04d}" for i in range(n_dev)]
        self.location_ids = [f"loc-{i + 1:02d}" for i in range(cfg.locations)]
        self.device_location = np.arange(n_dev) % cfg.locations
        # Sensor s belongs to device s // n_types and has type s % n_types.
        self.sensor_device = np.repeat(np.arange(n_dev), n_types)
        self.sensor_type_idx = np.tile(np.arange(n_types), n_dev)
        self.sensor_ids = [f"{d}-{t}" for d in self.device_ids for t in types]
        self.sensor_types = [t for _ in self.device_ids for t in types]
        self.sensor_locations = [self.location_ids[self.device_location[d]] for d in self.sensor_device]
        self.sensor_devices = [self.device_ids[d] for d in self.sensor_device]
        self.sigma = np.array([NOISE_SIGMA[t] for t in types])[self.sensor_type_idx]
        self.clip_low = np.array([_CLIP[t][0] for t in types])[self.sensor_type_idx]
        self.clip_high = np.array([_CLIP[t][1] for t in types])[self.sensor_type_idx]
        # Devices of one fleet report at staggered phases within the interval (ordered by device id).
        self.phase_ms = np.floor(np.arange(n_dev) / n_dev * self.interval_ms * 0.9)
        # Per-device load oscillations: three slow sinusoids (10 min to 2 h periods).
        self.load_bias = rng.uniform(-0.1, 0.1, n_dev)
        self.load_periods = rng.uniform(600.0, 7200.0, (n_dev, 3))
        self.load_phases = rng.uniform(0, 2 * np.pi, (n_dev, 3))
        self.load_amps = rng.uniform(0.03, 0.08, (n_dev, 3))
        # Per-location climate.
        self.ambient = rng.uniform(18.0, 24.0, cfg.locations)
        self.pressure_base = rng.uniform(1005.0, 1020.0, cfg.locations)
        self.weather_period = rng.uniform(86400.0, 3 * 86400.0, cfg.locations)
        self.weather_phase = rng.uniform(0, 2 * np.pi, cfg.locations)
        # Per-sensor calibration offset (in sigmas) and aging drift (sigmas per hour, slow).
        self.offset = rng.normal(0.0, 2.0, n_dev * n_types) * self.sigma
        self.aging = rng.uniform(-0.2, 0.2, n_dev * n_types) * self.sigma / 3600.0
        self.battery0 = rng.uniform(40.0, 100.0, n_dev)
        self.models = [SENSOR_MODELS[t] for t in self.sensor_types]

    def times_ms(self, step0: int, steps: int) -> np.ndarray:
        """Event times (epoch ms, int64) of shape (steps, devices)."""
        base = self.start_ms + np.round(np.arange(step0, step0 + steps) * self.interval_ms)
        return (base[:, None] + self.phase_ms[None, :]).astype(np.int64)

    def battery(self, times_ms: np.ndarray) -> np.ndarray:
        """Battery level (%) per (step, device): drains 0.5 %/hour from its initial level, floor 5 %."""
        hours = (times_ms - self.start_ms) / 3.6e6
        return np.round(np.maximum(5.0, self.battery0[None, :] - 0.5 * hours), 1)

    def normal(self, step0: int, steps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Normal values of shape (steps, sensors) and the event times (steps, devices)."""
        t_ms = self.times_ms(step0, steps)
        t = t_ms / 1000.0  # epoch seconds, (steps, devices)
        hour = (t % 86400.0) / 3600.0
        daily = np.sin(2 * np.pi * (hour - 9.0) / 24.0)  # +1 at 15:00 UTC, -1 at 03:00
        slow = (
            self.load_amps[None] * np.sin(2 * np.pi * t[..., None] / self.load_periods[None] + self.load_phases[None])
        ).sum(axis=2)
        load = np.clip(0.5 + 0.25 * daily + self.load_bias[None] + slow, 0.05, 1.0)
        loc = self.device_location
        ambient = self.ambient[loc][None] + 4.0 * daily
        weather = self.pressure_base[loc][None] + 4.0 * np.sin(
            2 * np.pi * t / self.weather_period[loc][None] + self.weather_phase[loc][None]
        )
        temperature = ambient + 12.0 * load
        by_type = {
            "temperature": temperature,
            "humidity": 50.0 - 1.8 * (temperature - 21.0),
            "pressure": weather,
            "vibration": 0.3 + 2.2 * load,
            "voltage": 231.0 - 3.0 * load,
            "current": 2.0 + 38.0 * load,
        }
        n_types = len(self.types)
        values = np.empty((steps, self.cfg.devices * n_types))
        for k, name in enumerate(self.types):
            values[:, k::n_types] = by_type[name]
        elapsed_s = (t_ms[:, self.sensor_device] - self.start_ms) / 1000.0
        values += self.offset[None] + self.aging[None] * elapsed_s
        values += rng.standard_normal(values.shape) * self.sigma[None]
        return values, t_ms

    def clip(self, values: np.ndarray) -> np.ndarray:
        return np.clip(values, self.clip_low[None], self.clip_high[None])
