"""Spark jobs and their I/O: the IoT stream job's session, query wiring, sinks, window ledger and offset mirror.

Wiring only: the transforms come from ``processing`` and the scorer from ``ml``; the job injects its
collaborators (scorer factory, reading sink) into the stateful step.
"""
