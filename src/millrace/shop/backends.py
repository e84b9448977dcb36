"""Opening the configured search backend (shop.search_backend), for the CLI, the API and the demo alike."""

from __future__ import annotations

from pathlib import Path

from millrace.errors import MillraceError
from millrace.shop.search import SearchBackend


class NoSearchIndex(MillraceError):
    """The embedded index was asked to search before any indexer created it."""


def open_backend(kind: str, *, directory: Path, opensearch_url: str, writer: bool) -> SearchBackend:
    """OpenSearch at ``opensearch_url``, or the embedded tantivy index in ``directory`` (``writer=False``: read
    only, and it must exist)."""
    if kind == "opensearch":
        from millrace.shop.search_opensearch import OpenSearchBackend

        return OpenSearchBackend(opensearch_url)
    from millrace.shop.search_tantivy import TantivyBackend

    if not writer and not (directory / "products" / "meta.json").is_file():
        raise NoSearchIndex(f"no search index in {directory}: run `millrace shop index` first")
    return TantivyBackend(directory, writer=writer)
