"""The SQL sink: the results table, the usage ledger, the runs table and the latest answers.

:class:`SQLSink` writes and reads them on SQLite, PostgreSQL and MySQL/MariaDB through SQLAlchemy
Core. Its modules: ``_sink`` (writes), ``_reads`` (queries), ``_tables`` (definitions and names),
``_migrate`` (create and extend, never drop), ``_retry`` (the one retry policy of database work).
"""

from airflow_provider_glm.sinks.sql._sink import SQLSink, result_key, validate_table_name

__all__ = ["SQLSink", "result_key", "validate_table_name"]
