"""Section 1: row throughput against the ideal ``C/L``, beside bare aiohttp, httpx and zai-sdk, and a DAG run.

Two operating points (the GLM test server in its own process on loopback, ``L`` its latency):

* **C = 32, L = 100 ms, 1,000 rows** (ideal 320 rows/s): (a) ``GLMChatOperator.execute`` with the
  SQLite sink; (g) bare aiohttp, the library under the provider's client, one session with ``C``
  connections and a semaphore; (e) bare async httpx, one client with ``C`` connections and a
  semaphore, the plain way; (f) bare async httpx with one client per 8 workers, the tuned way;
  (c) zai-sdk in ``C`` threads.
* **C = 256, L = 1 s, 3,000 rows** (ideal 256 rows/s): (a) the operator, (g) bare aiohttp and (f)
  tuned bare httpx.

Plus (d) ``airflow dags test glm_bench_mapped`` (200 rows in 4 mapped tasks) and one cProfile of (a).
Each variant runs in a fresh worker process; runs are interleaved and reported as medians with ranges.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    API_KEY,
    MODEL,
    BenchError,
    Context,
    ServerProcess,
    conn_json,
    fmt,
    guarded,
    log,
    median,
    raw_fallback,
    run_process,
    run_worker,
    save_raw,
    spread,
    table,
)

TITLE = "## 1. Row throughput"
PROMPT = "Summarize: {{ row.text }}"
POINTS = {"c32": (32, 0.1, 1000), "c256": (256, 1.0, 3000)}
"""Operating point -> (concurrency C, latency L in s, rows)."""
VARIANTS = {"c32": ("a", "g", "e", "f", "c"), "c256": ("a", "g", "f")}
SHORT = {"a": "(A) OPERATOR", "g": "(G) AIOHTTP", "e": "(E) HTTPX, ONE CLIENT", "f": "(F) HTTPX, CLIENT PER 8",
         "c": "(C) ZAI-SDK THREADS"}
LABELS = {
    "a": "(a) GLMChatOperator row mode, `execute()`, SQLite sink",
    "g": "(g) bare aiohttp: one session, C connections, a semaphore",
    "e": "(e) bare async httpx: one client, C connections, a semaphore",
    "f": "(f) bare async httpx: a client per 8 workers (tuned)",
    "c": "(c) zai-sdk `ZhipuAiClient` in C threads",
}


def make_rows(n: int) -> list[dict[str, str]]:
    return [{"id": f"r{i:06d}", "text": f"review number {i}: the pump works well"} for i in range(n)]


class FakeTaskInstance:
    """The little of a task instance the operator reads when ``execute`` is called directly."""

    def __init__(self, dag_id: str = "bench", task_id: str = "bench_rows", run_id: str = "bench-run") -> None:
        self.dag_id, self.task_id, self.run_id = dag_id, task_id, run_id
        self.map_index, self.try_number = -1, 1
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


# ---------------------------------------------------------------- workers (each in a fresh process)


def operator_rows(p: dict[str, Any]) -> dict[str, Any]:
    """Worker: time ``GLMChatOperator.execute`` over ``p["rows"]`` rows (optionally under cProfile)."""
    os.environ["AIRFLOW_CONN_GLM_DEFAULT"] = conn_json(p["base_url"])
    import airflow.sdk  # noqa: F401  - what a DAG file has imported before the operator

    from airflow_provider_glm.operators.chat import GLMChatOperator

    op = GLMChatOperator(task_id="bench_rows", rows=make_rows(p["rows"]), row_key="id", prompt=PROMPT,
                         sqlalchemy_url=f"sqlite:///{p['db']}", max_concurrency=p["concurrency"],
                         progress_interval=3600)
    context: dict[str, Any] = {"ti": FakeTaskInstance(), "params": {}}
    phases = _watch_phases() if p.get("phases") else None
    profiler = None
    if p.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    op.execute(context)
    if profiler is not None:
        profiler.disable()
    out: dict[str, Any] = {"wall": time.perf_counter() - wall0, "cpu": time.process_time() - cpu0,
                           "rows": p["rows"], "ok": count_ok(p["db"])}
    if profiler is not None:
        out.update(_profile_lines(profiler))
    if phases is not None:
        waits = sorted(phases["waits"])
        out.update(first_send=phases["sends"][0] - wall0, last_answer=max(phases["answers"]) - wall0,
                   commit_wait_mean=sum(waits) / len(waits), commit_wait_p90=waits[int(len(waits) * 0.9)],
                   call_p50=sorted(phases["calls"])[len(phases["calls"]) // 2])
    return out


def _watch_phases() -> dict[str, list[float]]:
    """Timestamps of the operator's calls and how long each worker waited for its results' commit.

    Wraps ``AsyncGLMClient.send_chat`` and ``RecordWriter.flush`` (a measurement run of its own, like the
    profile)."""
    from airflow_provider_glm.client import AsyncGLMClient
    from airflow_provider_glm.rows._writer import RecordWriter

    seen: dict[str, list[float]] = {"sends": [], "answers": [], "calls": [], "waits": []}
    post, flush = AsyncGLMClient.send_chat, RecordWriter.flush

    async def timed_post(self: AsyncGLMClient, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        seen["sends"].append(start)
        answer = await post(self, *args, **kwargs)
        seen["answers"].append(time.perf_counter())
        seen["calls"].append(seen["answers"][-1] - start)
        return answer

    async def timed_flush(self: RecordWriter) -> None:
        start = time.perf_counter()
        await flush(self)
        seen["waits"].append(time.perf_counter() - start)

    AsyncGLMClient.send_chat = timed_post  # type: ignore[method-assign]
    RecordWriter.flush = timed_flush  # type: ignore[method-assign]
    return seen


def httpx_rows(p: dict[str, Any]) -> dict[str, Any]:
    """Worker: the same requests with bare async httpx (no validation, pricing or SQL)."""
    import asyncio

    import httpx

    concurrency, per_client = p["concurrency"], p["per_client"]
    url = f"{p['base_url']}/chat/completions"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    rows = make_rows(p["rows"])

    async def main() -> int:
        count = -(-concurrency // per_client)
        clients = [httpx.AsyncClient(limits=httpx.Limits(max_connections=per_client,
                                                         max_keepalive_connections=per_client), timeout=60)
                   for _ in range(count)]
        semaphore = asyncio.Semaphore(concurrency)

        async def one(index: int, row: dict[str, str]) -> int:
            async with semaphore:
                body = {"model": MODEL, "messages": [{"role": "user", "content": f"Summarize: {row['text']}"}]}
                answer = await clients[index % count].post(url, json=body, headers=headers)
                return int(answer.status_code == 200 and bool(answer.json()["choices"][0]["message"]["content"]))

        try:
            return sum(await asyncio.gather(*(one(i, r) for i, r in enumerate(rows))))
        finally:
            for client in clients:
                await client.aclose()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    ok = asyncio.run(main())
    return {"wall": time.perf_counter() - wall0, "cpu": time.process_time() - cpu0, "rows": p["rows"], "ok": ok}


def aiohttp_rows(p: dict[str, Any]) -> dict[str, Any]:
    """Worker: the same requests with bare aiohttp, the library the provider's client runs on."""
    import asyncio
    import json

    import aiohttp

    concurrency = p["concurrency"]
    url = f"{p['base_url']}/chat/completions"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    rows = make_rows(p["rows"])

    async def main() -> int:
        semaphore = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

            async def one(row: dict[str, str]) -> int:
                async with semaphore:
                    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Summarize: {row['text']}"}]}
                    async with session.post(url, data=json.dumps(body), headers=headers) as answer:
                        parsed = json.loads(await answer.read())
                        return int(answer.status == 200 and bool(parsed["choices"][0]["message"]["content"]))

            return sum(await asyncio.gather(*(one(r) for r in rows)))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    ok = asyncio.run(main())
    return {"wall": time.perf_counter() - wall0, "cpu": time.process_time() - cpu0, "rows": p["rows"], "ok": ok}


def zai_rows(p: dict[str, Any]) -> dict[str, Any]:
    """Worker: the official zai-sdk, one call per row, in a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    from zai import ZhipuAiClient

    client = ZhipuAiClient(api_key=API_KEY, base_url=p["base_url"])

    def one(row: dict[str, str]) -> str:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Summarize: {row['text']}"}])
        return str(answer.choices[0].message.content)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(p["concurrency"]) as pool:
        answers = list(pool.map(one, make_rows(p["rows"])))
    return {"wall": time.perf_counter() - wall0, "cpu": time.process_time() - cpu0, "rows": p["rows"],
            "ok": sum(1 for a in answers if a)}


def count_ok(db: str, table_name: str = "glm_results") -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table_name} WHERE status = 'ok'").fetchone()[0])


def _profile_lines(profiler: Any) -> dict[str, Any]:
    import io
    import pstats

    out: dict[str, Any] = {}
    for key, limit in (("tottime", 20), ("cumulative", 25)):
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats(key).print_stats(limit)
        lines = [ln for ln in buf.getvalue().splitlines() if re.match(r"\s*\d", ln)]
        out[f"profile_{key}"] = [re.sub(r"\S+\.py", lambda m: _short(m.group(0)), ln) for ln in lines]
    return out


def _short(path: str) -> str:
    for marker in ("site-packages/", "airflow_provider_glm/", "python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# ---------------------------------------------------------------- harness side


def _measure(ctx: Context, srv: ServerProcess, env: dict[str, str], point: str, variant: str, rows: int,
             rep: int, profile: bool = False, phases: bool = False) -> dict[str, Any]:
    concurrency = POINTS[point][0]
    srv.call("reset")
    params: dict[str, Any] = {"base_url": srv.base_url, "rows": rows, "concurrency": concurrency}
    if variant == "a":
        params.update(db=str(ctx.tmp("throughput") / f"{point}-{rep}{'-p' if profile or phases else ''}.db"),
                      profile=profile, phases=phases)
        result = run_worker("benchmarks.throughput:operator_rows", params, env)
    elif variant == "g":
        result = run_worker("benchmarks.throughput:aiohttp_rows", params, env)
    elif variant in ("e", "f"):
        params["per_client"] = concurrency if variant == "e" else 8
        result = run_worker("benchmarks.throughput:httpx_rows", params, env)
    else:
        result = run_worker("benchmarks.throughput:zai_rows", params, env)
    result["peak"] = srv.call("stats").get("peak_in_flight")
    if result["ok"] != rows:
        raise BenchError(f"{LABELS[variant]} answered {result['ok']} of {rows} rows")
    return result


def run(ctx: Context) -> str:
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    profile: dict[str, Any] | None = None
    phases: dict[str, Any] | None = None
    dags: list[dict[str, Any]] = []
    for point, (concurrency, latency, rows) in POINTS.items():
        rows = max(concurrency, rows // 20) if ctx.quick else rows
        with ServerProcess(ctx.env, latency=latency) as srv:
            env = dict(ctx.env, AIRFLOW_CONN_GLM_DEFAULT=conn_json(srv.base_url))
            for rep in range(ctx.reps):
                for variant in VARIANTS[point]:
                    log(f"1 {point} {LABELS[variant][:3]} {rows} rows, run {rep + 1}/{ctx.reps}")
                    got = guarded(ctx, f"1 {point} {variant}", _measure, ctx, srv, env, point, variant, rows, rep)
                    if got:
                        runs.setdefault((point, variant), []).append(got)
            if point == "c32" and not ctx.quick:
                log("1 c32 (a) once more under cProfile")
                profile = guarded(ctx, "1 profile", _measure, ctx, srv, env, point, "a", rows, 99, profile=True)
                dags = _dag_runs(ctx, env)
            if point == "c256":
                log("1 c256 (a) once more, timing its phases")
                phases = guarded(ctx, "1 phases", _measure, ctx, srv, env, point, "a", rows, 98, phases=True)
    raw = {"runs": {f"{p}:{v}": r for (p, v), r in runs.items()}, "profile": profile, "dags": dags,
           "phases": phases}
    save_raw("throughput", raw)
    try:
        return _report(ctx, runs, profile, dags, phases)
    except Exception as exc:  # noqa: BLE001 - keep the measurements even if the report code breaks
        ctx.errors.append(f"1 report: {type(exc).__name__}: {exc}")
        return raw_fallback(TITLE, raw, exc)


def _phases_text(phases: dict[str, Any], rows_shown: int) -> str:
    concurrency, latency, _ = POINTS["c256"]
    waves = -(-rows_shown // concurrency)
    return (f"Where (a)'s time goes at C = {concurrency}, L = {latency:g} s (one more run, its calls and commits "
            f"timed): {phases['rows'] / phases['wall']:.1f} rows/s in {phases['wall']:.2f} s. The first request "
            f"left {phases['first_send']:.3f} s after `execute()` began (connection, tables, rendering and "
            f"validating all {rows_shown:,} rows before any call); a call took {phases['call_p50'] * 1000:.0f} ms "
            f"(median); after each answer its worker waited {phases['commit_wait_mean'] * 1000:.1f} ms on average "
            f"(p90 {phases['commit_wait_p90'] * 1000:.1f} ms) for the answer's commit before taking its next row "
            "(the writer's group commit: a crash loses at most the answers in flight). "
            f"{rows_shown:,} rows at C = {concurrency} are {waves} round(s) of L, so even with no overhead at all the "
            f"run would reach {rows_shown / (waves * latency):.1f} rows/s "
            f"({rows_shown / (waves * latency) / (concurrency / latency) * 100:.1f}% of C/L).")


def _dag_runs(ctx: Context, env: dict[str, str]) -> list[dict[str, Any]]:
    """(d): ``airflow dags test glm_bench_mapped``, 200 rows in 4 mapped tasks, the whole command timed."""
    from benchmarks._common import REPO

    airflow = str(Path(sys.executable).with_name("airflow"))
    wall, done = run_process([airflow, "db", "migrate"], env, timeout=600)
    if done.returncode != 0:
        ctx.errors.append(f"1(d) airflow db migrate failed: {(done.stderr or done.stdout)[-800:]}")
        return []
    out = []
    for rep in range(ctx.reps):
        log(f"1(d) airflow dags test glm_bench_mapped, run {rep + 1}/{ctx.reps}")
        warehouse = ctx.tmp("throughput") / f"dag-{rep}.db"
        run_env = dict(env, GLM_WAREHOUSE_URL=f"sqlite:///{warehouse}", GLM_BENCH_ROWS="200", GLM_BENCH_BATCHES="4",
                       GLM_BENCH_CONCURRENCY="32")
        wall, done = run_process([airflow, "dags", "test", "glm_bench_mapped"], run_env, timeout=600, cwd=REPO)
        if done.returncode != 0 or "state=success" not in done.stdout + done.stderr:
            ctx.errors.append(f"1(d) dags test failed: {(done.stdout + done.stderr)[-800:]}")
            continue
        out.append({"wall": wall, "rows": 200})
    return out


def _report(ctx: Context, runs: dict[tuple[str, str], list[dict[str, Any]]], profile: dict[str, Any] | None,
            dags: list[dict[str, Any]], phases: dict[str, Any] | None = None) -> str:
    out = [TITLE, ""]
    out.append(f"Medians of {ctx.reps} interleaved run(s) per variant, each in a fresh process, against the GLM "
               "test server in its own process on loopback. Client CPU is `time.process_time()` of the client "
               "process over the timed part divided by rows: for (a) it includes everything `execute()` does "
               "(validating and rendering every row up front, the SQLite tables, pricing, results and ledger "
               "writes, the fixed start-up); (g), (e), (f) and (c) only send requests.")
    verdicts = []
    for point, (concurrency, latency, rows) in POINTS.items():
        ideal = concurrency / latency
        rows_shown = max(concurrency, rows // 20) if ctx.quick else rows
        out += ["", f"**C = {concurrency}, L = {latency * 1000:.0f} ms, {rows_shown:,} rows: ideal C/L = "
                    f"{ideal:.0f} rows/s**", ""]
        base = runs.get((point, "a"))
        base_rate = median(r["rows"] / r["wall"] for r in base) if base else None
        body = []
        for variant in VARIANTS[point]:
            measured = runs.get((point, variant), [])
            if not measured:
                body.append([LABELS[variant], "n/a", "n/a", "n/a", "n/a", "n/a", "not measured (error)"])
                continue
            rates = [r["rows"] / r["wall"] for r in measured]
            rate = median(rates)
            cpu = median(r["cpu"] / r["rows"] * 1000 for r in measured)
            body.append([LABELS[variant], f"**{rate:.1f}**", f"{rate / ideal * 100:.1f}%",
                         fmt(base_rate / rate if base_rate else None, ".2f", "×"), f"{cpu:.2f}",
                         fmt(median(r.get("peak") or 0 for r in measured), ".0f"), spread(rates, "{:.1f}")])
        out.append(table(["Variant", "Rows/s", "% of ideal", "(a) ÷ this", "Client CPU ms/row",
                          "Server peak in flight", "Range rows/s"], body))
        if base_rate is not None:
            if point == "c256":
                verdicts.append(f"C=256, L=1 s: (a) at {base_rate / ideal * 100:.1f}% of ideal (goal ≥ 93%: "
                                f"**{'met' if base_rate >= 0.93 * ideal else 'not met'}**).")
            bare = runs.get((point, "g"))
            if bare and point == "c32":
                bare_rate = median(r["rows"] / r["wall"] for r in bare)
                verdicts.append(f"C=32, L=100 ms: (a) ÷ (g) bare aiohttp = {base_rate / bare_rate:.2f}× (goal ≥ "
                                f"0.95: **{'met' if base_rate >= 0.95 * bare_rate else 'not met'}**).")
            cpu_a = median(r["cpu"] / r["rows"] * 1000 for r in base or [])
            if point == "c32":
                verdicts.append(f"Client CPU per row of (a), end to end, at C={concurrency}: {cpu_a:.2f} ms "
                                f"(goal ≤ 1.5 ms: **{'met' if cpu_a <= 1.5 else 'not met'}**).")
    out += ["", "Goals:", "", *[f"- {v}" for v in verdicts]]
    if phases:
        out += ["", _phases_text(phases, rows_shown=max(256, 3000 // 20) if ctx.quick else POINTS["c256"][2])]
    if dags:
        walls = [d["wall"] for d in dags]
        out += ["", f"(d) `airflow dags test glm_bench_mapped` (200 rows in 4 mapped tasks, whole command, process "
                    f"start included): median {median(walls):.1f} s ({spread(walls, '{:.1f}')} s); almost all of it "
                    "is Airflow's own start-up and scheduling, and mapped tasks run one after another under "
                    "`dags test`."]
    else:
        skipped = "(d) `airflow dags test glm_bench_mapped`: skipped in --quick mode (a run takes ~20 s)."
        out += ["", skipped if ctx.quick else "(d) `airflow dags test` not measured (error)."]
    if profile:
        out += ["", "<details><summary>cProfile of one extra (a) run at C = 32 (slower under the profiler)"
                    "</summary>", "", "By own time:", "", "```", *profile.get("profile_tottime", []), "```", "",
                "By cumulative time:", "", "```", *profile.get("profile_cumulative", []), "```", "", "</details>"]
    ctx.plots["throughput"] = {
        "bars": [(SHORT[v], median(r["rows"] / r["wall"] for r in runs[("c32", v)]))
                 for v in VARIANTS["c32"] if runs.get(("c32", v))],
        "ideal": POINTS["c32"][0] / POINTS["c32"][1],
    }
    out.append("")
    return "\n".join(out)
