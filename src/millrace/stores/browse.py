"""Checking and reading browse queries for every backend: names against FIELD_KINDS, values to their field's kind.

Everything an operator types (a collection, a field, a filter value, a row key) passes through here before a
backend sees it, so a backend only ever puts FIELD_KINDS's own names into a query and binds every value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from millrace.stores import convert
from millrace.stores.base import (
    FIELD_KINDS,
    FILTER_OPS,
    FREE_KEY_FIELD,
    KEYS,
    TIME_FIELDS,
    BrowseQuery,
    FieldKind,
    Filter,
    FilterOp,
)

MAX_FILTERS = 20
MAX_VALUE_CHARS = 500
# "field<op>value": the longest operator that follows the name wins ("a>=1" is a >= 1, not a > "=1").
FILTER_TEXT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(<=|>=|!=|=|<|>)(.*)", re.DOTALL)
INT_TEXT = re.compile(r"[+-]?[0-9]+")
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def check_collection(name: str) -> None:
    """KeyError naming the known collections when ``name`` is not one of FIELD_KINDS's."""
    if name not in FIELD_KINDS:
        raise KeyError(f"unknown collection {name!r} (known: {', '.join(FIELD_KINDS)})")


def kind_of(collection: str, field: str) -> FieldKind:
    check_collection(collection)
    kinds = FIELD_KINDS[collection]
    if field not in kinds:
        raise ValueError(f"{collection} has no field {field!r} (fields: {', '.join(kinds)})")
    return kinds[field]


def coerce(collection: str, field: str, raw: str) -> Any:
    """The value of ``raw`` (text) as ``field`` holds it; ValueError naming the field when it cannot be."""
    kind = kind_of(collection, field)
    if len(raw) > MAX_VALUE_CHARS:
        raise ValueError(f"the value for {field} is longer than {MAX_VALUE_CHARS} characters")
    text = raw.strip()
    if kind in ("str", "list"):
        return raw
    if kind == "int":
        if not INT_TEXT.fullmatch(text) or abs(int(text)) >= 2**63:
            raise ValueError(f"{field} takes a whole number, not {raw!r}")
        return int(text)
    if kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{field} takes a number, not {raw!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{field} takes a finite number, not {raw!r}")
        return value
    if kind == "bool":
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
        raise ValueError(f"{field} takes true or false, not {raw!r}")
    return parse_time(field, text)


def parse_time(name: str, text: str) -> datetime:
    """An aware UTC datetime from ISO 8601 text (naive = UTC), at the stores' millisecond precision."""
    try:
        value = convert.dt_of(convert.ms_of(text))
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"{name} takes an ISO 8601 time such as 2026-03-01T12:00:00Z, not {text!r}") from None
    if value is None:
        raise ValueError(f"{name} takes an ISO 8601 time, not {text!r}")
    return value


def parse_filter(collection: str, text: str) -> Filter:
    """``"field<op>value"`` (ops: = != < <= > >=) as a Filter of the field's kind."""
    match = FILTER_TEXT.fullmatch(text)
    if match is None:
        raise ValueError(f"a filter is field<op>value with op one of {' '.join(FILTER_OPS)}, not {text!r}")
    field, op, raw = match.groups()
    return check_filter(collection, Filter(field, cast(FilterOp, op), coerce(collection, field, raw)))


def check_filter(collection: str, flt: Filter) -> Filter:
    kind = kind_of(collection, flt.field)
    if flt.op not in FILTER_OPS:
        raise ValueError(f"unknown filter operator {flt.op!r} (known: {' '.join(FILTER_OPS)})")
    if kind == "list" and flt.op != "=":
        raise ValueError(f"{flt.field} is a list: it takes = (contains) only")
    if kind == "bool" and flt.op not in ("=", "!="):
        raise ValueError(f"{flt.field} is true or false: it takes = and != only")
    if kind == "time" and isinstance(flt.value, datetime):
        return Filter(flt.field, flt.op, _utc(flt.value))
    return flt


def make_query(
    collection: str,
    *,
    filters: Sequence[str | Filter] = (),
    time_from: datetime | str | None = None,
    time_to: datetime | str | None = None,
    sort: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> BrowseQuery:
    """A checked BrowseQuery. ``sort`` is a field name, ascending, or ``-name``, descending (default: the
    collection's time field, newest first). KeyError for an unknown collection; ValueError, naming what is
    wrong, for anything else."""
    check_collection(collection)
    if len(filters) > MAX_FILTERS:
        raise ValueError(f"at most {MAX_FILTERS} filters")
    checked = tuple(parse_filter(collection, f) if isinstance(f, str) else check_filter(collection, f) for f in filters)
    start = parse_time("from", time_from) if isinstance(time_from, str) else _utc(time_from)
    end = parse_time("to", time_to) if isinstance(time_to, str) else _utc(time_to)
    if start is not None and end is not None and start > end:
        raise ValueError("from must not be after to")
    descending = True
    field = TIME_FIELDS[collection]
    if sort:
        descending = sort.startswith("-")
        field = sort.removeprefix("-").removeprefix("+")
        if kind_of(collection, field) == "list":
            raise ValueError(f"{field} is a list and cannot be sorted by")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if offset < 0:
        raise ValueError("offset must not be negative")
    return BrowseQuery(checked, start, end, field, descending, limit, offset)


def validate(collection: str, query: BrowseQuery) -> BrowseQuery:
    """``query`` checked again by the backend itself (it may not come from make_query): every name it holds is
    FIELD_KINDS's, so a backend may put them into a query as identifiers."""
    check_collection(collection)
    filters = tuple(check_filter(collection, f) for f in query.filters)
    if query.sort is not None and kind_of(collection, query.sort) == "list":
        raise ValueError(f"{query.sort} is a list and cannot be sorted by")
    if query.limit < 1 or query.offset < 0:
        raise ValueError("limit must be at least 1 and offset not negative")
    return BrowseQuery(
        filters, _utc(query.time_from), _utc(query.time_to), query.sort, query.descending, query.limit, query.offset
    )


def sort_keys(collection: str, query: BrowseQuery) -> list[tuple[str, bool]]:
    """(field, descending) pairs: the query's sort, then the key fields ascending (stable pages)."""
    first = query.sort or TIME_FIELDS[collection]
    return [(first, query.descending)] + [(k, False) for k in KEYS[collection] if k != first]


def key_of(collection: str, row: Mapping[str, Any]) -> str:
    """The row's key string: its key fields joined with "|", times as epoch milliseconds."""
    parts = []
    for field in KEYS[collection]:
        value = row[field]
        parts.append(str(convert.ms_of(value)) if FIELD_KINDS[collection][field] == "time" else str(value))
    return "|".join(parts)


def parse_key(collection: str, key: str) -> dict[str, Any]:
    """The key fields of a key string (times as epoch milliseconds); ValueError when it is not one."""
    check_collection(collection)
    fields = KEYS[collection]
    free = fields.index(FREE_KEY_FIELD[collection])
    before, after = fields[:free], fields[free + 1 :]
    parts = key.split("|", len(before)) if before else [key]
    if len(parts) != len(before) + 1:
        raise ValueError(f"{key!r} is not a key of {collection} ({'|'.join(fields)})")
    head, rest = parts[: len(before)], parts[-1]
    tail: list[str] = []
    if after:
        split = rest.rsplit("|", len(after))
        if len(split) != len(after) + 1:
            raise ValueError(f"{key!r} is not a key of {collection} ({'|'.join(fields)})")
        rest, tail = split[0], split[1:]
    out: dict[str, Any] = {}
    for field, text in zip(fields, [*head, rest, *tail], strict=True):
        kind = FIELD_KINDS[collection][field]
        if kind in ("int", "time"):
            if not INT_TEXT.fullmatch(text) or abs(int(text)) >= 2**63:
                raise ValueError(f"{key!r} is not a key of {collection}: {field} must be a whole number")
            out[field] = int(text)
        else:
            out[field] = text
    return out


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return convert.dt_of(convert.ms_of(aware))
    except OverflowError:  # e.g. 0001-01-01T00:00+05:00 is before datetime.min in UTC
        raise ValueError(f"time {value.isoformat()} is out of range") from None
