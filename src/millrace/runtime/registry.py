"""Apicurio Registry as a managed server: ``millrace stack up --with registry``.

The application archive (``io.apicurio:apicurio-registry-app:<version>:tar.gz:all``) is unpacked once from
Maven Central into ``<cache_dir>/registry-<version>`` through the pom in ``millrace/resources/maven/registry``.
Apicurio 3.x is built for Java 21: the Java is ``shop.registry_java`` when set, else the newest Java 21+ found
on PATH or under ``/usr/lib/jvm`` (each candidate's ``-version`` is asked, not guessed from its path); 2.6.x
runs on Java 17. Storage is in memory: schemas live as long as the process (``shop schemas apply`` and
``shop publish-catalog`` register them again). Ready when the Confluent-compatible API answers.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from millrace.config import Settings
from millrace.errors import MillraceError, MissingToolError
from millrace.runtime.distribution import unpack_archive
from millrace.runtime.process import ServerSpec
from millrace.runtime.stack import register_extra

log = logging.getLogger(__name__)

NAME = "registry"
JVM_DIRS = (Path("/usr/lib/jvm"),)
CCOMPAT = "/apis/ccompat/v7"


def required_java(version: str) -> int:
    return 21 if int(version.split(".")[0]) >= 3 else 17


def java_major(java: Path) -> int | None:
    """The major version ``java -version`` reports, or None when it does not run."""
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def find_java(minimum: int, configured: Path | None = None) -> Path:
    """A Java of at least ``minimum``: ``configured`` if given (checked), else the newest found."""
    if configured is not None:
        major = java_major(configured)
        if major is None or major < minimum:
            found = "does not run" if major is None else f"is Java {major}"
            raise MillraceError(f"shop.registry_java {configured} {found}; the registry needs Java {minimum}+")
        return configured
    candidates = [Path(p) for p in (shutil.which("java"),) if p]
    for root in JVM_DIRS:
        candidates += sorted(root.glob("*/bin/java")) if root.is_dir() else []
    best: tuple[int, Path] | None = None
    seen: set[Path] = set()
    for java in candidates:
        real = java.resolve()
        if real in seen:
            continue
        seen.add(real)
        major = java_major(java)
        if major is not None and major >= minimum and (best is None or major > best[0]):
            best = (major, java)
    if best is None:
        raise MissingToolError(
            f"Apicurio Registry needs Java {minimum}+ but none was found on PATH or under /usr/lib/jvm: install "
            f"one (e.g. a Temurin {minimum} JDK) and/or set shop.registry_java, or set shop.registry_version = "
            '"2.6.13.Final", which runs on Java 17'
        )
    log.debug("registry runs on Java %d at %s", *best)
    return best[1]


def registry_home(cache_dir: Path, version: str) -> Path:
    """The unpacked application, downloaded once."""
    home = unpack_archive(NAME, version, cache_dir)
    if not any(home.glob("*.jar")):
        raise MillraceError(f"Maven unpacked no application jar into {home}; delete it and try again")
    return home


def application_jar(home: Path, version: str) -> Path:
    """3.x: the Quarkus fast-jar launcher; 2.x: the runner jar."""
    jar = home / "quarkus-run.jar"
    if int(version.split(".")[0]) < 3:
        jar = home / f"apicurio-registry-app-{version}-runner.jar"
    if not jar.is_file():
        raise MillraceError(f"{jar} is missing: delete {home} to download Apicurio Registry again")
    return jar


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """True when the Confluent-compatible API at ``url`` (``.../apis/ccompat/v7``) answers its config."""
    try:
        with urllib.request.urlopen(f"{url}/config", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def registry_url(host: str, port: int) -> str:
    return f"http://{host}:{port}{CCOMPAT}"


@register_extra(NAME)
def registry_spec(settings: Settings) -> ServerSpec:
    shop, host = settings.shop, settings.runtime.host
    java = find_java(required_java(shop.registry_version), shop.registry_java)
    home = registry_home(settings.cache_dir, shop.registry_version)
    jar = application_jar(home, shop.registry_version)
    port = shop.registry_port
    argv = [
        str(java),
        f"-Xms{shop.registry_heap}",
        f"-Xmx{shop.registry_heap}",
        f"-Dquarkus.http.port={port}",
        f"-Dquarkus.http.host={host}",
        "-Dquarkus.http.access-log.enabled=false",  # one line per request would fill the log
        # Apicurio's management interface (metrics, health) would bind 0.0.0.0:9000 in every registry: a second
        # registry on the machine (another stack, a test session) then failed to start. Nothing reads it here.
        f"-Dquarkus.management.host={host}",
        "-Dquarkus.management.port=0",
        "-jar",
        str(jar),
    ]
    url = registry_url(host, port)
    return ServerSpec(
        name=NAME,
        kind="apicurio-registry",
        argv=argv,
        ports={"http": port},
        host=host,
        ready=lambda: answers(url),
        cwd=home,
        start_timeout_s=settings.runtime.start_timeout_s,
        stop_timeout_s=settings.runtime.stop_timeout_s,
    )
