"""The SQL sink: results (upserted), the usage ledger, run summaries and the latest answers, on SQLite,
PostgreSQL and MySQL/MariaDB.

SQLAlchemy Core only, bound parameters only; table names are validated identifiers. The tables are
defined in :mod:`~airflow_provider_glm.sinks.sql._tables`, created or extended (additively) by
:mod:`~airflow_provider_glm.sinks.sql._migrate`; the queries that read them live in
:mod:`~airflow_provider_glm.sinks.sql._reads`. Every retry of a database operation follows
:func:`~airflow_provider_glm.sinks.sql._retry.database_retry`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.sql.dml import Insert

from airflow_provider_glm.rows._records import ResultRecord, RunScope, UsageRecord
from airflow_provider_glm.sinks.sql._migrate import migrate
from airflow_provider_glm.sinks.sql._reads import SinkReads
from airflow_provider_glm.sinks.sql._tables import (
    ID_LENGTH,
    MYSQL_DIALECTS,
    RESPONSE_ID_LENGTH,
    ROW_KEY_LENGTH,
    SCOPE_COLUMNS,
    latest_key,
    latest_table_def,
    result_key,
    results_table_def,
    run_key,
    runs_table_def,
    usage_table_def,
    validate_table_name,
)

__all__ = ["SQLSink", "result_key", "validate_table_name"]

_SUPPORTED_DIALECTS = ("sqlite", "postgresql", *MYSQL_DIALECTS)
_STATUSES = frozenset({"ok", "failed", "filtered", "skipped"})
_CHUNK = 1000
_NUL_COLUMNS = ("content", "reasoning_content", "finish_reason", "error", "model")


def _row(record: ResultRecord | UsageRecord, names: tuple[str, ...]) -> dict[str, Any]:
    """A shallow column mapping (``dataclasses.asdict`` deep-copies, which costs more than the insert)."""
    scope = record.scope
    row = {name: getattr(record, name) for name in names}
    row.update(dag_id=scope.dag_id, task_id=scope.task_id, run_id=scope.run_id, map_index=scope.map_index,
               logical_date=scope.logical_date)
    return row


def _replace_nul(row: dict[str, Any]) -> None:
    """PostgreSQL text cannot hold NUL (psycopg2 refuses the whole batch): store U+FFFD in its place."""
    for name in _NUL_COLUMNS:
        value = row.get(name)
        if isinstance(value, str) and "\x00" in value:
            row[name] = value.replace("\x00", "\ufffd")


def _check_length(what: str, value: Any, limit: int) -> None:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValueError(f"{what} must be a non-empty string of at most {limit} characters, got {value!r}")


def _check_scope(scope: RunScope) -> None:
    for name in SCOPE_COLUMNS:
        _check_length(name, getattr(scope, name), ID_LENGTH)


class SQLSink(SinkReads):
    """Writes results, usage and run summaries through one SQLAlchemy engine.

    :param engine: a SQLite, PostgreSQL or MySQL/MariaDB engine (for MySQL use ``charset=utf8mb4``).
    :param results_table: ``table`` or ``schema.table`` for per-row results.
    :param usage_table: ``table`` or ``schema.table`` for the usage ledger.
    :param runs_table: ``table`` or ``schema.table`` for one summary per task try.
    :param latest_table: ``table`` or ``schema.table`` kept with the current ``ok`` answer per row key, or ``None``.
    :param output_columns: typed columns filled from the structured output (see ``output_column_defs``).
    """

    def __init__(self, engine: Engine, results_table: str = "glm_results", usage_table: str = "glm_usage",
                 runs_table: str = "glm_runs", latest_table: str | None = None,
                 output_columns: Sequence[sa.Column[Any]] = ()) -> None:
        names = {"results_table": results_table, "usage_table": usage_table, "runs_table": runs_table}
        if latest_table is not None:
            names["latest_table"] = latest_table
        parsed = {label: validate_table_name(name) for label, name in names.items()}
        if len(set(parsed.values())) != len(parsed):
            raise ValueError(f"the tables must have different names, got {names}")
        self._dialect = engine.dialect.name
        if self._dialect not in _SUPPORTED_DIALECTS:
            supported = list(_SUPPORTED_DIALECTS)
            raise ValueError(f"unsupported SQL dialect {self._dialect!r}: the SQL sink supports {supported}")
        self._engine = engine
        self._metadata = sa.MetaData()
        self.output_columns = tuple(column.name for column in output_columns)
        self.results_table = results_table_def(self._metadata, *parsed["results_table"],
                                               output_columns=[c._copy() for c in output_columns])
        self.usage_table = usage_table_def(self._metadata, *parsed["usage_table"])
        self.runs_table = runs_table_def(self._metadata, *parsed["runs_table"])
        self.latest_table = (latest_table_def(self._metadata, *parsed["latest_table"],
                                              output_columns=[c._copy() for c in output_columns])
                             if latest_table is not None else None)
        self._result_fields = tuple(f.name for f in fields(ResultRecord) if f.name in self.results_table.c)
        self._usage_fields = tuple(f.name for f in fields(UsageRecord) if f.name in self.usage_table.c)
        self._results_upsert = self._upsert(self.results_table, "result_key")
        self._latest_upsert = self._upsert(self.latest_table, "latest_key") if self.latest_table is not None else None
        self._runs_upsert = self._upsert(self.runs_table, "run_key")
        self._usage_insert = self._insert_new(self.usage_table, "response_id")

    @classmethod
    def from_url(cls, url: str, results_table: str = "glm_results", usage_table: str = "glm_usage",
                 **kwargs: Any) -> SQLSink:
        """Create the engine from a URL (SQLite gets a 30 s busy timeout unless told otherwise).

        :param url: a SQLAlchemy URL, e.g. ``postgresql+psycopg2://user@host/db``.
        :param kwargs: the other table options of :class:`SQLSink`; the rest goes to
            :func:`sqlalchemy.create_engine`.
        """
        table_options: dict[str, Any] = {k: kwargs.pop(k) for k in ("runs_table", "latest_table", "output_columns")
                                         if k in kwargs}
        table_options.update(results_table=results_table, usage_table=usage_table)
        for name in ("results_table", "usage_table", "runs_table", "latest_table"):
            if table_options.get(name) is not None:
                validate_table_name(table_options[name])
        if sa.engine.make_url(url).get_backend_name() == "sqlite":
            connect_args = dict(kwargs.pop("connect_args", {}))
            connect_args.setdefault("timeout", 30)
            kwargs["connect_args"] = connect_args
        else:
            kwargs.setdefault("pool_pre_ping", True)
        engine = sa.create_engine(url, **kwargs)
        try:
            return cls(engine, **table_options)
        except ValueError:
            engine.dispose()
            raise

    @property
    def engine(self) -> Engine:
        return self._engine

    def _upsert(self, table: sa.Table, key: str) -> Insert:
        updated = [c.name for c in table.columns if not c.primary_key]
        if self._dialect in MYSQL_DIALECTS:
            my_stmt = mysql.insert(table)
            return my_stmt.on_duplicate_key_update({name: my_stmt.inserted[name] for name in updated})
        stmt = (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(table)
        upsert = stmt.on_conflict_do_update(index_elements=[key], set_={name: stmt.excluded[name] for name in updated})
        return self._batched(upsert, table.c[key])

    def _insert_new(self, table: sa.Table, key: str) -> Insert:
        if self._dialect in MYSQL_DIALECTS:
            my_stmt = mysql.insert(table)
            return my_stmt.on_duplicate_key_update({key: my_stmt.inserted[key]})
        stmt = (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(table)
        return self._batched(stmt.on_conflict_do_nothing(index_elements=[key]), table.c[key])

    def _batched(self, stmt: Insert, key: sa.Column[Any]) -> Insert:
        """On PostgreSQL, ``RETURNING`` makes SQLAlchemy batch rows into multi-row VALUES.

        Without it an ``ON CONFLICT`` executemany runs row by row (SQLAlchemy issue #13130).
        """
        return stmt.returning(key) if self._dialect == "postgresql" else stmt

    def ensure_tables(self, *, timeout: float = 60.0, log: Any = None) -> None:
        """Create missing tables and indexes, add missing columns (never drop or change one).

        :raises ValueError: an existing table lacks its key, or a typed output column changed type.
        """
        migrate(self._engine, self._tables(), timeout=timeout, log=log)

    def _tables(self) -> list[tuple[sa.Table, str]]:
        tables = [(self.results_table, "result_key"), (self.usage_table, "response_id"), (self.runs_table, "run_key")]
        if self.latest_table is not None:
            tables.append((self.latest_table, "latest_key"))
        return tables

    def write(self, results: Sequence[ResultRecord], usage: Sequence[UsageRecord]) -> None:
        """Upsert ``results`` (and the latest table's ``ok`` rows) and insert ``usage`` in one transaction.

        A known ``response_id`` is ignored, so a rewrite never duplicates a ledger entry. Errors are
        raised as they are: the caller retries under
        :func:`~airflow_provider_glm.sinks.sql._retry.database_retry`.

        :param results: one record per input row; the last record for a repeated key wins.
        :param usage: ledger entries; the first record for a repeated ``response_id`` wins.
        """
        result_rows = self._result_rows(results)
        usage_rows = self._usage_rows(usage)
        if not result_rows and not usage_rows:
            return
        batches: list[tuple[Insert, list[dict[str, Any]]]] = [(self._results_upsert, result_rows)]
        if self._latest_upsert is not None:
            batches.append((self._latest_upsert, self._latest_rows(result_rows)))
        batches.append((self._usage_insert, usage_rows))
        with self._engine.begin() as conn:
            for statement, rows in batches:
                for start in range(0, len(rows), _CHUNK):
                    conn.execute(statement, rows[start : start + _CHUNK]).close()

    def write_run(self, scope: RunScope, try_number: int, summary: Mapping[str, Any]) -> None:
        """Upsert the runs table's row for this try (its columns taken from ``summary``)."""
        row = {c.name: summary.get(c.name) for c in self.runs_table.columns if c.name in summary}
        row.update(run_key=run_key(scope, try_number), dag_id=scope.dag_id, task_id=scope.task_id,
                   run_id=scope.run_id, map_index=scope.map_index, logical_date=scope.logical_date,
                   try_number=try_number)
        with self._engine.begin() as conn:
            conn.execute(self._runs_upsert, [row]).close()

    def _result_rows(self, results: Sequence[ResultRecord]) -> list[dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for record in results:
            _check_scope(record.scope)
            _check_length("row_key", record.row_key, ROW_KEY_LENGTH)
            if record.status not in _STATUSES:
                raise ValueError(f"status must be one of {sorted(_STATUSES)}, got {record.status!r}")
            row = _row(record, self._result_fields)
            output = record.output if isinstance(record.output, Mapping) else {}
            for name in self.output_columns:
                row[name] = output.get(name)
            if self._dialect == "postgresql":
                _replace_nul(row)
            row["result_key"] = result_key(record.scope, record.row_key)
            rows[row["result_key"]] = row
        return [rows[key] for key in sorted(rows)]

    @staticmethod
    def _latest_rows(result_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = {}
        for row in result_rows:
            if row["status"] == "ok":
                key = latest_key(row["dag_id"], row["task_id"], row["row_key"])
                rows[key] = {**row, "latest_key": key}
                del rows[key]["result_key"]
        return [rows[key] for key in sorted(rows)]

    def _usage_rows(self, usage: Sequence[UsageRecord]) -> list[dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for record in usage:
            _check_scope(record.scope)
            _check_length("response_id", record.response_id, RESPONSE_ID_LENGTH)
            if record.row_key is not None:
                _check_length("row_key", record.row_key, ROW_KEY_LENGTH)
            if record.response_id not in rows:
                rows[record.response_id] = _row(record, self._usage_fields)
        return [rows[key] for key in sorted(rows)]

    def dispose(self) -> None:
        """Close the engine's pooled connections."""
        self._engine.dispose()
