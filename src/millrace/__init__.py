"""millrace: a real-time streaming data platform on Apache Kafka."""

__version__ = "0.1.0"
