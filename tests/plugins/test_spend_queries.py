"""The spend page's SQL aggregations equal the same sums done in Python, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _databases import BACKENDS, backend_url
from _spend_seed import SeededTables, seed, unique_names

from airflow_provider_glm.plugins._spend_queries import SpendFilters, SpendQueries

NOW = dt.datetime(2026, 11, 20, 15, 30, tzinfo=dt.UTC)


DRIVERS = [*BACKENDS, pytest.param("postgresql+psycopg", id="postgresql-psycopg3", marks=pytest.mark.postgres)]
"""psycopg 3 too: Airflow's postgres provider uses it, and it binds parameters on the server."""


@pytest.fixture(params=DRIVERS)
def seeded(request: pytest.FixtureRequest,
           tmp_path: Path) -> Iterator[tuple[SpendQueries, dict[str, list[dict[str, Any]]]]]:
    backend, _, driver = request.param.partition("+")
    url = sa.make_url(backend_url(backend, tmp_path))
    engine = sa.create_engine(url.set(drivername=f"{backend}+{driver}") if driver else url,
                              poolclass=sa.pool.NullPool)
    names = unique_names("spq")
    try:
        seed(engine, names, now=NOW)
        queries = SpendQueries(engine, names.usage, names.results, names.runs)
        with engine.connect() as conn:
            rows = {name: [dict(r) for r in conn.execute(sa.select(table)).mappings()]
                    for name, table in (("usage", queries.usage), ("results", queries.results),
                                        ("runs", queries.runs))}
        yield queries, rows
    finally:
        names.drop(engine)
        engine.dispose()


def _in(f: SpendFilters, row: dict[str, Any], when: str) -> bool:
    return (f.start <= row[when] < f.end and (f.dag_ids is None or row["dag_id"] in f.dag_ids)
            and (f.dag_id is None or row["dag_id"] == f.dag_id) and (f.model is None or row["model"] == f.model))


def _money(rows: list[dict[str, Any]], column: str) -> dict[str, float]:
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        if row[column] is not None:
            sums[row["currency"] or ""] += Decimal(row[column])
    return {k: float(v) for k, v in sums.items()}


FILTERS = {
    "last-30-days": dict(),
    "one-dag": dict(dag_id="glm_enrichment"),
    "one-model": dict(model="glm-4.6"),
    "readable-dags": dict(dag_ids=frozenset({"glm_nightly_summary", "glm_enrichment"})),
    "no-readable-dag": dict(dag_ids=frozenset()),
}


@pytest.mark.parametrize("case", FILTERS)
def test_overview_totals(seeded: tuple[SpendQueries, dict[str, list[dict[str, Any]]]], case: str) -> None:
    queries, rows = seeded
    f = SpendFilters.last_days(30, now=NOW, **FILTERS[case])
    expected = [r for r in rows["usage"] if _in(f, r, "created_at")]
    totals = queries.overview(f)["totals"]
    assert totals["entries"] == len(expected)
    assert totals["calls"] == sum(r["billing"] == "known" for r in expected)
    assert totals["unpriced_calls"] == sum(r["billing"] == "known" and r["cost"] is None for r in expected)
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "possibly_billed_attempts"):
        column = {"possibly_billed_attempts": "unknown_billing_attempts"}.get(name, name)
        assert totals[name] == sum(r[column] for r in expected), name
    assert totals["possibly_billed_tokens_max"] == sum(r["unknown_tokens_max"] for r in expected)
    assert totals["cost"] == pytest.approx(_money(expected, "cost"))
    assert totals["possibly_billed_cost_max"] == pytest.approx(_money(expected, "unknown_cost_max"))
    if case == "no-readable-dag":
        assert totals["entries"] == 0
    else:
        assert totals["entries"] > 0
        assert totals["possibly_billed_attempts"] > 0


@pytest.mark.parametrize("stack", ["model", "dag"])
def test_daily_series_add_up_per_day(seeded: tuple[SpendQueries, dict[str, list[dict[str, Any]]]],
                                     stack: str) -> None:
    queries, rows = seeded
    f = SpendFilters.last_days(30, now=NOW, stack=stack)
    expected: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for r in rows["usage"]:
        if _in(f, r, "created_at") and r["cost"] is not None:
            key = r["model"] if stack == "model" else r["dag_id"]
            expected[(r["created_at"].date().isoformat(), key, r["currency"])] += Decimal(r["cost"])
    daily = queries.overview(f)["daily"]
    got = {(d["day"], d["key"], d["currency"]): d["cost"][d["currency"]] for d in daily if d["cost"]}
    assert got == pytest.approx({k: float(v) for k, v in expected.items()})
    assert {d["day"] for d in daily} <= set(f.days())
    assert len(f.days()) == 30
    assert f.days()[-1] == NOW.date().isoformat()


def test_tasks_count_results_and_cost(seeded: tuple[SpendQueries, dict[str, list[dict[str, Any]]]]) -> None:
    queries, rows = seeded
    f = SpendFilters.last_days(30, now=NOW)
    results = [r for r in rows["results"] if _in(f, r, "updated_at")]
    ledger = [r for r in rows["usage"] if _in(f, r, "created_at")]
    tasks = {(t["dag_id"], t["task_id"]): t for t in queries.tasks(f)}
    assert set(tasks) == {(r["dag_id"], r["task_id"]) for r in results + ledger}
    for (dag_id, task_id), task in tasks.items():
        mine = [r for r in results if (r["dag_id"], r["task_id"]) == (dag_id, task_id)]
        statuses = Counter(r["status"] for r in mine)
        assert (task["rows"], task["ok"], task["failed"], task["filtered"]) == (
            len(mine), statuses["ok"], statuses["failed"], statuses["filtered"])
        assert task["reused"] == sum(r["reused_from_run_id"] is not None for r in mine)
        spent = _money([r for r in ledger if (r["dag_id"], r["task_id"]) == (dag_id, task_id)], "cost")
        assert task["cost"] == pytest.approx(spent)
        assert task["cost_per_1000_rows"] == pytest.approx({c: v * 1000 / len(mine) for c, v in spent.items()})


def test_expensive_runs_are_the_top_costs(seeded: tuple[SpendQueries, dict[str, list[dict[str, Any]]]]) -> None:
    queries, rows = seeded
    f = SpendFilters.last_days(30, now=NOW, limit=5)
    per_run: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for r in rows["usage"]:
        if _in(f, r, "created_at") and r["cost"] is not None:
            per_run[(r["dag_id"], r["run_id"], r["currency"])] += Decimal(r["cost"])
    top = sorted(per_run.values(), reverse=True)[:5]
    runs = queries.expensive_runs(f)
    assert [r["cost"] for r in runs] == pytest.approx([float(v) for v in top])
    assert all(r["first_call"] <= r["last_call"] for r in runs)


def test_budgets_rank_by_burn(seeded: tuple[SpendQueries, dict[str, list[dict[str, Any]]]]) -> None:
    queries, rows = seeded
    f = SpendFilters.last_days(30, now=NOW, limit=50)
    budgets = queries.budgets(f)
    expected = [r for r in rows["runs"] if r["max_cost"] is not None and _in(f, r, "started_at")]
    assert len(budgets) == min(50, len(expected)) > 0
    burns = [b["burn"] or 0 for b in budgets]
    assert burns == sorted(burns, reverse=True)
    worst = max(expected, key=lambda r: (r["cost"] or 0) / r["max_cost"])
    assert budgets[0]["burn"] == pytest.approx(float((worst["cost"] or 0) / worst["max_cost"]), rel=1e-5)


def test_filters_refuse_bad_periods() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        SpendFilters(start=dt.datetime(2026, 1, 1), end=dt.datetime(2026, 1, 2))
    with pytest.raises(ValueError, match="the period is empty"):
        SpendFilters(start=NOW, end=NOW)
    with pytest.raises(ValueError, match="stack must be"):
        SpendFilters.last_days(3, now=NOW, stack="task")
    with pytest.raises(ValueError, match="days must be at least 1"):
        SpendFilters.last_days(0, now=NOW)


def test_table_names_are_validated() -> None:
    engine = sa.create_engine("sqlite://")
    with pytest.raises(ValueError, match="invalid table name"):
        SpendQueries(engine, usage_table="glm_usage; DROP TABLE x")
    assert SpendQueries(engine, usage_table="warehouse.glm_usage").usage.schema == "warehouse"


def test_unused_names_do_not_leak(tmp_path: Path) -> None:
    """A fresh database without the tables answers with an SQL error, not with made-up zeros."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(sa.exc.OperationalError):
        SpendQueries(engine).overview(SpendFilters.last_days(1, now=NOW))
    SeededTables("a", "b", "c").drop(engine)


@pytest.mark.parametrize("case", ["last-30-days", "one-model", "readable-dags"])
def test_page_equals_the_sections_queried_one_by_one(seeded: tuple[SpendQueries, dict[str, list[dict[str, Any]]]],
                                                     case: str) -> None:
    """The page sums overview, task spend and runs from one scan; the endpoints query each on its own."""
    queries, _ = seeded
    f = SpendFilters.last_days(30, now=NOW, limit=7, **FILTERS[case])
    page = queries.page(f)
    assert page["overview"] == queries.overview(f)
    assert page["tasks"] == queries.tasks(f)
    assert page["runs"] == queries.expensive_runs(f)
    assert page["budgets"] == queries.budgets(f)
