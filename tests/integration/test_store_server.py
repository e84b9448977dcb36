"""The local MongoDB-wire server runtime: where it listens, which server it picks, what a missing Go says,
and that a restarted server keeps its data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from millrace.config import load_settings
from millrace.errors import MillraceError, MissingToolError
from millrace.runtime import mongodb
from millrace.runtime.process import ProcessManager, free_port
from millrace.runtime.stack import EXTRA_SERVERS, _load_extras

pytestmark = pytest.mark.integration


def test_endpoint_comes_from_the_store_uri() -> None:
    assert mongodb.endpoint("mongodb://127.0.0.1:28017") == ("127.0.0.1", 28017)
    assert mongodb.endpoint("mongodb://user:pw@db.local:1234,other:5/millrace?tls=false") == ("db.local", 1234)
    assert mongodb.endpoint("mongodb://localhost/") == ("localhost", 27017)
    with pytest.raises(MillraceError, match="mongodb://"):
        mongodb.endpoint("mongodb+srv://cluster.example.com")


def test_registered_as_a_stack_extra() -> None:
    _load_extras()
    assert EXTRA_SERVERS["mongodb"] is mongodb.mongodb_spec


def test_a_real_mongod_on_path_is_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mongod"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    settings = load_settings(state_dir=tmp_path / "state", store={"mongodb_uri": "mongodb://127.0.0.1:28999"})
    spec = mongodb.mongodb_spec(settings)
    assert spec.kind == "mongod" and spec.ports == {"client": 28999}
    assert spec.argv[:5] == [str(fake), "--bind_ip", "127.0.0.1", "--port", "28999"]
    assert spec.argv[spec.argv.index("--dbpath") + 1] == str((tmp_path / "state" / "mongodb" / "data").resolve())


def test_missing_go_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither go nor mongod
    with pytest.raises(MissingToolError, match="go is needed to build FerretDB"):
        mongodb.ferretdb_binary(tmp_path / "cache")


def test_server_restart_keeps_the_data(tmp_path: Path) -> None:
    from millrace.stores.mongo import MongoStore

    settings = load_settings(
        state_dir=tmp_path, store={"backend": "mongodb", "mongodb_uri": f"mongodb://127.0.0.1:{free_port()}"}
    )
    manager = ProcessManager(settings.state_dir)
    spec = mongodb.mongodb_spec(settings)
    try:
        first = manager.start(spec)
        assert manager.start(spec).pid == first.pid  # idempotent
        store = MongoStore(settings.store.mongodb_uri, "keep")
        store.record_quality(1, {"valid": 3})
        store.close()
        assert manager.stop("mongodb")
        assert not mongodb.ping(settings.store.mongodb_uri, timeout_s=0.3)
        manager.start(spec)
        store = MongoStore(settings.store.mongodb_uri, "keep")
        assert store.quality_totals() == {"valid": 3}
        store.close()
    finally:
        manager.stop("mongodb")
    assert (tmp_path / "logs" / "mongodb.log").is_file()
