"""Section 4: peak RSS of row mode with the SQL sink at 10,000 and 100,000 rows.

Each run is a fresh process: the operator (``max_concurrency`` 32, SQLite sink in a temp file) against a
zero-latency server; peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss``. The baseline is the same
worker importing exactly the modules the operator run ended up with (its ``sys.modules``), without rows
and without running anything. The input rows are a Python list (the operator's input), so their own
size -- the RSS growth while building that list -- is reported separately, leaving the operator's own
overhead: peak - baseline - rows.

Part (b) is the nightly warehouse job (``dags/glm_nightly_summary.py``): rows of about 1 KB streamed
from a SQLite table with ``source_sql``, reuse on, a sentiment + summary schema in typed columns and a
latest table, all in the same SQLite file. One fresh process per size (5k, 50k, 500k rows; 200 and
2,000 in ``--quick`` mode; ``BENCH_SOURCE_SQL_ROWS=5000,50000`` picks others): its peak RSS, and how
much more than the smallest size it needed. ``BENCH_MEMORY_PART=b`` runs part (b) alone.
"""

from __future__ import annotations

import gc
import importlib
import os
import resource
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    REPO,
    Context,
    ServerProcess,
    conn_json,
    fmt,
    guarded,
    log,
    median,
    run_worker,
    spread,
    table,
)

TITLE = "## 4. Memory"
NIGHTLY_DAG = REPO / "dags" / "glm_nightly_summary.py"
GOAL_MB = 150.0
FLAT_BYTES_PER_ROW = 100
""""Nearly flat": the operator's own memory may grow by at most this much per extra input row."""
CONCURRENCY = 32
SOURCE_GOAL_MB = 40.0
"""The nightly job's peak RSS may grow by less than this from the smallest size to 10x its rows."""
BODY_BYTES = 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _deep_size(rows: list[dict[str, str]]) -> int:
    size = sys.getsizeof(rows)
    for row in rows:
        size += sys.getsizeof(row) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in row.items())
    return size


def memory_run(p: dict[str, Any]) -> dict[str, Any]:
    """Worker: a baseline (imports only) or an operator run over ``p["rows"]`` rows; peak RSS in MiB."""
    if p["mode"] == "baseline":
        failed = 0
        for name in p["modules"]:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - some modules only import as part of their package's flow
                failed += 1
        gc.collect()
        return {"peak": _peak_mb(), "rss": _rss_mb(), "modules": len(p["modules"]), "failed_imports": failed}
    from benchmarks.throughput import PROMPT, FakeTaskInstance, count_ok, make_rows

    os.environ["AIRFLOW_CONN_GLM_DEFAULT"] = conn_json(p["base_url"])
    import airflow.sdk  # noqa: F401

    from airflow_provider_glm.operators.chat import GLMChatOperator

    gc.collect()
    rss0 = _rss_mb()
    rows = make_rows(p["rows"])
    gc.collect()
    rss1 = _rss_mb()
    op = GLMChatOperator(
        task_id="bench_memory",
        rows=rows,
        row_key="id",
        prompt=PROMPT,
        sqlalchemy_url=f"sqlite:///{p['db']}",
        max_concurrency=CONCURRENCY,
    )
    ti = FakeTaskInstance(task_id="bench_memory")
    wall0 = time.perf_counter()
    op.execute({"ti": ti, "params": {}, "run_id": ti.run_id})
    wall = time.perf_counter() - wall0
    peak = _peak_mb()
    modules = [m for m in sys.modules if not m.startswith(("benchmarks", "__"))]
    return {
        "peak": peak,
        "rss_before_rows": rss0,
        "rows_rss": rss1 - rss0,
        "rows_deep": _deep_size(rows) / 2**20,
        "rss_end": _rss_mb(),
        "wall": wall,
        "rows": p["rows"],
        "ok": count_ok(p["db"]),
        "modules": modules,
    }


def run(ctx: Context) -> str:
    if os.environ.get("BENCH_MEMORY_PART") == "b":  # only the nightly source_sql job
        return f"{TITLE}\n\n" + _run_source_sql(ctx)
    return _run_rows_list(ctx) + "\n" + _run_source_sql(ctx)


def _run_rows_list(ctx: Context) -> str:
    small, large = (200, 2000) if ctx.quick else (10_000, 100_000)
    large_reps = 1
    small_runs: list[dict[str, Any]] = []
    large_runs: list[dict[str, Any]] = []
    base_runs: list[dict[str, Any]] = []
    work = ctx.tmp("memory")
    with ServerProcess(ctx.env, latency=0.0, auto_reset=5.0) as srv:
        env = dict(ctx.env, AIRFLOW_CONN_GLM_DEFAULT=conn_json(srv.base_url))

        def op_run(n: int, tag: str) -> dict[str, Any]:
            db = work / f"{tag}.db"
            res = run_worker(
                "benchmarks.memory:memory_run",
                {"mode": "operator", "rows": n, "base_url": srv.base_url, "db": str(db)},
                env,
                timeout=1200,
            )
            db.unlink(missing_ok=True)
            return res

        for rep in range(ctx.reps):
            log(f"4 memory: {small:,} rows, run {rep + 1}/{ctx.reps}")
            res = guarded(ctx, f"4 memory {small}", op_run, small, f"small-{rep}")
            if res:
                small_runs.append(res)
        modules = sorted({m for r in small_runs for m in r.pop("modules")}, key=lambda m: m.count("."))
        if modules:
            for rep in range(ctx.reps):
                log(f"4 memory: baseline ({len(modules)} modules), run {rep + 1}/{ctx.reps}")
                res = guarded(
                    ctx,
                    "4 memory baseline",
                    run_worker,
                    "benchmarks.memory:memory_run",
                    {"mode": "baseline", "modules": modules},
                    env,
                )
                if res:
                    base_runs.append(res)
        for rep in range(large_reps):
            log(f"4 memory: {large:,} rows, run {rep + 1}/{large_reps} (takes a few minutes at full size)")
            res = guarded(ctx, f"4 memory {large}", op_run, large, f"large-{rep}")
            if res:
                res.pop("modules", None)
                large_runs.append(res)
    base = median(r["peak"] for r in base_runs) if base_runs else None
    rows_tbl = []
    own: dict[int, float] = {}
    above: dict[int, float] = {}
    for n, runs in ((small, small_runs), (large, large_runs)):
        if not runs:
            rows_tbl.append(
                [f"{n:,}", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "not measured (error)"]
            )
            continue
        peak = median(r["peak"] for r in runs)
        rows_rss = median(r["rows_rss"] for r in runs)
        if base is not None:
            above[n] = peak - base
            own[n] = peak - base - rows_rss
        bad = [r for r in runs if r["ok"] != n]
        rows_tbl.append(
            [
                f"{n:,}",
                str(len(runs)),
                f"{peak:.1f}",
                fmt(base, ".1f"),
                f"**{fmt(above.get(n), '.1f')}**",
                f"{rows_rss:.1f} (deep size {median(r['rows_deep'] for r in runs):.1f})",
                f"**{fmt(own.get(n), '.1f')}**",
                f"{median(r['wall'] for r in runs):.1f} ({n / median(r['wall'] for r in runs):.0f} rows/s)",
                spread([r["peak"] for r in runs], "{:.1f}")
                + (f"; {len(bad)} run(s) not all ok" if bad else ""),
            ]
        )
    out = [
        TITLE,
        "",
        f"Peak RSS (MiB, `ru_maxrss`) of a fresh process running the operator with the SQLite sink over "
        f"{small:,} and {large:,} rows, zero-latency server, max_concurrency {CONCURRENCY}; baseline = a "
        "fresh "
        f"process importing the same modules (median of {len(base_runs)}). Runs: {ctx.reps} at {small:,} "
        "rows, "
        f"{large_reps} at {large:,} rows (the large run is long and its peak varies little between runs).",
        "",
        table(
            [
                "Rows",
                "Runs",
                "Peak RSS",
                "Baseline peak",
                "Above baseline",
                "Input list (RSS growth)",
                "Operator's own (above − input)",
                "Wall s",
                "Range peak",
            ],
            rows_tbl,
        ),
        "",
    ]
    if large in above and small in own:
        growth = own[large] - own[small]
        per_row = growth * 2**20 / (large - small)
        out.append(
            f"Goal: < {GOAL_MB:.0f} MiB above baseline at {large:,} rows: "
            f"**{'met' if above[large] < GOAL_MB else 'not met'}** ({above[large]:.1f} MiB, of which the "
            f"input list is {median(r['rows_rss'] for r in large_runs):.1f} MiB). Nearly flat between the "
            f"two sizes (criterion: ≤ {FLAT_BYTES_PER_ROW} bytes per extra row): the operator's own overhead "
            f"grows by {growth:.1f} MiB for {large - small:,} more rows (≈ {per_row:.0f} bytes/row): "
            f"**{'met' if per_row <= FLAT_BYTES_PER_ROW else 'not met'}**."
        )
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------- (b) the nightly source_sql job


def seed_reviews(db: Path, n: int) -> None:
    """``reviews(id, product, body)`` with ``n`` rows of a ~1 KB body each, written as a stream."""
    filler = "The pump works well, the hose is short and the manual is thin. " * 20
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE reviews (id INTEGER PRIMARY KEY, product TEXT, body TEXT)")
        rows = ((i, f"P{i % 50}", (f"Review {i}: " + filler)[:BODY_BYTES]) for i in range(n))
        conn.executemany("INSERT INTO reviews VALUES (?, ?, ?)", rows)


def source_sql_run(p: dict[str, Any]) -> dict[str, Any]:
    """Worker: one night of the nightly-summary job over ``p["db"]``'s reviews; peak RSS in MiB.

    The operator is the one ``dags/glm_nightly_summary.py`` declares (its warehouse pointed at ``p["db"]``),
    at this section's ``max_concurrency``."""
    import runpy

    os.environ["AIRFLOW_CONN_GLM_DEFAULT"] = conn_json(p["base_url"])
    os.environ["GLM_WAREHOUSE_URL"] = f"sqlite:///{p['db']}"
    sys.path.insert(0, str(NIGHTLY_DAG.parent))  # the DAG file imports example_warehouse from its folder
    import airflow.sdk  # noqa: F401

    from benchmarks.throughput import FakeTaskInstance

    op = runpy.run_path(str(NIGHTLY_DAG))["glm_nightly_summary"]().get_task("summarize_reviews")
    op.max_concurrency = CONCURRENCY
    ti = FakeTaskInstance(dag_id="glm_nightly_summary", task_id="summarize_reviews")
    gc.collect()
    rss0 = _rss_mb()
    wall0 = time.perf_counter()
    summary = op.execute({"ti": ti, "params": {}, "run_id": ti.run_id})
    wall = time.perf_counter() - wall0
    with sqlite3.connect(p["db"]) as conn:
        ok = conn.execute("SELECT COUNT(*) FROM review_summaries WHERE status = 'ok' AND sentiment IS NOT NULL"
                          ).fetchone()[0]
    return {"peak": _peak_mb(), "rss_before": rss0, "wall": wall, "rows": p["rows"], "ok": int(ok),
            "summary_rows": summary["rows"]}


def _source_sizes(ctx: Context) -> list[int]:
    chosen = os.environ.get("BENCH_SOURCE_SQL_ROWS")
    if chosen:
        return [int(n) for n in chosen.split(",") if n.strip()]
    return [200, 2000] if ctx.quick else [5_000, 50_000, 500_000]


def _run_source_sql(ctx: Context) -> str:
    sizes = _source_sizes(ctx)
    work = ctx.tmp("memory-source-sql")
    measured: dict[int, dict[str, Any]] = {}
    with ServerProcess(ctx.env, latency=0.0, auto_reset=5.0) as srv:
        env = dict(ctx.env, AIRFLOW_CONN_GLM_DEFAULT=conn_json(srv.base_url))
        for n in sizes:
            db = work / f"nightly-{n}.db"
            log(f"4b memory: nightly source_sql job, {n:,} rows of {BODY_BYTES} bytes (seeding, then one run)")
            try:
                seed_reviews(db, n)
                res = guarded(ctx, f"4b memory source_sql {n}", run_worker, "benchmarks.memory:source_sql_run",
                              {"rows": n, "base_url": srv.base_url, "db": str(db)}, env, timeout=3600)
            finally:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
            if res:
                measured[n] = res
    smallest = min(measured) if measured else None
    rows_tbl = []
    for n in sizes:
        res = measured.get(n)
        if res is None:
            rows_tbl.append([f"{n:,}", "n/a", "n/a", "n/a", "not measured (error)"])
            continue
        diff = res["peak"] - measured[smallest]["peak"] if smallest is not None else None
        rows_tbl.append([
            f"{n:,}", f"{res['peak']:.1f}", f"**{fmt(diff, '+.1f')}**" if n != smallest else "–",
            f"{res['wall']:.1f} ({n / res['wall']:.0f} rows/s)",
            "all ok, typed columns filled" if res["ok"] == n else f"{res['ok']:,} of {n:,} ok",
        ])
    out = [
        "### 4b. The nightly `source_sql` job",
        "",
        f"Peak RSS (MiB, `ru_maxrss`) of a fresh process running one night of the nightly-summary job "
        f"(`dags/glm_nightly_summary.py`): rows of {BODY_BYTES} bytes streamed from a SQLite table with "
        "`source_sql` (chunks of 1,000), reuse on (the first night: every row asked), a sentiment + summary "
        f"`output_schema` in typed columns, results and latest tables in the same SQLite file, max_concurrency "
        f"{CONCURRENCY}, zero-latency server. One run per size; the difference is against the smallest size.",
        "",
        table(["Source rows", "Peak RSS", "Difference", "Wall s", "Rows"], rows_tbl),
        "",
    ]
    tenfold = [n for n in measured if smallest is not None and n >= 10 * smallest]
    if tenfold:
        verdicts = []
        for n in sorted(tenfold):
            diff = measured[n]["peak"] - measured[smallest]["peak"]
            verdicts.append(f"{n:,} rows {diff:+.1f} MiB ({'met' if diff < SOURCE_GOAL_MB else 'not met'})")
        out.append(f"Goal: flat in the number of rows, less than {SOURCE_GOAL_MB:.0f} MiB more peak RSS than "
                   f"at {smallest:,} rows: " + "; ".join(verdicts) + ".")
        out.append("")
    return "\n".join(out)
