"""Store retention while the stream job runs: a background thread deletes the rows older than each
collection's retention (``store.retention_days``, ``[store.retention]``) every ``store.retention_interval_s``,
first when it starts. On MongoDB it also sets TTL indexes to the same retention, so the server expires rows
between runs by itself (FerretDB has none: there the runs alone keep the store bounded).

A failed run (store unreachable) is logged and tried again at the next interval; it never stops the job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from millrace.config import Settings
from millrace.errors import StoreUnavailable
from millrace.stores.base import Store

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


class RetentionTask:
    """Apply retention every ``interval_s`` seconds in a daemon thread, on a store of its own.

    ``runs`` counts completed runs and ``deleted`` sums what they deleted per collection; ``clock`` gives the
    time retention is measured from (tests move it).
    """

    def __init__(
        self,
        open_store: Callable[[], Store],
        *,
        retention_days: float,
        per_collection: Mapping[str, float] | None = None,
        interval_s: float,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("the retention interval must be positive")
        self._open_store = open_store
        self.retention_days = retention_days
        self.per_collection = dict(per_collection or {})
        self.interval_s = interval_s
        self.clock = clock
        self.runs = 0
        self.deleted: dict[str, int] = {}
        self.ttl: dict[str, int] = {}
        self.last_run_at: float | None = None  # time.monotonic() of the last completed run
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store: Store | None = None
        self._failing = False

    def start(self) -> RetentionTask:
        self._thread = threading.Thread(target=self._loop, name="millrace-retention", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the current run (a run is one delete per collection)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._store is not None:
            self._store.close()
            self._store = None

    def run_once(self) -> dict[str, int]:
        """One retention run now; returns what it deleted per collection."""
        if self._store is None:
            self._store = self._open_store()
            self.ttl = self._store.ensure_ttl(self.retention_days, per_collection=self.per_collection)
        now = self.clock()
        deleted = self._store.apply_retention(now, self.retention_days, per_collection=self.per_collection)
        for name, n in deleted.items():
            self.deleted[name] = self.deleted.get(name, 0) + n
        self.runs += 1
        self.last_run_at = time.monotonic()
        if any(deleted.values()):
            log.info("retention at %s deleted %s", now.isoformat(), {k: v for k, v in deleted.items() if v})
        return deleted

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
                self._failing = False
            except StoreUnavailable as exc:
                if not self._failing:  # one warning per failure streak
                    log.warning("retention run failed, trying again in %.0f s: %s", self.interval_s, exc)
                self._failing = True
            except Exception:  # a bug must not stop the stream job; it is logged with its traceback
                log.exception("retention run failed")
            self._stop.wait(self.interval_s)


def start_retention(settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> RetentionTask | None:
    """Start the retention task the settings ask for (None when ``store.retention_interval_s`` is 0)."""
    s = settings.store
    if s.retention_interval_s == 0:
        return None
    from millrace.stores.factory import open_store

    return RetentionTask(
        lambda: open_store(settings),
        retention_days=s.retention_days,
        per_collection=s.retention,
        interval_s=s.retention_interval_s,
        clock=clock,
    ).start()
