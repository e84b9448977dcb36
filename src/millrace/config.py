"""millrace settings: one typed, frozen tree.

Sources, lowest priority first: defaults, a TOML file (``millrace.toml`` in the working directory, or the
path given with ``--config``), then ``MILLRACE_*`` environment variables (nested keys joined with ``__``,
e.g. ``MILLRACE_KAFKA__BOOTSTRAP_SERVERS``). The CLI builds the tree once with :func:`load_settings` and
passes plain values down; nothing else reads the environment.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from millrace.errors import ConfigError
from millrace.records import GENERIC_TYPE

DEFAULT_CONFIG_FILE = "millrace.toml"


class KafkaSettings(BaseModel, frozen=True, extra="forbid"):
    """How clients reach Kafka. The same fields serve the local stack and any external cluster."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    client_id: str = "millrace"
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    linger_ms: int = Field(default=20, ge=0, le=10_000)
    batch_size: int = Field(default=1_000_000, ge=1, le=16_000_000)

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise ValueError("SASL protocols need kafka.sasl_username and kafka.sasl_password")
        return self

    def client_config(self) -> dict[str, Any]:
        """librdkafka properties shared by producers, consumers and admin clients."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_cafile:
            conf["ssl.ca.location"] = str(self.ssl_cafile)
        if self.ssl_certfile:
            conf["ssl.certificate.location"] = str(self.ssl_certfile)
        if self.ssl_keyfile:
            conf["ssl.key.location"] = str(self.ssl_keyfile)
        return conf


class RuntimeSettings(BaseModel, frozen=True, extra="forbid"):
    """The local stack that ``millrace stack up`` manages."""

    kafka_version: str = "4.3.1"
    host: str = "127.0.0.1"
    kafka_port: int = Field(default=9092, ge=1, le=65535)
    controller_port: int = Field(default=9097, ge=1, le=65535)
    kafka_heap: str = "768m"
    # Kafka nodes (combined broker+controller, static voters when more than one). Node i (from 0) listens on
    # kafka_port + i * port_step for clients and controller_port + i * port_step for the quorum.
    brokers: int = Field(default=1, ge=1, le=5)
    port_step: int = Field(default=10, ge=1, le=1000)
    # "sasl_ssl": a local CA and node certificates, SASL_SSL (SCRAM-SHA-512) listeners, ACLs enforced.
    security: Literal["none", "sasl_ssl"] = "none"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    # Optional TLS listener of the managed Mosquitto (server certificate and key); clients verify it with
    # mqtt.tls_cafile and connect to mqtt.port = this port.
    mqtt_tls_port: int | None = Field(default=None, ge=1, le=65535)
    mqtt_tls_certfile: Path | None = None
    mqtt_tls_keyfile: Path | None = None
    start_timeout_s: float = Field(default=60.0, gt=0)
    stop_timeout_s: float = Field(default=20.0, gt=0)


class MirrorSettings(BaseModel, frozen=True, extra="forbid"):
    """The backup cluster and MirrorMaker 2 of ``millrace stack up --mirror`` (docs/mirror.md)."""

    # Topics copied to the backup under the same names (IdentityReplicationPolicy). Empty: the IoT topics.
    topics: tuple[str, ...] = ()
    groups: str = ".*"  # consumer groups whose offsets are translated (a Java regex, as MM2's `groups`)
    brokers: int = Field(default=1, ge=1, le=5)  # backup nodes; node i on kafka_port + i * runtime.port_step
    kafka_port: int = Field(default=19092, ge=1, le=65535)
    controller_port: int = Field(default=19097, ge=1, le=65535)
    kafka_heap: str = "512m"
    heap: str = "512m"  # MirrorMaker's JVM
    # Checkpoints, group offset sync, MM2's offset flush and topic/group refresh, in seconds.
    sync_interval_s: int = Field(default=5, ge=1, le=3600)
    offset_lag_max: int = Field(default=100, ge=0)  # MM2's offset.lag.max: offset syncs at least this often
    start_timeout_s: float = Field(default=120.0, gt=0)

    @field_validator("topics", mode="after")
    @classmethod
    def _topic_names(cls, topics: tuple[str, ...]) -> tuple[str, ...]:
        for name in topics:
            if not name or len(name) > 249 or not all(c.isascii() and (c.isalnum() or c in "._-") for c in name):
                raise ValueError(f"{name!r} is not a Kafka topic name (letters, digits, '.', '_', '-')")
        return topics


class TopicSettings(BaseModel, frozen=True, extra="forbid"):
    readings: str = "millrace.iot.readings"
    dead_letter: str = "millrace.iot.dead-letter"
    alerts: str = "millrace.iot.alerts"
    predictions: str = "millrace.iot.predictions"
    windowed_metrics: str = "millrace.iot.windowed-metrics"
    quality: str = "millrace.iot.quality"
    device_commands: str = "millrace.iot.device-commands"
    recommendations: str = "millrace.iot.recommendations"
    # The marketplace (shop) domain's topics, on the same cluster.
    shop_items: str = "millrace.shop.items"
    shop_filtered_items: str = "millrace.shop.filtered-items"
    shop_orders: str = "millrace.shop.orders"
    shop_client_search: str = "millrace.shop.client-search"
    shop_stop_list: str = "millrace.shop.stop-list"
    shop_recommendations: str = "millrace.shop.recommendations"
    shop_dead_letter: str = "millrace.shop.dead-letter"
    shop_analytics: str = "millrace.shop.analytics"
    # None: fit the cluster (1 broker: 1 and 1; 3 or more: 3 and 2).
    replication_factor: int | None = Field(default=None, ge=1, le=5)
    min_insync_replicas: int | None = Field(default=None, ge=1, le=5)


class MqttSettings(BaseModel, frozen=True, extra="forbid"):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls_cafile: Path | None = None
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    readings_topic: str = "sensors/+/+/+"
    command_topic: str = "commands/{location}/{device_id}"
    qos: int = Field(default=1, ge=0, le=2)


class SparkSettings(BaseModel, frozen=True, extra="forbid"):
    master: str = "local[2]"
    shuffle_partitions: int = Field(default=2, ge=1)
    # Devices are hashed into this many state buckets; one Python call per bucket and micro-batch (default:
    # shuffle_partitions). More buckets spread the stateful step over more executor cores on a cluster.
    state_buckets: int | None = Field(default=None, ge=1)
    trigger_seconds: float = Field(default=1.0, ge=0)  # 0: each micro-batch starts when the last ends
    max_offsets_per_trigger: int = Field(default=200_000, ge=1)
    driver_memory: str = "2g"
    # The stream job commits the end offsets of each micro-batch it completed to this consumer group, so its lag
    # shows in the cluster view and in Kafka monitoring (monitoring only: the job resumes from its checkpoint).
    # Empty: no commits.
    consumer_group: str = "millrace-iot-process"
    # Any other Spark properties, applied last (e.g. "spark.executor.memory" on a cluster, or the state store
    # provider): {"spark.sql.streaming.stateStore.providerClass" = "..."}.
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("conf", mode="after")
    @classmethod
    def _spark_keys(cls, conf: dict[str, str]) -> dict[str, str]:
        wrong = [k for k in conf if not k.startswith("spark.")]
        if wrong:
            raise ValueError(f"Spark properties start with 'spark.' (got {wrong[0]!r})")
        return conf


# The store's collections with a retention of their own (stores.convert.RETENTION_FIELDS but alert_events).
RETAINED_COLLECTIONS = (
    "sensor_metrics", "anomaly_alerts", "windowed_metrics", "data_quality", "sensor_status", "shop_analytics",
)  # fmt: skip


class StoreSettings(BaseModel, frozen=True, extra="forbid"):
    backend: Literal["sqlite", "mongodb"] = "sqlite"
    sqlite_path: Path | None = None  # default: <state_dir>/millrace.db
    mongodb_uri: str = "mongodb://127.0.0.1:27017"
    mongodb_database: str = "millrace"
    retention_days: float = Field(default=7.0, gt=0)
    # Days kept per collection over retention_days ([store.retention] sensor_metrics = 2, ...); alert_events
    # go with their alerts. The stream job deletes older rows every retention_interval_s (0: never) and, on
    # MongoDB, sets TTL indexes to match.
    retention: dict[str, float] = Field(default_factory=dict)
    retention_interval_s: float = Field(default=3600.0, ge=0)

    @field_validator("retention", mode="after")
    @classmethod
    def _retained_collections(cls, retention: dict[str, float]) -> dict[str, float]:
        for name, days in retention.items():
            if name not in RETAINED_COLLECTIONS:
                raise ValueError(f"no retention for {name!r}: collections are {', '.join(RETAINED_COLLECTIONS)}")
            if not days > 0:
                raise ValueError(f"the retention of {name} must be more than 0 days")
        return retention


class SensorRange(BaseModel, frozen=True, extra="forbid"):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> SensorRange:
        if self.low >= self.high:
            raise ValueError("low must be below high")
        return self


DEFAULT_RANGES: dict[str, SensorRange] = {
    "temperature": SensorRange(low=-50.0, high=150.0),
    "humidity": SensorRange(low=0.0, high=100.0),
    "pressure": SensorRange(low=800.0, high=1200.0),
    "vibration": SensorRange(low=0.0, high=50.0),
    "voltage": SensorRange(low=0.0, high=480.0),
    "current": SensorRange(low=0.0, high=200.0),
}


class ProcessingSettings(BaseModel, frozen=True, extra="forbid"):
    # Physical range per sensor type. Given ranges override the defaults type by type; the other default
    # types stay known (a reading of a type without a range is dead-lettered as unknown_sensor_type, except
    # the generic type, which declares that a sensor has no physical range and so can have none here).
    ranges: dict[str, SensorRange] = Field(default_factory=lambda: dict(DEFAULT_RANGES))
    max_future_s: float = Field(default=300.0, ge=0)
    max_age_s: float = Field(default=7 * 86400.0, gt=0)
    allowed_lateness_s: float = Field(default=60.0, ge=0)
    window_s: int = Field(default=60, ge=1)
    max_interpolated_gap: int = Field(default=5, ge=0)
    inactive_after_s: float = Field(default=60.0, gt=0)
    zscore_threshold: float = Field(default=6.0, gt=0)
    # An alert episode closes after this much event time without an anomalous reading of its device.
    episode_quiet_s: float = Field(default=30.0, gt=0)
    # A TOML file of operator actions read over the shipped table (entries replace or extend it; see
    # docs/recommendations.md). Read once when the stream job starts.
    recommendations_file: Path | None = None

    @field_validator("ranges", mode="after")
    @classmethod
    def _over_defaults(cls, ranges: dict[str, SensorRange]) -> dict[str, SensorRange]:
        if GENERIC_TYPE in ranges:
            raise ValueError(
                f"{GENERIC_TYPE!r} is the type without a physical range; give such sensors a type of "
                "their own and the range to that type"
            )
        return {**DEFAULT_RANGES, **ranges}


class MonitoringSettings(BaseModel, frozen=True, extra="forbid"):
    """Prometheus and Alertmanager (``stack up --with monitoring``) and the alert thresholds; see
    docs/monitoring.md. Durations are seconds."""

    host: str = "127.0.0.1"
    prometheus_port: int = Field(default=9090, ge=1, le=65535)
    # Not Alertmanager's defaults 9093/9094, which sit among Kafka's ports; its cluster (gossip) port is off.
    alertmanager_port: int = Field(default=9095, ge=1, le=65535)
    # Kafka node i serves its JMX exporter on jmx_port + i * runtime.port_step. broker_metrics: load the
    # exporter into the brokers (None: when the stack is started with --with monitoring).
    jmx_port: int = Field(default=9404, ge=1, le=65535)
    broker_metrics: bool | None = None
    # millrace's own exporter of what no JMX bean holds: disk space of the state dir, certificate expiry.
    exporter_port: int = Field(default=9402, ge=1, le=65535)
    scrape_interval_s: float = Field(default=15.0, ge=0.1)
    evaluation_interval_s: float = Field(default=15.0, ge=0.1)
    retention: str = Field(default="7d", pattern=r"^\d+[smhdwy]$")
    # Alertmanager's notification timing (its defaults: 30 s, 5 min, 4 h).
    group_wait_s: float = Field(default=30.0, ge=0)
    group_interval_s: float = Field(default=300.0, ge=0.1)
    repeat_interval_s: float = Field(default=4 * 3600.0, ge=1)
    # Where Alertmanager sends notifications: a user webhook, and millrace's own alert list
    # (POST /api/monitoring/alerts with an operator token read from api_token_file).
    webhook_url: str | None = None
    api_alerts_url: str | None = None
    api_token_file: Path | None = None
    # Alert thresholds (docs/monitoring.md lists the rules).
    broker_down_for_s: float = Field(default=30.0, ge=0)
    partitions_for_s: float = Field(default=60.0, ge=0)
    rate_window_s: float = Field(default=300.0, ge=1)
    consumer_lag_max: int = Field(default=100_000, ge=0)
    consumer_lag_for_s: float = Field(default=300.0, ge=0)
    stalled_after_s: float = Field(default=300.0, ge=1)
    dead_letter_rate_max: float = Field(default=1.0, ge=0)
    quality_ratio_max: float = Field(default=0.05, ge=0)
    anomaly_spike_factor: float = Field(default=5.0, gt=0)
    anomaly_rate_min: float = Field(default=0.1, ge=0)
    disk_free_ratio_min: float = Field(default=0.1, ge=0, le=1)
    cert_expiry_days: float = Field(default=14.0, ge=0)
    # MirrorMaker 2: the most a record may take from the primary to the backup (the larger of its replication
    # latency and its age when copied, at most over the last minute), held partitions_for_s.
    mirror_latency_max_s: float = Field(default=60.0, gt=0)

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.prometheus_port}"


ApiRole = Literal["viewer", "operator", "admin"]


class ApiToken(BaseModel, frozen=True, extra="forbid"):
    """One API token as the SHA-256 (hex) of the token: the token itself is shown once by
    ``millrace token create`` and never stored."""

    name: str = Field(min_length=1, max_length=100)
    role: ApiRole
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ApiSettings(BaseModel, frozen=True, extra="forbid"):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # "token": every route but /api/health and the static dashboard needs a bearer token; "none": open.
    auth: Literal["token", "none"] = "token"
    tokens: tuple[ApiToken, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        return self


class ShopSettings(BaseModel, frozen=True, extra="forbid"):
    """The marketplace domain: its schema registry and catalog (its topics are in [topics], shop_*)."""

    # Apicurio Registry's Confluent-compatible API; the managed registry (stack up --with registry) listens on
    # registry_port of runtime.host.
    registry_url: str = "http://127.0.0.1:8081/apis/ccompat/v7"
    registry_port: int = Field(default=8081, ge=1, le=65535)
    # Apicurio Registry from Maven Central: 3.x needs Java 21+ (registry_java, else the newest Java 21+ found
    # on PATH or under /usr/lib/jvm); 2.6.x runs on Java 17.
    registry_version: str = Field(default="3.3.3", pattern=r"^\d+\.\d+\.\d+(\.Final)?$")
    registry_java: Path | None = None
    registry_heap: str = "512m"
    # Set on the registry by `shop schemas apply` (Apicurio's own default is NONE).
    compatibility: Literal["BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FULL", "NONE"] = "BACKWARD"
    # One switch for the shop's client queries and consumers: on, every recorded query (CLI, REST, demo) is framed
    # with the registered client-query schema and the filter and the index service validate each record, sending
    # failures to shop_dead_letter. Off by default so that the shop runs without a registry; `shop filter`,
    # `shop index` and `shop search` take it as the default of --registry/--no-registry.
    use_registry: bool = False
    catalog_path: Path | None = None  # default: the sample catalog shipped with millrace
    # Product search: the embedded tantivy index in the state dir (one indexer), or OpenSearch at
    # opensearch_url (the managed node of `stack up --with search` serves HTTP on search_port; its runner takes
    # no HTTP port above 9299).
    search_backend: Literal["tantivy", "opensearch"] = "tantivy"
    opensearch_url: str = "http://127.0.0.1:9200"
    search_port: int = Field(default=9200, ge=2, le=9299)
    search_version: str = Field(default="2.19.1.0", pattern=r"^\d+\.\d+\.\d+\.\d+$")
    search_heap: str = "512m"


class LakeSettings(BaseModel, frozen=True, extra="forbid"):
    """The shop's orders lake (`shop archive`, `shop analytics`; docs/lake.md) and the managed HDFS of
    `stack up --with hdfs` (a NameNode and a DataNode in one JVM)."""

    # Where the orders' Parquet files go: empty = <state_dir>/lake (a local directory), else a URL fsspec and
    # Spark both open: hdfs://host:rpc_port/path (the NameNode's RPC address) or webhdfs://host:http_port/path.
    url: str = ""
    hdfs_user: str = "millrace"  # the HDFS user files are written as (permissions are off on the managed HDFS)
    hdfs_version: str = Field(default="3.4.2", pattern=r"^\d+\.\d+\.\d+$")
    hdfs_rpc_port: int = Field(default=8020, ge=1, le=65535)
    hdfs_http_port: int = Field(default=9870, ge=1, le=65535)  # WebHDFS and the NameNode's web UI
    hdfs_heap: str = "512m"
    # `shop archive`: a batch ends at this many order events or this many seconds after its first one.
    archive_batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    archive_batch_seconds: float = Field(default=5.0, gt=0, le=3600)


class AnalyticsSettings(BaseModel, frozen=True, extra="forbid"):
    """`shop analytics` (docs/shop-analytics.md) and `shop recommend-train` (docs/shop-recommendations.md)."""

    top_n: int = Field(default=10, ge=1, le=1000)  # top products, top queries, recommendations per user
    holdout_days: float = Field(default=7.0, gt=0)  # the last days of orders held out to compare recommenders
    # Spark MLlib ALS on implicit feedback (`shop recommend-train`; docs/shop-recommendations.md): latent factors,
    # L2 regularisation, confidence per order (1 + alpha * orders) and iterations. Chosen once, not on the hold-out.
    als_rank: int = Field(default=16, ge=1, le=500)
    als_reg: float = Field(default=0.1, ge=0)
    als_alpha: float = Field(default=10.0, gt=0)
    als_iterations: int = Field(default=15, ge=1, le=200)


class MetricsSettings(BaseModel, frozen=True, extra="forbid"):
    """Prometheus endpoints of millrace's processes (docs/metrics.md); a port of 0 takes an ephemeral one,
    written to the process's file_sd target file. The API serves /metrics on api.port."""

    enabled: bool = True
    host: str = "127.0.0.1"
    stream_port: int = Field(default=0, ge=0, le=65535)
    ingest_port: int = Field(default=0, ge=0, le=65535)
    mqtt_bridge_port: int = Field(default=0, ge=0, le=65535)


class Settings(BaseSettings):
    """The whole millrace configuration."""

    model_config = SettingsConfigDict(env_prefix="MILLRACE_", env_nested_delimiter="__", frozen=True, extra="forbid")
    _toml_file: ClassVar[Path | None] = None

    state_dir: Path = Path(".millrace")
    cache_dir: Path = Path.home() / ".cache" / "millrace"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    kafka: KafkaSettings = KafkaSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    topics: TopicSettings = TopicSettings()
    mqtt: MqttSettings = MqttSettings()
    spark: SparkSettings = SparkSettings()
    store: StoreSettings = StoreSettings()
    processing: ProcessingSettings = ProcessingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    api: ApiSettings = ApiSettings()
    mirror: MirrorSettings = MirrorSettings()
    metrics: MetricsSettings = MetricsSettings()
    shop: ShopSettings = ShopSettings()
    lake: LakeSettings = LakeSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()

    @field_validator("state_dir", "cache_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def sqlite_path(self) -> Path:
        return self.store.sqlite_path or self.state_dir / "millrace.db"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls, cls._toml_file))


class _TomlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is not None:
            try:
                self._data = tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"invalid config file {path}: {exc}") from exc

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def load_settings(config_path: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings tree once; an invalid value raises ConfigError naming the key."""
    if config_path is not None and not config_path.is_file():
        raise ConfigError(f"config file not found: {config_path}")
    if config_path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        config_path = Path(DEFAULT_CONFIG_FILE)
    Settings._toml_file = config_path
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    finally:
        Settings._toml_file = None
    return settings if "kafka" in overrides else _with_failover(settings)


def failover_path(state_dir: Path) -> Path:
    """The overlay ``millrace mirror failover`` writes: while it exists, clients connect to the backup."""
    return state_dir / "mirror" / "failover.toml"


def _with_failover(settings: Settings) -> Settings:
    """Apply the failover overlay over the file and the environment (explicit ``kafka=`` overrides win). Its
    ``[kafka]`` table is the whole connection: connection keys it leaves out take their defaults (the backup
    is plaintext), the producer tuning (client_id, compression, linger_ms, batch_size) is kept."""
    path = failover_path(settings.state_dir)
    if not path.is_file():
        return settings
    try:
        connection = tomllib.loads(path.read_text(encoding="utf-8")).get("kafka", {})
        tuning = settings.kafka.model_dump(include={"client_id", "compression", "linger_ms", "batch_size"})
        kafka = KafkaSettings(**{**tuning, **connection})
    except (tomllib.TOMLDecodeError, ValidationError, TypeError) as exc:
        raise ConfigError(f"invalid failover overlay {path}: {str(exc).splitlines()[0]}") from None
    return settings.model_copy(update={"kafka": kafka})


# A key holding one of these words is a secret: its value never appears in a message.
SECRET_WORDS = ("password", "secret", "token", "jaas", "credential", "api_key", "private")


def is_secret_key(key: str) -> bool:
    return any(word in key.lower() for word in SECRET_WORDS)


def _describe(exc: ValidationError) -> str:
    """One line naming the key. The input is quoted only when it is a plain value of a key that is not secret:
    a section's raw input (a dict) may hold a password, so it is never printed."""
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "settings"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":  # its value is of no help, and a misspelt secret key is still secret
        return f"invalid setting {key}: unknown setting"
    value = first.get("input")
    if isinstance(value, dict | list | tuple | set) or is_secret_key(key) or isinstance(value, SecretStr):
        return f"invalid setting {key}: {message}"
    return f"invalid setting {key}: {message} (got {value!r})"
