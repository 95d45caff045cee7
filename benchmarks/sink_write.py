"""Section 5: ``SQLSink.write`` rate -- results + ledger rows per second, in batches of 500.

One "row" is what the operator writes per answered input row: one result (upserted) and one usage
ledger entry (inserted), in the same transaction as the rest of its batch. Tables get random names and
are dropped afterwards. Servers: embedded SQLite (temp file), PostgreSQL and MariaDB on loopback;
a server that does not answer is reported as not measured.
"""

from __future__ import annotations

import os
import time
import uuid
from decimal import Decimal
from typing import Any

from benchmarks._common import Context, fmt, guarded, log, median, run_worker, spread, table

TITLE = "## 5. Sink write rate"
GOAL = 10_000
BATCH = 500
PG_URL = os.environ.get("GLM_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("GLM_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4")


def sink_write(p: dict[str, Any]) -> dict[str, Any]:
    """Worker: write ``p["rows"]`` results + ledger entries in batches; return the timing."""
    import sqlalchemy as sa

    from airflow_provider_glm.rows._records import ResultRecord, RunScope, UsageRecord
    from airflow_provider_glm.sinks.sql import SQLSink

    url = p["url"]
    if not url.startswith("sqlite"):
        probe = sa.create_engine(url, connect_args={"connect_timeout": 3}, poolclass=sa.pool.NullPool)
        try:
            with probe.connect() as conn:
                version = conn.execute(sa.text("SELECT version()")).scalar_one()
        except sa.exc.DBAPIError as exc:
            return {"unreachable": f"{type(exc.orig).__name__}: {str(exc.orig).splitlines()[0]}"}
        finally:
            probe.dispose()
    else:
        import sqlite3

        version = f"SQLite {sqlite3.sqlite_version}"
    suffix = uuid.uuid4().hex[:10]
    results_name, usage_name = f"bench_results_{suffix}", f"bench_usage_{suffix}"
    scope = RunScope("bench_dag", "bench_sink", f"run-{suffix}", -1)
    n = p["rows"]
    results = [
        ResultRecord(
            scope,
            f"r{i:07d}",
            "ok",
            content=f"Summary: review number {i}: the pump works well",
            finish_reason="stop",
            model="glm-4.5",
            prompt_tokens=18,
            completion_tokens=12,
            total_tokens=30,
        )
        for i in range(n)
    ]
    usage = [
        UsageRecord(
            scope=scope,
            response_id=f"resp-{suffix}-{i:07d}",
            request_id=f"req-{suffix}-{i:07d}",
            try_number=1,
            row_key=f"r{i:07d}",
            model="glm-4.5",
            prompt_tokens=18,
            completion_tokens=12,
            total_tokens=30,
            cost=Decimal("0.0000372"),
            currency="USD",
            latency_ms=101,
        )
        for i in range(n)
    ]
    sink = SQLSink.from_url(url, results_table=results_name, usage_table=usage_name)
    try:
        sink.ensure_tables()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for start in range(0, n, p["batch"]):
            sink.write(results[start : start + p["batch"]], usage[start : start + p["batch"]])
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        stored = len(sink.results(scope)), len(sink.usage(scope))
    finally:
        sink.dispose()
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.begin() as conn:
            for name in (results_name, usage_name):
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        engine.dispose()
    if stored != (n, n):
        raise RuntimeError(f"wrote {n} rows but read back {stored}")
    return {"wall": wall, "cpu": cpu, "rows": n, "version": str(version).split(" on ")[0][:60]}


def run(ctx: Context) -> str:
    n = 1000 if ctx.quick else 20_000
    sqlite_dir = ctx.tmp("sink")
    targets = {"SQLite (file)": "sqlite", "PostgreSQL": PG_URL, "MariaDB": MYSQL_URL}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
    unreachable: dict[str, str] = {}
    for rep in range(ctx.reps):
        for label, url in targets.items():
            if label in unreachable:
                continue
            if url == "sqlite":
                url = f"sqlite:///{sqlite_dir / f'sink-{rep}.db'}"
            log(f"5 sink write: {label}, {n:,} rows, run {rep + 1}/{ctx.reps}")
            res = guarded(
                ctx,
                f"5 {label}",
                run_worker,
                "benchmarks.sink_write:sink_write",
                {"url": url, "rows": n, "batch": BATCH},
                ctx.env,
                timeout=600,
            )
            if res is None:
                continue
            if "unreachable" in res:
                unreachable[label] = res["unreachable"]
                continue
            runs[label].append(res)
    rows = []
    verdicts = []
    for label, url in targets.items():
        shown_url = "temp file" if url == "sqlite" else f"`{url.split('@')[-1]}`"
        if label in unreachable:
            rows.append(
                [label, shown_url, "not measured", "-", "-", "-", f"server unreachable: {unreachable[label]}"]
            )
            continue
        rs = runs[label]
        if not rs:
            rows.append([label, shown_url, "n/a", "n/a", "n/a", "n/a", "not measured (error)"])
            continue
        rates = [r["rows"] / r["wall"] for r in rs]
        rate = median(rates)
        verdicts.append((label, rate))
        rows.append(
            [
                label,
                shown_url,
                f"**{rate:,.0f}**",
                f"{2 * rate:,.0f}",
                f"{median(r['cpu'] / r['rows'] * 1e6 for r in rs):.0f}",
                spread(rates, "{:,.0f}"),
                rs[-1]["version"],
            ]
        )
    out = [
        TITLE,
        "",
        f"`SQLSink.write(results, usage)` over {n:,} rows in batches of {BATCH} (one transaction per batch: "
        f"{BATCH} result upserts + {BATCH} ledger inserts), fresh process per run, median of {ctx.reps}. "
        "Rows/s counts input rows (one result + one ledger entry each); records/s counts both.",
        "",
        table(
            ["Database", "Where", "Rows/s", "Records/s", "Client CPU µs/row", "Range rows/s", "Server"], rows
        ),
        "",
    ]
    if verdicts:
        out.append(
            f"Goal ≥ {GOAL:,} rows/s: "
            + "; ".join(
                f"{label} **{'met' if rate >= GOAL else 'not met'}** ({fmt(rate, ',.0f')})"
                for label, rate in verdicts
            )
            + "."
        )
        out.append("")
    return "\n".join(out)
