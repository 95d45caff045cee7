"""The spend page's numbers, aggregated in SQL over the usage ledger, results and runs tables.

Every query is a read-only ``SELECT`` whose answer is bounded by the shape of the deployment, not by
how many calls or runs the period holds. The ledger is read once per view: one statement groups the
period by UTC day, DAG, task, run, model and currency in the database and returns those groups summed
up to day, DAG, task, model and currency (never per run), followed by the ``limit`` most expensive
runs (``ORDER BY ... LIMIT`` in SQL). Outcomes are grouped by DAG, task and status, and the budget
list is limited in SQL. Each query filters on
the period first (``created_at`` for the ledger, ``updated_at`` for results, ``started_at`` for
runs, at most 366 days), then on the DAGs the user may read, then on the optional DAG and model.

A view runs its queries on at most two connections at once; with a :class:`QueryGate`, at most
``gate.slots`` spend queries run at once in the process over all views, and with an
:class:`AnswerCache` each answer is computed once per key while it is fresh (the key holds the
tables, the period, the filters and the readable DAGs, so users never share an answer they could not
compute themselves).

Costs are never added across currencies: every cost figure comes per currency (``""`` when the
ledger has no price for the model). Days are UTC calendar days. Every grouped expression is a plain
column or a function of one without bound parameters: with server-side binding (psycopg 3, which
Airflow's postgres provider uses) ``coalesce(x, $1)`` in the select list and ``coalesce(x, $2)`` in
``GROUP BY`` are different expressions to PostgreSQL.

Example::

    queries = SpendQueries(engine, cache=AnswerCache(), gate=QueryGate())
    period = SpendFilters.last_days(30, dag_ids={"nightly_summary"})
    queries.overview(period)["totals"]["calls"]
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from airflow_provider_glm.plugins._spend_cache import AnswerCache, QueryGate
from airflow_provider_glm.plugins._spend_rows import (
    TOKENS,
    SpendFilters,
    fold_ledger,
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

T = TypeVar("T")

_PG_READ = sa.text("SELECT set_config('TimeZone', 'UTC', true), set_config('jit', 'off', true), "
                   "set_config('max_parallel_workers_per_gather', '0', true)")
"""Every read transaction on PostgreSQL counts days in UTC (so a plain ``::date`` cast gives the UTC
day), skips JIT compilation, which costs more than these short aggregations gain from it, and starts
no parallel workers: a view's two connections are its two database processes, whatever the server
allows one query."""
_PG_HASH_GROUPS = sa.text(
    "SELECT set_config('TimeZone', 'UTC', true), set_config('jit', 'off', true), "
    "set_config('max_parallel_workers_per_gather', '0', true), set_config('enable_sort', 'off', true)"
)
"""For the ledger's statement: hash, do not sort, to group. The planner multiplies the distinct
counts of day, DAG, task, run, model and currency, expects about one group per row and would sort
the period on disk, where a hash table of the groups takes half the time (only the top runs' short
list is still sorted). ``work_mem`` stays the server's: a hash table that outgrows it spills to disk
rather than taking more memory."""


class SpendQueries:
    """The aggregations behind the spend page, on one engine and three table names.

    :param engine: an engine on the database that holds the tables (only read).
    :param usage_table: the ledger, ``table`` or ``schema.table``.
    :param results_table: the results table.
    :param runs_table: the runs table.
    :param cache: where answers are kept between requests; default none kept.
    :param gate: the limit on queries at once shared by every view; default no limit.
    """

    def __init__(self, engine: Engine, usage_table: str = "glm_usage", results_table: str = "glm_results",
                 runs_table: str = "glm_runs", *, cache: AnswerCache | None = None,
                 gate: QueryGate | None = None) -> None:
        metadata = sa.MetaData()
        self._engine = engine
        self.usage = usage_table_def(metadata, *validate_table_name(usage_table))
        self.results = results_table_def(metadata, *validate_table_name(results_table))
        self.runs = runs_table_def(metadata, *validate_table_name(runs_table))
        self._cache = cache or AnswerCache(ttl=0)
        self._gate = gate
        self._scope = (engine.url.render_as_string(hide_password=True),
                       *(t.fullname for t in (self.usage, self.results, self.runs)))

    # --- the page's sections --------------------------------------------------------------------

    def overview(self, f: SpendFilters) -> dict[str, Any]:
        """Totals, per-DAG and per-model sums, and the daily series (split by ``f.stack``).

        :return: ``{"totals", "by_dag", "by_model", "daily"}``; see docs/dashboard.md.
        """
        sums = self._ledger(f)["sums"]
        return {"totals": sums["totals"], "by_dag": sums["by_dag"], "by_model": sums["by_model"],
                "daily": sums["daily"][f.stack]}

    def expensive_runs(self, f: SpendFilters) -> list[dict[str, Any]]:
        """The ``f.limit`` DAG runs that cost the most in the period, most expensive first (per currency),
        ranked and cut by the database in the ledger's statement."""
        return list(self._ledger(f)["runs"])

    def tasks(self, f: SpendFilters) -> list[dict[str, Any]]:
        """Per DAG and task: result rows by outcome (results table) and spend (ledger).

        ``rows`` counts result rows written in the period; ``reused`` those whose answer came from an
        earlier run at no cost; ``cost_per_1000_rows`` is the ledger cost over ``rows``, per currency.
        """
        ledger, outcomes = self._concurrently(lambda: self._ledger(f), lambda: self._outcomes(f))
        return merge_tasks(outcomes, ledger["sums"]["task_spend"])

    def page(self, f: SpendFilters) -> dict[str, Any]:
        """Everything the page shows, on two connections at most: the ledger's statement (sums and top
        runs) on one; the outcomes and then the budgets on the other.

        :return: ``{"overview", "tasks", "runs", "budgets"}``, as the methods of the same names return.
        """
        ledger, (outcomes, budgets) = self._concurrently(
            lambda: self._ledger(f), lambda: (self._outcomes(f), self.budgets(f)))
        sums = ledger["sums"]
        overview = {"totals": sums["totals"], "by_dag": sums["by_dag"], "by_model": sums["by_model"],
                    "daily": sums["daily"][f.stack]}
        return {"overview": overview, "tasks": merge_tasks(outcomes, sums["task_spend"]),
                "runs": list(ledger["runs"]), "budgets": budgets}

    def _ledger(self, f: SpendFilters) -> dict[str, Any]:
        """``{"sums": fold_ledger(groups), "runs": [the f.limit most expensive runs]}`` (cached)."""
        def compute() -> dict[str, Any]:
            rows = self._fetch(self._ledger_query(f), hash_groups=True)
            return {"sums": fold_ledger([r for r in rows if r["kind"] == 0]),
                    "runs": [run_row(r) for r in rows if r["kind"] == 1]}

        return self._answer("ledger", f, compute)

    def _outcomes(self, f: SpendFilters) -> list[dict[str, Any]]:
        """Result rows of the period by DAG, task and status (cached)."""
        return self._answer("outcomes", f, lambda: self._fetch(self._task_outcomes(f)))

    def _answer(self, piece: str, f: SpendFilters, compute: Callable[[], T]) -> T:
        """``compute()``, or its answer from the cache, keyed by everything the piece's SQL reads."""
        limit = f.limit if piece in ("ledger", "budgets") else None
        key: Hashable = (self._scope, piece, f.start, f.end, f.dag_ids, f.dag_id, f.model, limit)
        return self._cache.get(key, compute)

    def _ledger_query(self, f: SpendFilters) -> sa.CompoundSelect[Any]:
        """One scan of the ledger's period: its groups per day, DAG, task, model and currency (``kind`` 0),
        then the ``f.limit`` most expensive runs (``kind`` 1), from groups per day, DAG, task, run, model
        and currency that stay in the database."""
        t = self.usage
        known = sa.case((t.c.billing == "known", 1), else_=0)
        unpriced = sa.case((sa.and_(t.c.billing == "known", t.c.cost.is_(None)), 1), else_=0)
        day = self._day(t.c.created_at)
        keys = [t.c.dag_id, t.c.task_id, t.c.run_id, t.c.model, t.c.currency]
        sums = {"calls": sa.func.sum(known), "entries": sa.func.count(), "unpriced_calls": sa.func.sum(unpriced),
                **{name: sa.func.sum(t.c[name]) for name in TOKENS}, "cost": sa.func.sum(t.c.cost),
                "possibly_billed_attempts": sa.func.sum(t.c.unknown_billing_attempts),
                "possibly_billed_tokens_max": sa.func.sum(t.c.unknown_tokens_max),
                "possibly_billed_cost_max": sa.func.sum(t.c.unknown_cost_max)}
        g = (
            sa.select(day.label("day"), *keys, *(value.label(name) for name, value in sums.items()),
                      sa.func.min(t.c.created_at).label("first_call"), sa.func.max(t.c.created_at).label("last_call"))
            .where(*self._ledger_where(f))
            .group_by(day, *keys)
            .cte("glm_spend_groups")
        )
        totals = [sa.func.sum(g.c[name]).label(name) for name in sums]
        # Typed NULLs: PostgreSQL reads an untyped NULL in the runs' subquery as text, which no date unites with.
        none = {name: sa.cast(sa.null(), g.c[name].type) for name in ("day", "task_id", "run_id", "model")}
        no_run, no_time = none["run_id"], sa.cast(sa.null(), t.c.created_at.type)
        per_day = (
            sa.select(sa.literal_column("0").label("kind"), g.c.day, g.c.dag_id, g.c.task_id, no_run.label("run_id"),
                      g.c.model, g.c.currency, *totals, no_time.label("first_call"), no_time.label("last_call"))
            .group_by(g.c.day, g.c.dag_id, g.c.task_id, g.c.model, g.c.currency)
        )
        cost = sa.func.sum(g.c.cost)
        top_runs = (
            sa.select(sa.literal_column("1").label("kind"), none["day"].label("day"), g.c.dag_id,
                      none["task_id"].label("task_id"), g.c.run_id, none["model"].label("model"), g.c.currency, *totals,
                      sa.func.min(g.c.first_call).label("first_call"), sa.func.max(g.c.last_call).label("last_call"))
            .group_by(g.c.dag_id, g.c.run_id, g.c.currency)
            .order_by(sa.func.coalesce(cost, 0).desc(), g.c.dag_id, g.c.run_id)
            .limit(f.limit)
            .subquery("glm_spend_top_runs")
        )
        return sa.union_all(per_day, sa.select(top_runs))

    def _task_outcomes(self, f: SpendFilters) -> sa.Select[Any]:
        r = self.results
        reused = sa.case((r.c.reused_from_run_id.is_not(None), 1), else_=0)
        return (
            sa.select(r.c.dag_id, r.c.task_id, r.c.status, sa.func.count().label("n"),
                      sa.func.sum(reused).label("reused"))
            .where(*self._results_where(f))
            .group_by(r.c.dag_id, r.c.task_id, r.c.status)
        )

    @staticmethod
    def _concurrently(*calls: Callable[[], Any]) -> list[Any]:
        """Run each call in its own thread (each takes its own pooled connection); at most two calls."""
        with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="glm-spend") as pool:
            return [future.result() for future in [pool.submit(call) for call in calls]]

    def budgets(self, f: SpendFilters) -> list[dict[str, Any]]:
        """The ``f.limit`` task tries that set ``max_cost`` (runs table), the most burnt budget first (cached)."""
        return self._answer("budgets", f, lambda: self._budget_rows(f))

    def _budget_rows(self, f: SpendFilters) -> list[dict[str, Any]]:
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
        return sa.func.date(column, type_=sa.String)

    def _fetch(self, query: sa.Select[Any] | sa.CompoundSelect[Any], *,
               hash_groups: bool = False) -> list[dict[str, Any]]:
        """The rows of one query, in a transaction of its own that only reads, holding a gate slot."""
        with self._gate.slot() if self._gate is not None else nullcontext(), self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(postgresql_readonly=True)
                conn.execute(_PG_HASH_GROUPS if hash_groups else _PG_READ)
            rows = [dict(row) for row in conn.execute(query).mappings()]
            conn.rollback()
        for row in rows:
            if "currency" in row:
                row["currency"] = row["currency"] or ""
        return rows
