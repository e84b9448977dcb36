"""The shop's schemas are valid draft-07 JSON Schemas with closed content, mapped to their subjects; the
registry's Java is checked, not assumed."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from millrace.config import TopicSettings
from millrace.errors import DataError, MillraceError
from millrace.kafka.schema_registry import schema_id_of
from millrace.runtime.registry import find_java, java_major, required_java
from millrace.shop.schemas import KINDS, load_schema, schema_dir, subjects


def test_every_schema_is_valid_and_closed() -> None:
    assert sorted(p.stem for p in schema_dir().glob("*.json")) == sorted(KINDS)
    for kind in KINDS:
        schema = load_schema(kind)
        jsonschema.Draft7Validator.check_schema(schema)
        # Closed content: under BACKWARD, adding an optional property stays compatible (with open content
        # the registry counts it as incompatible).
        assert schema["additionalProperties"] is False, kind
        assert set(schema["required"]) <= set(schema["properties"]), kind


def test_subjects_follow_the_topics() -> None:
    mapping = subjects(TopicSettings())
    assert mapping == {
        "millrace.shop.items-value": "item",
        "millrace.shop.filtered-items-value": "item",
        "millrace.shop.orders-value": "order",
        "millrace.shop.client-search-value": "client-query",
        "millrace.shop.recommendations-value": "recommendation",
        "millrace.shop.analytics-value": "analytics",
    }


def test_a_broken_schema_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "item.json").write_text('{"type": "object", "required": "id"}', encoding="utf-8")
    with pytest.raises(DataError, match=r"item.json is not a valid JSON Schema"):
        load_schema("item", tmp_path)
    with pytest.raises(DataError, match="schema file not found"):
        load_schema("order", tmp_path)


def test_schema_id_framing() -> None:
    assert schema_id_of(b"\x00\x00\x00\x01\x2a{}") == 298
    assert schema_id_of(b'{"id": 1}') is None
    assert schema_id_of(b"\x00\x00") is None


def test_java_is_checked(tmp_path: Path) -> None:
    assert (required_java("3.3.3"), required_java("2.6.13.Final")) == (21, 17)
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'openjdk version \"17.0.15\" 2025-04-15' >&2\n", encoding="utf-8")
    fake.chmod(0o755)
    assert java_major(fake) == 17
    with pytest.raises(MillraceError, match=r"shop.registry_java .* is Java 17; the registry needs Java 21\+"):
        find_java(21, fake)
    assert find_java(17, fake) == fake
    assert java_major(tmp_path / "missing") is None


def test_schema_files_are_utf8_json() -> None:
    for path in schema_dir().glob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))
