"""Resolve server jars from Maven Central through the poms under ``millrace/resources/maven`` into a reusable cache."""

from __future__ import annotations

import logging
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from millrace.errors import MillraceError
from millrace.runtime.tools import require

log = logging.getLogger(__name__)

MAVEN_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


def _pom(name: str) -> Path:
    return Path(str(resources.files("millrace") / "resources" / "maven" / name / "pom.xml"))


def has_pom(name: str) -> bool:
    """True when this installation ships a pom for distribution ``name``."""
    return _pom(name).is_file()


def pom_path(name: str) -> Path:
    """The pom for distribution ``name`` (``kafka``, ``spark``, ...), shipped inside the package."""
    path = _pom(name)
    if not path.is_file():
        raise MillraceError(f"missing {path}: the millrace installation is incomplete")
    return path


def resolve_jars(name: str, version: str, cache_dir: Path, *, properties: dict[str, str] | None = None) -> Path:
    """Return ``<cache_dir>/<name>-<version>/lib`` with every runtime jar, downloading them once.

    A ``.complete`` marker is written only after Maven succeeds, so an interrupted download is redone.
    """
    target = cache_dir / f"{name}-{version}"
    lib = target / "lib"
    if (target / ".complete").is_file() and any(lib.glob("*.jar")):
        return lib
    require("java", f"to run {name}")
    _fetch(name, version, target, lib, ["copy-dependencies", "-DincludeScope=runtime"], properties)
    return lib


def unpack_archive(name: str, version: str, cache_dir: Path) -> Path:
    """Return ``<cache_dir>/<name>-<version>`` holding the archive the pom depends on, unpacked once.

    The pom runs from a copy in the cache: the dependency plugin keeps its "already unpacked" markers in the
    pom's ``target/``, which must be neither the installed package nor shared between downloads.
    """
    home = cache_dir / f"{name}-{version}"
    if (home / ".complete").is_file():
        return home
    work = cache_dir / f"{name}-{version}.build"
    work.mkdir(parents=True, exist_ok=True)
    pom = work / "pom.xml"
    pom.write_bytes(pom_path(name).read_bytes())
    try:
        _fetch(name, version, home, home, ["unpack-dependencies"], None, pom=pom)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return home


def _fetch(
    name: str,
    version: str,
    target: Path,
    output: Path,
    goal: list[str],
    properties: dict[str, str] | None,
    *,
    pom: Path | None = None,
) -> None:
    """Run the dependency plugin's ``goal`` on the pom of ``name`` into ``output``, then mark ``target``."""
    mvn = require("mvn", f"to download {name} {version} from Maven Central")
    if target.exists():
        shutil.rmtree(target)
    output.mkdir(parents=True, exist_ok=True)
    argv = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom or pom_path(name)),
        f"{MAVEN_PLUGIN}:{goal[0]}",
        *goal[1:],
        f"-DoutputDirectory={output}",
        f"-Ddist.version={version}",
    ]
    argv += [f"-D{key}={value}" for key, value in (properties or {}).items()]
    log.info("downloading %s %s from Maven Central into %s", name, version, output)
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        said = (result.stdout + result.stderr).strip().splitlines()
        raise MillraceError(
            f"downloading {name} {version} with Maven failed (exit {result.returncode}); check the network "
            f"access to Maven Central and ~/.m2/settings.xml. Maven said:\n" + "\n".join(said[-15:])
        )
    (target / ".complete").write_text(version, encoding="utf-8")
