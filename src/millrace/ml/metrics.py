"""Detection metrics on per-reading labels ("normal" or an anomaly kind), shared by training and evaluate."""

from __future__ import annotations

from typing import Any

import numpy as np

from millrace.records import NORMAL


def binary_metrics(truth: np.ndarray, flag: np.ndarray, weight: np.ndarray | None = None) -> dict[str, Any]:
    """precision, recall, F1, false-alarm rate (FP / actual normals), missed-alarm rate (FN / anomalies).
    ``weight``: how many readings each row stands for (a sample that keeps every anomaly and a share of the
    normal readings weighs those by the inverse share); counts are then rounded estimates."""
    truth, flag = np.asarray(truth, dtype=bool), np.asarray(flag, dtype=bool)
    w = np.ones(len(truth)) if weight is None else np.asarray(weight, dtype=float)
    tp = float(w[truth & flag].sum())
    fp = float(w[~truth & flag].sum())
    fn = float(w[truth & ~flag].sum())
    tn = float(w[~truth & ~flag].sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "readings": round(tp + fp + fn + tn),
        "anomalies": round(tp + fn),
        "tp": round(tp),
        "fp": round(fp),
        "fn": round(fn),
        "tn": round(tn),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_alarm_rate": fp / (fp + tn) if fp + tn else 0.0,
        "missed_alarm_rate": fn / (tp + fn) if tp + fn else 0.0,
    }


def per_kind(
    labels: np.ndarray, flag: np.ndarray, kinds: np.ndarray | None = None, weight: np.ndarray | None = None
) -> dict[str, dict[str, Any]]:
    """Per anomaly kind: readings, recall (flagged at all), and - when predicted kinds are given - precision
    and F1 of the kind (a flag counts for kind k when the predicted kind is k). ``weight`` as in
    :func:`binary_metrics`."""
    labels = np.asarray(labels, dtype=object)
    flag = np.asarray(flag, dtype=bool)
    w = np.ones(len(labels)) if weight is None else np.asarray(weight, dtype=float)
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted({str(k) for k in labels if k != NORMAL and k is not None}):
        actual = labels == kind
        n = float(w[actual].sum())
        row: dict[str, Any] = {"readings": round(n), "recall": float(w[flag & actual].sum() / n)}
        if kinds is not None:
            predicted = flag & (np.asarray(kinds, dtype=object) == kind)
            tp, named = float(w[predicted & actual].sum()), float(w[predicted].sum())
            precision = tp / named if named else 0.0
            recall = tp / n
            row.update(
                kind_precision=float(precision),
                kind_recall=float(recall),
                kind_f1=float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0,
            )
            # Detection F1 of this kind: its readings against the normal ones (other kinds left out).
            scope = actual | (labels == NORMAL)
            row["detection_f1"] = binary_metrics(actual[scope], flag[scope], w[scope])["f1"]
        out[kind] = row
    return out


def best_threshold(
    scores: np.ndarray, truth: np.ndarray, *, max_false_alarm: float = 0.01, weight: np.ndarray | None = None
) -> float:
    """The score threshold with the best F1 among those with a false-alarm rate <= ``max_false_alarm``
    (``weight`` as in :func:`binary_metrics`)."""
    truth = np.asarray(truth, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    w = np.ones(len(s)) if weight is None else np.asarray(weight, dtype=float)[order]
    tp = np.cumsum(np.where(t, w, 0.0))
    fp = np.cumsum(np.where(t, 0.0, w))
    positives, negatives = max(float(w[t].sum()), 1.0), max(float(w[~t].sum()), 1.0)
    # Only cut between distinct scores.
    last = np.r_[s[1:] != s[:-1], True]
    precision = tp / (tp + fp)
    recall = tp / positives
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    ok = last & (fp / negatives <= max_false_alarm + 1e-12)
    if not ok.any():
        return float(s[0]) + 1e-9
    best = int(np.argmax(np.where(ok, f1, -1.0)))
    return float(s[best])


def episode_per_kind(
    sensor: np.ndarray,
    ts: np.ndarray,
    labels: np.ndarray,
    flag: np.ndarray,
    kinds: np.ndarray,
    score: np.ndarray,
    *,
    merge: int = 5,
) -> dict[str, dict[str, Any]]:
    """Event-level (episode) precision, recall and F1 per kind, next to the per-reading numbers.

    - a *true episode* is a maximal run of consecutive readings of one sensor with the same anomaly label;
      it counts as found for kind k when it is labelled k, at least one of its readings is flagged, and its
      highest-scoring flagged reading is named k (an alert is named by its highest-scoring reading);
    - a *flagged event* is a run of flagged readings of one sensor in which consecutive flagged readings are
      at most ``merge`` readings apart; it is named by its highest-scoring reading and is correct when one of
      its flagged readings is labelled with that name.

    recall(k) = found k episodes / true k episodes; precision(k) = correct events named k / events named k.
    """
    sensor_codes = np.unique(np.asarray(sensor, dtype=object).astype(str), return_inverse=True)[1]
    order = np.lexsort((np.asarray(ts), sensor_codes))
    s = sensor_codes[order]
    lab = np.asarray(labels, dtype=object)[order]
    fl = np.asarray(flag, dtype=bool)[order]
    kd = np.asarray(kinds, dtype=object)[order]
    sc = np.nan_to_num(np.asarray(score, dtype=float)[order], nan=0.0)
    anomalous = lab != NORMAL
    changed = np.r_[True, (s[1:] != s[:-1]) | (lab[1:] != lab[:-1])]
    episode = np.cumsum(changed & anomalous) - 1
    true_kind = {int(e): str(k) for e, k in zip(episode[changed & anomalous], lab[changed & anomalous], strict=True)}
    hit = np.flatnonzero(anomalous & fl)
    found_name = _name_of_groups(episode[hit], sc[hit], kd[hit])

    pos = np.flatnonzero(fl)
    starts = np.r_[True, (np.diff(pos) > merge + 1) | (s[pos[1:]] != s[pos[:-1]])] if len(pos) else np.zeros(0, bool)
    event = np.cumsum(starts) - 1
    event_name = _name_of_groups(event, sc[pos], kd[pos])
    correct: dict[int, bool] = {}
    for e, label in zip(event.tolist(), lab[pos].tolist(), strict=True):
        if label == event_name[e]:
            correct[e] = True
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted(set(true_kind.values())):
        episodes = [e for e, k in true_kind.items() if k == kind]
        found = sum(1 for e in episodes if found_name.get(e) == kind)
        named = [e for e, k in event_name.items() if k == kind]
        right = sum(1 for e in named if correct.get(e))
        precision = right / len(named) if named else 0.0
        recall = found / len(episodes)
        out[kind] = {
            "episodes": len(episodes),
            "found": found,
            "events_named": len(named),
            "events_correct": right,
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        }
    return out


def _name_of_groups(group: np.ndarray, score: np.ndarray, kind: np.ndarray) -> dict[int, str]:
    """{group: the kind of its highest-scoring member}."""
    if not len(group):
        return {}
    order = np.lexsort((-score, group))
    first = order[np.r_[True, group[order][1:] != group[order][:-1]]]
    return {int(g): str(k) for g, k in zip(group[first], kind[first], strict=True)}
