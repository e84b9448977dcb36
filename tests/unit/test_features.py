"""Features: streaming (device_step over micro-batches) equals offline (frame_features), no look-ahead."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from millrace.config import ProcessingSettings
from millrace.processing.devreg import HELD_SPAN
from millrace.processing.features import (
    BLOCK,
    FEATURE_COLUMNS,
    JUMP_AGE_CAP,
    ROLL,
    STATE_VERSION,
    device_step,
    dump_state,
    empty_state,
    frame_features,
    load_state,
)
from millrace.processing.steps import LOCAL, SHIFT_STEP, STEP_SPAN

TYPES = ("temperature", "humidity", "pressure", "vibration", "voltage", "current")
BASE = {"temperature": 25.0, "humidity": 50.0, "pressure": 1013.0, "vibration": 1.0, "voltage": 230.0, "current": 10.0}


def fleet_frame(devices: int = 2, steps: int = 400, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01T00:00:00Z")
    rows = []
    for d in range(devices):
        device = f"dev-{d + 1:04d}"
        load = 0.5 + 0.3 * np.sin(np.arange(steps) / 50.0)
        for typ in TYPES:
            noise = rng.normal(0, 0.3, steps)
            coupled = load * 5 if typ in ("current", "vibration") else 0.0
            values = np.round(BASE[typ] + coupled + noise, 3)
            times = start + pd.to_timedelta(np.arange(steps) + d * 0.25, unit="s")
            rows.append(
                pd.DataFrame(
                    {
                        "sensor_id": f"{device}-{typ}",
                        "device_id": device,
                        "sensor_type": typ,
                        "location": "loc-01",
                        "timestamp": times,
                        "value": values,
                        "interpolated": False,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


def _stored(state: dict) -> dict:
    """A feature state as the stream job keeps it: dumped, through JSON text, loaded."""
    return load_state(json.loads(json.dumps(dump_state(state))))


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a["sensor_id"]) == list(b["sensor_id"])
    assert list(a["timestamp"]) == list(b["timestamp"])
    left, right = a[list(FEATURE_COLUMNS)].to_numpy(), b[list(FEATURE_COLUMNS)].to_numpy()
    equal = (left == right) | (np.isnan(left) & np.isnan(right))
    assert equal.all(), [c for c, ok in zip(FEATURE_COLUMNS, equal.all(axis=0), strict=True) if not ok]


def _offline_and_microbatches(frame: pd.DataFrame, every: str) -> tuple[pd.DataFrame, dict]:
    """Features in one pass, checked equal to device_step over micro-batches of ``every`` with the state
    through JSON; returns the one-pass features and the last state."""
    cfg = ProcessingSettings()
    offline = frame_features(frame, cfg, chunk=None)
    state, parts = empty_state(), []
    for _, batch in frame.groupby(frame["timestamp"].dt.floor(every), sort=True):
        out, state = device_step(batch, state, cfg)
        state = _stored(state)
        parts.append(out)
    _same(offline, pd.concat(parts, ignore_index=True))
    return offline, state


@pytest.mark.parametrize("chunk", ["1min", "7s", "1s"])
def test_frame_features_equal_whatever_the_chunking(chunk: str) -> None:
    frame = fleet_frame(steps=300)
    cfg = ProcessingSettings()
    _same(frame_features(frame, cfg, chunk=None), frame_features(frame, cfg, chunk=chunk))


def test_device_step_over_microbatches_equals_offline_and_state_is_json() -> None:
    frame = fleet_frame(devices=1, steps=2 * BLOCK * 3 + 17)
    cfg = ProcessingSettings()
    offline = frame_features(frame, cfg, chunk=None)
    state = empty_state()
    parts = []
    shuffled = frame.sample(frac=1.0, random_state=3)  # any order inside a batch
    keys = shuffled["timestamp"].dt.floor("13s")
    for _, batch in shuffled.groupby(keys, sort=True):
        out, state = device_step(batch, state, cfg)
        state = _stored(state)  # what a stateful stream operator stores
        parts.append(out)
    _same(offline, pd.concat(parts, ignore_index=True))
    assert len(json.dumps(dump_state(state))) < 60_000  # bounded


def test_no_look_ahead_a_future_spike_does_not_change_past_features() -> None:
    frame = fleet_frame(devices=1, steps=400)
    cfg = ProcessingSettings()
    before = frame_features(frame, cfg, chunk=None)
    spiked = frame.copy()
    hit = (spiked["sensor_type"] == "temperature") & (spiked["timestamp"] == spiked["timestamp"].iloc[350])
    spiked.loc[hit, "value"] += 10.0
    after = frame_features(spiked, cfg, chunk=None)
    cut = after["timestamp"] < spiked.loc[hit, "timestamp"].iloc[0]
    _same(before[cut].reset_index(drop=True), after[cut].reset_index(drop=True))
    row = after[(after["sensor_type"] == "temperature") & ~cut].iloc[0]
    assert row["robust_z"] > 20 and row["ref_z"] > 20 and row["diff_z"] > 20
    other = after[(after["sensor_type"] == "humidity") & ~cut].iloc[0]
    assert other["dev_max_abs_z"] > 20  # the device context sees the spike on the other sensor


def test_warm_up_and_stuck_run() -> None:
    frame = fleet_frame(devices=1, steps=200)
    sensor = frame["sensor_type"] == "pressure"
    idx = frame.index[sensor][100:130]
    frame.loc[idx, "value"] = frame.loc[frame.index[sensor][99], "value"]
    out = frame_features(frame, ProcessingSettings(), chunk=None)
    p = out[out["sensor_type"] == "pressure"].reset_index(drop=True)
    assert p["robust_z"].iloc[:ROLL].isna().all() and p["robust_z"].iloc[ROLL:].notna().all()
    assert p["stuck_run"].iloc[129] == 31
    assert p["noise_ratio"].iloc[129] == 0.0
    assert list(out.columns[-len(FEATURE_COLUMNS) :]) == list(FEATURE_COLUMNS)


def test_empty_batch() -> None:
    frame = fleet_frame(devices=1, steps=1).iloc[:0]
    out, state = device_step(frame, empty_state(), ProcessingSettings())
    assert out.empty and set(FEATURE_COLUMNS) <= set(out.columns)
    assert state == empty_state()


def test_uneven_sensors_gaps_and_late_joiners_give_the_same_numbers() -> None:
    frame = fleet_frame(devices=1, steps=420)
    rng = np.random.default_rng(1)
    drop = (frame["sensor_type"] == "voltage") & (rng.random(len(frame)) < 0.2)  # a gappy sensor
    late = (frame["sensor_type"] == "current") & (frame["timestamp"] < frame["timestamp"].min() + pd.Timedelta("150s"))
    frame = frame[~drop & ~late].reset_index(drop=True)
    cfg = ProcessingSettings()
    offline = frame_features(frame, cfg, chunk=None)
    for chunk in ("11s", "1min"):
        _same(offline, frame_features(frame, cfg, chunk=chunk))


def test_many_devices_at_once_equal_one_device_at_a_time() -> None:
    from millrace.processing.features import devices_step

    frame = fleet_frame(devices=3, steps=250)
    frame = frame[~((frame["device_id"] == "dev-0002") & (frame["sensor_id"].str.endswith("humidity")))]
    cfg = ProcessingSettings()
    states: dict = {}
    parts = []
    keys = frame["timestamp"].dt.floor("40s")
    for _, chunk in frame.groupby(keys, sort=True):
        if (chunk["timestamp"] > pd.Timestamp("2026-01-01T00:02:00Z")).all():
            chunk = chunk[chunk["device_id"] != "dev-0003"]  # a device missing from some batches
        out, new = devices_step(chunk.sample(frac=1.0, random_state=1), states, cfg)
        states.update(new)
        parts.append(out)
        assert list(out["device_id"]) == sorted(out["device_id"])
    together = pd.concat(parts, ignore_index=True)
    expected = frame_features(pd.concat(parts, ignore_index=True)[list(frame.columns)], cfg, chunk=None)
    order = ["timestamp", "sensor_id"]
    _same(together.sort_values(order, kind="stable").reset_index(drop=True), expected)
    assert {d: _stored(st) for d, st in states.items()} == states


def test_window_medians_and_mads_equal_numpy_median_nan_included() -> None:
    from numpy.lib.stride_tricks import sliding_window_view

    from millrace.processing.features_sensor import _median_mad

    rng = np.random.default_rng(5)
    x = np.round(rng.normal(0, 1, (3, 200)), 1)  # ties, like rounded sensor values
    x[1, 50] = np.nan
    k = x.shape[1] - ROLL
    past = sliding_window_view(x, ROLL, axis=1)[:, :k]
    mean = past.mean(axis=-1)
    med, mad = _median_mad(x, 0, k, mean)
    want_med = np.median(past, axis=-1)
    want_mad = np.median(np.abs(past - want_med[..., None]), axis=-1)
    assert ((med == want_med) | (np.isnan(med) & np.isnan(want_med))).all()
    assert ((mad == want_mad) | (np.isnan(mad) & np.isnan(want_mad))).all()
    assert np.isnan(med[1, 21:51]).all() and not np.isnan(med[1, 51:]).any()


def test_partner_conditioned_mean_sees_a_shift_that_the_load_hides() -> None:
    frame = fleet_frame(devices=1, steps=BLOCK * 16)
    current = frame["sensor_type"] == "current"
    idx = frame.index[current][BLOCK * 12 :]
    frame.loc[idx, "value"] += 1.5  # 5 noise sigmas; the load moves current by +-1.5 too
    out = frame_features(frame, ProcessingSettings(), chunk=None)
    c = out[out["sensor_type"] == "current"].reset_index(drop=True)
    assert c["pair_mean_z"].iloc[: BLOCK * 10].isna().all()  # fewer than PAIR_MEAN_BLOCKS reference blocks
    before, after = c["pair_mean_z"].iloc[BLOCK * 10 : BLOCK * 12], c["pair_mean_z"].iloc[BLOCK * 12 + ROLL :]
    assert before.notna().all() and before.abs().max() < 4
    assert after.min() > 6  # the shift is not taught to the regression: its blocks are not admitted
    assert c["pair_best_mean"].iloc[BLOCK * 12 + ROLL :].min() > 2


def test_state_round_trips_is_immutable_and_another_version_starts_fresh() -> None:
    frame = fleet_frame(devices=1, steps=BLOCK * 3 + 7)
    cfg = ProcessingSettings()
    cut = frame["timestamp"] < frame["timestamp"].min() + pd.Timedelta(seconds=BLOCK * 2 + 11)
    _, state = device_step(frame[cut], empty_state(), cfg)
    dev = state["device"]
    assert _stored(state) == state and _stored(state)["device"] is not dev
    assert (
        dev.rows.shape == ((BLOCK * 2 + 11) % BLOCK, 6) and dev.tail.shape[1] == 6 and len(dev.blocks) == len(dev.pairs)
    )
    with pytest.raises(ValueError):
        dev.tail[0, 0] = 1.0  # read-only: a batch builds a new state, the committed one stays valid for a replay
    with pytest.raises(ValueError):
        _stored(state)["device"].grams[0, 0] = 1.0
    first, after = device_step(frame[~cut], state, cfg)
    assert state["device"] is dev and _stored(state) == state  # the input state is left as it was
    again, _ = device_step(frame[~cut], _stored(state), cfg)
    _same(first, again)
    assert after != state and after["device"].n == dev.n + int((~cut).sum() // 6)
    older = {**dump_state(state), "v": STATE_VERSION - 1}
    assert load_state(older) == empty_state() and load_state(None) == empty_state()


def test_step_features_see_a_level_shift_keep_it_and_see_a_spike_return() -> None:
    frame = fleet_frame(devices=1, steps=400)
    pressure = frame.index[frame["sensor_type"] == "pressure"]
    frame.loc[pressure[300:], "value"] += 3.0  # a level shift of 10 noise sigmas at reading 300
    voltage = frame.index[frame["sensor_type"] == "voltage"]
    frame.loc[voltage[250], "value"] += 4.5  # a one-reading spike of 15 sigmas
    out = frame_features(frame, ProcessingSettings(), chunk=None)
    p = out[out["sensor_type"] == "pressure"].reset_index(drop=True)
    assert p["step_z"].iloc[: LOCAL + 1].isna().all() and p["step_z"].iloc[LOCAL + 1 :].notna().all()
    # Reading 304 is the first whose last STEP values all follow the shift: the largest step, just found.
    assert p["step_z"].iloc[280:300].abs().max() < 4 and p["step_z"].iloc[304] > 12
    assert p["step_age"].iloc[304] == 0 and p["step_age"].iloc[330] == 26
    # The same step stays the largest (its size varies only with the local noise it is measured in).
    assert (p["step_age"].iloc[304:360].to_numpy() == np.arange(56)).all()
    assert ((p["step_max_z"].iloc[304:360] / p["step_z"].iloc[304]).between(0.9, 1.1)).all()
    # The shift is kept: the level stays about 10 sigmas above the values before the step.
    assert p["step_level_z"].iloc[304:360].between(7, 13).all()
    # Beyond the STEP_SPAN the large step is still remembered, with the level before it (unknown - NaN -
    # while the step features still see it, and before any large step).
    last = int(np.flatnonzero(p["step_z"].abs().to_numpy() >= SHIFT_STEP)[-1])
    seen = last + STEP_SPAN
    assert 300 <= last < 312 and (p["shift_age"].iloc[seen:].to_numpy() == np.arange(STEP_SPAN, 400 - last)).all()
    assert p["shift_age"].iloc[:300].eq(JUMP_AGE_CAP).all() and p["shift_age"].iloc[last:seen].isna().all()
    assert p["shift_level_z"].iloc[:seen].isna().all()
    assert p["shift_level_z"].iloc[seen:].between(7, 13).all()
    v = out[out["sensor_type"] == "voltage"].reset_index(drop=True)
    # A spike of one reading moves a mean of STEP values by 3 sigmas while it is inside it, then is gone.
    assert v["step_z"].iloc[250] > 3.5 and v["step_max_z"].iloc[250:259].min() > 3.5
    assert v["step_level_z"].iloc[250:255].min() > 2 and v["step_level_z"].iloc[255:259].abs().max() < 1.5


def test_all_sensor_regression_sees_a_small_offset_and_is_the_same_over_microbatches() -> None:
    frame = fleet_frame(devices=1, steps=BLOCK * 14 + 17)
    current = frame.index[frame["sensor_type"] == "current"]
    frame.loc[current[BLOCK * 12 :], "value"] += 1.5  # 5 noise sigmas; the load moves current by +-1.5 too
    offline, state = _offline_and_microbatches(frame, "13s")
    assert len(json.dumps(dump_state(state))) < 90_000  # bounded: 30 block triangles of 28 numbers, 29-40 rows of tails
    c = offline[offline["sensor_type"] == "current"].reset_index(drop=True)["dev_resid_mean"]
    assert c.iloc[: BLOCK * 10].isna().all()  # fewer than MIN_BLOCKS reference blocks
    assert c.iloc[BLOCK * 10 + ROLL : BLOCK * 12].abs().max() < 4.5
    assert c.iloc[BLOCK * 12 + ROLL : BLOCK * 13].min() > 10


def test_held_residual_keeps_a_long_shift_that_the_sliding_regression_absorbs() -> None:
    frame = fleet_frame(devices=1, steps=BLOCK * 22)
    current = frame.index[frame["sensor_type"] == "current"]
    start, end = BLOCK * 12, BLOCK * 19  # a level shift of 8 noise sigmas for 420 readings, then back
    frame.loc[current[start:end], "value"] += 2.4
    offline, _ = _offline_and_microbatches(frame, "11s")
    c = offline[offline["sensor_type"] == "current"].reset_index(drop=True)
    # Held from the step (noticed a few readings late), never before it.
    t0 = int(np.flatnonzero(c["held_resid_z"].notna().to_numpy())[0])
    assert start < t0 < start + STEP_SPAN and abs(c["step_z"].iloc[t0]) >= SHIFT_STEP
    # The whole shift stands out against the held regression, its last minutes too, while the sliding
    # regression has taken most of it in by then.
    held = c["held_resid_z"].iloc[t0 + ROLL : end]
    assert held.notna().all() and held.min() > 15
    assert c["held_resid_z"].iloc[end - BLOCK : end].mean() > 2 * c["dev_resid_mean"].iloc[end - BLOCK : end].mean()
    # Back at the level it had before the step: the step back is no new shift.
    assert c["held_resid_z"].iloc[end + ROLL : t0 + HELD_SPAN].abs().max() < 6
    assert c["held_resid_z"].iloc[t0 + HELD_SPAN :].isna().all()
    others = offline[offline["sensor_type"] != "current"]
    assert others["held_resid_z"].isna().all()  # no other sensor stepped


# ------------------------------------------------------------------------------ frozen numbers
# Features of a small fleet recorded from the implementation the stream job ran before the features were
# written by name; any refactoring must reproduce them. Re-record (python tests/unit/test_features.py)
# only for an intended change of the numbers, and say so in the commit.
FROZEN = Path(__file__).parent / "data" / "features_frozen.npz"
_FROZEN_ROWS = 400  # rows kept whole (sampled); every row enters the per-column checksums


def frozen_frame() -> pd.DataFrame:
    """Two devices for 15 blocks: a level shift held long enough for the held residual, a spike, a stuck run,
    a gappy sensor and a sensor that joins late, fed in shuffled micro-batches of 23 s."""
    frame = fleet_frame(devices=2, steps=BLOCK * 15 + 7, seed=11)
    current = frame.index[(frame["sensor_type"] == "current") & (frame["device_id"] == "dev-0001")]
    frame.loc[current[BLOCK * 11 :], "value"] += 2.4
    voltage = frame.index[(frame["sensor_type"] == "voltage") & (frame["device_id"] == "dev-0002")]
    frame.loc[voltage[BLOCK * 12], "value"] += 4.5
    pressure = frame.index[frame["sensor_type"] == "pressure"]
    frame.loc[pressure[500:530], "value"] = frame.loc[pressure[499], "value"]
    rng = np.random.default_rng(2)
    gappy = (frame["sensor_type"] == "humidity") & (rng.random(len(frame)) < 0.15)
    late = (frame["sensor_id"] == "dev-0002-temperature") & (frame["timestamp"] < pd.Timestamp("2026-01-01T00:03Z"))
    return frame[~gappy & ~late].reset_index(drop=True)


def frozen_features() -> pd.DataFrame:
    from millrace.processing.features import devices_step

    frame = frozen_frame()
    cfg = ProcessingSettings()
    states: dict = {}
    parts = []
    for _, batch in frame.groupby(frame["timestamp"].dt.floor("23s"), sort=True):
        out, new = devices_step(batch.sample(frac=1.0, random_state=5), states, cfg)
        states.update({d: _stored(st) for d, st in new.items()})
        parts.append(out)
    return pd.concat(parts, ignore_index=True)


def _frozen_summary(out: pd.DataFrame) -> dict[str, np.ndarray]:
    values = out[list(FEATURE_COLUMNS)].to_numpy(dtype=float)
    rows = np.linspace(0, len(out) - 1, _FROZEN_ROWS).astype(int)
    finite = np.where(np.isfinite(values), values, 0.0)
    return {
        "keys": (out["sensor_id"] + "@" + out["timestamp"].astype(str)).to_numpy(dtype=str)[rows],
        "rows": values[rows],
        "sums": finite.sum(axis=0),
        "abs_sums": np.abs(finite).sum(axis=0),
        "nans": np.isnan(values).sum(axis=0),
    }


def test_features_equal_the_frozen_numbers() -> None:
    want = np.load(FROZEN)
    got = _frozen_summary(frozen_features())
    assert list(got["keys"]) == list(want["keys"])
    assert (got["nans"] == want["nans"]).all(), dict(zip(FEATURE_COLUMNS, got["nans"] - want["nans"], strict=True))
    rows, frozen = got["rows"], want["rows"]
    assert ((np.abs(rows - frozen) <= 1e-9 * np.fmax(1.0, np.abs(frozen))) | (np.isnan(rows) & np.isnan(frozen))).all()
    for name in ("sums", "abs_sums"):
        assert np.allclose(got[name], want[name], rtol=1e-9, atol=1e-9), name
    # The fixture exercises every feature: each is finite somewhere.
    assert (want["nans"] < len(frozen_frame())).all()


if __name__ == "__main__":
    FROZEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(FROZEN, **_frozen_summary(frozen_features()))
    print(f"recorded {FROZEN}")


def test_pairs_nanmedian_equals_numpy() -> None:
    from millrace.processing.pairs import nanmedian

    rng = np.random.default_rng(3)
    for width in (1, 2, 29, 30):
        a = np.round(rng.normal(0, 1, (200, width)), 1)  # ties
        a[rng.random(a.shape) < 0.3] = np.nan
        a[0] = np.nan  # a row without any value
        with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
            want = np.nanmedian(a, axis=-1)
        got = nanmedian(a)
        assert ((got == want) | (np.isnan(got) & np.isnan(want))).all(), width


def test_equal_weight_window_sums_equal_the_product_by_product_sums() -> None:
    from millrace.processing.steps import weighted_sum

    rng = np.random.default_rng(11)
    x = rng.normal(0, 1, (4, 300))
    x[2, 40] = np.nan
    for weights in (np.full(119, 1.0 / 119), np.full(5, 0.2), np.array([1.0])):
        k = x.shape[1] - len(weights) - 3
        want = x[:, 3 : 3 + k] * weights[0]
        for j in range(1, len(weights)):
            want = want + x[:, 3 + j : 3 + j + k] * weights[j]
        got = weighted_sum(x, 3, k, weights)
        assert got.shape == (4, k)
        assert ((got == want) | (np.isnan(got) & np.isnan(want))).all(), len(weights)


def test_block_grams_equal_the_row_by_row_sums() -> None:
    from millrace.processing.devreg import block_grams

    rng = np.random.default_rng(12)
    seg = rng.normal(5, 2, (3, BLOCK, 4))
    seg[1, 7, 2] = np.nan  # a block with an unknown value: NaN sums
    a = np.concatenate([np.ones((3, BLOCK, 1)), seg], axis=2)
    iu, ju = np.triu_indices(5)
    want = a[:, 0, iu] * a[:, 0, ju]
    for t in range(1, BLOCK):
        want = want + a[:, t, iu] * a[:, t, ju]
    got = block_grams(seg)
    assert got.shape == (3, 15)
    assert (got[[0, 2]] == want[[0, 2]]).all()
    assert np.isnan(got[1]).sum() == np.isnan(want[1]).sum() == 5  # the products with sensor 2 (and constant)
    assert (got[1][~np.isnan(want[1])] == want[1][~np.isnan(want[1])]).all()


def test_residuals_of_many_fits_at_once_equal_one_fit_at_a_time() -> None:
    from millrace.processing.devreg import block_grams, residual_fit, residual_z, residual_z_rows

    rng = np.random.default_rng(13)
    load = rng.normal(0, 1, (40 * BLOCK, 1))
    values = load * np.array([1.0, 2.0, -1.0, 0.5]) + rng.normal(0, 0.2, (40 * BLOCK, 4))
    grams = block_grams(values.reshape(40, BLOCK, 4))
    fit_a = residual_fit(grams[:20], BLOCK)
    fit_b = residual_fit(grams[10:30], BLOCK)
    assert fit_a is not None and fit_b is not None
    rows = values[:12] + np.array([0.0, 0.0, 3.0, 0.0])
    rows[5, 1] = np.nan
    fit_of_row = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 1, 1])
    fits: list = [fit_a, fit_b, None]
    want = np.full(rows.shape, np.nan)
    for i in (0, 1):
        want[fit_of_row == i] = residual_z(rows[fit_of_row == i], fits[i])
    got = residual_z_rows(rows, fits, fit_of_row)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    assert same.all() and np.isnan(got[7:10]).all() and np.isfinite(got[:5]).all()
    # A fit that leaves a sensor out (no weights on its column) takes the per-fit path: the same numbers.
    W, spread = fit_b
    W_out, spread_out = W.copy(), spread.copy()
    W_out[3] = np.nan
    W_out[:, 4] = 0.0
    spread_out[3] = np.nan
    fits = [fit_a, (W_out, spread_out), None]
    want[fit_of_row == 1] = residual_z(rows[fit_of_row == 1], fits[1])
    got = residual_z_rows(rows, fits, fit_of_row)
    assert ((got == want) | (np.isnan(got) & np.isnan(want))).all() and np.isnan(got[fit_of_row == 1, 3]).all()


def test_pair_block_sums_of_all_pairs_at_once_equal_each_pair_block_by_block() -> None:
    from millrace.processing.features_pair import pair_blocks

    rng = np.random.default_rng(14)
    cols = ("a", "b", "c")
    full = rng.normal(3, 1, (3 * BLOCK, 3))
    full[70, 1] = np.nan
    pairs = (("a", "b"), ("a", "c"), ("b", "c"))
    got = pair_blocks(full, 0, 0, pairs, cols, {})
    for k, (a, b) in enumerate(pairs):
        x, y = full[:, cols.index(a)], full[:, cols.index(b)]
        for j in range(3):
            xs, ys = x[j * BLOCK : (j + 1) * BLOCK], y[j * BLOCK : (j + 1) * BLOCK]
            ok = np.isfinite(xs) & np.isfinite(ys)
            xs, ys = np.where(ok, xs, 0.0), np.where(ok, ys, 0.0)
            want = [ok.sum(), xs.sum(), ys.sum(), (xs * xs).sum(), (ys * ys).sum(), (xs * ys).sum()]
            assert got[k][j].tolist() == want, (a, b, j)
    assert got[0][1, 0] == got[2][1, 0] == BLOCK - 1 and got[1][1, 0] == BLOCK


def test_largest_step_in_span_by_doubling_equals_the_scan_ties_and_nan_included() -> None:
    from millrace.processing.steps import _largest_in_span, _largest_in_span_scan

    rng = np.random.default_rng(15)
    for k in (1, 7, 200):
        size = np.abs(np.round(rng.normal(0, 1, (3, k + STEP_SPAN - 1)), 1))  # many ties
        size[2] = 0.5  # all equal: the oldest
        got = _largest_in_span(size, k)
        want = _largest_in_span_scan(size, k)
        assert got.shape == (3, k) and (got == want).all() and (got[2] == 0).all()
    size[0, 3] = np.nan  # NaN never wins, as in the scan
    assert (_largest_in_span(size, 200) == _largest_in_span_scan(size, 200)).all()
