"""Alert episodes, labelled events, event metrics and NAB scores on hand-computed cases.

Expected NAB values use the exponential form of the sigmoid, σ(y) = 2 / (1 + e^{5y}) - 1, while the module
computes -tanh(5y/2): the two agree only if both are right.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from millrace.ml.events import (
    Alert,
    alert_episodes,
    event_metrics,
    label_events,
    nab_score,
    nab_scores,
    nab_total,
    nab_windows,
    raised_mask,
)


def sigma(y: float) -> float:
    return 2 / (1 + math.exp(5 * y)) - 1


SIGMA_LEFT = sigma(-1.0)  # 2 / (1 + e^-5) - 1 = 0.98661429815...
EXACT = {"rel": 1e-12, "abs": 1e-12}


def flags(n: int, *rows: int | range) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    for r in rows:
        out[list(r) if isinstance(r, range) else r] = True
    return out


# --- alert episodes ---------------------------------------------------------------------------------------


def test_a_flag_storm_is_one_alert() -> None:
    # rows 5..9 flagged: one run, raised on its first row (min_run 1), ends on its last.
    assert alert_episodes(flags(20, range(5, 10))) == [Alert(first=5, raised=5, end=9)]


def test_a_blip_shorter_than_min_run_raises_nothing() -> None:
    # rows 2-3 (2 < 3 flagged rows) raise nothing; rows 10..15 raise on 10 + 3 - 1 = 12.
    assert alert_episodes(flags(20, 2, 3, range(10, 16)), min_run=3) == [Alert(10, 12, 15)]
    assert alert_episodes(flags(20, 2, 3), min_run=3) == []


def test_quiet_merges_runs_separated_by_fewer_unflagged_rows() -> None:
    f = flags(20, range(10, 13), 14, 15)  # one unflagged row (13) between the runs
    # quiet=2: 1 unflagged row < 2 -> still open, one alert ending on row 15.
    assert alert_episodes(f, quiet=2) == [Alert(10, 10, 15)]
    # quiet=1: 1 unflagged row closes it -> two alerts.
    assert alert_episodes(f, quiet=1) == [Alert(10, 10, 12), Alert(14, 14, 15)]
    # Exactly `quiet` unflagged rows (13, 14, 15) close the episode.
    assert alert_episodes(flags(20, range(10, 13), 16, 17), quiet=3) == [Alert(10, 10, 12), Alert(16, 16, 17)]


def test_an_open_episode_absorbs_runs_shorter_than_min_run() -> None:
    # rows 0..3 raise on 0 + 3 - 1 = 2; row 5 is one unflagged row later (< quiet 2) and extends the end to 5.
    assert alert_episodes(flags(10, range(0, 4), 5), min_run=3, quiet=2) == [Alert(0, 2, 5)]


def test_an_episode_open_at_the_last_row_is_returned() -> None:
    assert alert_episodes(flags(20, 18, 19), min_run=2, quiet=5) == [Alert(18, 19, 19)]


def test_alert_episodes_edge_cases() -> None:
    assert alert_episodes(np.zeros(0, dtype=bool)) == []
    assert alert_episodes(np.zeros(5, dtype=bool)) == []
    with pytest.raises(ValueError, match="min_run"):
        alert_episodes(flags(5, 1), min_run=0)
    with pytest.raises(ValueError, match="quiet"):
        alert_episodes(flags(5, 1), quiet=0)


def test_label_events() -> None:
    assert label_events(np.array([0, 1, 1, 0, 1], dtype=bool)) == [(1, 2), (4, 4)]
    assert label_events(np.ones(3, dtype=bool)) == [(0, 2)]
    assert label_events(np.zeros(0, dtype=bool)) == []


# --- event metrics ----------------------------------------------------------------------------------------

N = 73  # hourly rows 00:00 day 1 .. 00:00 day 4: the rows span 72 h = 3 days
EVENTS = [(10, 14), (20, 24), (40, 42), (50, 56)]
ALERTS = [
    Alert(2, 3, 3),  # before any event, closed before event 1: false
    Alert(8, 8, 11),  # raised before event 1 (10..14) and open at its start: detects it, delay 0
    Alert(21, 22, 23),  # raised on 22 inside event 2 (20..24): delay 2 rows = 7200 s
    Alert(30, 31, 33),  # between events: false
    Alert(41, 43, 44),  # overlaps event 3 (40..42) but raised after it: neither detection nor false
    Alert(55, 56, 58),  # raised on 56 inside event 4 (50..56): delay 6 rows = 21600 s
    Alert(62, 64, 66),  # after every event: false
]


def _labels() -> np.ndarray:
    return flags(N, *(range(s, e + 1) for s, e in EVENTS))


def _hourly() -> np.ndarray:
    return np.datetime64("2024-01-01T00:00", "ns") + np.arange(N) * np.timedelta64(1, "h")


def test_event_metrics_on_datetimes() -> None:
    m = event_metrics(_hourly(), _labels(), ALERTS)
    assert m["events"] == 4
    assert m["events_detected"] == 3  # events 1, 2, 4; event 3 missed
    assert m["event_recall"] == 0.75  # 3 / 4
    assert m["alerts"] == 7
    assert m["false_alerts"] == 3
    assert m["span_days"] == 3.0  # 72 h
    assert m["false_alerts_per_day"] == 1.0  # 3 false alerts / 3 days
    assert m["false_alerts_per_1000_rows"] == pytest.approx(3000 / 73, **EXACT)
    assert m["time_basis"] == "times"
    # delays [0, 7200, 21600] s: mean 28800 / 3 = 9600, median 7200
    assert m["detection_delay_mean_s"] == 9600.0
    assert m["detection_delay_median_s"] == 7200.0
    # delays [0, 2, 6] rows: mean 8 / 3, median 2
    assert m["detection_delay_mean_rows"] == pytest.approx(8 / 3, **EXACT)
    assert m["detection_delay_median_rows"] == 2.0


def test_event_metrics_time_bases_agree() -> None:
    reference = event_metrics(_hourly(), _labels(), ALERTS)
    tz_aware = pd.Series(pd.date_range("2024-01-01", periods=N, freq="h", tz="UTC", unit="s"))
    assert event_metrics(tz_aware, _labels(), ALERTS) == reference
    # 24 rows a day is the hourly series again.
    assert event_metrics(np.arange(N), _labels(), ALERTS, rows_per_day=24) == {
        **reference,
        "time_basis": "rows_per_day",
    }
    # Row numbers without rows_per_day: no time basis, row-based values only.
    rows = event_metrics(np.arange(N), _labels(), ALERTS)
    assert rows["time_basis"] == "rows"
    assert rows["false_alerts_per_day"] is None and rows["span_days"] is None
    assert rows["detection_delay_mean_s"] is None and rows["detection_delay_median_s"] is None
    assert rows["detection_delay_median_rows"] == 2.0 and rows["false_alerts"] == 3


def test_event_metrics_without_detections_or_events() -> None:
    missed = event_metrics(_hourly(), _labels(), [Alert(30, 31, 33)])
    assert (missed["events_detected"], missed["event_recall"], missed["false_alerts"]) == (0, 0.0, 1)
    assert missed["detection_delay_mean_s"] is None and missed["detection_delay_median_rows"] is None
    quiet = event_metrics(_hourly(), np.zeros(N, dtype=bool), [Alert(30, 31, 33)])
    assert (quiet["events"], quiet["event_recall"], quiet["false_alerts"]) == (0, None, 1)
    with pytest.raises(ValueError, match="rows"):
        event_metrics(_hourly()[:-1], _labels(), ALERTS)


def test_flags_to_alerts_to_event_metrics() -> None:
    # Flags lag each event by one row and a 2-row blip at 30..31 sits between events.
    f = flags(N, *(range(s + 1, e + 2) for s, e in EVENTS), 30, 31)
    alerts = alert_episodes(f, min_run=3, quiet=2)
    # Runs 11..15, 21..25, 41..43, 51..57 raise on run start + 2; the blip raises nothing.
    assert [a.raised for a in alerts] == [13, 23, 43, 53]
    m = event_metrics(_hourly(), _labels(), alerts)
    # Event 3 (40..42) is raised on 43, too late; delays 3, 3, 3 rows = 10800 s each.
    assert (m["events_detected"], m["false_alerts"]) == (3, 0)
    assert (m["detection_delay_mean_rows"], m["detection_delay_median_s"]) == (3.0, 10800.0)


# --- NAB --------------------------------------------------------------------------------------------------

W = [(10, 19)]  # one window; span 19 - 10 = 9 rows


def test_nab_detection_on_the_window_start_is_perfect() -> None:
    s = nab_score(flags(50, 10), W, 50)
    # y = (10 - 19) / 9 = -1 -> σ = 0.98661...; S = 1 · σ; null = -1 · 1 window; perfect = σ(-1)
    assert s.raw == pytest.approx(SIGMA_LEFT, **EXACT)
    assert (s.null, s.perfect) == (-1.0, pytest.approx(SIGMA_LEFT, **EXACT))
    assert s.normalised == pytest.approx(100.0, **EXACT)
    assert (s.tp, s.fp, s.fn) == (1, 0, 0)


def test_nab_position_inside_the_window() -> None:
    # Detections on 12 and 15: only the earliest counts. y = (12 - 19) / 9 = -7/9 -> σ = 0.95988...
    s = nab_score(flags(50, 12, 15), W, 50)
    assert s.raw == pytest.approx(sigma(-7 / 9), **EXACT)
    assert (s.tp, s.fp, s.fn) == (1, 0, 0)
    # On the right edge: y = 0 -> σ = 0, S = 0; normalised = 100 · (0 + 1) / (σ(-1) + 1) = 50.337...
    edge = nab_score(flags(50, 19), W, 50)
    assert edge.raw == 0.0
    assert edge.normalised == pytest.approx(100 / (SIGMA_LEFT + 1), **EXACT)


def test_nab_false_positive_after_the_window() -> None:
    s = nab_score(flags(50, 10, 24), W, 50)
    # FP on 24: y = (24 - 19) / 9 = 5/9 -> σ = 2 / (1 + e^{25/9}) - 1 = -0.88293...
    # S = σ(-1) + 0.11 · σ(5/9) = 0.98661 - 0.09712 = 0.88949
    # normalised = 100 · (0.88949 + 1) / (0.98661 + 1) = 95.111
    raw = SIGMA_LEFT + 0.11 * sigma(5 / 9)
    assert s.raw == pytest.approx(raw, **EXACT)
    assert s.normalised == pytest.approx(100 * (raw + 1) / (SIGMA_LEFT + 1), **EXACT)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    # Far after the window the FP costs (almost exactly) the full A_FP: y = (49 - 19) / 9 -> σ ≈ -1.
    far = nab_score(flags(50, 10, 49), W, 50)
    assert far.raw == pytest.approx(SIGMA_LEFT + 0.11 * sigma(30 / 9), **EXACT)


def test_nab_missed_window_costs_a_fn() -> None:
    s = nab_score(flags(50, 10), [(10, 19), (30, 39)], 50)
    # S = σ(-1) - 1; null = -2; perfect = 2 σ(-1): normalised = 100 (σ + 1) / (2 σ + 2) = 50 exactly.
    assert s.raw == pytest.approx(SIGMA_LEFT - 1, **EXACT)
    assert s.normalised == pytest.approx(50.0, **EXACT)
    assert (s.tp, s.fp, s.fn) == (1, 0, 1)


def test_nab_null_and_perfect_detectors() -> None:
    windows = [(10, 19), (30, 39)]
    null = nab_score(np.zeros(50, dtype=bool), windows, 50)
    assert (null.raw, null.normalised, null.fn) == (-2.0, 0.0, 2)
    perfect = nab_score(flags(50, 10, 30), windows, 50)
    assert perfect.normalised == pytest.approx(100.0, **EXACT)
    assert perfect.raw == pytest.approx(2 * SIGMA_LEFT, **EXACT)


def test_nab_profiles_weight_the_same_false_positive() -> None:
    # One FP on row 5, before any window: σ = -1 (full A_FP), and the window is missed (A_FN).
    s = nab_scores(flags(50, 5), W, 50)
    assert list(s) == ["standard", "reward_low_FP", "reward_low_FN"]
    assert s["standard"].raw == pytest.approx(-1.11, **EXACT)  # -0.11 - 1
    assert s["reward_low_FP"].raw == pytest.approx(-1.22, **EXACT)  # -0.22 - 1: twice the FP penalty
    assert s["reward_low_FN"].raw == pytest.approx(-2.11, **EXACT)  # -0.11 - 2
    assert s["reward_low_FN"].null == -2.0
    # standard normalised = 100 · (-1.11 + 1) / (σ(-1) + 1) = -5.537...
    assert s["standard"].normalised == pytest.approx(-11 / (SIGMA_LEFT + 1), **EXACT)
    # The same FP after the window: low-FP penalty 0.22 · σ(5/9) is twice the standard 0.11 · σ(5/9).
    after = nab_scores(flags(50, 10, 24), W, 50)
    assert after["reward_low_FP"].raw - SIGMA_LEFT == pytest.approx(2 * (after["standard"].raw - SIGMA_LEFT))
    assert after["reward_low_FP"].raw == pytest.approx(SIGMA_LEFT + 0.22 * sigma(5 / 9), **EXACT)


def test_nab_one_row_window() -> None:
    # Its only row is its left edge (y = -1); after it positions are scaled by a span of 1.
    assert nab_score(flags(20, 10), [(10, 10)], 20).normalised == pytest.approx(100.0, **EXACT)
    s = nab_score(flags(20, 12), [(10, 10)], 20)
    # FP on 12: y = (12 - 10) / 1 = 2 -> σ = 2 / (1 + e^10) - 1; the window is missed (-1).
    assert s.raw == pytest.approx(0.11 * sigma(2.0) - 1, **EXACT)


def test_nab_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="standard, reward_low_FP, reward_low_FN"):
        nab_score(flags(50, 10), W, 50, profile="strict")
    with pytest.raises(ValueError, match="overlap"):
        nab_score(flags(50, 10), [(10, 19), (15, 25)], 50)
    with pytest.raises(ValueError, match="start <= end"):
        nab_score(flags(50, 10), [(40, 55)], 50)
    with pytest.raises(ValueError, match="one flag per row"):
        nab_score(flags(40, 10), W, 50)


def test_nab_without_windows() -> None:
    # Nothing to detect: every detection is an FP at the full A_FP, and there is no normalised score.
    s = nab_score(flags(20, 3, 7), [], 20)
    assert (s.raw, s.fp, s.null, s.perfect, s.normalised) == (pytest.approx(-0.22, **EXACT), 2, 0.0, 0.0, None)


def test_nab_windows() -> None:
    # size = floor(0.1 · 1000 / 2) = 50 rows, starting 50 // 2 = 25 rows before each anomaly.
    assert nab_windows(1000, [200, 700]) == [(175, 224), (675, 724)]
    # Clipped: 10 - 25 = -15 -> 0 .. -15 + 49 = 34; 990 - 25 = 965 .. 1014 -> 999.
    assert nab_windows(1000, [10, 990]) == [(0, 34), (965, 999)]
    # 175..224 and 195..244 overlap: merged.
    assert nab_windows(1000, [200, 220]) == [(175, 244)]
    # size = floor(0.02 · 1000 / 1) = 20: 500 - 10 = 490 .. 509.
    assert nab_windows(1000, [500], fraction=0.02) == [(490, 509)]
    # size = floor(0.1 · 1000 / 6) = floor(16.67) = 16: 100 - 8 = 92 .. 107, and so on.
    assert nab_windows(1000, [100, 250, 400, 550, 700, 850])[:2] == [(92, 107), (242, 257)]
    assert nab_windows(1000, []) == []
    with pytest.raises(ValueError, match="anomaly rows"):
        nab_windows(100, [100])


def test_nab_total_normalises_over_series() -> None:
    perfect = nab_score(flags(50, 10), W, 50)
    null = nab_score(np.zeros(50, dtype=bool), W, 50)
    total = nab_total([perfect, null])
    # S = σ(-1) + (-1); null = -2; perfect = 2 σ(-1): 100 (σ + 1) / (2 σ + 2) = 50.
    assert total.normalised == pytest.approx(50.0, **EXACT)
    assert (total.tp, total.fp, total.fn) == (1, 0, 1)
    with pytest.raises(ValueError, match="one profile"):
        nab_total([perfect, nab_score(flags(50, 10), W, 50, profile="reward_low_FN")])


def test_alert_raised_rows_feed_nab() -> None:
    # A storm on 12..30 is one alert raised on 12 + 2 = 14: one detection, no FP for the rest of the storm.
    alerts = alert_episodes(flags(50, range(12, 31)), min_run=3)
    s = nab_score(raised_mask(alerts, 50), W, 50)
    # y = (14 - 19) / 9 = -5/9
    assert s.raw == pytest.approx(sigma(-5 / 9), **EXACT)
    assert (s.tp, s.fp) == (1, 0)
