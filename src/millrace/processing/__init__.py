"""Pure transforms on readings: features, scoring, validation, windows (no I/O, no SparkSession)."""
