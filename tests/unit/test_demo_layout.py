"""`millrace demo --secure / --brokers`: which cluster layout the flags ask for (pure: no server started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from millrace.cli.demo import _layout
from millrace.config import load_settings


@pytest.mark.parametrize(
    ("configured", "secure", "brokers", "expected"),
    [
        ({}, None, None, (1, "none")),  # no flag: the settings' layout
        ({}, True, None, (3, "sasl_ssl")),  # --secure alone: the secured three-broker cluster
        ({}, True, 1, (1, "sasl_ssl")),  # --secure --brokers 1: a secured single node
        ({}, None, 3, (3, "none")),  # --brokers 3: plaintext, replicated
        ({"brokers": 5}, True, None, (5, "sasl_ssl")),  # a configured cluster size is kept
        ({"brokers": 3, "security": "sasl_ssl"}, False, None, (3, "none")),  # --plaintext
    ],
)
def test_demo_flags_choose_the_layout(
    tmp_path: Path, configured: dict[str, object], secure: bool | None, brokers: int | None, expected: tuple[int, str]
) -> None:
    settings = load_settings(state_dir=tmp_path, runtime=configured)
    chosen = _layout(settings, secure=secure, brokers=brokers).runtime
    assert (chosen.brokers, chosen.security) == expected
