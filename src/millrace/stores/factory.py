"""Open the store the settings name: SQLite (default, embedded) or MongoDB."""

from __future__ import annotations

from millrace.config import Settings
from millrace.stores.base import Store


def open_store(settings: Settings) -> Store:
    """A ready store for ``settings.store.backend``.

    ``sqlite`` opens (and creates) ``settings.sqlite_path``; ``mongodb`` connects to
    ``settings.store.mongodb_uri`` / ``mongodb_database`` and raises StoreUnavailable when no server answers.
    Each process should open its own store (Spark executors included).
    """
    backend = settings.store.backend
    if backend == "sqlite":
        from millrace.stores.sqlite import SqliteStore

        return SqliteStore(settings.sqlite_path)
    if backend == "mongodb":
        from millrace.stores.mongo import MongoStore

        return MongoStore(settings.store.mongodb_uri, settings.store.mongodb_database)
    raise AssertionError(f"unknown store backend {backend!r}")  # the settings type admits no other value
