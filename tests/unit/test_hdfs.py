"""The managed HDFS's pure parts: the launcher's command line, the jar check, URL handling, registration."""

from __future__ import annotations

from pathlib import Path

import pytest
from fsspec.implementations.webhdfs import WebHDFS
from typer.testing import CliRunner

from millrace.cli.main import app
from millrace.errors import ConfigError, MillraceError
from millrace.runtime import hdfs
from millrace.runtime.distribution import has_pom, pom_path
from millrace.runtime.process import free_port
from millrace.runtime.stack import EXTRA_SERVERS, _load_extras


def test_argv_runs_the_launcher_with_the_settings(tmp_path: Path) -> None:
    lib = tmp_path / "hdfs-3.4.2" / "lib"
    argv = hdfs.hdfs_argv("/usr/bin/java", lib, tmp_path / "base", rpc_port=18020, http_port=19870, heap="384m")
    assert argv[:3] == ["/usr/bin/java", "-Xms384m", "-Xmx384m"]
    assert argv[argv.index("-cp") + 1] == f"{lib}/*"
    launcher = Path(argv[argv.index("-cp") + 2])
    assert launcher.name == "MiniHdfs.java" and launcher.is_file()
    assert argv[-6:] == ["--base-dir", str(tmp_path / "base"), "--rpc-port", "18020", "--http-port", "19870"]
    log4j = next(a for a in argv if a.startswith("-Dlog4j.configuration=file:"))
    assert Path(log4j.removeprefix("-Dlog4j.configuration=file:")).is_file()
    assert f"-Djava.io.tmpdir={tmp_path / 'base' / 'tmp'}" in argv


def test_launcher_sets_what_the_lake_relies_on() -> None:
    argv = hdfs.hdfs_argv("java", Path("lib"), Path("b"), rpc_port=1, http_port=2, heap="1m")
    source = Path(argv[argv.index("-cp") + 2]).read_text(encoding="utf-8")
    for needed in (
        '"dfs.webhdfs.enabled", true',
        '"dfs.permissions.enabled", false',
        '"dfs.datanode.hostname", "127.0.0.1"',
        ".nameNodePort(rpcPort)",
        ".nameNodeHttpPort(httpPort)",
        ".format(format)",
        'new Signal("TERM")',
    ):
        assert needed in source
    assert "cluster.shutdown()" not in source.replace("Not cluster.shutdown()", "")  # it deletes the data at exit


def test_pom_resolves_the_minicluster() -> None:
    assert has_pom("hdfs")
    pom = pom_path("hdfs").read_text(encoding="utf-8")
    assert "<artifactId>hadoop-minicluster</artifactId>" in pom
    assert "<version>${hadoop.version}</version>" in pom and "<hadoop.version>${dist.version}</hadoop.version>" in pom


def test_check_jars_names_what_is_missing_in_one_line(tmp_path: Path) -> None:
    lib = tmp_path / "hdfs-3.4.2" / "lib"
    lib.mkdir(parents=True)
    for jar in ("hadoop-minicluster-3.4.2.jar", "hadoop-hdfs-3.4.2.jar", "hadoop-common-3.4.2.jar"):
        (lib / jar).write_bytes(b"")
    with pytest.raises(MillraceError) as caught:
        hdfs.check_jars(lib)
    assert str(caught.value) == (
        f"the HDFS jar set in {lib} is incomplete (no hadoop-hdfs-*-tests.jar): delete {lib.parent} and run "
        "`millrace setup` to download it again"
    )
    (lib / "hadoop-hdfs-3.4.2-tests.jar").write_bytes(b"")
    assert hdfs.check_jars(lib) == lib


def test_urls() -> None:
    assert hdfs.rpc_url("127.0.0.1", 8020) == "hdfs://127.0.0.1:8020"
    assert hdfs.webhdfs_url("127.0.0.1", 9870) == "webhdfs://127.0.0.1:9870"


@pytest.mark.parametrize("url", ["file:///tmp/lake", "s3://bucket/lake", "hdfs:///no-host", "/tmp/lake"])
def test_filesystem_refuses_other_urls_naming_the_key(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^lake\.url .*expected hdfs://host:rpc_port/path"):
        hdfs.hdfs_filesystem(url, "millrace")


def test_webhdfs_filesystem_is_fsspec_webhdfs_as_the_user() -> None:
    fs = hdfs.hdfs_filesystem("webhdfs://127.0.0.1:19870/millrace/lake", "lake-writer")
    assert isinstance(fs, WebHDFS)
    assert fs.url == "http://127.0.0.1:19870/webhdfs/v1"
    assert fs.pars["user.name"] == "lake-writer"


def test_probes_say_no_when_nothing_listens() -> None:
    port = free_port()
    assert hdfs.webhdfs_answers("127.0.0.1", port, "millrace", timeout_s=0.2) is False
    assert hdfs.namenode_state("127.0.0.1", port, timeout_s=0.2) is None
    assert hdfs.hdfs_ready("127.0.0.1", free_port(), port, "millrace") is False


def test_registered_as_a_stack_extra_and_in_the_help() -> None:
    _load_extras()
    assert EXTRA_SERVERS["hdfs"] is hdfs.hdfs_spec
    result = CliRunner().invoke(app, ["stack", "up", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "hdfs (a NameNode and a DataNode in one JVM" in " ".join(result.output.split())
