"""Features of a large frame on several cores.

Devices are independent and :func:`~millrace.processing.features.frame_features` works device by device, so
featurizing groups of devices in worker processes and putting the rows back in (timestamp, sensor_id) order
gives exactly the rows and numbers of one pass (tested). Workers are forked: they read the frame they
inherited, nothing is pickled on the way in; text columns come back as categories (small to pickle).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from millrace.config import ProcessingSettings
from millrace.processing.features import frame_features

MIN_PARALLEL_ROWS = 400_000  # below this, starting workers costs more than it saves
_JOB: tuple[pd.DataFrame, np.ndarray, ProcessingSettings] | None = None  # what forked workers inherit


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def features_by_device(
    frame: pd.DataFrame, processing: ProcessingSettings, *, workers: int | None = None,
    min_rows: int | None = None,
) -> pd.DataFrame:  # fmt: skip
    """``frame_features(frame, processing, chunk=None)``, computed by ``workers`` processes (default: the
    usable cores) when the frame is large enough and the platform can fork."""
    n = default_workers() if workers is None else workers
    codes, names = pd.factorize(frame["device_id"], sort=True)
    can_fork = "fork" in multiprocessing.get_all_start_methods()
    if n <= 1 or len(names) < 2 or len(frame) < (MIN_PARALLEL_ROWS if min_rows is None else min_rows) or not can_fork:
        return frame_features(frame, processing, chunk=None)
    parts = _balance(np.bincount(codes, minlength=len(names)), min(len(names), 2 * n))
    global _JOB
    _JOB = (frame, codes, processing)
    try:
        with multiprocessing.get_context("fork").Pool(min(n, len(parts))) as pool:
            text = {name for name in frame.columns if frame[name].dtype == object}
            results = [_decode(r, text) for r in pool.imap_unordered(_features_of, parts)]
    finally:
        _JOB = None
    out = pd.concat(results, ignore_index=True)
    del results
    # The order frame_features gives: (timestamp, sensor_id), stable (ties stay within one device's part).
    sid_codes, _ = pd.factorize(out["sensor_id"], sort=True)
    ts = out["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    return out.take(np.lexsort((sid_codes, ts))).reset_index(drop=True)


def _balance(sizes: np.ndarray, parts: int) -> list[list[int]]:
    """Device codes in ``parts`` groups of about equal reading counts (largest device first)."""
    groups: list[list[int]] = [[] for _ in range(parts)]
    load = np.zeros(parts)
    for code in np.argsort(-sizes, kind="stable"):
        k = int(np.argmin(load))
        groups[k].append(int(code))
        load[k] += sizes[code]
    return [sorted(g) for g in groups if g]


def _features_of(device_codes: list[int]) -> pd.DataFrame:
    assert _JOB is not None, "worker started without a job"
    frame, codes, processing = _JOB
    out = frame_features(frame[np.isin(codes, device_codes)], processing, chunk=None)
    return _encode(out)


def _encode(frame: pd.DataFrame) -> pd.DataFrame:
    for name in frame.columns:
        if frame[name].dtype == object:
            with contextlib.suppress(TypeError):  # unhashable values: sent as they are
                frame[name] = frame[name].astype("category")
    return frame


def _decode(frame: pd.DataFrame, text: set[str]) -> pd.DataFrame:
    for name in frame.columns:
        if name in text and isinstance(frame[name].dtype, pd.CategoricalDtype):
            frame[name] = _as_object(frame[name])
    return frame


def _as_object(column: pd.Series) -> Any:
    values = column.cat.categories.to_numpy(dtype=object)
    codes = column.cat.codes.to_numpy()
    out = np.empty(len(codes), dtype=object)
    out[:] = None
    have = codes >= 0
    out[have] = values[codes[have]]
    return out


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
