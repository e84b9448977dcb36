"""Producer throughput: `millrace iot simulate` vs Kafka's own ProducerPerformance, side by side, one broker.

Starts its own single-node Kafka (millrace.runtime.stack.Stack, free ports, temporary state dir), then runs
in alternation, ``--rounds`` times each:

- ``millrace iot simulate --count N --json`` (readings generated, encoded and produced; keyed by sensor_id);
- ``org.apache.kafka.tools.ProducerPerformance`` from the same cached Kafka jars, fed a payload file of the
  simulator's own messages (same record sizes and content), with the same producer settings: acks=all,
  enable.idempotence=true, compression lz4, the same linger.ms and batch.size.

Each producer runs as a child process; CPU (user + system) and peak RSS are sampled with psutil. Prints a
table and optionally writes JSON (``--json-out``).

    .venv/bin/python benchmarks/producer_throughput.py --records 2000000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from millrace.config import Settings, load_settings
from millrace.iot.fleet import FleetConfig
from millrace.iot.simulator import Simulator
from millrace.runtime.distribution import resolve_jars
from millrace.runtime.process import free_port
from millrace.runtime.stack import Stack

console = Console(width=150)
PERF_MAIN = "org.apache.kafka.tools.ProducerPerformance"
LOG4J = """rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = %p %m%n
"""


def _settings(state: Path, heap: str) -> Settings:
    kafka_port, controller_port = free_port(), free_port()
    return load_settings(
        state_dir=state,
        runtime={"kafka_port": kafka_port, "controller_port": controller_port, "kafka_heap": heap},
        kafka={"bootstrap_servers": f"127.0.0.1:{kafka_port}"},
    )


def _topic(settings: Settings, name: str, partitions: int) -> str:
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


def _warm_up(settings: Settings) -> None:
    """One idempotent produce, so the broker's transaction coordinator has loaded before any measurement
    (the first idempotent producer after a broker start otherwise waits for it)."""
    from millrace.kafka.producer import make_producer

    topic = _topic(settings, "bench-warm-up", 1)
    producer = make_producer(settings.kafka.client_config())
    producer.produce(topic, b"warm-up")
    if producer.flush(60) or producer.stats.delivered != 1:
        raise SystemExit(f"warm-up produce failed: {producer.stats.last_error}")


def _monitor(argv: list[str], env: dict[str, str]) -> tuple[str, str, float, float, float]:
    """Run a child; return (stdout, stderr, wall s, CPU s, peak RSS MiB), sampling every 100 ms."""
    started = time.monotonic()
    proc = psutil.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    cpu, rss = 0.0, 0.0
    out_parts: list[str] = []
    err_parts: list[str] = []
    import threading

    def drain(stream: object, parts: list[str]) -> None:
        parts.append(stream.read())  # type: ignore[attr-defined]

    readers = [
        threading.Thread(target=drain, args=(proc.stdout, out_parts)),
        threading.Thread(target=drain, args=(proc.stderr, err_parts)),
    ]
    for reader in readers:
        reader.start()
    while proc.poll() is None:
        try:
            times = proc.cpu_times()
            cpu = max(cpu, times.user + times.system + times.children_user + times.children_system)
            rss = max(rss, proc.memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    wall = time.monotonic() - started
    for reader in readers:
        reader.join()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}):\n{''.join(err_parts)[-3000:]}")
    return "".join(out_parts), "".join(err_parts), wall, cpu, rss


def run_simulator(settings: Settings, topic: str, records: int, devices: int, workers: int) -> dict[str, float]:
    env = {**os.environ, "MILLRACE_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers}
    argv = [sys.executable, "-m", "millrace.cli.main", "--state-dir", str(settings.state_dir), "iot", "simulate",
            "--count", str(records), "--devices", str(devices), "--topic", topic, "--json", "--quiet",
            "--workers", str(workers)]  # fmt: skip
    out, _, wall, cpu, rss = _monitor(argv, env)
    data = json.loads(out)
    assert data["delivered"] == records and data["failed"] == 0, data
    proc = data["process"]
    return {
        "records": records,
        "rate": data["rate_per_s"],  # delivered / (start of producing .. all delivered)
        "wall_s": wall,
        "lat_avg_ms": data["latency_ms"]["avg"],
        "lat_p99_ms": data["latency_ms"]["p99"],
        "cpu_s": max(cpu, proc["cpu_s"]),
        "rss_mb": max(rss, proc["max_rss_mb"]),
    }


_PERF_LINE = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, ([\d.]+) ms max"
    r" latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th"
)


def run_perf(settings: Settings, topic: str, records: int, payloads: Path, log4j: Path) -> dict[str, float]:
    lib = resolve_jars("kafka", settings.runtime.kafka_version, settings.cache_dir)
    kafka = settings.kafka
    argv = [
        "java", "-Xmx512m", f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{lib}/*", PERF_MAIN,
        "--topic", topic, "--num-records", str(records), "--throughput", "-1",
        "--payload-file", str(payloads), "--payload-delimiter", "\n",
        "--producer-props", f"bootstrap.servers={kafka.bootstrap_servers}", "acks=all", "enable.idempotence=true",
        f"compression.type={kafka.compression}", f"linger.ms={kafka.linger_ms}", f"batch.size={kafka.batch_size}",
        "buffer.memory=268435456",
    ]  # fmt: skip
    out, err, wall, cpu, rss = _monitor(argv, dict(os.environ))
    matches = list(_PERF_LINE.finditer(out))  # progress lines every 5 s, then the final summary
    if not matches:
        raise SystemExit(f"no summary line from ProducerPerformance:\n{out[-2000:]}\n{err[-2000:]}")
    match = matches[-1]
    return {
        "records": int(match.group(1)),
        "rate": float(match.group(2)),
        "wall_s": wall,
        "lat_avg_ms": float(match.group(4)),
        "lat_p99_ms": float(match.group(8)),
        "cpu_s": cpu,
        "rss_mb": rss,
    }


def write_payloads(path: Path, devices: int, count: int = 100_000) -> float:
    """The simulator's own messages, one per line; returns their mean size in bytes."""
    cfg = FleetConfig(devices=devices, start=datetime(2026, 1, 1, tzinfo=UTC))
    sizes = 0
    with path.open("wb") as handle:
        for batch in Simulator(cfg, count=count).batches():
            for value in batch.values:
                handle.write(value + b"\n")
                sizes += len(value)
    return sizes / count


def encode_rate(records: int, devices: int) -> float:
    """Readings/s generated and encoded to message bytes, without Kafka (this process, one core)."""
    cfg = FleetConfig(devices=devices, start=datetime(2026, 1, 1, tzinfo=UTC))
    started = time.perf_counter()
    produced = sum(len(batch) for batch in Simulator(cfg, count=records).batches())
    return produced / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--heap", default="512m", help="broker heap")
    parser.add_argument("--workers", default="1,2", help="simulator producer processes to measure, e.g. 1,2")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="millrace-bench-") as tmp:
        state = Path(tmp)
        settings = _settings(state, args.heap)
        payloads = state / "payloads.txt"
        log4j = state / "log4j2-tools.properties"
        log4j.write_text(LOG4J, encoding="utf-8")
        record_size = write_payloads(payloads, args.devices)
        encoded = encode_rate(args.records, args.devices)
        console.print(f"simulator alone (generate + encode, no Kafka): {encoded:,.0f} readings/s")
        stack = Stack(settings)
        with console.status("starting Kafka..."):
            stack.up()
            _warm_up(settings)
        variants = {f"millrace simulate x{w}": int(w) for w in args.workers.split(",")}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        results["ProducerPerformance"] = []
        try:
            for round_no in range(args.rounds):
                for name in results:
                    slug = "perf" if name not in variants else f"sim{variants[name]}"
                    topic = _topic(settings, f"bench-{slug}-{round_no}", args.partitions)
                    with console.status(f"round {round_no + 1}: {name}..."):
                        if name in variants:
                            result = run_simulator(settings, topic, args.records, args.devices, variants[name])
                        else:
                            result = run_perf(settings, topic, args.records, payloads, log4j)
                    results[name].append(result)
                    console.print(f"round {round_no + 1} {name}: {result['rate']:,.0f} records/s")
        finally:
            stack.down()

    table = Table(
        title=f"{args.records:,} records of {record_size:.0f} B, acks=all, idempotence, "
        f"{settings.kafka.compression}, {args.partitions} partitions, 1 broker"
    )
    for column in ("producer", "round", "records/s", "MB/s", "lat avg ms", "lat p99 ms", "CPU s", "CPU %",
                   "peak RSS MiB"):  # fmt: skip
        table.add_column(column, justify="right")
    for name, rounds in results.items():
        for i, r in enumerate(rounds, 1):
            busy = r["records"] / r["rate"] if r["rate"] else r["wall_s"]
            table.add_row(
                name,
                str(i),
                f"{r['rate']:,.0f}",
                f"{r['rate'] * record_size / 1e6:.1f}",
                f"{r['lat_avg_ms']:.1f}",
                f"{r['lat_p99_ms']:.1f}",
                f"{r['cpu_s']:.1f}",
                f"{100 * r['cpu_s'] / busy:.0f}",
                f"{r['rss_mb']:.0f}",
            )
    console.print(table)
    theirs = statistics.median(r["rate"] for r in results["ProducerPerformance"])
    medians = {name: statistics.median(r["rate"] for r in rounds) for name, rounds in results.items()}
    for name in variants:
        console.print(f"median {name}: {medians[name]:,.0f}/s = {medians[name] / theirs:.2f} x ProducerPerformance")
    console.print(
        f"median ProducerPerformance {theirs:,.0f}/s; simulator alone {encoded:,.0f}/s; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"json_out": str(args.json_out)},
                    "record_size": record_size,
                    "results": results,
                    "encode_only": encoded,
                    "median": medians,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
