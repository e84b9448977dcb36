"""Kafka plumbing on confluent-kafka: the topic list, producers, consumers and admin helpers."""
