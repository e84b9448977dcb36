"""Managed local servers: Kafka, MQTT, a MongoDB-wire server, ... each a ManagedProcess in the state dir."""
