"""The millrace service: REST API, WebSocket channels, Kafka cluster view and the live dashboard."""
