"""IoT ingestion: the device-fleet simulator, data set replay, sinks and live producer statistics."""
