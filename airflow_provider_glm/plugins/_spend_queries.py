"""The spend page's numbers, aggregated in SQL over the usage ledger, results and runs tables.

Every query is a read-only ``SELECT`` that groups in the database (by day, DAG, task, model,
currency), so a ledger of millions of rows returns a few thousand grouped rows at most. Each one
filters on the period first (``created_at`` for the ledger, ``updated_at`` for results,
``started_at`` for runs), then on the DAGs the user may read, then on the optional DAG and model.

Costs are never added across currencies: every cost figure comes per currency (``""`` when the
ledger has no price for the model). Days are UTC calendar days. Every grouped expression is a plain
column or a function of one without bound parameters: with server-side binding (psycopg 3, which
Airflow's postgres provider uses) ``coalesce(x, $1)`` in the select list and ``coalesce(x, $2)`` in
``GROUP BY`` are different expressions to PostgreSQL.

Example::

    queries = SpendQueries(engine)
    period = SpendFilters.last_days(30, dag_ids={"nightly_summary"})
    queries.overview(period)["totals"]["calls"]
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from airflow_provider_glm.plugins._spend_rows import (
    TOKENS,
    SpendFilters,
    fold_overview,
    iso,
    merge_tasks,
    money,
    run_row,
)
from airflow_provider_glm.sinks.sql._tables import (
    results_table_def,
    runs_table_def,
    usage_table_def,
    validate_table_name,
)

__all__ = ["SpendFilters", "SpendQueries"]  # SpendFilters is re-exported from spend_rows

_PG_UTC = sa.text("SELECT set_config('TimeZone', 'UTC', true)")
"""Every read transaction on PostgreSQL counts days in UTC, so a plain ``::date`` cast gives the UTC day."""
_PG_HASH_GROUPS = sa.text(
    "SELECT set_config('TimeZone', 'UTC', true), set_config('enable_sort', 'off', true), "
    "set_config('work_mem', '64MB', true)"
)
"""For the per-day query: hash, do not sort, to group. The planner multiplies the distinct counts of
day, DAG, model and currency, expects about one group per row and sorts 300,000 rows on disk, where
a hash table of a few thousand groups takes half the time."""


class SpendQueries:
    """The aggregations behind the spend page, on one engine and three table names.

    :param engine: an engine on the database that holds the tables (only read).
    :param usage_table: the ledger, ``table`` or ``schema.table``.
    :param results_table: the results table.
    :param runs_table: the runs table.
    """

    def __init__(self, engine: Engine, usage_table: str = "glm_usage", results_table: str = "glm_results",
                 runs_table: str = "glm_runs") -> None:
        metadata = sa.MetaData()
        self._engine = engine
        self.usage = usage_table_def(metadata, *validate_table_name(usage_table))
        self.results = results_table_def(metadata, *validate_table_name(results_table))
        self.runs = runs_table_def(metadata, *validate_table_name(runs_table))

    # --- the page's sections --------------------------------------------------------------------

    def overview(self, f: SpendFilters) -> dict[str, Any]:
        """Totals, per-DAG and per-model sums, and the daily series, from the ledger grouped per day.

        The period is read as two concurrent halves, as in :meth:`page`.

        :return: ``{"totals", "by_dag", "by_model", "daily"}``; see docs/dashboard.md.
        """
        parts = self._concurrently(*(lambda part=part: self._fetch(self._ledger_sums(part, ()), hash_groups=True)
                                     for part in f.split(2)))
        return fold_overview([row for part in parts for row in part], f.stack)

    def _ledger_sums(self, f: SpendFilters, extra_keys: tuple[str, ...]) -> sa.Select[Any]:
        """The ledger grouped by UTC day, DAG, model, currency and ``extra_keys``, with every sum."""
        t = self.usage
        known = sa.case((t.c.billing == "known", 1), else_=0)
        unpriced = sa.case((sa.and_(t.c.billing == "known", t.c.cost.is_(None)), 1), else_=0)
        day = self._day(t.c.created_at)
        keys = [t.c.dag_id, *(t.c[key] for key in extra_keys), t.c.model, t.c.currency]
        return (
            sa.select(
                day.label("day"), *keys,
                sa.func.sum(known).label("calls"),
                sa.func.count().label("entries"),
                sa.func.sum(unpriced).label("unpriced_calls"),
                *(sa.func.sum(t.c[name]).label(name) for name in TOKENS),
                sa.func.sum(t.c.cost).label("cost"),
                sa.func.sum(t.c.unknown_billing_attempts).label("possibly_billed_attempts"),
                sa.func.sum(t.c.unknown_tokens_max).label("possibly_billed_tokens_max"),
                sa.func.sum(t.c.unknown_cost_max).label("possibly_billed_cost_max"),
                sa.func.min(t.c.created_at).label("first_call"),
                sa.func.max(t.c.created_at).label("last_call"),
            )
            .where(*self._ledger_where(f))
            .group_by(day, *keys)
        )

    def tasks(self, f: SpendFilters) -> list[dict[str, Any]]:
        """Per DAG and task: result rows by outcome (results table) and spend (ledger).

        ``rows`` counts result rows written in the period; ``reused`` those whose answer came from an
        earlier run at no cost; ``cost_per_1000_rows`` is the ledger cost over ``rows``, per currency.
        """
        outcomes, spend = self._concurrently(lambda: self._fetch(self._task_outcomes(f)),
                                             lambda: self._fetch(self._task_spend(f)))
        return merge_tasks(outcomes, spend)

    def page(self, f: SpendFilters) -> dict[str, Any]:
        """Everything the page shows, from one scan of the ledger's period and one of the results'.

        The ledger is grouped by day, DAG, task, run, model and currency once, and the overview, the
        per-task spend and the expensive runs are summed from those groups (a few per task run). The
        ledger is read as two half-periods split at a day boundary (days are grouping keys, so the
        halves' groups never overlap), concurrently with the results and runs queries, each on its
        own connection: the database can use a core for each.

        :return: ``{"overview", "tasks", "runs", "budgets"}``, as the methods of the same names return.
        """
        halves = f.split(2)
        *parts, outcomes, budgets = self._concurrently(
            *(lambda part=part: self._fetch(self._ledger_sums(part, ("task_id", "run_id")), hash_groups=True)
              for part in halves),
            lambda: self._fetch(self._task_outcomes(f)), lambda: self.budgets(f))
        grains = [row for part in parts for row in part]
        spend: dict[tuple[str, str, str], dict[str, Any]] = {}
        runs: dict[tuple[str, str, str], dict[str, Any]] = {}
        for row in grains:
            task = spend.setdefault((row["dag_id"], row["task_id"], row["currency"]), {
                "dag_id": row["dag_id"], "task_id": row["task_id"], "currency": row["currency"],
                "entries": 0, "total_tokens": 0, "cost": None})
            run = runs.setdefault((row["dag_id"], row["run_id"], row["currency"]), {
                "dag_id": row["dag_id"], "run_id": row["run_id"], "currency": row["currency"], "entries": 0,
                "total_tokens": 0, "cost": None, "first_call": row["first_call"], "last_call": row["last_call"]})
            for item in (task, run):
                item["entries"] += int(row["entries"])
                item["total_tokens"] += int(row["total_tokens"] or 0)
                if row["cost"] is not None:
                    item["cost"] = (item["cost"] or Decimal(0)) + Decimal(row["cost"])
            run["first_call"] = min(run["first_call"], row["first_call"])
            run["last_call"] = max(run["last_call"], row["last_call"])
        top = sorted(runs.values(), key=lambda r: (-(r["cost"] or 0), r["dag_id"], r["run_id"], r["currency"]))
        return {"overview": fold_overview(grains, f.stack), "tasks": merge_tasks(outcomes, list(spend.values())),
                "runs": [run_row(r) for r in top[:f.limit]], "budgets": budgets}

    def _task_outcomes(self, f: SpendFilters) -> sa.Select[Any]:
        r = self.results
        reused = sa.case((r.c.reused_from_run_id.is_not(None), 1), else_=0)
        return (
            sa.select(r.c.dag_id, r.c.task_id, r.c.status, sa.func.count().label("n"),
                      sa.func.sum(reused).label("reused"))
            .where(*self._results_where(f))
            .group_by(r.c.dag_id, r.c.task_id, r.c.status)
        )

    def _task_spend(self, f: SpendFilters) -> sa.Select[Any]:
        u = self.usage
        return (
            sa.select(u.c.dag_id, u.c.task_id, u.c.currency, sa.func.count().label("entries"),
                      sa.func.sum(u.c.total_tokens).label("total_tokens"), sa.func.sum(u.c.cost).label("cost"))
            .where(*self._ledger_where(f))
            .group_by(u.c.dag_id, u.c.task_id, u.c.currency)
        )

    @staticmethod
    def _concurrently(*calls: Callable[[], Any]) -> list[Any]:
        """Run each call in its own thread (each query takes its own pooled connection)."""
        with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="glm-spend") as pool:
            return [future.result() for future in [pool.submit(call) for call in calls]]

    def expensive_runs(self, f: SpendFilters) -> list[dict[str, Any]]:
        """The DAG runs that cost the most in the period, most expensive first (per currency)."""
        u = self.usage
        cost = sa.func.sum(u.c.cost)
        query = (
            sa.select(u.c.dag_id, u.c.run_id, u.c.currency, sa.func.count().label("entries"),
                      sa.func.sum(u.c.total_tokens).label("total_tokens"),
                      cost.label("cost"), sa.func.min(u.c.created_at).label("first_call"),
                      sa.func.max(u.c.created_at).label("last_call"))
            .where(*self._ledger_where(f))
            .group_by(u.c.dag_id, u.c.run_id, u.c.currency)
            .order_by(sa.func.coalesce(cost, 0).desc(), u.c.dag_id, u.c.run_id)
            .limit(f.limit)
        )
        return [run_row(row) for row in self._fetch(query)]

    def budgets(self, f: SpendFilters) -> list[dict[str, Any]]:
        """Task tries that set ``max_cost`` (runs table), the most burnt budget first."""
        r = self.runs
        burn = r.c.cost / sa.func.nullif(r.c.max_cost, 0)
        where = [r.c.max_cost.is_not(None), r.c.started_at >= f.start, r.c.started_at < f.end,
                 *self._scope_where(r, f)]
        query = (
            sa.select(r.c.dag_id, r.c.task_id, r.c.run_id, r.c.map_index, r.c.try_number, r.c.model, r.c.cost,
                      r.c.max_cost, r.c.currency, r.c.total_tokens, r.c.max_total_tokens, r.c.stop_kind, r.c.state,
                      r.c.started_at)
            .where(*where)
            .order_by(sa.func.coalesce(burn, 0).desc(), r.c.started_at.desc())
            .limit(f.limit)
        )
        out = []
        for row in self._fetch(query):
            cost = None if row["cost"] is None else money(row["cost"])
            max_cost = money(row["max_cost"])
            out.append({
                **{k: row[k] for k in ("dag_id", "task_id", "run_id", "map_index", "try_number", "model",
                                       "currency", "stop_kind", "state")},
                "cost": cost, "max_cost": max_cost,
                "burn": None if cost is None or not max_cost else round(cost / max_cost, 6),
                "total_tokens": int(row["total_tokens"] or 0), "max_total_tokens": row["max_total_tokens"],
                "started_at": iso(row["started_at"]),
            })
        return out

    # --- the WHERE clauses ----------------------------------------------------------------------

    def _ledger_where(self, f: SpendFilters) -> list[sa.ColumnElement[bool]]:
        t = self.usage
        where = [t.c.created_at >= f.start, t.c.created_at < f.end, *self._scope_where(t, f)]
        return where

    def _results_where(self, f: SpendFilters) -> list[sa.ColumnElement[bool]]:
        r = self.results
        return [r.c.updated_at >= f.start, r.c.updated_at < f.end, *self._scope_where(r, f)]

    @staticmethod
    def _scope_where(table: sa.Table, f: SpendFilters) -> list[sa.ColumnElement[bool]]:
        where: list[sa.ColumnElement[bool]] = []
        if f.dag_ids is not None:
            where.append(table.c.dag_id.in_(sorted(f.dag_ids)) if f.dag_ids else sa.false())
        if f.dag_id is not None:
            where.append(table.c.dag_id == f.dag_id)
        if f.model is not None:
            where.append(table.c.model == f.model)
        return where

    def _day(self, column: sa.Column[Any]) -> sa.ColumnElement[Any]:
        """The UTC calendar day of a timestamp, in the dialect's own terms."""
        if self._engine.dialect.name == "postgresql":
            # A plain cast: _fetch sets the transaction's time zone to UTC. Twice as fast as
            # date(timezone('UTC', x)) on a 300,000-row period.
            return sa.cast(column, sa.Date)
        return sa.func.date(column)

    def _fetch(self, query: sa.Select[Any], *, hash_groups: bool = False) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(postgresql_readonly=True)
                conn.execute(_PG_HASH_GROUPS if hash_groups else _PG_UTC)
            rows = [dict(row) for row in conn.execute(query).mappings()]
            conn.rollback()
        for row in rows:
            if "currency" in row:
                row["currency"] = row["currency"] or ""
        return rows
