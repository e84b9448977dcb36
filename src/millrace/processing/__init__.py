"""Pure IoT transforms on readings: validation, dedup and lateness, gaps, features, scoring, episodes, window
partials, and the stateful step that chains them (no I/O, no SparkSession; its sink and scorer are injected).

Spark column expressions and schemas live here too — they build query plans and run nothing. The Spark jobs
that create the session, run the query and write the store and topics are in ``millrace.jobs``.
"""
