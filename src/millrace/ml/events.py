"""Event-level evaluation: alert episodes from per-row flags, labelled events, event metrics and NAB scores.

Everything here works on one series whose rows are in time order and is addressed by row index; there is no
I/O. The per-reading numbers in :mod:`millrace.ml.metrics` say how many rows a detector gets right; these say
what an operator sees: how many incidents raised an alert, how late, and how many alerts were for nothing.

NAB scoring follows the published rules of the Numenta Anomaly Benchmark (Lavin & Ahmad, "Evaluating
Real-time Anomaly Detection Algorithms - the Numenta Anomaly Benchmark", IEEE ICMLA 2015, arXiv:1510.03336),
implemented from that description, not from NAB's code. The rules, all from the paper's scoring section:

- *Anomaly windows*: a window is centred on each labelled anomaly; its size is 10 % of the series length
  divided by the number of anomalies.
- *Scaled sigmoid*: σ(y) = 2 / (1 + e^{5y}) - 1 of the detection's relative position y: -1 at the window's
  left edge, 0 at its right edge, positive after it. σ(-1) ≈ 0.9866, σ(0) = 0, σ → -1 far after a window.
  It equals -tanh(5y / 2), which is how it is computed (no overflow).
- *Counting*: only the earliest detection inside a window counts, as a true positive weighted A_TP·σ(y);
  later detections in the same window are ignored. A detection outside every window is a false positive
  weighted A_FP·σ(y), y measured from the end of the preceding window (so a detection just after a window
  costs almost nothing and one far after it costs the full A_FP), and σ = -1 - the full A_FP penalty - when
  no window precedes it. Each window without a detection costs A_FN.
- *Application profiles*: standard A_TP=1, A_FP=0.11, A_FN=1, A_TN=1; reward_low_FP doubles A_FP to 0.22;
  reward_low_FN doubles A_FN to 2.0.
- *Normalised score*: 100·(S - S_null) / (S_perfect - S_null), the null detector flagging nothing
  (S_null = -A_FN·windows) and the perfect one raising exactly one detection at the start of each window
  (S_perfect = A_TP·σ(-1)·windows).

How far this was checked: the window size rule, the three profiles' weights and the null/perfect
normalisation agree with the documentation of the otsad R package (``GetWindowLength``, ``GetDetectorScore``,
``NormalizeScore``), an independent implementation citing the paper. The sigmoid, the earliest-detection
rule and the false-positive weighting are implemented as the paper's rules are stated above; they were not
re-checked line by line against the paper's text.

What had to be interpreted:

- Signs: NAB tabulates A_FP and A_FN as negative weights; here all weights are positive magnitudes that
  multiply the unit sigmoid (σ < 0 outside windows makes A_FP·σ a penalty) or are subtracted (A_FN).
- "Relative position, scaled by the window length": the length is the window's span ``end - start`` in rows,
  so y = (row - end) / (end - start) is exactly -1 on the first row and 0 on the last. A one-row window puts
  its only row at y = -1; after a one-row window the span counts as 1.
- "Centred": a window of ``size`` rows starts ``size // 2`` rows before the anomaly (the exact centre for odd
  sizes), is clipped to the series, and overlapping windows are merged into one (the size uses the number of
  distinct anomaly rows before merging). ``size`` is floored and at least one row.
- A_TN is listed for completeness; the NAB score has no true-negative term.
- NAB's probationary period (the start of each series is not scored) is not applied: clear those rows of
  ``detections`` before scoring. NAB normalises over a whole corpus; :func:`nab_total` sums per-series raw,
  null and perfect scores and normalises once, the way NAB reports a corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

DAY_S = 86_400.0


@dataclass(frozen=True)
class Alert:
    """One alert episode, in row indices: its ``first`` flagged row, the row it was ``raised`` at, and its
    ``end`` (the last flagged row before it closed). Always first <= raised <= end."""

    first: int
    raised: int
    end: int


def _runs(mask: np.ndarray) -> np.ndarray:
    """(n, 2) int array: inclusive [start, end] rows of each run of True."""
    m = np.asarray(mask, dtype=bool).ravel().astype(np.int8)
    edges = np.diff(np.r_[np.int8(0), m, np.int8(0)])
    return np.column_stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1])


def alert_episodes(flags: np.ndarray, *, min_run: int = 1, quiet: int = 1) -> list[Alert]:
    """One alert per episode of per-row ``flags`` (rows in time order), with hysteresis.

    An episode is raised on the row where ``min_run`` consecutive flagged rows have been seen (raised = first
    row of that run + min_run - 1); a shorter run, while no episode is open, raises nothing. Once open, the
    episode absorbs every flagged row (short runs included) and closes only after ``quiet`` consecutive
    unflagged rows, so two runs separated by fewer than ``quiet`` unflagged rows are one alert. ``end`` is the
    last flagged row; an episode still open at the last row is returned too. Raises ValueError unless
    min_run >= 1 and quiet >= 1."""
    if min_run < 1 or quiet < 1:
        raise ValueError(f"min_run and quiet must be >= 1, got min_run={min_run}, quiet={quiet}")
    alerts: list[Alert] = []
    current: Alert | None = None
    for start, stop in _runs(flags).tolist():
        # Unflagged rows between the open episode and this run: fewer than `quiet` keeps it open.
        if current is not None and start - current.end - 1 < quiet:
            current = Alert(current.first, current.raised, stop)
            continue
        if current is not None:
            alerts.append(current)
            current = None
        if stop - start + 1 >= min_run:
            current = Alert(start, start + min_run - 1, stop)
    if current is not None:
        alerts.append(current)
    return alerts


def raised_mask(alerts: Sequence[Alert], n_rows: int) -> np.ndarray:
    """Boolean per row, True on each alert's ``raised`` row: the detections NAB scores for an alerting
    system."""
    mask = np.zeros(n_rows, dtype=bool)
    mask[[a.raised for a in alerts]] = True
    return mask


def label_events(labels: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True ``labels`` as inclusive (start, end) row indices, in order."""
    return [(int(s), int(e)) for s, e in _runs(labels).tolist()]


def _elapsed_s(times: np.ndarray, n: int, rows_per_day: float | None) -> tuple[np.ndarray | None, str]:
    """Seconds since the first row and the time basis used: "times" (datetimes, tz-aware or not),
    "rows_per_day", or "rows" (no time basis: None)."""
    if pd.api.types.is_datetime64_any_dtype(times):
        ns = pd.DatetimeIndex(times).as_unit("ns").asi8  # pandas keeps s/ms/us resolutions as given
        return (ns - ns[0]) / 1e9 if n else np.zeros(0), "times"
    if rows_per_day is not None:
        if rows_per_day <= 0:
            raise ValueError(f"rows_per_day must be > 0, got {rows_per_day}")
        return np.arange(n) * (DAY_S / rows_per_day), "rows_per_day"
    return None, "rows"


def _mean_median(values: np.ndarray) -> tuple[float | None, float | None]:
    if not len(values):
        return None, None
    return float(np.mean(values)), float(np.median(values))


def event_metrics(
    times: np.ndarray, labels: np.ndarray, alerts: Sequence[Alert], *, rows_per_day: float | None = None
) -> dict[str, Any]:
    """Event recall, false alerts and detection delays of ``alerts`` against the runs of True ``labels``.

    Rules (row indices; an event is a run of labelled rows [start, end], see :func:`label_events`):

    - an event is *detected* when an alert is raised on a row inside [start, end], or was raised before start
      and is still open at start (raised < start <= alert end); the detection row is the earliest such raised
      row, or start for an alert already open (delay 0);
    - a *false alert* is one raised on a row inside no event whose flagged span [first, end] overlaps no
      event. An alert whose span overlaps an event but that was raised after it ended is neither a detection
      nor a false alert;
    - delays run from the event's start to its detection row: ``_rows`` in rows, ``_s`` in seconds; mean and
      median are over detected events and None when none is detected. ``event_recall`` is None without
      events;
    - time basis (``time_basis``): datetime64 ``times`` (numpy or pandas, tz-aware or not) are used as given
      and the span is last time - first time. Otherwise, with ``rows_per_day`` every row stands for
      1/rows_per_day of a day; without it the time-based values (``false_alerts_per_day``, ``span_days``,
      ``detection_delay_*_s``) are None and only the row-based ones are reported
      (``false_alerts_per_1000_rows`` = 1000 · false alerts / rows, always present).

    Raises ValueError when ``times`` and ``labels`` differ in length."""
    labels = np.asarray(labels, dtype=bool)
    n = len(labels)
    if len(times) != n:
        raise ValueError(f"times has {len(times)} rows, labels {n}")
    elapsed, basis = _elapsed_s(times, n, rows_per_day)
    events = _runs(labels)
    ev_start, ev_end = events[:, 0], events[:, 1]
    order = sorted(alerts, key=lambda a: a.raised)
    first = np.array([a.first for a in order], dtype=np.int64)
    raised = np.array([a.raised for a in order], dtype=np.int64)
    end = np.array([a.end for a in order], dtype=np.int64)

    # Earliest detecting alert per event: among alerts raised by the event's end (a prefix, sorted by raised),
    # the first whose end reaches the event's start - found on the running maximum of ends.
    if len(order) and len(events):
        j = np.searchsorted(np.maximum.accumulate(end), ev_start, side="left")
        jj = np.minimum(j, len(order) - 1)
        detected = (j < len(order)) & (raised[jj] <= ev_end)
        det_row = np.maximum(raised[jj], ev_start)[detected]
    else:
        detected = np.zeros(len(events), dtype=bool)
        det_row = np.zeros(0, dtype=np.int64)
    delay_rows = (det_row - ev_start[detected]).astype(float)

    # False alerts: the first event ending at or after the alert's first row must start after its end.
    if len(events):
        k = np.searchsorted(ev_end, first, side="left")
        overlaps = (k < len(events)) & (ev_start[np.minimum(k, len(events) - 1)] <= end)
    else:
        overlaps = np.zeros(len(order), dtype=bool)
    false_alerts = int((~overlaps).sum())

    span_days: float | None = None
    per_day: float | None = None
    mean_s = median_s = None
    if elapsed is not None:
        span_days = float(elapsed[-1] / DAY_S) if n else 0.0
        per_day = false_alerts / span_days if span_days > 0 else None
        mean_s, median_s = _mean_median(elapsed[det_row] - elapsed[ev_start[detected]])
    mean_rows, median_rows = _mean_median(delay_rows)
    return {
        "events": len(events),
        "events_detected": int(detected.sum()),
        "event_recall": float(detected.mean()) if len(events) else None,
        "alerts": len(order),
        "false_alerts": false_alerts,
        "false_alerts_per_day": per_day,
        "false_alerts_per_1000_rows": 1000.0 * false_alerts / n if n else None,
        "span_days": span_days,
        "time_basis": basis,
        "detection_delay_mean_s": mean_s,
        "detection_delay_median_s": median_s,
        "detection_delay_mean_rows": mean_rows,
        "detection_delay_median_rows": median_rows,
    }


@dataclass(frozen=True)
class NabProfile:
    """NAB application-profile weights, as positive magnitudes (A_FP and A_FN are penalties)."""

    a_tp: float
    a_fp: float
    a_fn: float
    a_tn: float


NAB_PROFILES: dict[str, NabProfile] = {
    "standard": NabProfile(a_tp=1.0, a_fp=0.11, a_fn=1.0, a_tn=1.0),
    "reward_low_FP": NabProfile(a_tp=1.0, a_fp=0.22, a_fn=1.0, a_tn=1.0),
    "reward_low_FN": NabProfile(a_tp=1.0, a_fp=0.11, a_fn=2.0, a_tn=1.0),
}


@dataclass(frozen=True)
class NabScore:
    """One series' NAB score under one profile: ``raw`` S, ``null`` and ``perfect`` (S of the null and the
    perfect detector), ``normalised`` 100·(S - null)/(perfect - null) (None without windows), and the counts."""

    profile: str
    raw: float
    normalised: float | None
    tp: int
    fp: int
    fn: int
    null: float
    perfect: float


def nab_sigmoid(y: np.ndarray | float) -> np.ndarray:
    """σ(y) = 2 / (1 + e^{5y}) - 1, computed as the identical -tanh(5y/2)."""
    return -np.tanh(2.5 * np.asarray(y, dtype=float))


def nab_windows(n_rows: int, anomaly_rows: Sequence[int], *, fraction: float = 0.1) -> list[tuple[int, int]]:
    """NAB anomaly windows: ``floor(fraction · n_rows / distinct anomalies)`` rows (at least one) starting
    ``size // 2`` rows before each anomaly row, clipped to [0, n_rows - 1]; overlapping windows are merged.
    Raises ValueError for an anomaly row outside the series."""
    rows = sorted({int(r) for r in anomaly_rows})
    if rows and not 0 <= rows[0] <= rows[-1] < n_rows:
        raise ValueError(f"anomaly rows must lie in [0, {n_rows - 1}], got {rows[0]}..{rows[-1]}")
    if not rows:
        return []
    size = max(1, int(fraction * n_rows / len(rows)))
    windows: list[tuple[int, int]] = []
    for row in rows:
        start = row - size // 2
        lo, hi = max(0, start), min(n_rows - 1, start + size - 1)
        if windows and lo <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(windows[-1][1], hi))
        else:
            windows.append((lo, hi))
    return windows


def _checked_windows(windows: Sequence[tuple[int, int]], n_rows: int) -> np.ndarray:
    w = np.array(sorted((int(s), int(e)) for s, e in windows), dtype=np.int64).reshape(-1, 2)
    if len(w) and (w[0, 0] < 0 or w[-1, 1] >= n_rows or (w[:, 1] < w[:, 0]).any()):
        raise ValueError(f"windows must be (start, end) with 0 <= start <= end < {n_rows}")
    if (w[1:, 0] <= w[:-1, 1]).any():
        raise ValueError("windows must not overlap (nab_windows merges overlapping ones)")
    return w


def nab_score(
    detections: np.ndarray, windows: Sequence[tuple[int, int]], n_rows: int, *, profile: str = "standard"
) -> NabScore:
    """NAB score of per-row boolean ``detections`` (e.g. :func:`raised_mask`) against inclusive row
    ``windows`` (from :func:`nab_windows`, or the labelled events of :func:`label_events`), following the
    rules in the module docstring. Raises ValueError for an unknown profile, detections not ``n_rows`` long,
    or windows outside the series or overlapping."""
    if profile not in NAB_PROFILES:
        raise ValueError(f"unknown NAB profile {profile!r}; valid: {', '.join(NAB_PROFILES)}")
    weights = NAB_PROFILES[profile]
    det = np.asarray(detections, dtype=bool)
    if det.shape != (n_rows,):
        raise ValueError(f"detections must be one flag per row ({n_rows}), got shape {det.shape}")
    w = _checked_windows(windows, n_rows)
    rows = np.flatnonzero(det)
    start, end = w[:, 0], w[:, 1]
    span = np.maximum(end - start, 1)  # a one-row window: span 1 for positions after it

    k = np.searchsorted(start, rows, side="right") - 1  # the window starting at or before each detection
    kk = np.maximum(k, 0)
    inside = (k >= 0) & (rows <= end[kk]) if len(w) else np.zeros(len(rows), dtype=bool)
    # Earliest detection per window: rows are sorted, so the first occurrence of each window index.
    hit, first_idx = np.unique(k[inside], return_index=True)
    tp_rows = rows[inside][first_idx]
    y_tp = np.where(end[hit] > start[hit], (tp_rows - end[hit]) / span[hit], -1.0)
    fp_rows, fp_k = rows[~inside], k[~inside]
    if len(w):
        kf = np.maximum(fp_k, 0)
        y_fp = np.where(fp_k >= 0, (fp_rows - end[kf]) / span[kf], np.inf)  # σ(+inf) = -1: no window before
    else:
        y_fp = np.full(len(fp_rows), np.inf)
    fn = len(w) - len(hit)
    raw = float(weights.a_tp * nab_sigmoid(y_tp).sum() + weights.a_fp * nab_sigmoid(y_fp).sum() - weights.a_fn * fn)
    null = -weights.a_fn * len(w) if len(w) else 0.0
    perfect = float(weights.a_tp * nab_sigmoid(-1.0)) * len(w)
    return NabScore(
        profile=profile,
        raw=raw,
        normalised=_normalise(raw, null, perfect),
        tp=len(hit),
        fp=len(fp_rows),
        fn=fn,
        null=null,
        perfect=perfect,
    )


def _normalise(raw: float, null: float, perfect: float) -> float | None:
    return 100.0 * (raw - null) / (perfect - null) if perfect != null else None


def nab_scores(detections: np.ndarray, windows: Sequence[tuple[int, int]], n_rows: int) -> dict[str, NabScore]:
    """:func:`nab_score` under every profile in :data:`NAB_PROFILES`, keyed by profile name."""
    return {name: nab_score(detections, windows, n_rows, profile=name) for name in NAB_PROFILES}


def nab_total(scores: Sequence[NabScore]) -> NabScore:
    """Several series' scores under one profile as NAB reports a corpus: raw, null, perfect and counts summed,
    then normalised once. Raises ValueError for an empty sequence or mixed profiles."""
    profiles = {s.profile for s in scores}
    if len(profiles) != 1:
        raise ValueError(f"need scores of exactly one profile, got {sorted(profiles)}")
    raw, null, perfect = (float(sum(getattr(s, f) for s in scores)) for f in ("raw", "null", "perfect"))
    return NabScore(
        profile=profiles.pop(),
        raw=raw,
        normalised=_normalise(raw, null, perfect),
        tp=sum(s.tp for s in scores),
        fp=sum(s.fp for s in scores),
        fn=sum(s.fn for s in scores),
        null=null,
        perfect=perfect,
    )
