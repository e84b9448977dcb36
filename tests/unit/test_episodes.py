"""Alert episodes (processing.episodes.update): one batch folded at once gives exactly what folding its anomalous
readings one by one, in (event time, sensor) order, gives."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from millrace.processing import episodes
from millrace.processing.state import Episode

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in epoch ms
FOLD = {"device_id": "d1", "location": "loc-1"}


def batch(rows: list[tuple[str, float, bool, float, str | None]]) -> pd.DataFrame:
    """Scored readings as the step hands them over: (sensor, seconds after T0, anomalous, score, kind)."""
    return pd.DataFrame(
        {
            "device_id": pd.array(["d1"] * len(rows), dtype="str"),
            "ts_ms": np.array([T0 + int(r[1] * 1000) for r in rows], dtype="int64"),
            "sensor_id": pd.array([r[0] for r in rows], dtype="str"),
            "is_anomaly": [r[2] for r in rows],
            "score": [r[3] for r in rows],
            "anomaly_kind": pd.array([r[4] for r in rows], dtype="str"),
            "reason": pd.array([f"{r[4]} on {r[0]} at {r[1]}" for r in rows], dtype="str"),
            "top_features": [["z", r[0]] for r in rows],
        }
    )


def one_by_one(
    scored: pd.DataFrame, episode: Episode | None, *, newest_ms: int | None, quiet_s: float
) -> tuple[list[Episode], Episode | None]:
    """The rule itself, a reading at a time: a reading more than ``quiet_s`` after the episode's last one closes
    it and opens another; the first highest-scoring reading (NaN as 0) gives kind, reason and top features."""
    quiet_ms = int(quiet_s * 1000)
    touched: dict[str, Episode] = {}
    rows = scored[scored["is_anomaly"].fillna(False).astype(bool)].sort_values(["ts_ms", "sensor_id"], kind="stable")
    for row in rows.itertuples(index=False):
        ts, sensor, score = int(row.ts_ms), str(row.sensor_id), float(row.score) if row.score == row.score else 0.0
        peak = {
            "score": score,
            "kind": row.anomaly_kind or "statistical",
            "reason": str(row.reason or ""),
            "top_features": tuple(str(f) for f in row.top_features),
        }
        if episode is not None and ts - episode.updated_ms > quiet_ms:
            touched[episode.id] = episodes.close(episode, quiet_s)
            episode = None
        if episode is None:
            episode = Episode(
                id=episodes.alert_id("d1", ts), opened_ms=ts, updated_ms=ts, sensor_ids=(sensor,), readings=1,
                location="loc-1", **peak,
            )  # fmt: skip
        else:
            episode = dataclasses.replace(
                episode,
                opened_ms=min(episode.opened_ms, ts),
                updated_ms=max(episode.updated_ms, ts),
                readings=episode.readings + 1,
                sensor_ids=episode.sensor_ids if sensor in episode.sensor_ids else (*episode.sensor_ids, sensor),
                **(peak if score > episode.score else {}),
            )
        touched[episode.id] = episode
    closed = episodes.expire(episode, newest_ms, quiet_s)
    if closed is not None:
        touched[closed.id] = closed
        episode = None
    return list(touched.values()), episode


def open_episode(updated_s: float, score: float = 4.0) -> Episode:
    updated = T0 + int(updated_s * 1000)
    return Episode(
        id=episodes.alert_id("d1", updated - 5_000),
        opened_ms=updated - 5_000,
        updated_ms=updated,
        sensor_ids=("b", "e"),
        kind="drift",
        score=score,
        reason="drift on b",
        top_features=("trend_z",),
        readings=4,
        location="loc-1",
    )


def test_one_batch_closes_the_open_episode_and_opens_two() -> None:
    rows = batch(
        [
            ("c", 12, True, 3.0, "spike"),  # continues the episode open until 10 s
            ("a", 12, True, 6.0, "spike"),  # same time, sensor a first: the peak of the tie below
            ("b", 13, True, 6.0, "level_shift"),
            ("a", 20, False, 0.5, None),
            ("a", 60, True, float("nan"), "noise_burst"),  # 47 s quiet: a new episode; NaN scores as 0
            ("c", 61, True, 1.5, "stuck"),
            ("c", 100, True, 2.0, "stuck"),  # 39 s quiet: a third, still open
        ]
    )
    before = open_episode(10)
    touched, still_open = episodes.update(rows, before, newest_ms=T0 + 101_000, quiet_s=30, **FOLD)
    first = dataclasses.replace(
        before,
        updated_ms=T0 + 13_000,
        readings=7,
        sensor_ids=("b", "e", "a", "c"),
        score=6.0,
        kind="spike",
        reason="spike on a at 12",
        top_features=("z", "a"),
        closed_ms=T0 + 43_000,
    )
    second = Episode(
        id=episodes.alert_id("d1", T0 + 60_000),
        opened_ms=T0 + 60_000,
        updated_ms=T0 + 61_000,
        sensor_ids=("a", "c"),
        kind="stuck",
        score=1.5,
        reason="stuck on c at 61",
        top_features=("z", "c"),
        readings=2,
        location="loc-1",
        closed_ms=T0 + 91_000,
    )
    third = dataclasses.replace(
        second,
        id=episodes.alert_id("d1", T0 + 100_000),
        opened_ms=T0 + 100_000,
        updated_ms=T0 + 100_000,
        sensor_ids=("c",),
        score=2.0,
        reason="stuck on c at 100",
        readings=1,
        closed_ms=None,
    )
    assert touched == [first, second, third] and still_open == third
    assert before.readings == 4 and before.closed_ms is None  # the episode given is left as it was


def test_a_lower_peak_keeps_the_open_episodes_fields_and_a_quiet_device_expires_it() -> None:
    before = open_episode(10, score=9.0)
    touched, extended = episodes.update(
        batch([("a", 5, True, 8.0, "spike"), ("f", 30, True, 9.0, "spike")]), before, newest_ms=None, quiet_s=30, **FOLD
    )
    # A reading older than the episode's last one extends it too; an equal score does not replace the peak.
    assert extended == dataclasses.replace(before, updated_ms=T0 + 30_000, readings=6, sensor_ids=("b", "e", "a", "f"))
    assert touched == [extended]
    touched, gone = episodes.update(
        batch([("a", 70, False, 0.1, None)]), extended, newest_ms=T0 + 70_000, quiet_s=30, **FOLD
    )
    assert gone is None and touched == [dataclasses.replace(extended, closed_ms=T0 + 60_000)]


@pytest.mark.parametrize("seed", range(6))
def test_a_batch_folds_as_its_readings_one_by_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(150):
        n = int(rng.integers(0, 30))
        rows = batch(
            [
                (str(rng.choice(["a", "b", "c"])), float(rng.integers(0, 240)), bool(rng.random() < 0.7),
                 float("nan") if rng.random() < 0.1 else round(float(rng.random()) * 5, 1),
                 rng.choice(["spike", "drift", None]))
                for _ in range(n)
            ]
        )  # fmt: skip
        before = open_episode(float(rng.integers(-60, 120))) if rng.random() < 0.6 else None
        newest = T0 + int(rng.integers(0, 300)) * 1000 if rng.random() < 0.9 else None
        quiet = float(rng.choice([10.0, 30.0, 45.5]))
        expected = one_by_one(rows, before, newest_ms=newest, quiet_s=quiet)
        assert episodes.update(rows, before, newest_ms=newest, quiet_s=quiet, **FOLD) == expected
