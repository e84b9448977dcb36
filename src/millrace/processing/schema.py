"""Spark schemas of the streaming job: the reading on the wire, the stateful step's input, output and state."""

from __future__ import annotations

from pyspark.sql.types import (
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

# The JSON of a reading (records.SensorReading.to_dict). Timestamps are parsed separately (try_to_timestamp)
# so that a bad timestamp is reported as such instead of nulling the whole record.
READING_JSON = StructType(
    [
        StructField("sensor_id", StringType()),
        StructField("device_id", StringType()),
        StructField("sensor_type", StringType()),
        StructField("value", StringType()),  # parsed with try_cast: "abc" is a reason, not a null record
        StructField("unit", StringType()),
        StructField("location", StringType()),
        StructField("timestamp", StringType()),
        StructField("status", StringType()),
        StructField("seq", LongType()),
        StructField("ground_truth", StringType()),
        StructField(
            "metadata",
            StructType(
                [
                    StructField("unit", StringType()),
                    StructField("sensor_model", StringType()),
                    StructField("battery_level", DoubleType()),
                ]
            ),
        ),
    ]
)

# What the stateful step receives per device (transforms.to_step_input).
STEP_INPUT_COLUMNS: tuple[str, ...] = (
    "gkey", "reason", "raw", "kafka_partition", "kafka_offset", "sensor_id", "device_id", "sensor_type",
    "location", "unit", "status", "value", "timestamp", "ground_truth",
)  # fmt: skip

# One output row of the stateful step. ``out`` says what it is: "window" (a tumbling-window partial),
# "alert_sent" (an alert episode the step's sink already wrote; the driver counts it), "status", "dead" (dead
# letter) or "quality" (counters), each with its content as JSON in ``payload``. Readings leave through the
# step's sink (processing.output.StepSink), not as rows; the reading columns name what the sink is given.
STEP_OUTPUT = StructType(
    [
        StructField("out", StringType(), False),
        StructField("sensor_id", StringType()),
        StructField("device_id", StringType()),
        StructField("sensor_type", StringType()),
        StructField("location", StringType()),
        StructField("unit", StringType()),
        StructField("status", StringType()),
        StructField("timestamp", TimestampType()),
        StructField("value", DoubleType()),
        StructField("interpolated", BooleanType()),
        StructField("score", DoubleType()),
        StructField("is_anomaly", BooleanType()),
        StructField("anomaly_kind", StringType()),
        StructField("features", StringType()),
        StructField("ground_truth", StringType()),
        StructField("kafka_partition", IntegerType()),
        StructField("kafka_offset", LongType()),
        StructField("payload", StringType()),
    ]
)
STEP_OUTPUT_COLUMNS: tuple[str, ...] = tuple(f.name for f in STEP_OUTPUT.fields)

# The per-device state: one JSON document (see stateful.DeviceState).
STEP_STATE = StructType([StructField("doc", StringType())])
