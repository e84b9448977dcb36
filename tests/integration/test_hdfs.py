"""The managed HDFS (``stack up --with hdfs``) against real clients: hdfs-native, fsspec's WebHDFS and Spark."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from millrace.config import load_settings
from millrace.errors import MillraceError
from millrace.runtime.hdfs import NAME, hdfs_filesystem, hdfs_spec
from millrace.runtime.process import ProcessManager, free_port, port_is_free
from millrace.runtime.stack import Stack
from tests.integration.fixtures_hdfs import ManagedHdfs, hdfs_settings

ROWS = [
    {"order_id": "o-1", "category": "Смартфоны", "quantity": 2, "price": 19990.0},
    {"order_id": "o-2", "category": "Ноутбуки", "quantity": 1, "price": 84990.5},
    {"order_id": "o-3", "category": "Смартфоны", "quantity": 5, "price": 990.0},
]


def _dir() -> str:
    return f"/millrace/test-{uuid.uuid4().hex[:8]}"


def _write(fs: object, path: str, rows: list[dict[str, object]]) -> None:
    with fs.open(path, "wb") as out:  # type: ignore[attr-defined]
        pq.write_table(pa.Table.from_pylist(rows), out)


def _read(fs: object, path: str) -> list[dict[str, object]]:
    with fs.open(path, "rb") as src:  # type: ignore[attr-defined]
        return pq.read_table(src).to_pylist()


def _exit_at_once() -> None:
    pass


def test_a_process_forked_after_using_hdfs_exits(hdfs: ManagedHdfs) -> None:
    """A fork (a worker pool, say) after the process used HDFS must not hang in the child: fsspec clears its
    instance cache in every child, and a cached hdfs-native client dropped there waited forever."""
    fs = hdfs_filesystem(hdfs.rpc_url, hdfs.settings.lake.hdfs_user)
    fs.makedirs(_dir(), exist_ok=True)
    del fs  # as when the code that used it is done: only a cache could still hold the client
    child = multiprocessing.get_context("fork").Process(target=_exit_at_once)
    child.start()
    child.join(timeout=30)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    assert not hung, "the forked child did not exit within 30 s"
    assert child.exitcode == 0


def test_parquet_from_python_read_by_spark_and_back(hdfs: ManagedHdfs) -> None:
    from millrace.jobs.session import build_session

    fs = hdfs_filesystem(hdfs.rpc_url, hdfs.settings.lake.hdfs_user)
    base = _dir()
    fs.makedirs(f"{base}/in", exist_ok=True)
    _write(fs, f"{base}/in/part-0.parquet", ROWS[:2])
    _write(fs, f"{base}/in/part-1.parquet", ROWS[2:])

    spark = build_session(load_settings(state_dir=hdfs.state_dir, spark={"driver_memory": "512m"}))
    frame = spark.read.parquet(f"{hdfs.rpc_url}{base}/in")
    got = [row.asDict() for row in frame.orderBy("order_id").collect()]
    assert got == ROWS

    # Spark writes on HDFS too; Python reads what it wrote.
    frame.where("category = 'Смартфоны'").coalesce(1).write.parquet(f"{hdfs.rpc_url}{base}/out")
    parts = sorted(p for p in fs.ls(f"{base}/out", detail=False) if p.endswith(".parquet"))
    assert len(parts) == 1
    assert fs.exists(f"{base}/out/_SUCCESS")
    assert sorted(_read(fs, parts[0]), key=lambda r: str(r["order_id"])) == [ROWS[0], ROWS[2]]


def test_webhdfs_lists_and_reads_what_hdfs_native_wrote(hdfs: ManagedHdfs) -> None:
    user = hdfs.settings.lake.hdfs_user
    native = hdfs_filesystem(hdfs.rpc_url, user)
    web = hdfs_filesystem(hdfs.webhdfs_url, user)
    base = _dir()
    native.makedirs(base, exist_ok=True)
    payloads = {f"{base}/{name}": name.encode() * (i + 1) for i, name in enumerate(("a.bin", "b.bin", "c.bin"))}
    for path, data in payloads.items():
        native.pipe_file(path, data)

    listed = {entry["name"]: entry for entry in web.ls(base, detail=True)}
    assert sorted(listed) == sorted(payloads)
    assert {name: entry["size"] for name, entry in listed.items()} == {p: len(d) for p, d in payloads.items()}
    assert {entry["type"] for entry in listed.values()} == {"file"}
    assert web.cat_file(f"{base}/b.bin") == b"b.binb.bin"

    # And the other way round: WebHDFS writes (redirected to the DataNode), RPC reads.
    _write(web, f"{base}/web.parquet", ROWS)
    assert _read(native, f"{base}/web.parquet") == ROWS
    assert native.info(f"{base}/web.parquet")["owner"] == user


def test_stack_status_shows_hdfs_healthy(hdfs: ManagedHdfs) -> None:
    statuses = Stack(hdfs.settings).status()
    assert [(s.name, s.kind, s.running, s.healthy) for s in statuses] == [(NAME, "hdfs-minicluster", True, True)]
    lake = hdfs.settings.lake
    assert statuses[0].ports == {"rpc": lake.hdfs_rpc_port, "http": lake.hdfs_http_port}
    assert Path(statuses[0].log_path) == hdfs.state_dir / "logs" / "hdfs.log"

    # What `millrace stack status` shows for that state dir.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env["MILLRACE_STATE_DIR"] = str(hdfs.state_dir)
    millrace = Path(sys.executable).parent / "millrace"
    shown = subprocess.run(
        [str(millrace), "stack", "status", "--json"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    rows = json.loads(shown.stdout)
    assert [(r["name"], r["running"], r["healthy"], r["pid"]) for r in rows] == [(NAME, True, True, statuses[0].pid)]


def _processes_under(state_dir: Path) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(str(state_dir) in part for part in proc.info["cmdline"] or ()):
            found.append(proc.info["pid"])
    return found


def test_restart_keeps_data_and_stop_leaves_no_process(tmp_path: Path) -> None:
    settings = hdfs_settings(tmp_path / "state", rpc_port=free_port(), http_port=free_port())
    lake = settings.lake
    manager = ProcessManager(settings.state_dir)
    url = f"hdfs://127.0.0.1:{lake.hdfs_rpc_port}"
    try:
        first = manager.start(hdfs_spec(settings))
        fs = hdfs_filesystem(url, lake.hdfs_user)
        fs.makedirs("/millrace/kept", exist_ok=True)
        _write(fs, "/millrace/kept/rows.parquet", ROWS)
        assert manager.stop(NAME, timeout_s=30)
        assert not psutil.pid_exists(first.pid)
        assert _processes_under(settings.state_dir) == []
        assert port_is_free("127.0.0.1", lake.hdfs_rpc_port)
        assert port_is_free("127.0.0.1", lake.hdfs_http_port)
        assert manager.record(NAME) is None

        second = manager.start(hdfs_spec(settings))
        assert second.pid != first.pid
        fs = hdfs_filesystem(url, lake.hdfs_user)
        assert _read(fs, "/millrace/kept/rows.parquet") == ROWS
        log = (settings.state_dir / "logs" / "hdfs.log").read_text(encoding="utf-8")
        assert log.count("formatted=true") == 1  # the first start only
        assert log.count("formatted=false") == 1
        assert log.count("MiniHdfs stopped") == 1  # the SIGTERM of the first stop shut the cluster down
    finally:
        manager.stop(NAME, timeout_s=30)
    assert _processes_under(settings.state_dir) == []


def test_missing_jar_set_is_a_one_line_error(tmp_path: Path) -> None:
    lib = tmp_path / "cache" / "hdfs-3.4.2" / "lib"
    lib.mkdir(parents=True)
    (lib / "hadoop-common-3.4.2.jar").write_bytes(b"")
    (lib.parent / ".complete").write_text("3.4.2", encoding="utf-8")
    settings = load_settings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    with pytest.raises(MillraceError) as caught:
        hdfs_spec(settings)
    message = str(caught.value)
    assert "\n" not in message
    assert "hadoop-minicluster-*.jar" in message and "hadoop-hdfs-*-tests.jar" in message
    assert str(lib) in message and "millrace setup" in message
