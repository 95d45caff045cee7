"""What the SQL sink reads back: rows to resume or reuse, spend so far, the tables for tests, exports and reports.

:class:`SinkReads` is the reading half of :class:`~airflow_provider_glm.sinks.sql.SQLSink`. Every
lookup that runs per chunk of rows goes through an index: the results table's primary key
(``result_key``) for this run's rows, its ``fingerprint`` index for earlier runs' answers.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from airflow_provider_glm.sinks.sql._tables import MYSQL_DIALECTS, SCOPE_COLUMNS, result_key

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from airflow_provider_glm.rows._records import RunScope

__all__ = ["SinkReads"]

_LOOKUP_CHUNK = 500


class SinkReads:
    """Queries over the sink's tables (mixed into ``SQLSink``)."""

    _engine: Engine
    _dialect: str
    results_table: sa.Table
    usage_table: sa.Table
    runs_table: sa.Table

    @staticmethod
    def _where_scope(table: sa.Table, scope: RunScope) -> sa.ColumnElement[bool]:
        return sa.and_(
            table.c.dag_id == scope.dag_id,
            table.c.task_id == scope.task_id,
            table.c.run_id == scope.run_id,
            table.c.map_index == scope.map_index,
        )

    def this_run(self, scope: RunScope, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """This task instance's stored results for ``keys`` (any status, any try), by row key.

        :param scope: the task instance.
        :param keys: row keys (looked up by primary key, a few hundred at a time).
        """
        table = self.results_table
        found: dict[str, dict[str, Any]] = {}
        ids = [result_key(scope, key) for key in keys]
        with self._engine.connect() as conn:
            for start in range(0, len(ids), _LOOKUP_CHUNK):
                query = sa.select(table).where(table.c.result_key.in_(ids[start : start + _LOOKUP_CHUNK]))
                found.update((row["row_key"], dict(row)) for row in conn.execute(query).mappings())
        return found

    def earlier_answers(self, scope: RunScope, fingerprints: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """``ok`` results of other runs of the same DAG and task whose row key and fingerprint both match.

        :param scope: the task instance asking (its own run is excluded).
        :param fingerprints: row key -> fingerprint of the request this run would send.
        :return: row key -> the newest matching stored result.
        """
        table = self.results_table
        wanted = {(key, fp) for key, fp in fingerprints.items()}
        prints = sorted({fp for fp in fingerprints.values()})
        found: dict[str, dict[str, Any]] = {}
        with self._engine.connect() as conn:
            for start in range(0, len(prints), _LOOKUP_CHUNK):
                query = sa.select(table).where(
                    table.c.fingerprint.in_(prints[start : start + _LOOKUP_CHUNK]),
                    table.c.dag_id == scope.dag_id, table.c.task_id == scope.task_id,
                    table.c.status == "ok", table.c.run_id != scope.run_id,
                )
                for row in conn.execute(query).mappings():
                    key = row["row_key"]
                    if (key, row["fingerprint"]) in wanted and (
                            key not in found or row["updated_at"] > found[key]["updated_at"]):
                        found[key] = dict(row)
        return found

    def spent(self, scope: RunScope) -> dict[str, Any]:
        """The ledger's sums for ``scope`` over every try: calls (known), tokens, cost, possibly billed.

        :return: ``calls``, ``total_tokens``, ``cost``, ``unknown_billing_attempts``, ``unknown_tokens_max``,
            ``unknown_cost_max``, ``currency`` (``None`` when mixed or none); costs ``None`` when unknown.
        """
        table = self.usage_table
        where = self._where_scope(table, scope)
        c = table.c
        query = sa.select(
            sa.func.coalesce(sa.func.sum(sa.case((c.billing == "known", 1), else_=0)), 0).label("calls"),
            sa.func.coalesce(sa.func.sum(c.total_tokens), 0).label("total_tokens"),
            sa.func.coalesce(sa.func.sum(c.unknown_billing_attempts), 0).label("unknown_billing_attempts"),
            sa.func.coalesce(sa.func.sum(c.unknown_tokens_max), 0).label("unknown_tokens_max"),
            sa.func.count(sa.distinct(c.currency)).label("currencies"),
            sa.func.max(c.currency).label("currency"),
        ).where(where)
        with self._engine.connect() as conn:
            sums = dict(conn.execute(query).mappings().one())
            for name in ("cost", "unknown_cost_max"):
                values = list(conn.execute(sa.select(c[name]).where(where, c[name].is_not(None))).scalars())
                sums[name] = sum((Decimal(v) for v in values), Decimal(0)) if values else None
        if sums.pop("currencies") > 1:
            sums["currency"] = None
        return sums

    def results(self, scope: RunScope | None = None) -> list[dict[str, Any]]:
        """Rows of the results table as dicts, ordered by ``row_key``.

        :param scope: only this scope's rows; every row when ``None``.
        """
        table = self.results_table
        query = sa.select(table).order_by(table.c.row_key, *(table.c[name] for name in (*SCOPE_COLUMNS, "map_index")))
        return self._fetch(query if scope is None else query.where(self._where_scope(table, scope)))

    def iter_results(self, scope: RunScope, batch_size: int = 1000) -> Generator[dict[str, Any], None, None]:
        """Stream ``scope``'s rows of the results table as dicts, ordered by ``row_key``.

        Rows are fetched ``batch_size`` at a time (``yield_per``: a server-side cursor on PostgreSQL
        and MySQL/MariaDB; SQLite reads lazily), so memory stays flat whatever the row count. Row keys
        sort by code point on every backend (``COLLATE "C"`` on PostgreSQL, a binary cast on
        MySQL/MariaDB), as Python sorts ``str``. A connection is held until the generator is exhausted
        or closed.
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
        """Rows of the usage ledger as dicts, ordered by ``created_at`` then ``response_id``."""
        table = self.usage_table
        query = sa.select(table).order_by(table.c.created_at, table.c.response_id)
        return self._fetch(query if scope is None else query.where(self._where_scope(table, scope)))

    def runs(self, scope: RunScope | None = None) -> list[dict[str, Any]]:
        """Rows of the runs table as dicts, ordered by ``started_at``."""
        table = self.runs_table
        query = sa.select(table).order_by(table.c.started_at, table.c.try_number)
        return self._fetch(query if scope is None else query.where(self._where_scope(table, scope)))

    def spend_report(self) -> list[dict[str, Any]]:
        """Calls, tokens and cost per day, DAG, model and currency, with what may have been billed besides."""
        table = self.usage_table
        created: sa.ColumnElement[Any] = table.c.created_at
        if self._dialect == "postgresql":
            created = sa.func.timezone("UTC", created)
        day = sa.func.date(created).label("day")
        known = sa.case((table.c.billing == "known", 1), else_=0)
        query = (
            sa.select(
                day, table.c.dag_id, table.c.model, table.c.currency,
                sa.func.sum(known).label("calls"),
                sa.func.sum(table.c.prompt_tokens).label("prompt_tokens"),
                sa.func.sum(table.c.completion_tokens).label("completion_tokens"),
                sa.func.sum(table.c.total_tokens).label("total_tokens"),
                sa.func.sum(table.c.cost).label("cost"),
                sa.func.sum(table.c.unknown_billing_attempts).label("possibly_billed_attempts"),
                sa.func.sum(table.c.unknown_tokens_max).label("unknown_tokens_max"),
                sa.func.sum(table.c.unknown_cost_max).label("unknown_cost_max"),
            )
            .group_by(day, table.c.dag_id, table.c.model, table.c.currency)
            .order_by(day.desc(), table.c.dag_id, table.c.model)
        )
        rows = self._fetch(query)
        for row in rows:
            row["day"] = str(row["day"])[:10]
            for name in ("cost", "unknown_cost_max"):
                row[name] = None if row[name] is None else float(row[name])
            for name in ("calls", "prompt_tokens", "completion_tokens", "total_tokens", "possibly_billed_attempts",
                         "unknown_tokens_max"):
                row[name] = int(row[name] or 0)
        return rows

    def _fetch(self, query: sa.Select[Any]) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]
