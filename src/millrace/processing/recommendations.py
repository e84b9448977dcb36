"""The operator's recommended action for an alert, by anomaly kind and sensor type, from a declarative table.

The table is TOML: a table per anomaly kind, in it one action (text) per sensor type; ``any`` in either place
matches every kind or every type (docs/recommendations.md)::

    [spike]
    any = "Check the sensor's wiring and connector ..."
    vibration = "Inspect the bearing and the mounting ..."

    [any]
    any = "Inspect the device and compare with its neighbours ..."

millrace ships a table (``resources/recommendations.toml``) with an action for every kind the job names and
each of the simulator's sensor types, and a fallback for any other type and any other kind. A user file
(``processing.recommendations_file``) is read over it: its entries replace the shipped ones with the same
kind and type, and add new ones (a kind or a sensor type of the user's own).

Lookup precedence, most specific first: (kind, type), (kind, any), (any, type), (any, any). An alert over
sensors of several types takes the most specific entry found for any of them, the alert's sensors in their
order (sorted ids) breaking ties. The matched entry's ``kind.type`` is the recommendation's id, so an action
can be told apart even after its text changes. Pure logic; the only I/O is reading the table, once, at start.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from millrace.errors import ConfigError

ANY = "any"
SETTING = "processing.recommendations_file"
MAX_ACTION_CHARS = 1000

Key = tuple[str, str]  # (anomaly kind or ANY, sensor type or ANY)


@dataclass(frozen=True)
class Recommendation:
    id: str  # "<kind>.<sensor_type>" of the entry that matched ("any" for a wildcard)
    action: str

    def to_dict(self) -> dict[str, str]:
        return {"recommendation_id": self.id, "recommendation": self.action}


@dataclass(frozen=True)
class RecommendationTable:
    entries: Mapping[Key, str]

    def lookup(self, kind: str | None, sensor_types: Iterable[str]) -> Recommendation:
        """The most specific entry for ``kind`` and any of ``sensor_types`` (see the module's docstring)."""
        kind = kind or ANY
        types = list(dict.fromkeys(t for t in sensor_types if t))
        candidates = [
            *((kind, t) for t in types),
            (kind, ANY),
            *((ANY, t) for t in types),
            (ANY, ANY),
        ]
        for key in candidates:
            action = self.entries.get(key)
            if action is not None:
                return Recommendation(f"{key[0]}.{key[1]}", action)
        raise KeyError("the recommendations table has no any.any entry")  # parse_table makes sure it has

    def merged(self, other: Mapping[Key, str]) -> RecommendationTable:
        """This table with ``other``'s entries replacing or extending its own."""
        return RecommendationTable({**self.entries, **other})


def parse_table(data: Mapping[str, Any], *, source: str) -> dict[Key, str]:
    """The entries of a parsed TOML table; ConfigError naming ``source`` and the first bad key otherwise."""
    entries: dict[Key, str] = {}
    for kind, by_type in data.items():
        if not isinstance(by_type, Mapping):
            raise ConfigError(
                f"invalid recommendations file {source}: {kind} must be a table of sensor type = action "
                f"(got {type(by_type).__name__} {by_type!r})"
            )
        for sensor_type, action in by_type.items():
            key = f"{kind}.{sensor_type}"
            if not isinstance(action, str) or not action.strip():
                raise ConfigError(
                    f"invalid recommendations file {source}: {key} must be a non-empty text (got {action!r})"
                )
            if len(action) > MAX_ACTION_CHARS:
                raise ConfigError(
                    f"invalid recommendations file {source}: {key} is {len(action)} characters long "
                    f"(at most {MAX_ACTION_CHARS})"
                )
            entries[(str(kind), str(sensor_type))] = " ".join(action.split())
    return entries


def read_table_file(path: Path) -> dict[Key, str]:
    """The entries of the TOML file at ``path``; ConfigError (the setting and the file named) when it cannot
    be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"invalid setting {SETTING}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid setting {SETTING}: cannot read {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid recommendations file {path}: {exc}") from None
    return parse_table(data, source=str(path))


def shipped_table() -> RecommendationTable:
    """The table millrace ships (resources/recommendations.toml)."""
    text = (resources.files("millrace") / "resources" / "recommendations.toml").read_text(encoding="utf-8")
    return RecommendationTable(parse_table(tomllib.loads(text), source="millrace/resources/recommendations.toml"))


def load_table(user_file: Path | None) -> RecommendationTable:
    """The shipped table, with ``user_file``'s entries over it when given (ConfigError for a bad file)."""
    table = shipped_table()
    return table if user_file is None else table.merged(read_table_file(user_file))


def recommend(table: RecommendationTable, alert: Mapping[str, Any], sensor_types: Iterable[str]) -> Recommendation:
    """The recommendation for an alert (a records.Alert dict) over sensors of ``sensor_types``."""
    return table.lookup(alert.get("kind"), sensor_types)
