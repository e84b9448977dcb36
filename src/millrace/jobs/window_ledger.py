"""Tumbling windows that stay exact across micro-batches and replays.

Each micro-batch contributes mergeable partials (count, sum, sum of squares, min, max, anomaly count) per
window. The ledger keeps them per (window, batch_id) in a small SQLite file next to the query's checkpoint;
a replayed batch replaces its own partials, so the merged window — what the store receives by upsert — is the
same whether or not the batch ran before. Partials of windows long closed (older than the lateness) go.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd

_COLUMNS = ("scope", "key", "sensor_type", "location", "window_start", "count", "sum", "sumsq", "min", "max",
            "anomaly_count")  # fmt: skip


class WindowLedger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS partials (scope TEXT, key TEXT, window_start INTEGER, batch_id INTEGER,"
            " sensor_type TEXT, location TEXT, count INTEGER, sum REAL, sumsq REAL, min REAL, max REAL,"
            " anomaly_count INTEGER, PRIMARY KEY (scope, key, window_start, batch_id))"
        )

    def record(self, batch_id: int, partials: pd.DataFrame) -> pd.DataFrame:
        """Store ``partials`` as batch ``batch_id``'s (replacing a previous run of that batch) and return the
        merged totals of every window it touched (columns of transforms.window_partials)."""
        cur = self._db.cursor()
        cur.execute("BEGIN")
        try:
            cur.execute("DELETE FROM partials WHERE batch_id = ?", (batch_id,))
            if len(partials):
                rows = partials[list(_COLUMNS)].assign(batch_id=batch_id)
                cur.executemany(
                    "INSERT INTO partials (scope, key, sensor_type, location, window_start, count, sum, sumsq, min,"
                    " max, anomaly_count, batch_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [tuple(_plain(v) for v in row) for row in rows.itertuples(index=False)],
                )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        if not len(partials):
            return pd.DataFrame(columns=list(_COLUMNS))
        merged = pd.read_sql_query(
            "SELECT p.scope, p.key, MIN(p.sensor_type) AS sensor_type, MIN(p.location) AS location, p.window_start,"
            " SUM(p.count) AS count, SUM(p.sum) AS sum, SUM(p.sumsq) AS sumsq, MIN(p.min) AS min, MAX(p.max) AS max,"
            " SUM(p.anomaly_count) AS anomaly_count FROM partials p"
            " JOIN (SELECT DISTINCT scope, key, window_start FROM partials WHERE batch_id = ?) t"
            " ON p.scope = t.scope AND p.key = t.key AND p.window_start = t.window_start"
            " GROUP BY p.scope, p.key, p.window_start ORDER BY p.scope, p.key, p.window_start",
            self._db,
            params=(batch_id,),
        )
        return merged

    def prune(self, before_ms: int) -> int:
        """Forget partials of windows starting before ``before_ms`` (they can no longer change)."""
        return self._db.execute("DELETE FROM partials WHERE window_start < ?", (before_ms,)).rowcount

    def close(self) -> None:
        self._db.close()


def _plain(value: object) -> object:
    return value.item() if hasattr(value, "item") else value
