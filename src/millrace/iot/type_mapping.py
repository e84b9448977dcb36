"""Sensor type mapping files: which column (wide layout) or sensor (long layout) of a recording has which type.

A recording's sensors get a type only from this mapping or from the file's own type column; nothing is read
into a column's name. Two formats, chosen by the file's suffix:

- ``.toml``: one ``"column name" = "type"`` pair per line (bare keys work for plain names)::

      Pressure = "pressure_bar"
      "Motor current" = "current_ma"

- ``.csv``: two columns, ``column,type``, one mapping per line; a first line ``column,type`` is a header.

A type is used exactly as written. It takes the physical range configured for it (``[processing.ranges.<type>]``
or a built-in default); a type with no range (e.g. ``generic``) is never range-checked.
"""

from __future__ import annotations

import csv
import io
import tomllib
from pathlib import Path

from millrace.errors import TypeMappingError

SUFFIXES = (".toml", ".csv")


def read_type_mapping(path: str | Path) -> dict[str, str]:
    """Column or sensor name -> sensor type from a ``.toml`` or ``.csv`` file (see the module docstring).
    Raises TypeMappingError, naming the file and the problem, for a file that cannot be read, an unknown
    suffix, a value that is not a type name, a name mapped twice, or no mapping at all."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise TypeMappingError(f"{path}: a type mapping is a .toml or .csv file, not {suffix or 'no suffix'!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TypeMappingError(f"{path}: cannot read the type mapping: {exc}") from exc
    mapping = _from_toml(path, text) if suffix == ".toml" else _from_csv(path, text)
    if not mapping:
        raise TypeMappingError(f"{path}: the type mapping maps no column")
    return mapping


def _checked(path: Path, where: str, name: object, sensor_type: object) -> tuple[str, str]:
    if not isinstance(sensor_type, str):
        shown = "a table" if isinstance(sensor_type, dict) else repr(sensor_type)
        raise TypeMappingError(f"{path}: {where}{name!r} must map to a type name (a string), not {shown}")
    if not str(name).strip():
        raise TypeMappingError(f"{path}: {where}empty column name")
    if not sensor_type.strip():
        raise TypeMappingError(f"{path}: {where}empty type for {name!r}")
    return str(name).strip(), sensor_type.strip()


def _from_toml(path: Path, text: str) -> dict[str, str]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TypeMappingError(f"{path}: invalid TOML: {exc}") from exc
    return dict(_checked(path, "", name, sensor_type) for name, sensor_type in data.items())


def _from_csv(path: Path, text: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    first_line: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text))
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != 2:
            raise TypeMappingError(f"{path}: line {line}: expected 2 fields (column,type), found {len(fields)}")
        if not mapping and [f.strip().lower() for f in fields] == ["column", "type"]:
            continue  # the header
        name, sensor_type = _checked(path, f"line {line}: ", fields[0], fields[1])
        if name in mapping:
            raise TypeMappingError(f"{path}: line {line}: {name!r} is mapped already on line {first_line[name]}")
        mapping[name], first_line[name] = sensor_type, line
    return mapping
