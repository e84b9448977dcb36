"""HDFS as a managed server: ``millrace stack up --with hdfs``, and fsspec file systems for ``hdfs://`` URLs.

Hadoop's own NameNode and DataNode code in one JVM: ``MiniDFSCluster`` from
``org.apache.hadoop:hadoop-minicluster:<lake.hdfs_version>`` (jars copied once into
``<cache_dir>/hdfs-<version>/lib`` through the pom in ``millrace/resources/maven/hdfs``), started by the launcher
``millrace/resources/hdfs/MiniHdfs.java`` with Java's single-file source launch (Java 11+; nothing to compile
or cache, so a changed launcher cannot go stale). Hadoop 3.4 is documented for Java 8 and 11; it runs here on
Java 17 too. WebHDFS is on, permissions are off; the NameNode listens on ``lake.hdfs_rpc_port`` (RPC) and
``lake.hdfs_http_port`` (WebHDFS and the web UI), the DataNode on ports of the OS's choosing, all on 127.0.0.1
(MiniDFSCluster binds no other address). Data lives in ``<state_dir>/hdfs`` and survives restarts: the file
system is formatted on the first start only. Ready when the RPC port accepts, WebHDFS answers ``GETFILESTATUS /``
and the NameNode reports a live DataNode out of safe mode (before that a write would find no DataNode).

``hdfs_filesystem(url, user)`` is how Python reaches any HDFS (this one or a real cluster): ``hdfs://`` through
``hdfs-native`` (the NameNode's RPC protocol, no JVM and no libhdfs), ``webhdfs://`` through fsspec's WebHDFS.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from millrace.config import Settings
from millrace.errors import ConfigError, MillraceError, MissingToolError
from millrace.runtime.distribution import resolve_jars
from millrace.runtime.process import ServerSpec, tcp_probe
from millrace.runtime.registry import java_major
from millrace.runtime.stack import register_extra
from millrace.runtime.tools import require

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

NAME = "hdfs"
LAUNCHER = "MiniHdfs.java"
MIN_JAVA = 11  # the single-file source launch
# Jars without which the launcher cannot start: MiniDFSCluster is in hadoop-hdfs's test jar.
REQUIRED_JARS = ("hadoop-minicluster-*.jar", "hadoop-hdfs-*-tests.jar", "hadoop-hdfs-[0-9]*.jar", "hadoop-common-*.jar")


def _resource(name: str) -> Path:
    return Path(str(resources.files("millrace") / "resources" / "hdfs" / name))


def check_jars(lib: Path) -> Path:
    """``lib`` when it holds the minicluster's jars, else a one-line error saying how to get them again."""
    missing = [pattern for pattern in REQUIRED_JARS if not any(lib.glob(pattern))]
    if missing:
        raise MillraceError(
            f"the HDFS jar set in {lib} is incomplete (no {', '.join(missing)}): delete {lib.parent} and run "
            "`millrace setup` to download it again"
        )
    return lib


def hdfs_home(cache_dir: Path, version: str) -> Path:
    """``<cache_dir>/hdfs-<version>`` with the minicluster's jars under ``lib``, downloaded once."""
    return check_jars(resolve_jars(NAME, version, cache_dir)).parent


def rpc_url(host: str, port: int) -> str:
    return f"hdfs://{host}:{port}"


def webhdfs_url(host: str, port: int) -> str:
    return f"webhdfs://{host}:{port}"


def hdfs_argv(java: str, lib: Path, base_dir: Path, *, rpc_port: int, http_port: int, heap: str) -> list[str]:
    """The launcher's command line (a list, not a shell: the JVM expands the ``lib/*`` wildcard)."""
    return [
        java,
        f"-Xms{heap}",
        f"-Xmx{heap}",
        f"-Dlog4j.configuration={_resource('log4j.properties').as_uri()}",
        f"-Dtest.build.data={base_dir}",  # MiniDFSCluster's default scratch root, kept inside the state dir
        f"-Djava.io.tmpdir={base_dir / 'tmp'}",
        "-cp",
        str(lib / "*"),
        str(_resource(LAUNCHER)),
        "--base-dir",
        str(base_dir),
        "--rpc-port",
        str(rpc_port),
        "--http-port",
        str(http_port),
    ]


def _get_json(url: str, timeout_s: float) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status != 200:
                return None
            body = json.loads(response.read())
            return body if isinstance(body, dict) else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def webhdfs_answers(host: str, http_port: int, user: str, timeout_s: float = 1.0) -> bool:
    """True when WebHDFS at ``host:http_port`` answers ``GETFILESTATUS /`` with a directory."""
    query = urllib.parse.urlencode({"op": "GETFILESTATUS", "user.name": user})
    body = _get_json(f"http://{host}:{http_port}/webhdfs/v1/?{query}", timeout_s)
    status = body.get("FileStatus") if body else None
    return isinstance(status, dict) and status.get("type") == "DIRECTORY"


def namenode_state(host: str, http_port: int, timeout_s: float = 1.0) -> tuple[str, int] | None:
    """The NameNode's (FSState, live DataNodes) from its JMX servlet, or None when it does not answer."""
    query = urllib.parse.urlencode({"qry": "Hadoop:service=NameNode,name=FSNamesystemState"})
    body = _get_json(f"http://{host}:{http_port}/jmx?{query}", timeout_s)
    beans = body.get("beans") if body else None
    if not isinstance(beans, list) or not beans or not isinstance(beans[0], dict):
        return None
    bean = beans[0]
    return str(bean.get("FSState")), int(bean.get("NumLiveDataNodes", 0))


def hdfs_ready(host: str, rpc_port: int, http_port: int, user: str) -> bool:
    """Ready for reads and writes: RPC accepts, WebHDFS answers, a DataNode is live and safe mode is over."""
    if not (tcp_probe(host, rpc_port) and webhdfs_answers(host, http_port, user)):
        return False
    state = namenode_state(host, http_port)
    return state is not None and state[0] == "Operational" and state[1] >= 1


def find_java() -> str:
    java = require("java", "to run HDFS (Java 11+)")
    major = java_major(Path(java))
    if major is None or major < MIN_JAVA:
        found = "does not run" if major is None else f"is Java {major}"
        raise MissingToolError(f"{java} {found}; the managed HDFS needs Java {MIN_JAVA}+ (e.g. openjdk-17)")
    return java


def hdfs_spec(settings: Settings) -> ServerSpec:
    lake, host = settings.lake, settings.runtime.host
    java = find_java()
    lib = hdfs_home(settings.cache_dir, lake.hdfs_version) / "lib"
    base_dir = (settings.state_dir / "hdfs").absolute()
    (base_dir / "tmp").mkdir(parents=True, exist_ok=True)
    argv = hdfs_argv(
        java, lib, base_dir, rpc_port=lake.hdfs_rpc_port, http_port=lake.hdfs_http_port, heap=lake.hdfs_heap
    )
    rpc, http, user = lake.hdfs_rpc_port, lake.hdfs_http_port, lake.hdfs_user
    return ServerSpec(
        name=NAME,
        kind="hdfs-minicluster",
        argv=argv,
        ports={"rpc": rpc, "http": http},
        host=host,
        ready=lambda: hdfs_ready(host, rpc, http, user),
        cwd=base_dir,
        # ~8 s on a quiet 2-core machine (the launcher is compiled in memory first); more when it is busy.
        start_timeout_s=max(settings.runtime.start_timeout_s, 120.0),
        stop_timeout_s=settings.runtime.stop_timeout_s,
    )


register_extra(NAME)(hdfs_spec)  # not as a decorator: callers keep the ServerSpec return type


def hdfs_filesystem(url: str, user: str) -> AbstractFileSystem:
    """An fsspec file system for ``url``'s scheme and authority (the path part is ignored).

    ``hdfs://host:port`` (the NameNode's RPC port): ``hdfs-native``; it takes the user from the environment
    variable ``HADOOP_USER_NAME`` like Hadoop's own clients (and Spark), which is set to ``user`` unless already
    set, so the process writes as one user. ``webhdfs://host:port`` (the NameNode's HTTP port): fsspec's WebHDFS
    as ``user``. Paths inside are absolute (``/millrace/lake/...``).
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("hdfs", "webhdfs") or not parsed.hostname:
        raise ConfigError(f"lake.url {url!r}: expected hdfs://host:rpc_port/path or webhdfs://host:http_port/path")
    if parsed.scheme == "hdfs":
        from hdfs_native.fsspec import HdfsFileSystem

        os.environ.setdefault("HADOOP_USER_NAME", user)
        # Not in fsspec's instance cache: fsspec clears that cache in every forked child, and dropping the client
        # there waits forever for the tokio runtime threads the child does not have (a forked worker pool hung).
        return HdfsFileSystem(host=parsed.hostname, port=parsed.port, skip_instance_cache=True)
    from fsspec.implementations.webhdfs import WebHDFS

    return WebHDFS(host=parsed.hostname, port=parsed.port or 9870, user=user)
