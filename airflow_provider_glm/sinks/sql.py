"""The SQL sink: row results (upserted) and the usage ledger, on SQLite, PostgreSQL and MySQL/MariaDB.

SQLAlchemy Core only, bound parameters only; table names are validated identifiers. The tables
themselves (columns, types, the surrogate ``result_key``) are defined in
:mod:`airflow_provider_glm.sinks.sql_tables`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Generator, Sequence
from dataclasses import fields
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Insert

from airflow_provider_glm.sinks.records import ResultRecord, RunScope, UsageRecord
from airflow_provider_glm.sinks.sql_tables import (
    ID_LENGTH,
    MYSQL_DIALECTS,
    RESPONSE_ID_LENGTH,
    ROW_KEY_LENGTH,
    SCOPE_COLUMNS,
    result_key,
    results_table_def,
    usage_table_def,
    validate_table_name,
)

__all__ = ["SQLSink", "result_key", "validate_table_name"]

_SUPPORTED_DIALECTS = ("sqlite", "postgresql", *MYSQL_DIALECTS)
_STATUSES = frozenset({"ok", "failed", "filtered", "skipped"})
_CHUNK = 1000
_MAX_ATTEMPTS = 5
_MYSQL_TRANSIENT = frozenset({1205, 1213})
_PG_TRANSIENT = frozenset({"40001", "40P01"})
_NUL_COLUMNS = ("content", "reasoning_content", "finish_reason", "error", "model")

def _is_transient(exc: DBAPIError) -> bool:
    """Deadlocks and serialization failures, which a retry of the whole transaction resolves."""
    orig = exc.orig
    if getattr(orig, "pgcode", None) in _PG_TRANSIENT:
        return True
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return bool(args) and isinstance(args[0], int) and args[0] in _MYSQL_TRANSIENT


def _row(record: ResultRecord | UsageRecord, names: tuple[str, ...]) -> dict[str, Any]:
    """A shallow column mapping (``dataclasses.asdict`` deep-copies, which costs more than the insert)."""
    scope = record.scope
    row = {name: getattr(record, name) for name in names}
    row.update(dag_id=scope.dag_id, task_id=scope.task_id, run_id=scope.run_id, map_index=scope.map_index)
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


class SQLSink:
    """Writes results and usage to two tables through one SQLAlchemy engine.

    :param engine: a SQLite, PostgreSQL or MySQL/MariaDB engine (for MySQL use ``charset=utf8mb4``).
    :param results_table: ``table`` or ``schema.table`` for per-row results.
    :param usage_table: ``table`` or ``schema.table`` for the usage ledger.
    """

    def __init__(
        self, engine: Engine, results_table: str = "glm_results", usage_table: str = "glm_usage"
    ) -> None:
        res_schema, res_name = validate_table_name(results_table)
        use_schema, use_name = validate_table_name(usage_table)
        if (res_schema, res_name) == (use_schema, use_name):
            raise ValueError(f"results_table and usage_table must differ, both are {results_table!r}")
        self._dialect = engine.dialect.name
        if self._dialect not in _SUPPORTED_DIALECTS:
            supported = list(_SUPPORTED_DIALECTS)
            raise ValueError(f"unsupported SQL dialect {self._dialect!r}: the SQL sink supports {supported}")
        self._engine = engine
        self._metadata = sa.MetaData()
        self.results_table = results_table_def(self._metadata, res_schema, res_name)
        self.usage_table = usage_table_def(self._metadata, use_schema, use_name)
        self._result_fields = tuple(f.name for f in fields(ResultRecord) if f.name in self.results_table.c)
        self._usage_fields = tuple(f.name for f in fields(UsageRecord) if f.name in self.usage_table.c)
        self._results_insert = self._build_results_upsert()
        self._usage_insert = self._build_usage_insert()

    @classmethod
    def from_url(
        cls,
        url: str,
        results_table: str = "glm_results",
        usage_table: str = "glm_usage",
        **engine_kwargs: Any,
    ) -> SQLSink:
        """Create the engine from a URL (SQLite gets a 30 s busy timeout unless told otherwise).

        :param url: a SQLAlchemy URL, e.g. ``postgresql+psycopg2://user@host/db``.
        :param results_table: ``table`` or ``schema.table`` for per-row results.
        :param usage_table: ``table`` or ``schema.table`` for the usage ledger.
        :param engine_kwargs: passed to :func:`sqlalchemy.create_engine`.
        """
        validate_table_name(results_table)
        validate_table_name(usage_table)
        if sa.engine.make_url(url).get_backend_name() == "sqlite":
            connect_args = dict(engine_kwargs.pop("connect_args", {}))
            connect_args.setdefault("timeout", 30)
            engine_kwargs["connect_args"] = connect_args
        else:
            engine_kwargs.setdefault("pool_pre_ping", True)
        engine = sa.create_engine(url, **engine_kwargs)
        try:
            return cls(engine, results_table=results_table, usage_table=usage_table)
        except ValueError:
            engine.dispose()
            raise

    def _build_results_upsert(self) -> Insert:
        table = self.results_table
        updated = [
            c.name
            for c in table.columns
            if not c.primary_key and c.name not in (*SCOPE_COLUMNS, "map_index", "row_key")
        ]
        if self._dialect in MYSQL_DIALECTS:
            my_stmt = mysql.insert(table)
            return my_stmt.on_duplicate_key_update({name: my_stmt.inserted[name] for name in updated})
        stmt = (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(table)
        upsert = stmt.on_conflict_do_update(
            index_elements=["result_key"], set_={name: stmt.excluded[name] for name in updated}
        )
        return self._batched(upsert, table.c.result_key)

    def _batched(self, stmt: Insert, key: sa.Column[Any]) -> Insert:
        """On PostgreSQL, ``RETURNING`` makes SQLAlchemy batch rows into multi-row VALUES.

        Without it an ``ON CONFLICT`` executemany runs row by row (SQLAlchemy issue #13130).
        """
        return stmt.returning(key) if self._dialect == "postgresql" else stmt

    def _build_usage_insert(self) -> Insert:
        table = self.usage_table
        if self._dialect in MYSQL_DIALECTS:
            my_stmt = mysql.insert(table)
            return my_stmt.on_duplicate_key_update(response_id=my_stmt.inserted.response_id)
        stmt = (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(table)
        return self._batched(stmt.on_conflict_do_nothing(index_elements=["response_id"]), table.c.response_id)

    def ensure_tables(self) -> None:
        """Create missing tables (and their indexes); check that existing ones have every column.

        Safe when several processes call it at once: a failed ``CREATE`` is followed by a fresh look.
        """
        tables = [self.results_table, self.usage_table]
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                with self._engine.begin() as conn:
                    inspector = sa.inspect(conn)
                    missing = [t for t in tables if not inspector.has_table(t.name, schema=t.schema)]
                    if missing:
                        self._metadata.create_all(conn, tables=missing, checkfirst=True)
                break
            except DBAPIError:
                if attempt == _MAX_ATTEMPTS:
                    raise
                time.sleep(0.05 * attempt * (1 + random.random()))
        with self._engine.connect() as conn:
            inspector = sa.inspect(conn)
            for table, key in ((self.results_table, "result_key"), (self.usage_table, "response_id")):
                self._check_table(inspector, table, key)

    @staticmethod
    def _check_table(inspector: sa.Inspector, table: sa.Table, key: str) -> None:
        existing = {
            column["name"].lower() for column in inspector.get_columns(table.name, schema=table.schema)
        }
        missing = [c.name for c in table.columns if c.name.lower() not in existing]
        if missing:
            raise ValueError(
                f"table {table.fullname!r} exists but lacks required column(s) {missing}: "
                "migrate or drop it, or configure another table name"
            )
        keys: list[list[Any]] = [
            inspector.get_pk_constraint(table.name, schema=table.schema)["constrained_columns"]
        ]
        keys += [u["column_names"] for u in inspector.get_unique_constraints(table.name, schema=table.schema)]
        keys += [
            i["column_names"] for i in inspector.get_indexes(table.name, schema=table.schema) if i["unique"]
        ]
        if not any([str(name).lower() for name in cols] == [key] for cols in keys):
            raise ValueError(
                f"table {table.fullname!r} exists but has no primary key or unique index on ({key})"
            )

    def write(self, results: Sequence[ResultRecord], usage: Sequence[UsageRecord]) -> None:
        """Upsert ``results`` and insert ``usage`` (a known ``response_id`` is ignored) in one transaction.

        Either both halves become visible or neither does. Deadlocks are retried a few times.

        :param results: one record per input row; the last record for a repeated key wins.
        :param usage: ledger entries; the first record for a repeated ``response_id`` wins.
        """
        result_rows = self._result_rows(results)
        usage_rows = self._usage_rows(usage)
        if not result_rows and not usage_rows:
            return
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                with self._engine.begin() as conn:
                    for statement, rows in (
                        (self._results_insert, result_rows),
                        (self._usage_insert, usage_rows),
                    ):
                        for start in range(0, len(rows), _CHUNK):
                            conn.execute(statement, rows[start : start + _CHUNK]).close()
                return
            except DBAPIError as exc:
                if attempt == _MAX_ATTEMPTS or not _is_transient(exc):
                    raise
                time.sleep(0.05 * 2**attempt * (1 + random.random()))

    def _result_rows(self, results: Sequence[ResultRecord]) -> list[dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for record in results:
            _check_scope(record.scope)
            _check_length("row_key", record.row_key, ROW_KEY_LENGTH)
            if record.status not in _STATUSES:
                raise ValueError(f"status must be one of {sorted(_STATUSES)}, got {record.status!r}")
            row = _row(record, self._result_fields)
            if self._dialect == "postgresql":
                _replace_nul(row)
            row["result_key"] = result_key(record.scope, record.row_key)
            rows[row["result_key"]] = row
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

    @staticmethod
    def _where_scope(table: sa.Table, scope: RunScope) -> sa.ColumnElement[bool]:
        return sa.and_(
            table.c.dag_id == scope.dag_id,
            table.c.task_id == scope.task_id,
            table.c.run_id == scope.run_id,
            table.c.map_index == scope.map_index,
        )

    def ok_row_keys(self, scope: RunScope) -> set[str]:
        """The row keys already answered with status ``ok`` in ``scope`` (to resume a task).

        :param scope: the task's dag, task, run and map index.
        """
        table = self.results_table
        query = sa.select(table.c.row_key).where(self._where_scope(table, scope), table.c.status == "ok")
        with self._engine.connect() as conn:
            return set(conn.execute(query).scalars())

    def spent(self, scope: RunScope) -> tuple[int, Decimal | None]:
        """Tokens and cost in the ledger for ``scope``, summed over every try.

        :param scope: the task's dag, task, run and map index.
        :return: ``(total_tokens, cost)``; cost is ``None`` when no entry has a known cost.
        """
        table = self.usage_table
        where = self._where_scope(table, scope)
        tokens_query = sa.select(sa.func.coalesce(sa.func.sum(table.c.total_tokens), 0)).where(where)
        with self._engine.connect() as conn:
            tokens = int(conn.execute(tokens_query).scalar_one())
            if self._dialect == "sqlite":
                costs = list(
                    conn.execute(sa.select(table.c.cost).where(where, table.c.cost.is_not(None))).scalars()
                )
                cost: Decimal | None = sum(costs, Decimal(0)) if costs else None
            else:
                cost = conn.execute(sa.select(sa.func.sum(table.c.cost)).where(where)).scalar_one()
        return tokens, None if cost is None else Decimal(cost)

    def results(self, scope: RunScope | None = None) -> list[dict[str, Any]]:
        """Rows of the results table as dicts, ordered by ``row_key``.

        :param scope: only this scope's rows; every row when ``None``.
        """
        table = self.results_table
        query = sa.select(table).order_by(
            table.c.row_key, *(table.c[name] for name in (*SCOPE_COLUMNS, "map_index"))
        )
        return self._fetch(query if scope is None else query.where(self._where_scope(table, scope)))

    def iter_results(
        self, scope: RunScope, batch_size: int = 1000
    ) -> Generator[dict[str, Any], None, None]:
        """Stream ``scope``'s rows of the results table as dicts, ordered by ``row_key``.

        The streaming variant of :meth:`results`: rows are fetched ``batch_size`` at a time
        (``yield_per``: a server-side cursor on PostgreSQL and MySQL/MariaDB; SQLite reads lazily),
        so memory stays flat whatever the row count. Row keys sort by code point on every backend
        (``COLLATE "C"`` on PostgreSQL, a binary cast on MySQL/MariaDB), as Python sorts ``str``.
        A connection is held until the generator is exhausted or closed (``close()`` releases it).

        :param scope: the task's dag, task, run and map index.
        :param batch_size: rows fetched per round trip.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        table = self.results_table
        order: sa.ColumnElement[Any] = table.c.row_key
        if self._dialect == "postgresql":
            order = sa.collate(table.c.row_key, "C")
        elif self._dialect in MYSQL_DIALECTS:
            order = sa.cast(table.c.row_key, mysql.BINARY())
        query = sa.select(table).where(self._where_scope(table, scope)).order_by(order)
        with self._engine.connect() as conn:
            result = conn.execution_options(yield_per=batch_size).execute(query)
            try:
                for row in result.mappings():
                    yield dict(row)
            finally:
                result.close()  # an abandoned iterator ends its server-side cursor here

    def usage(self, scope: RunScope | None = None) -> list[dict[str, Any]]:
        """Rows of the usage ledger as dicts, ordered by ``created_at`` then ``response_id``.

        :param scope: only this scope's rows; every row when ``None``.
        """
        table = self.usage_table
        query = sa.select(table).order_by(table.c.created_at, table.c.response_id)
        return self._fetch(query if scope is None else query.where(self._where_scope(table, scope)))

    def spend_report(self) -> list[dict[str, Any]]:
        """Calls, tokens and cost per day, DAG, model and currency from the ledger, newest day first."""
        table = self.usage_table
        created: sa.ColumnElement[Any] = table.c.created_at
        if self._dialect == "postgresql":
            created = sa.func.timezone("UTC", created)
        day = sa.func.date(created).label("day")
        query = (
            sa.select(
                day, table.c.dag_id, table.c.model, table.c.currency,
                sa.func.count().label("calls"),
                sa.func.sum(table.c.prompt_tokens).label("prompt_tokens"),
                sa.func.sum(table.c.completion_tokens).label("completion_tokens"),
                sa.func.sum(table.c.total_tokens).label("total_tokens"),
                sa.func.sum(table.c.cost).label("cost"),
            )
            .group_by(day, table.c.dag_id, table.c.model, table.c.currency)
            .order_by(day.desc(), table.c.dag_id, table.c.model)
        )
        rows = self._fetch(query)
        for row in rows:
            row["day"] = str(row["day"])[:10]
            row["cost"] = None if row["cost"] is None else float(row["cost"])
            for name in ("calls", "prompt_tokens", "completion_tokens", "total_tokens"):
                row[name] = int(row[name] or 0)
        return rows

    def _fetch(self, query: sa.Select[Any]) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def dispose(self) -> None:
        """Close the engine's pooled connections."""
        self._engine.dispose()
