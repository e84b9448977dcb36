"""Anomaly model: detectors, training, explanation, evaluation and the on-disk model registry."""
