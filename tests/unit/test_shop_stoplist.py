"""The stop list's state and the filter's decisions, without Kafka."""

from __future__ import annotations

import json

import pytest

from millrace.errors import UsageError
from millrace.shop.filter import FilterState
from millrace.shop.stoplist import StopEntry, StopList, check_product_id, decode_entry, entries_of


def record(product_id: str, blocked: bool) -> tuple[bytes, bytes]:
    return product_id.encode(), StopEntry(product_id, blocked, "r", "t").encode()


def test_the_latest_entry_per_id_decides() -> None:
    state = entries_of([record("a", True), record("b", True), record("a", False), record("c", True)])
    assert [e.product_id for e in state.blocked()] == ["b", "c"]
    assert state.was_unblocked("a") and not state.is_blocked("a")
    assert not state.was_unblocked("zz") and not state.is_blocked("zz")


def test_apply_reports_only_changes_of_state() -> None:
    state = StopList()
    assert state.apply(StopEntry("a", True)) == StopEntry("a", True)
    assert state.apply(StopEntry("a", True, "again")) is None  # still blocked
    assert state.apply(StopEntry("a", False)) == StopEntry("a", False)
    assert state.apply(StopEntry("b", False)) is None  # never blocked


def test_records_decode_and_junk_is_ignored() -> None:
    entry = decode_entry(b"p1", json.dumps({"blocked": True, "reason": "фальшивка", "at": "x"}).encode())
    assert entry == StopEntry("p1", True, "фальшивка", "x")
    assert decode_entry(b"p1", None) == StopEntry("p1", False)  # a tombstone unblocks
    assert decode_entry(None, b"{}") is None
    assert decode_entry(b"p1", b"not json") is None
    assert decode_entry(b"p1", b"[1]") is None
    entry = StopEntry("ёж-1", True, "причина", "t")
    assert decode_entry("ёж-1".encode(), entry.encode()) == entry  # UTF-8 both ways


@pytest.mark.parametrize("bad", ["", "  ", "a b", "x" * 201])
def test_bad_product_ids_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError, match="ID"):
        check_product_id(bad)


def test_filter_drops_blocked_items_and_keeps_their_latest_version() -> None:
    state = FilterState(entries_of([record("b", True)]))
    assert state.on_item(0, b"a", b"a1") == (b"a", b"a1")
    assert state.on_item(1, b"b", b"b1") is None
    assert state.on_item(1, b"b", b"b2") is None
    assert state.on_item(0, None, b"nokey") is None
    assert state.on_item(0, b"a", None) == (b"a", None)  # a catalog deletion passes as a tombstone
    assert state.latest == {"a": (0, None), "b": (1, b"b2")}


def test_stop_list_changes_become_tombstones_and_republications_for_owned_products() -> None:
    stop = StopList()
    state = FilterState(stop)
    state.on_item(0, b"a", b"a1")
    state.on_item(0, b"a", b"a2")
    change = stop.apply(StopEntry("a", True))
    assert change is not None and state.on_stop_change(change) == (b"a", None)
    assert state.on_item(0, b"a", b"a3") is None
    change = stop.apply(StopEntry("a", False))
    assert change is not None and state.on_stop_change(change) == (b"a", b"a3")  # the latest version
    other = stop.apply(StopEntry("not-mine", True))
    assert other is not None and state.on_stop_change(other) is None  # another instance owns it


def test_a_taken_over_partition_gets_the_stop_list_asserted_again() -> None:
    state = FilterState(entries_of([record("b", True), record("c", True), record("c", False)]))
    outputs = state.on_assigned(2, [(b"a", b"a1"), (b"b", b"b1"), (b"c", b"c1"), (b"c", b"c2"), (b"d", None)])
    assert outputs == [(b"b", None), (b"c", b"c2")]  # blocked: removed; unblocked: its latest version
    state.on_assigned(3, [(b"e", b"e1")])
    state.on_revoked([2])
    assert state.latest == {"e": (3, b"e1")}
