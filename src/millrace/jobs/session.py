"""The SparkSession of millrace jobs: master, Kafka connector jars, small shuffles, no UI, loopback only."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from millrace.config import Settings
from millrace.errors import missing_extra

log = logging.getLogger(__name__)

SPARK_VERSION = "4.2.0"
PANDAS_WARNING = "PySpark does not yet fully support pandas"  # pandas 3 works for what millrace uses (tested)


def quiet_pandas_warning() -> None:
    warnings.filterwarnings("ignore", message=PANDAS_WARNING, category=FutureWarning)


def connector_jars(cache_dir: Path) -> list[Path]:
    """The four Kafka connector jars for pyspark, resolved with Maven once into the cache dir."""
    from millrace.runtime.distribution import resolve_jars

    lib = resolve_jars("spark", SPARK_VERSION, cache_dir)
    return sorted(lib.glob("*.jar"))


def checkpoint_dir(state_dir: Path, query: str) -> Path:
    """Where query ``query`` keeps its offsets and state: <state_dir>/checkpoints/<query>."""
    return (state_dir / "checkpoints" / query).resolve()


def build_session(settings: Settings, *, master: str | None = None, app_name: str = "millrace"):  # noqa: ANN201
    """Create (or return the running) SparkSession configured for millrace.

    Must run before any other SparkSession exists in the process: ``spark.jars`` is read at JVM start.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise missing_extra("pyspark", "spark") from exc
    # Bind the driver and block manager to loopback: no network interface guessing, no firewall prompts.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    quiet_pandas_warning()
    # Python workers inherit the environment: the same filter for them.
    os.environ.setdefault("PYTHONWARNINGS", f"ignore:{PANDAS_WARNING}:FutureWarning")
    # Python workers must run this interpreter (with millrace, pandas and pyarrow), not whatever is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    spark_cfg = settings.spark
    jars = ",".join(str(p) for p in connector_jars(settings.cache_dir))
    local_dir = (settings.state_dir / "spark-tmp").resolve()
    local_dir.mkdir(parents=True, exist_ok=True)
    builder = (
        SparkSession.builder.appName(app_name)
        .master(master or spark_cfg.master)
        .config("spark.jars", jars)
        .config("spark.driver.memory", spark_cfg.driver_memory)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.local.dir", str(local_dir))
        .config("spark.sql.shuffle.partitions", str(spark_cfg.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        # Invalid input is routed by explicit checks (try_cast, try_to_timestamp), never by exceptions.
        .config("spark.sql.ansi.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.streaming.noDataMicroBatches.enabled", "true")
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.python.worker.reuse", "true")
        .config("spark.sql.streaming.stateStore.stateSchemaCheck", "true")
    )
    for key, value in spark_cfg.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("spark session %s on %s", spark.version, master or spark_cfg.master)
    return spark
