"""Features of a large frame on several cores.

Devices are independent and :func:`~millrace.processing.features.frame_features` works device by device, so
featurizing groups of devices in worker processes and putting the rows back in (timestamp, sensor_id) order
gives exactly the rows and numbers of one pass (tested). Workers are forked: they read the frame they
inherited and write the feature columns into shared memory, so nothing large is pickled either way.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from millrace.config import ProcessingSettings
from millrace.processing.features import FEATURE_COLUMNS, devices_step, frame_features

MIN_PARALLEL_ROWS = 400_000  # below this, starting workers costs more than it saves
# What forked workers inherit: inputs, rows by device, device bounds, the shared feature matrix, settings.
_JOB: tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray, ProcessingSettings] | None = None


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def features_by_device(
    frame: pd.DataFrame,
    processing: ProcessingSettings,
    *,
    workers: int | None = None,
    min_rows: int | None = None,
) -> pd.DataFrame:
    """``frame_features(frame, processing, chunk=None)``, computed by ``workers`` processes (default: the
    usable cores) when the frame is large enough and the platform can fork."""
    n = default_workers() if workers is None else workers
    codes, names = pd.factorize(frame["device_id"], sort=True)
    can_fork = "fork" in multiprocessing.get_all_start_methods()
    if n <= 1 or len(names) < 2 or len(frame) < (MIN_PARALLEL_ROWS if min_rows is None else min_rows) or not can_fork:
        return frame_features(frame, processing, chunk=None)
    parts = _balance(np.bincount(codes, minlength=len(names)), min(len(names), 2 * n))
    # Workers write the feature columns straight into memory shared with this process, at the rows' positions
    # in ``frame``: nothing but a part number goes through a pipe.
    shared = mmap.mmap(-1, max(1, len(frame) * len(FEATURE_COLUMNS) * 8))
    feats = np.frombuffer(shared, dtype=float, count=len(frame) * len(FEATURE_COLUMNS)).reshape(len(frame), -1)
    by_device = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[by_device], np.arange(len(names) + 1))
    inputs = frame[[c for c in _INPUTS if c in frame.columns]]
    global _JOB
    _JOB = (inputs, by_device, bounds, feats, processing)
    try:
        with multiprocessing.get_context("fork").Pool(min(n, len(parts))) as pool:
            done = sum(pool.imap_unordered(_features_of, parts))
    finally:
        _JOB = None
    assert done == len(frame), f"workers featurized {done} of {len(frame)} readings"
    # The order frame_features gives: (timestamp, sensor_id), stable (equal keys keep the input order).
    sid_codes, _ = pd.factorize(frame["sensor_id"], sort=True)
    ts = frame["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    order = np.lexsort((sid_codes, ts))
    out = frame.take(order).reset_index(drop=True)
    columns = pd.DataFrame(feats[order], columns=list(FEATURE_COLUMNS))
    del feats
    shared.close()
    return pd.concat([out, columns], axis=1)


_INPUTS = ("sensor_id", "device_id", "sensor_type", "location", "timestamp", "value", "interpolated")


def _balance(sizes: np.ndarray, parts: int) -> list[list[int]]:
    """Device codes in ``parts`` groups of about equal reading counts (largest device first)."""
    groups: list[list[int]] = [[] for _ in range(parts)]
    load = np.zeros(parts)
    for code in np.argsort(-sizes, kind="stable"):
        k = int(np.argmin(load))
        groups[k].append(int(code))
        load[k] += sizes[code]
    return [sorted(g) for g in groups if g]


def _features_of(device_codes: list[int]) -> int:
    """Features of these devices, written into the shared matrix at the readings' rows; returns the count."""
    assert _JOB is not None, "worker started without a job"
    inputs, by_device, bounds, feats, processing = _JOB
    state: dict = {}
    done = 0
    for code in device_codes:
        rows = by_device[bounds[code] : bounds[code + 1]]
        batch = inputs.take(rows).reset_index(drop=True).assign(_row=rows)
        out, _ = devices_step(batch, state, processing)
        feats[out["_row"].to_numpy()] = out[list(FEATURE_COLUMNS)].to_numpy(dtype=float)
        done += len(out)
    return done


_TASKS: Sequence[Callable[[], Any]] | None = None  # what forked workers inherit


def run_tasks(tasks: Sequence[Callable[[], Any]], *, workers: int | None = None) -> list[Any]:
    """Call each task (a closure over data the parent holds) in forked workers, in order of the list, and
    return their results in that order; in this process when there is one worker or no fork. Each worker
    runs native code on one thread (see millrace.ml.train)."""
    n = min(default_workers() if workers is None else workers, len(tasks))
    if n <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [task() for task in tasks]
    global _TASKS
    _TASKS = tasks
    try:
        with multiprocessing.get_context("fork").Pool(n) as pool:
            return pool.map(_run_task, range(len(tasks)), chunksize=1)
    finally:
        _TASKS = None


def _run_task(index: int) -> Any:
    from threadpoolctl import threadpool_limits

    assert _TASKS is not None, "worker started without tasks"
    with threadpool_limits(limits=1):
        return _TASKS[index]()
