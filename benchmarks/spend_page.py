"""Section 7: the spend page on a 1-million- and a 10-million-row ledger in PostgreSQL.

For each size a database of its own (``glm_bench_spend_<hex>``, dropped afterwards) gets a ledger of
N calls over the last 90 days (task runs of 100 rows: 50 DAGs, 3 tasks, 6 models, 2 currencies, 1 %
possibly billed), the matching N result rows and N/100 run summaries, all generated in SQL by the
same statement. The app is the plugin's own FastAPI app with the engine built from an Airflow
connection, called in-process; the auth manager's two dependencies are replaced by fixed answers
(all 50 DAGs readable), so the figures are the page's own work: its SQL and its rendering.

Cold: the app's answer cache is off (every request reads the database). Each request is timed
``reps`` times (median, after one warm-up), for the default period (last 30 days, a third of the
ledger), then with the DAG filter, first with the tables' own indexes, then with the indexes this
page proposes added. Cached: the app as shipped (60 s cache), the default period, each request
timed ``reps`` times after the one that fills the cache. The most spend queries that ran at once is
read from the app's gate. ``--quick``: 5,000 rows, the tables' own indexes and the default period
only. ``GLM_BENCH_SPEND_ROWS=1000000`` (comma-separated sizes) measures other sizes.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from benchmarks._common import Context, guarded, log, median, run_worker, table

TITLE = "## 7. Spend page"
SIZES = (1_000_000, 10_000_000)
GOALS_MS = {1_000_000: 500.0, 10_000_000: 2000.0}
"""The goal for the default view (``GET /glm-spend/``, 30 days) per ledger size (issue 22)."""
PG_URL = os.environ.get("GLM_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
ENDPOINTS = ("api/summary", "api/daily", "api/tasks", "api/runs", "api/budgets", "")
PROPOSED = (
    "CREATE INDEX ix_{results}_updated ON {results} (updated_at)",
    "CREATE INDEX ix_{results}_dag_updated ON {results} (dag_id, updated_at)",
    "CREATE INDEX ix_{runs}_started ON {runs} (started_at)",
)
"""The indexes the page's queries would like beyond the schema's (see docs/dashboard.md)."""

_SEED = """
INSERT INTO {usage} (response_id, dag_id, task_id, run_id, map_index, try_number, row_key, api, model, billing,
    prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens, cost, currency, latency_ms,
    attempts, unknown_billing_attempts, unknown_tokens_max, unknown_cost_max, created_at)
SELECT 'resp-' || g, 'dag_' || (g / 100 % 50), 'task_' || (g / 100 % 3), 'run_' || (g / 100), -1, 1, 'r' || (g % 100),
    'online', (ARRAY['glm-4.5','glm-4.5-air','glm-4.6','glm-4-plus','glm-z1','glm-4.5-flash'])[1 + g / 100 % 6],
    CASE WHEN g % 97 = 0 THEN 'unknown' ELSE 'known' END,
    CASE WHEN g % 97 = 0 THEN 0 ELSE 200 + g % 700 END, CASE WHEN g % 97 = 0 THEN 0 ELSE 20 + g % 300 END,
    CASE WHEN g % 97 = 0 THEN 0 ELSE 220 + g % 700 + g % 300 END, 0, 0,
    CASE WHEN g % 97 = 0 THEN NULL ELSE (200 + g % 700) * 0.0000006 + (20 + g % 300) * 0.0000022 END,
    CASE WHEN g / 100 % 6 = 2 THEN 'CNY' ELSE 'USD' END, 800, 1,
    CASE WHEN g % 97 = 0 THEN 2 ELSE 0 END, CASE WHEN g % 97 = 0 THEN 5000 ELSE 0 END,
    CASE WHEN g % 97 = 0 THEN 0.01 ELSE NULL END,
    now() - ({n} - g) * interval '90 days' / {n}
FROM generate_series(0, {n} - 1) AS g;
INSERT INTO {results} (result_key, dag_id, task_id, run_id, map_index, row_key, status, model, reused_from_run_id,
    updated_at)
SELECT md5(run_id || row_key) || md5(row_key || run_id), dag_id, task_id, run_id, -1, row_key,
    CASE WHEN billing = 'unknown' THEN 'failed' WHEN prompt_tokens % 23 = 0 THEN 'filtered' ELSE 'ok' END, model,
    CASE WHEN prompt_tokens % 7 = 0 THEN 'run_earlier' END, created_at
FROM {usage};
INSERT INTO {runs} (run_key, dag_id, task_id, run_id, map_index, try_number, operator, api, model, rows, ok,
    total_tokens, cost, currency, max_cost, state, started_at)
SELECT md5(run_id) || md5(dag_id || run_id), dag_id, task_id, run_id, -1, 1, 'GLMChatOperator', 'online', min(model),
    count(*), count(*), sum(total_tokens), sum(cost), min(currency),
    CASE WHEN min(row_key) IS NOT NULL AND length(run_id) % 2 = 0 THEN 0.05 END, 'success', min(created_at)
FROM {usage} GROUP BY dag_id, task_id, run_id;
"""


def spend_page(p: dict[str, Any]) -> dict[str, Any]:
    """Worker: seed a private database, time every endpoint and the page, drop the database."""
    import sqlalchemy as sa

    admin_url = sa.make_url(p["url"])
    probe = sa.create_engine(admin_url, connect_args={"connect_timeout": 3}, poolclass=sa.pool.NullPool,
                             isolation_level="AUTOCOMMIT")
    database = f"glm_bench_spend_{uuid.uuid4().hex[:10]}"
    try:
        with probe.connect() as conn:
            version = str(conn.execute(sa.text("SELECT version()")).scalar_one()).split(" on ")[0][:60]
            conn.execute(sa.text(f"CREATE DATABASE {database}"))
    except sa.exc.DBAPIError as exc:
        probe.dispose()
        return {"unreachable": f"{type(exc.orig).__name__}: {str(exc.orig).splitlines()[0]}"}
    url = admin_url.set(database=database)
    try:
        return {"version": version, **_measure(url, p)}
    finally:
        with probe.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        probe.dispose()


def _measure(url: Any, p: dict[str, Any]) -> dict[str, Any]:
    import json

    import sqlalchemy as sa
    from fastapi.testclient import TestClient

    from airflow_provider_glm.plugins._app import SpendConfig, create_app
    from airflow_provider_glm.plugins._spend_cache import AnswerCache
    from airflow_provider_glm.plugins._spend_queries import SpendQueries

    n = p["rows"]
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    queries = SpendQueries(engine, "glm_usage", "glm_results", "glm_runs")
    queries.usage.metadata.create_all(engine)
    names = {"usage": "glm_usage", "results": "glm_results", "runs": "glm_runs"}
    seed_start = time.perf_counter()
    with engine.begin() as conn:
        for statement in _SEED.format(n=n, **names).split(";"):
            if statement.strip():
                conn.execute(sa.text(statement))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
        counts = {name: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                  for name, table in names.items()}
    seeded_s = time.perf_counter() - seed_start
    os.environ["AIRFLOW_CONN_GLM_BENCH_SPEND"] = json.dumps({
        "conn_type": "postgres", "host": url.host, "port": url.port or 5432, "login": url.username,
        "password": url.password or "", "schema": url.database})
    dags = frozenset(f"dag_{i}" for i in range(50))

    def app_with(cache: Any) -> Any:
        app = create_app(SpendConfig(spend_conn_id="glm_bench_spend"), cache=cache)
        deps = app.state.auth_dependencies
        app.dependency_overrides[deps["may_read_dags"]] = lambda: None
        app.dependency_overrides[deps["readable_dag_ids"]] = lambda: dags
        return app

    def timed(client: Any, endpoint: str, query: dict[str, str], reps: int) -> list[float]:
        samples: list[float] = []
        for rep in range(reps + 1):
            started = time.perf_counter()
            answer = client.get(f"/{endpoint}", params=query)
            elapsed = time.perf_counter() - started
            if answer.status_code != 200:
                raise RuntimeError(f"GET /{endpoint} answered {answer.status_code}: {answer.text[:300]}")
            if rep:
                samples.append(elapsed * 1000)
        return samples

    timings: dict[str, dict[str, list[float]]] = {}
    cold = app_with(AnswerCache(0))
    with TestClient(cold) as client:
        for variant in ("schema indexes",) if p["quick"] else ("schema indexes", "+ proposed indexes"):
            if variant != "schema indexes":
                with engine.begin() as conn:
                    for ddl in PROPOSED:
                        conn.execute(sa.text(ddl.format(**names)))
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(sa.text("ANALYZE"))
            for label, query in (("30 days", {}), ("30 days, one DAG", {"dag_id": "dag_7"}))[:1 if p["quick"] else 2]:
                for endpoint in ENDPOINTS:
                    timings[f"{variant}|{label}|/{endpoint}|cold"] = {"ms": timed(client, endpoint, query, p["reps"])}
    cached = app_with(None)
    with TestClient(cached) as client:
        for endpoint in ENDPOINTS:
            timings[f"{'schema indexes' if p['quick'] else '+ proposed indexes'}|30 days|/{endpoint}|cached"] = {
                "ms": timed(client, endpoint, {}, p["reps"])}
    engine.dispose()
    return {"counts": counts, "seed_s": seeded_s, "timings": timings,
            "most_queries_at_once": max(cold.state.gate.most_running, cached.state.gate.most_running)}


def run(ctx: Context) -> str:
    sizes = (5_000,) if ctx.quick else SIZES
    if os.environ.get("GLM_BENCH_SPEND_ROWS"):
        sizes = tuple(int(n) for n in os.environ["GLM_BENCH_SPEND_ROWS"].split(",") if n.strip())
    reps = 1 if ctx.quick else max(ctx.reps, 5)
    parts = [TITLE, ""]
    for n in sizes:
        log(f"7 spend page: PostgreSQL, {n:,} ledger rows, {reps} timed requests per endpoint")
        res = guarded(ctx, f"7 spend page {n:,}", run_worker, "benchmarks.spend_page:spend_page",
                      {"url": PG_URL, "rows": n, "reps": reps, "quick": ctx.quick}, ctx.env,
                      timeout=3000 + n / 2000)
        parts += [f"### {n:,} ledger rows", "", _report(n, reps, res), ""]
    return "\n".join(parts)


def _report(n: int, reps: int, res: dict[str, Any] | None) -> str:
    if res is None:
        return "Not measured: the run failed (see the errors below).\n"
    if "unreachable" in res:
        return f"Not measured: PostgreSQL unreachable at `{PG_URL.split('@')[-1]}`: {res['unreachable']}\n"
    goal = GOALS_MS.get(n, GOALS_MS[SIZES[0]])
    rows = []
    for key, value in res["timings"].items():
        variant, label, endpoint, cache = key.split("|")
        ms = median(value["ms"])
        rows.append([variant, label, f"`GET /glm-spend{endpoint}`", cache, f"**{ms:,.0f}**",
                     f"{min(value['ms']):,.0f}–{max(value['ms']):,.0f}", "yes" if ms < goal else "**no**"])
    counts = res["counts"]
    return "\n".join([
        f"{counts['usage']:,} ledger rows, {counts['results']:,} result rows and {counts['runs']:,} run rows over "
        f"90 days in a database of its own ({res['version']}), generated in SQL in {res['seed_s']:.0f} s. "
        "The plugin's FastAPI app runs in-process with its engine built from an Airflow connection; the auth "
        "manager's dependencies are fixed (all 50 DAGs readable), so the times are the page's SQL and rendering. "
        f"Median of {reps} requests after one warm-up. *cold*: the answer cache off, every request reads the "
        "database; *cached*: the app as shipped (60 s cache), after the request that filled it. The page "
        "(`/glm-spend/`) reads the ledger's groups and top runs in one statement on one connection and the "
        f"outcomes and budgets on another; at most {res['most_queries_at_once']} spend queries ran at once. "
        f"Goal for the default view (`GET /glm-spend/`, 30 days): < {goal:,.0f} ms.", "",
        table(["Indexes", "Period", "Request", "Cache", "Median ms", "Range ms", f"< {goal:,.0f} ms"], rows), "",
        "Proposed indexes: " + "; ".join(f"`{ddl.format(results='<results>', runs='<runs>')}`" for ddl in PROPOSED)
        + ".",
    ])
