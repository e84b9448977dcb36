"""HDFS fixture: a real NameNode + DataNode (Hadoop's MiniDFSCluster) started once per session through
millrace.runtime (the ServerSpec ``stack up --with hdfs`` runs) on free ports, with its own state dir.

Java 11+ and Maven (or the cached jars from ``millrace setup``) are needed; when missing the fixture fails.
It needs no Kafka: ``hdfs.settings`` carries the lake settings; merge them into Kafka-bearing settings with
``settings.model_copy(update={"lake": hdfs.settings.lake})``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from millrace.config import Settings, load_settings
from millrace.runtime.hdfs import NAME, hdfs_spec, rpc_url, webhdfs_url
from millrace.runtime.process import ProcessManager, free_port

LAKE_PATH = "/millrace/lake"


@dataclass(frozen=True)
class ManagedHdfs:
    """The session's HDFS. ``settings.lake.url`` = ``hdfs://127.0.0.1:<rpc>/millrace/lake``."""

    settings: Settings
    rpc_url: str  # hdfs://127.0.0.1:<rpc>
    webhdfs_url: str  # webhdfs://127.0.0.1:<http>
    manager: ProcessManager

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir


def hdfs_settings(state_dir: Path, *, rpc_port: int, http_port: int) -> Settings:
    """Settings of an HDFS on the given ports with the lake on it (state and logs in ``state_dir``)."""
    return load_settings(
        state_dir=state_dir,
        lake={
            "url": f"{rpc_url('127.0.0.1', rpc_port)}{LAKE_PATH}",
            "hdfs_rpc_port": rpc_port,
            "hdfs_http_port": http_port,
            "hdfs_heap": "384m",
        },
    )


@pytest.fixture(scope="session")
def hdfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedHdfs]:
    """One HDFS for the whole session; its log is ``<state_dir>/logs/hdfs.log``."""
    settings = hdfs_settings(tmp_path_factory.mktemp("hdfs"), rpc_port=free_port(), http_port=free_port())
    manager = ProcessManager(settings.state_dir)
    manager.start(hdfs_spec(settings))
    lake = settings.lake
    try:
        yield ManagedHdfs(
            settings=settings,
            rpc_url=rpc_url("127.0.0.1", lake.hdfs_rpc_port),
            webhdfs_url=webhdfs_url("127.0.0.1", lake.hdfs_http_port),
            manager=manager,
        )
    finally:
        assert manager.stop(NAME, timeout_s=30), "HDFS did not stop"
