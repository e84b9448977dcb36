"""A small metrics endpoint for what no JMX bean or millrace process reports: disk space and certificate expiry.

Run by the monitoring runtime (``python -m millrace.runtime.host_exporter``) and scraped by Prometheus as job
``millrace-host``. Values are read at scrape time, so they are as fresh as the scrape:

- ``millrace_disk_free_bytes{path}`` / ``millrace_disk_size_bytes{path}``: the file system holding each path
  (the state dir: Kafka's logs, the SQLite store, Prometheus' own data)
- ``millrace_certificate_expiry_timestamp_seconds{name,path}``: notAfter of each certificate file, read with
  ``openssl x509`` (the first certificate of a PEM file; a file that cannot be read is left out and logged)
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


def certificate_not_after(path: Path) -> float:
    """Unix time at which the first certificate in ``path`` expires (``openssl x509 -enddate``)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise OSError("openssl is not on PATH")
    result = subprocess.run(
        [openssl, "x509", "-noout", "-enddate", "-in", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0 or not result.stdout.startswith("notAfter="):
        raise OSError(f"openssl cannot read {path}: {result.stderr.strip()}")
    # e.g. "notAfter=Mar  9 07:21:05 2029 GMT"
    text = " ".join(result.stdout.strip().removeprefix("notAfter=").split())
    return datetime.strptime(text.replace(" GMT", " +0000"), "%b %d %H:%M:%S %Y %z").timestamp()


class HostCollector(Collector):
    def __init__(self, disks: Sequence[Path], certificates: dict[str, Path]) -> None:
        self.disks = list(disks)
        self.certificates = dict(certificates)
        self._cache: dict[Path, tuple[float, float]] = {}  # path -> (mtime, notAfter): openssl once per file
        self._lock = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        free = GaugeMetricFamily("millrace_disk_free_bytes", "Bytes free on the file system of path", labels=["path"])
        size = GaugeMetricFamily("millrace_disk_size_bytes", "Size of the file system of path", labels=["path"])
        for disk in self.disks:
            try:
                usage = shutil.disk_usage(disk)
            except OSError as exc:
                log.warning("disk usage of %s: %s", disk, exc)
                continue
            free.add_metric([str(disk)], float(usage.free))
            size.add_metric([str(disk)], float(usage.total))
        yield free
        yield size
        expiry = GaugeMetricFamily(
            "millrace_certificate_expiry_timestamp_seconds",
            "Unix time at which the certificate expires (notAfter)",
            labels=["name", "path"],
        )
        for name, path in sorted(self.certificates.items()):
            value = self._not_after(path)
            if value is not None:
                expiry.add_metric([name, str(path)], value)
        yield expiry

    def _not_after(self, path: Path) -> float | None:
        try:
            mtime = path.stat().st_mtime
            with self._lock:
                cached = self._cache.get(path)
                if cached is not None and cached[0] == mtime:
                    return cached[1]
                value = certificate_not_after(path)
                self._cache[path] = (mtime, value)
                return value
        except OSError as exc:
            log.warning("certificate %s: %s", path, exc)
            return None


def main(argv: Sequence[str] | None = None) -> None:
    from prometheus_client import start_http_server

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--disk", type=Path, action="append", default=[])
    parser.add_argument("--cert", action="append", default=[], help="NAME=PATH")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    certificates = dict(item.split("=", 1) for item in args.cert)
    REGISTRY.register(HostCollector(args.disk, {k: Path(v) for k, v in certificates.items()}))
    start_http_server(args.port, addr=args.host)
    log.info("serving on %s:%d", args.host, args.port)
    while True:  # the HTTP server runs in a daemon thread; SIGTERM ends the process
        time.sleep(3600)


if __name__ == "__main__":
    main()
