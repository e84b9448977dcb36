"""Spark schemas of the streaming job: the reading on the wire, the stateful step's input, output and state."""

from __future__ import annotations

from datetime import datetime

from pyspark.sql.types import (
    BooleanType,
    DataType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from millrace.records import READING_WIRE, WireField

# The Spark type of a wire field's values (records.WireField.value_type); a timestamp is ISO 8601 text.
_WIRE_TYPES: dict[type, DataType] = {str: StringType(), float: DoubleType(), int: LongType(), datetime: StringType()}
# Fields read as text and converted by the job (try_cast, try_to_timestamp), so that a bad value or timestamp is
# a dead-letter reason ("abc" is bad_value) instead of nulling the whole record.
READ_AS_TEXT: tuple[str, ...] = ("value", "timestamp")


def wire_schema(spec: tuple[WireField, ...], *, as_text: tuple[str, ...] = ()) -> StructType:
    """The Spark schema of a record's JSON (records.WireField), field for field and in wire order."""
    return StructType(
        [
            StructField(
                f.name,
                wire_schema(f.fields) if f.fields else StringType() if f.name in as_text else _WIRE_TYPES[f.value_type],
            )
            for f in spec
        ]
    )


# The JSON of a reading (records.READING_WIRE), parsed with from_json.
READING_JSON = wire_schema(READING_WIRE, as_text=READ_AS_TEXT)

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
