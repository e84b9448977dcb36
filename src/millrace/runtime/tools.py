"""System tools millrace needs on PATH, each with how to install it when missing."""

from __future__ import annotations

import shutil

from millrace.errors import MissingToolError

INSTALL_HINTS: dict[str, str] = {
    "java": "install a Java 17+ runtime, e.g. `apt-get install openjdk-17-jre-headless`",
    "mvn": "install Apache Maven, e.g. `apt-get install maven`",
    "mosquitto": "install Mosquitto, e.g. `apt-get install mosquitto`",
    "go": "install Go 1.22+, e.g. `apt-get install golang` or from go.dev",
    "prometheus": "install Prometheus, e.g. `apt-get install prometheus`",
    "promtool": "install Prometheus (it brings promtool), e.g. `apt-get install prometheus`",
    "prometheus-alertmanager": "install Alertmanager, e.g. `apt-get install prometheus-alertmanager`",
    "amtool": "install Alertmanager (it brings amtool), e.g. `apt-get install prometheus-alertmanager`",
}


def require(tool: str, purpose: str) -> str:
    """The absolute path of ``tool``, or MissingToolError saying how to install it."""
    found = shutil.which(tool)
    if found is None:
        hint = INSTALL_HINTS.get(tool, f"install {tool}")
        raise MissingToolError(f"{tool} is needed {purpose} but is not on PATH: {hint}")
    return found
