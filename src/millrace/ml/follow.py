"""Following the promoted model: the stream job's scorer asks :class:`PromotedModel` for the current model
before every call, so the first batch scored after ``ml promote`` returns uses the new model — no restart."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from millrace.config import Settings
from millrace.ml.registry import PROMOTED_FILE, load_bundle, promoted_version, registry_root
from millrace.processing.scoring import Scorer, unknown_features

log = logging.getLogger(__name__)


class PromotedModel:
    """The model promoted in the registry ``root``, as a :data:`~millrace.processing.scoring.ModelSource`.

    Cheap when nothing changed: one ``stat`` of the pointer file (promotion replaces it atomically, so a new
    promotion is a new inode); the pointer is read, and a model loaded, only when it changed. A model that
    cannot load, or that needs features this version does not compute, is refused with a warning and the
    current one stays; it is not retried until the next promotion. Removing the pointer drops the model."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version: str | None = None
        self.detector: Any = None
        self._pointer: tuple[int, int, int] | None = None  # (inode, mtime ns, size) of the pointer last read

    def __call__(self) -> tuple[str, Any] | None:
        """The current (version, detector), or None when no model is promoted."""
        self.refresh()
        return None if self.version is None else (self.version, self.detector)

    def refresh(self) -> None:
        """Switch to a newly promoted model if there is one."""
        try:
            st = (self.root / PROMOTED_FILE).stat()
            pointer: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            pointer = None
        if pointer == self._pointer:
            return
        self._pointer = pointer  # a model that cannot load is not retried until the next promotion
        version = promoted_version(self.root)
        if version == self.version:
            return
        if version is None:
            self.detector, self.version = None, None
            return
        try:
            detector = load_bundle(self.root, version)
        except Exception as exc:  # keep scoring with what we have; say why
            log.warning("cannot load promoted model %s: %s", version, exc)
            return
        unknown = unknown_features(detector)
        if unknown:
            log.warning(
                "cannot score with promoted model %s: it needs features this version does not compute "
                "(%s); retrain it with `millrace ml train`",
                version,
                ", ".join(unknown),
            )
            return
        self.detector = detector
        log.info("scoring with model %s (%s)", version, detector.name)
        self.version = version


def load_scorer(settings: Settings) -> Scorer:
    """Rules + robust z + the promoted model if any; follows newly promoted models without a restart."""
    return Scorer(settings.processing, model_source=PromotedModel(registry_root(settings)))
