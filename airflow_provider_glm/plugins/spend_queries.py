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

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from airflow_provider_glm.sinks.sql_tables import (
    results_table_def,
    runs_table_def,
    usage_table_def,
    validate_table_name,
)

__all__ = ["SpendFilters", "SpendQueries"]

_TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens")
_RESULT_STATUSES = ("ok", "failed", "filtered", "skipped")
_PG_UTC = sa.text("SELECT set_config('TimeZone', 'UTC', true)")
"""Every read transaction on PostgreSQL counts days in UTC, so a plain ``::date`` cast gives the UTC day."""
_PG_HASH_GROUPS = sa.text(
    "SELECT set_config('TimeZone', 'UTC', true), set_config('enable_sort', 'off', true), "
    "set_config('work_mem', '64MB', true)"
)
"""For the per-day query: hash, do not sort, to group. The planner multiplies the distinct counts of
day, DAG, model and currency, expects about one group per row and sorts 300,000 rows on disk, where
a hash table of a few thousand groups takes half the time."""


@dataclass(frozen=True)
class SpendFilters:
    """What to aggregate: a period and the DAGs and model to include."""

    start: dt.datetime
    """Start of the period, inclusive (timezone-aware)."""
    end: dt.datetime
    """End of the period, exclusive (timezone-aware)."""
    dag_ids: frozenset[str] | None = None
    """The DAGs the user may read; ``None`` means no restriction (only for trusted callers)."""
    dag_id: str | None = None
    """Only this DAG."""
    model: str | None = None
    """Only this model."""
    stack: str = "model"
    """What the daily series is split by: ``model`` or ``dag``."""
    limit: int = field(default=10)
    """Rows of the most-expensive-runs and budget lists."""

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware datetimes")
        if self.end <= self.start:
            raise ValueError(f"the period is empty: end {self.end.isoformat()} is not after start "
                             f"{self.start.isoformat()}")
        if self.stack not in ("model", "dag"):
            raise ValueError(f"stack must be 'model' or 'dag', got {self.stack!r}")

    @classmethod
    def last_days(cls, days: int, *, now: dt.datetime | None = None, **kwargs: Any) -> SpendFilters:
        """The last ``days`` UTC calendar days, today included.

        :param days: how many days, at least 1.
        :param now: the current time (for tests); default now.
        """
        if days < 1:
            raise ValueError(f"days must be at least 1, got {days}")
        today = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(hour=0, minute=0, second=0,
                                                                              microsecond=0)
        return cls(start=today - dt.timedelta(days=days - 1), end=today + dt.timedelta(days=1), **kwargs)

    def split(self, parts: int) -> list[SpendFilters]:
        """The period cut into up to ``parts`` consecutive pieces at UTC midnights (fewer for short periods)."""
        days = self.days()
        size = -(-len(days) // max(1, min(parts, len(days))))
        cuts = [dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC) for day in days[size::size]]
        bounds = [self.start, *cuts, self.end]
        return [dataclasses.replace(self, start=a, end=b) for a, b in zip(bounds, bounds[1:], strict=False)]

    def days(self) -> list[str]:
        """Every UTC day of the period, ``YYYY-MM-DD``, oldest first."""
        day = self.start.astimezone(dt.UTC).date()
        last = (self.end.astimezone(dt.UTC) - dt.timedelta(microseconds=1)).date()
        out = []
        while day <= last:
            out.append(day.isoformat())
            day += dt.timedelta(days=1)
        return out


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
        return _fold_overview([row for part in parts for row in part], f.stack)

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
                *(sa.func.sum(t.c[name]).label(name) for name in _TOKENS),
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
        return _merge_tasks(outcomes, spend)

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
        return {"overview": _fold_overview(grains, f.stack), "tasks": _merge_tasks(outcomes, list(spend.values())),
                "runs": [_run_row(r) for r in top[:f.limit]], "budgets": budgets}

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
        return [_run_row(row) for row in self._fetch(query)]

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
            cost = None if row["cost"] is None else _money(row["cost"])
            max_cost = _money(row["max_cost"])
            out.append({
                **{k: row[k] for k in ("dag_id", "task_id", "run_id", "map_index", "try_number", "model",
                                       "currency", "stop_kind", "state")},
                "cost": cost, "max_cost": max_cost,
                "burn": None if cost is None or not max_cost else round(cost / max_cost, 6),
                "total_tokens": int(row["total_tokens"] or 0), "max_total_tokens": row["max_total_tokens"],
                "started_at": _iso(row["started_at"]),
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


def _fold_overview(rows: list[dict[str, Any]], stack: str) -> dict[str, Any]:
    """Totals, per-DAG, per-model and per-day sums from ledger rows grouped at least by day, DAG and model."""
    counters = ("calls", "entries", "unpriced_calls", *_TOKENS, "possibly_billed_attempts",
                "possibly_billed_tokens_max")
    money = ("cost", "possibly_billed_cost_max")
    daily_counters = (counters.index("calls"), counters.index("total_tokens"))
    totals = _Sums(counters, money)
    by_dag: dict[str, _Sums] = {}
    by_model: dict[str, _Sums] = {}
    daily: dict[tuple[str, str, str], _Sums] = {}
    for row in rows:
        values = [int(row[name] or 0) for name in counters]
        amounts = [None if row[name] is None else Decimal(row[name]) for name in money]
        currency = row["currency"]
        totals.add(values, amounts, currency)
        for table, key in ((by_dag, row["dag_id"]), (by_model, row["model"])):
            if key not in table:
                table[key] = _Sums(counters, money)
            table[key].add(values, amounts, currency)
        day_key = (str(row["day"])[:10], row["model"] if stack == "model" else row["dag_id"], currency)
        if day_key not in daily:
            daily[day_key] = _Sums(("calls", "total_tokens"), ("cost",))
        daily[day_key].add([values[i] for i in daily_counters], amounts[:1], currency)
    return {
        "totals": totals.as_dict(),
        "by_dag": [{"dag_id": k, **v.as_dict()} for k, v in sorted(by_dag.items())],
        "by_model": [{"model": k, **v.as_dict()} for k, v in sorted(by_model.items())],
        "daily": [{"day": d, "key": k, "currency": c, **v.as_dict()} for (d, k, c), v in sorted(daily.items())],
    }


def _run_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "dag_id": row["dag_id"], "run_id": row["run_id"], "currency": row["currency"],
        "entries": int(row["entries"]), "total_tokens": int(row["total_tokens"] or 0),
        "cost": None if row["cost"] is None else _money(row["cost"]),
        "first_call": _iso(row["first_call"]), "last_call": _iso(row["last_call"]),
    }


def _merge_tasks(outcomes: list[dict[str, Any]], spend: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per DAG and task from the results counts and the ledger sums, the costliest first."""
    table: dict[tuple[str, str], dict[str, Any]] = {}

    def entry(dag_id: str, task_id: str) -> dict[str, Any]:
        return table.setdefault((dag_id, task_id), {
            "dag_id": dag_id, "task_id": task_id, "rows": 0, **dict.fromkeys(_RESULT_STATUSES, 0),
            "other": 0, "reused": 0, "entries": 0, "total_tokens": 0, "cost": {}, "cost_per_1000_rows": {},
        })

    for row in outcomes:
        item = entry(row["dag_id"], row["task_id"])
        item["rows"] += int(row["n"])
        item[row["status"] if row["status"] in _RESULT_STATUSES else "other"] += int(row["n"])
        item["reused"] += int(row["reused"] or 0)
    for row in spend:
        item = entry(row["dag_id"], row["task_id"])
        item["entries"] += int(row["entries"])
        item["total_tokens"] += int(row["total_tokens"] or 0)
        if row["cost"] is not None:
            item["cost"][row["currency"]] = _money(row["cost"])
    for item in table.values():
        item["cost"] = dict(sorted(item["cost"].items()))
        if item["rows"]:
            item["cost_per_1000_rows"] = {c: round(v * 1000 / item["rows"], 10) for c, v in item["cost"].items()}
    return sorted(table.values(), key=lambda i: (-max(i["cost"].values(), default=0.0), i["dag_id"], i["task_id"]))


class _Sums:
    """Running sums of counters (ints) and of money per currency (decimals), in a fixed order."""

    def __init__(self, counters: Sequence[str], money: Sequence[str]) -> None:
        self.counters = tuple(counters)
        self.values = [0] * len(self.counters)
        self.money = tuple(money)
        self.amounts: list[dict[str, Decimal]] = [{} for _ in self.money]

    def add(self, values: Sequence[int], amounts: Sequence[Decimal | None], currency: str) -> None:
        """Add one group's counters and amounts, given in the order of the names."""
        self.values = [a + b for a, b in zip(self.values, values, strict=True)]
        for per_currency, amount in zip(self.amounts, amounts, strict=True):
            if amount is not None:
                per_currency[currency] = per_currency.get(currency, Decimal(0)) + amount

    def as_dict(self) -> dict[str, Any]:
        return {**dict(zip(self.counters, self.values, strict=True)),
                **{name: {c: _money(v) for c, v in sorted(per.items())}
                   for name, per in zip(self.money, self.amounts, strict=True)}}


def _money(value: Any) -> float:
    return round(float(value), 10)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return str(value.astimezone(dt.UTC).isoformat())
