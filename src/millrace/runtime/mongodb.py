"""A local MongoDB-wire server for ``stack up --with mongodb`` and the store tests.

A real ``mongod`` is used when one is on PATH. Otherwise millrace runs FerretDB 1.x with its pure-Go SQLite
backend, built once from the Go module proxy into ``<cache_dir>/ferretdb-<version>/ferretdb`` from the small
Go ``main`` shipped in ``millrace/resources/ferretdb`` (the stock ``cmd/ferretdb`` binary built with
``go install`` panics at start on a missing version file). ``go.sum`` is shipped too, so every build uses
the same module versions.

The server listens where ``store.mongodb_uri`` points (host and port of its first host), so the store and
the server always agree.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from millrace.config import Settings
from millrace.errors import MillraceError, missing_extra
from millrace.runtime.process import ServerSpec
from millrace.runtime.stack import register_extra
from millrace.runtime.tools import require

log = logging.getLogger(__name__)

FERRETDB_VERSION = "1.24.2"  # keep in step with resources/ferretdb/go.mod
BUILD_TIMEOUT_S = 1800.0  # the first build compiles ~150 modules; minutes on 2 cores
SOURCE_FILES = ("main.go", "go.mod", "go.sum")


def endpoint(uri: str) -> tuple[str, int]:
    """Host and port of the first host in a ``mongodb://`` URI (default port 27017)."""
    parts = urlsplit(uri)
    if parts.scheme != "mongodb":
        raise MillraceError(f"store.mongodb_uri must start with mongodb:// for a local server (got {uri!r})")
    first = parts.netloc.rpartition("@")[2].split(",")[0]
    host, _, port = first.rpartition(":") if first.count(":") == 1 else (first, "", "")
    try:
        return host or "127.0.0.1", int(port) if port else 27017
    except ValueError:
        raise MillraceError(f"store.mongodb_uri has an invalid port: {uri!r}") from None


def ferretdb_binary(cache_dir: Path, *, version: str = FERRETDB_VERSION) -> Path:
    """The FerretDB executable, built with Go the first time (a file lock keeps builds one at a time)."""
    home = cache_dir / f"ferretdb-{version}"
    binary = home / "ferretdb"
    if binary.is_file():
        return binary
    go = require("go", "to build FerretDB, the MongoDB-wire server (or put a real mongod on PATH)")
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same version
        if binary.is_file():
            return binary
        src = home / "src"
        src.mkdir(exist_ok=True)
        shipped = resources.files("millrace") / "resources" / "ferretdb"
        for name in SOURCE_FILES:
            (src / name).write_bytes((shipped / name).read_bytes())
        partial = home / "ferretdb.partial"
        env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
        argv = [go, "build", "-trimpath", "-o", str(partial), "."]
        log.info("building FerretDB %s with Go into %s (first time only; can take minutes)", version, home)
        try:
            result = subprocess.run(
                argv, cwd=src, env=env, capture_output=True, text=True, check=False, timeout=BUILD_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise MillraceError(f"building FerretDB took over {BUILD_TIMEOUT_S:.0f} s; try again") from None
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()
            proxy = os.environ.get("GOPROXY", "default")
            raise MillraceError(
                f"building FerretDB {version} failed (exit {result.returncode}); it needs the Go module "
                f"proxy (GOPROXY={proxy}). Go said:\n" + "\n".join(output[-9:])
            )
        partial.replace(binary)
    return binary


def mongodb_argv(settings: Settings, host: str, port: int) -> tuple[str, list[str]]:
    """(kind, argv) of the server to run: a real mongod if installed, else FerretDB."""
    data = (settings.state_dir / "mongodb" / "data").resolve()
    data.mkdir(parents=True, exist_ok=True)
    mongod = shutil.which("mongod")
    if mongod is not None:
        return "mongod", [mongod, "--bind_ip", host, "--port", str(port), "--dbpath", str(data), "--quiet"]
    binary = ferretdb_binary(settings.cache_dir)
    return "ferretdb", [str(binary), "-listen-addr", f"{host}:{port}", "-sqlite-dir", str(data), "-log-level", "error"]


def ping(uri: str, timeout_s: float = 1.0) -> bool:
    """True when a MongoDB-wire server at ``uri`` answers ``ping``."""
    try:
        import pymongo
        import pymongo.errors
    except ModuleNotFoundError:
        raise missing_extra("pymongo", "mongodb") from None
    ms = int(timeout_s * 1000)
    client: pymongo.MongoClient = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms, directConnection=True
    )
    try:
        return bool(client.admin.command("ping").get("ok"))
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


@register_extra("mongodb")
def mongodb_spec(settings: Settings) -> ServerSpec:
    """The MongoDB-wire server at ``settings.store.mongodb_uri``, its data under ``<state_dir>/mongodb``."""
    host, port = endpoint(settings.store.mongodb_uri)
    kind, argv = mongodb_argv(settings, host, port)
    uri = f"mongodb://{host}:{port}/"
    return ServerSpec(
        name="mongodb",
        kind=kind,
        argv=argv,
        ports={"client": port},
        host=host,
        ready=lambda: ping(uri),
        start_timeout_s=settings.runtime.start_timeout_s,
        stop_timeout_s=settings.runtime.stop_timeout_s,
    )
