"""Section 6: 8 mapped tasks on the CeleryExecutor with two workers vs one task, same total concurrency.

One Airflow cluster on the CeleryExecutor, started by the harness of the Celery test
(``tests/distributed/celery_cluster.py``: API server, scheduler, DAG processor, triggerer and two
Celery workers as separate processes; Redis broker, PostgreSQL metadata database and result backend),
runs the DAGs of ``tests/distributed/dags/glm_celery_partitions.py`` against the GLM test server in its
own process (latency L = 100 ms, no faults), alternately, after one uncounted warm-up run of each:

(a) ``glm_celery_mapped``: the rows in 8 mapped tasks, ``max_concurrency=4`` and 4 slots each of a
    16-slot pool (at most 4 tasks at once);
(b) ``glm_celery_one_task``: the same rows in one task, ``max_concurrency=16``, holding all 16 slots.

Both send at most 16 requests at once, so the ideal is 16 / L = 160 rows/s. Per run: the time from
the trigger to the DAG run's end as Airflow records it, the GLM phase (first request read to last
answer sent, on the server's clock), rows/s over each, and the server's peak in-flight count.
Starting the cluster takes one to two minutes on 2 cores, so ``--quick`` skips the measurement.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections import Counter
from types import ModuleType
from typing import Any

from benchmarks._common import (
    REPO,
    BenchError,
    Context,
    ServerProcess,
    conn_json,
    fmt,
    guarded,
    log,
    median,
    raw_fallback,
    save_raw,
    spread,
    table,
)

TITLE = "## 6. Celery scaling"
HARNESS = REPO / "tests" / "distributed"
LATENCY = 0.1
POOL, POOL_SLOTS = "glm_account", 16
ROWS = 4000
WARM_UP_ROWS = 64
"""Each DAG runs once at this size first: the first tasks after start-up pay one-off costs (the execution
API's first requests, the workers' first imports) that would otherwise land on whichever variant ran first."""
IDEAL = POOL_SLOTS / LATENCY
VARIANTS = {
    "mapped": ("glm_celery_mapped", "(a) 8 mapped tasks × `max_concurrency` 4, 4 pool slots each"),
    "one": ("glm_celery_one_task", "(b) 1 task × `max_concurrency` 16, 16 pool slots"),
}


def _harness() -> tuple[ModuleType, ModuleType]:
    """The Celery test's harness modules (they import each other by plain module name)."""
    if str(HARNESS) not in sys.path:
        sys.path.insert(0, str(HARNESS))
    import celery_cluster
    import scratch_services

    return celery_cluster, scratch_services


def _when(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _measure(cluster: Any, srv: ServerProcess, dag_id: str, rows: int) -> dict[str, Any]:
    srv.call("reset")
    triggered_wall, triggered = time.time(), time.monotonic()
    run_id = cluster.trigger(dag_id, conf={"rows": rows})
    state = cluster.wait_for_run(dag_id, run_id, timeout=1800)
    if state != "success":
        raise BenchError(f"{dag_id} run {run_id} ended {state}")
    run = cluster.api("GET", f"dags/{dag_id}/dagRuns/{run_id}")
    stats, window = srv.call("stats"), srv.call("window")
    if stats["billed_responses"] != rows:
        raise BenchError(f"{dag_id}: the server billed {stats['billed_responses']} responses for {rows} rows")
    answer = [ti for ti in cluster.task_instances(dag_id, run_id) if ti["task_id"] == "answer"]
    return {
        "rows": rows,
        "wall": _when(run["end_date"]) - triggered_wall,
        "to_first_request": window["first_start"] - triggered,
        "glm_phase": window["last_end"] - window["first_start"],
        "peak": stats["peak_in_flight"],
        "requests": stats["requests"],
        "tasks": len(answer),
        "hosts": dict(Counter(ti["hostname"] for ti in answer)),
    }


def run(ctx: Context) -> str:
    cluster_mod, services = _harness()
    raw: dict[str, Any] = {"rows": ROWS, "runs": {key: [] for key in VARIANTS}, "startup": {}, "note": None}
    if ctx.quick:
        raw["note"] = "skipped in --quick mode (starting the Celery cluster takes 1–2 min on 2 cores)"
    else:
        raw["note"] = services.unreachable()
    if raw["note"] is None:
        _measure_all(ctx, cluster_mod, services, raw)
    save_raw("celery", raw)
    try:
        return _report(ctx, **raw)
    except Exception as exc:  # noqa: BLE001 - keep the measurements even if the report code breaks
        ctx.errors.append(f"6 report: {type(exc).__name__}: {exc}")
        return raw_fallback(TITLE, raw, exc)


def _measure_all(ctx: Context, cluster_mod: ModuleType, services: ModuleType, raw: dict[str, Any]) -> None:
    with (
        ServerProcess(ctx.env, latency=LATENCY) as srv,
        services.scratch_database("glm_bench_warehouse") as warehouse,
    ):
        settings = cluster_mod.ClusterSettings(
            home=ctx.tmp("celery") / "airflow",
            dags_folder=HARNESS / "dags",
            env={"AIRFLOW_CONN_GLM_DEFAULT": conn_json(srv.base_url), "GLM_WAREHOUSE_URL": warehouse},
        )
        log("6 starting Airflow on the CeleryExecutor (API server, scheduler, DAG processor, triggerer, 2 workers)")
        with cluster_mod.CeleryCluster(settings) as cluster:
            raw["startup"] = dict(cluster.timings)
            cluster.create_pool(POOL, POOL_SLOTS)
            for dag_id, _ in VARIANTS.values():
                cluster.wait_for_dag(dag_id)
                log(f"6 {dag_id}, warm-up run of {WARM_UP_ROWS} rows (not counted)")
                guarded(ctx, f"6 {dag_id} warm-up", _measure, cluster, srv, dag_id, WARM_UP_ROWS)
            for rep in range(ctx.reps):
                for key, (dag_id, _) in VARIANTS.items():
                    log(f"6 {dag_id}, {ROWS:,} rows, run {rep + 1}/{ctx.reps}")
                    result = guarded(ctx, f"6 {dag_id}", _measure, cluster, srv, dag_id, ROWS)
                    if result:
                        raw["runs"][key].append(result)
        raw["startup"]["stop"] = cluster.timings.get("stop")


def _report(ctx: Context, rows: int, runs: dict[str, list[dict[str, Any]]], startup: dict[str, float],
            note: str | None) -> str:
    out = [
        TITLE,
        "",
        f"{rows:,} rows, server latency L = {LATENCY * 1000:.0f} ms, a {POOL_SLOTS}-slot pool: both variants "
        f"send at most {POOL_SLOTS} requests at once, ideal {POOL_SLOTS}/L = **{IDEAL:.0f} rows/s**. Airflow 3 on "
        "the CeleryExecutor with two workers (2 task slots each), Redis broker, PostgreSQL metadata database, "
        "started once by the Celery test's harness (`tests/distributed/celery_cluster.py`); after one "
        f"uncounted warm-up run of each, variants alternate (a, b, a, b, ...), medians of {ctx.reps} run(s). "
        "Run wall = trigger to the DAG run's end date; GLM phase = first request read to last answer sent, "
        "on the server.",
        "",
    ]
    if note is not None:
        out += [f"Not measured: {note}.", ""]
        return "\n".join(out)
    medians: dict[str, dict[str, float]] = {}
    table_rows = []
    for key, (_, label) in VARIANTS.items():
        rs = runs[key]
        if not rs:
            table_rows.append([label, *["n/a"] * 8, "not measured (error)"])
            continue
        rates = [r["rows"] / r["wall"] for r in rs]
        m = {
            "rate": median(rates),
            "wall": median(r["wall"] for r in rs),
            "first": median(r["to_first_request"] for r in rs),
            "phase": median(r["glm_phase"] for r in rs),
            "phase_rate": median(r["rows"] / r["glm_phase"] for r in rs),
            "peak": median(r["peak"] for r in rs),
        }
        medians[key] = m
        hosts = Counter[str]()
        for r in rs:
            hosts.update(r["hosts"])
        table_rows.append([
            label,
            f"{m['wall']:.1f}",
            f"**{m['rate']:.1f}**",
            f"{m['first']:.1f}",
            f"{m['phase']:.1f}",
            f"{m['phase_rate']:.1f}",
            f"{m['phase_rate'] / IDEAL * 100:.0f}%",
            f"{m['peak']:.0f}",
            ", ".join(f"{h}: {n}" for h, n in sorted(hosts.items())),
            spread(rates, "{:.1f}"),
        ])
    if len(medians) == 2:
        a, b = medians["mapped"], medians["one"]
        table_rows.append([
            "**(a) / (b)**",
            fmt(a["wall"] / b["wall"], ".2f", "×"),
            f"**{a['rate'] / b['rate']:.2f}×**",
            fmt(a["first"] / b["first"], ".2f", "×"),
            fmt(a["phase"] / b["phase"], ".2f", "×"),
            fmt(a["phase_rate"] / b["phase_rate"], ".2f", "×"),
            "",
            "",
            "",
            "",
        ])
    out.append(table(
        ["Variant", "Run wall s", "Rows/s", "Trigger → first request s", "GLM phase s", "Rows/s in GLM phase",
         "% of ideal", "Server peak in flight", "Tasks per worker (all runs)", "Range rows/s"],
        table_rows,
    ))
    out.append("")
    if startup:
        out.append(
            f"Cluster start (once): `airflow db migrate` {fmt(startup.get('migrate'), '.0f')} s, then "
            f"{fmt(startup.get('ready'), '.0f')} s until all six processes were ready; stop "
            f"{fmt(startup.get('stop'), '.0f')} s."
        )
        out.append("")
    if len(medians) == 2:
        a, b = medians["mapped"], medians["one"]
        ratio = a["rate"] / b["rate"]
        verdict = "about the same rows/s as" if abs(ratio - 1) < 0.05 else (
            f"{abs(ratio - 1) * 100:.0f}% {'more' if ratio > 1 else 'fewer'} rows/s than")
        out.append(
            f"The pool held both variants to at most {POOL_SLOTS} requests in flight (server peaks "
            f"{a['peak']:.0f} and {b['peak']:.0f}). Eight mapped tasks on two workers gave {verdict} one task: "
            "the pool, sized to the account, caps throughput either way, and (a) leaves slots idle while each "
            "of its tasks starts and as each wave of four tasks ends, visible in its GLM phase "
            f"({a['phase']:.1f} s against {b['phase']:.1f} s). What the split buys is placement and recovery: "
            "the rows of one job run on both workers, and a failed partition is retried alone."
        )
        out.append("")
    return "\n".join(out)
