"""Detection metrics on per-reading labels ("normal" or an anomaly kind), shared by training and evaluate."""

from __future__ import annotations

from typing import Any

import numpy as np

from millrace.records import NORMAL


def binary_metrics(truth: np.ndarray, flag: np.ndarray) -> dict[str, Any]:
    """precision, recall, F1, false-alarm rate (FP / actual normals), missed-alarm rate (FN / anomalies)."""
    truth, flag = np.asarray(truth, dtype=bool), np.asarray(flag, dtype=bool)
    tp = int((truth & flag).sum())
    fp = int((~truth & flag).sum())
    fn = int((truth & ~flag).sum())
    tn = int((~truth & ~flag).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "readings": tp + fp + fn + tn, "anomalies": tp + fn, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": precision, "recall": recall, "f1": f1,
        "false_alarm_rate": fp / (fp + tn) if fp + tn else 0.0,
        "missed_alarm_rate": fn / (tp + fn) if tp + fn else 0.0,
    }  # fmt: skip


def per_kind(labels: np.ndarray, flag: np.ndarray, kinds: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Per anomaly kind: readings, recall (flagged at all), and - when predicted kinds are given - precision
    and F1 of the kind (a flag counts for kind k when the predicted kind is k)."""
    labels = np.asarray(labels, dtype=object)
    flag = np.asarray(flag, dtype=bool)
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted({str(k) for k in labels if k != NORMAL and k is not None}):
        actual = labels == kind
        row: dict[str, Any] = {"readings": int(actual.sum()), "recall": float((flag & actual).sum() / actual.sum())}
        if kinds is not None:
            predicted = flag & (np.asarray(kinds, dtype=object) == kind)
            tp = int((predicted & actual).sum())
            precision = tp / predicted.sum() if predicted.sum() else 0.0
            recall = tp / actual.sum()
            row.update(
                kind_precision=float(precision), kind_recall=float(recall),
                kind_f1=float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0,
            )  # fmt: skip
            # Detection F1 of this kind: its readings against the normal ones (other kinds left out).
            scope = actual | (labels == NORMAL)
            row["detection_f1"] = binary_metrics(actual[scope], flag[scope])["f1"]
        out[kind] = row
    return out


def best_threshold(scores: np.ndarray, truth: np.ndarray, *, max_false_alarm: float = 0.01) -> float:
    """The score threshold with the best F1 among those with a false-alarm rate <= ``max_false_alarm``."""
    truth = np.asarray(truth, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    tp = np.cumsum(t)
    fp = np.cumsum(~t)
    positives, negatives = max(int(t.sum()), 1), max(int((~t).sum()), 1)
    # Only cut between distinct scores.
    last = np.r_[s[1:] != s[:-1], True]
    precision = tp / (tp + fp)
    recall = tp / positives
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    ok = last & (fp / negatives <= max_false_alarm)
    if not ok.any():
        return float(s[0]) + 1e-9
    best = int(np.argmax(np.where(ok, f1, -1.0)))
    return float(s[best])
