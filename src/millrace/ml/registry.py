"""The model registry on disk: ``<state_dir>/models/<version>/`` with ``model.joblib`` (the fitted detector)
and ``model.json`` (version, created_at, detector, metrics, thresholds, features, importance, training), plus
a ``promoted`` file naming the version the stream job scores with.

Writes are atomic (temporary file, then rename), so a reader never sees half a model or half a pointer.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from millrace.config import Settings
from millrace.errors import MillraceError

MODEL_FILE = "model.joblib"
INFO_FILE = "model.json"
PROMOTED_FILE = "promoted"
_VERSION = re.compile(r"^v(\d{4,})$")


def registry_root(settings: Settings) -> Path:
    return settings.state_dir / "models"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def versions(root: Path) -> list[str]:
    """Registered versions, oldest first (only complete ones: both files present)."""
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if _VERSION.match(p.name) and (p / INFO_FILE).is_file()]
    return sorted(found, key=lambda v: int(v[1:]))


def save_model(root: Path, bundle: Any, info: dict[str, Any]) -> str:
    """Store a fitted detector under the next version; returns the version. ``info`` is completed with
    version and created_at."""
    import joblib

    root.mkdir(parents=True, exist_ok=True)
    existing = [int(p.name[1:]) for p in root.iterdir() if _VERSION.match(p.name)]
    number = max(existing, default=0) + 1
    while True:
        version = f"v{number:04d}"
        try:
            (root / version).mkdir()
            break
        except FileExistsError:  # another trainer took it
            number += 1
    target = root / version
    joblib.dump(bundle, target / MODEL_FILE)
    info = {**info, "version": version, "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    _atomic_write(target / INFO_FILE, json.dumps(info, indent=2, default=_jsonable).encode())
    return version


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def load_info(root: Path, version: str) -> dict[str, Any]:
    path = root / version / INFO_FILE
    if not path.is_file():
        known = ", ".join(versions(root)) or "none"
        raise MillraceError(f"no model version {version!r} in {root} (registered: {known})")
    return json.loads(path.read_text(encoding="utf-8"))


def update_info(root: Path, version: str, **fields: Any) -> dict[str, Any]:
    info = {**load_info(root, version), **fields}
    _atomic_write(root / version / INFO_FILE, json.dumps(info, indent=2, default=_jsonable).encode())
    return info


def load_bundle(root: Path, version: str) -> Any:
    load_info(root, version)  # clear error for an unknown version
    try:
        import joblib
    except ModuleNotFoundError as exc:
        from millrace.errors import missing_extra

        raise missing_extra("scikit-learn", "ml") from exc
    return joblib.load(root / version / MODEL_FILE)


def promote(root: Path, version: str) -> dict[str, Any]:
    """Make ``version`` the one the stream job scores with (a running scorer uses it from its next call)."""
    info = load_info(root, version)
    _atomic_write(root / PROMOTED_FILE, f"{version}\n".encode())
    return info


def promoted_version(root: Path) -> str | None:
    try:
        text = (root / PROMOTED_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def promoted_info(settings: Settings) -> dict[str, Any] | None:
    """The promoted model's model.json (for the dashboard), or None when no model is promoted."""
    root = registry_root(settings)
    version = promoted_version(root)
    return load_info(root, version) if version else None
