"""Section 2: client CPU time per chat call, sequential, against a zero-latency server.

``time.process_time()`` over N calls (after a warm-up) in a fresh process per client and run, for
this package's ``GLMClient`` and ``AsyncGLMClient``, the official ``zai-sdk`` and the ``openai`` SDK
pointed at the same server. Same request for all: one user message, model ``glm-4.5``.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks._common import (
    API_KEY,
    MODEL,
    Context,
    ServerProcess,
    fmt,
    guarded,
    log,
    median,
    run_worker,
    spread,
    table,
)

TITLE = "## 2. Client overhead"
CLIENTS = {
    "glm_sync": "airflow-provider-glm `GLMClient` (sync)",
    "glm_async": "airflow-provider-glm `AsyncGLMClient` (awaited one at a time)",
    "zai": "zai-sdk `ZhipuAiClient`",
    "openai": "openai `OpenAI().chat.completions.create`",
}


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Summarize: review number {i}: the pump works well"}]


def client_cpu(p: dict[str, Any]) -> dict[str, Any]:
    """Worker: CPU and wall time per call of one client over ``p["calls"]`` sequential calls."""
    kind, base, calls, warmup = p["kind"], p["base_url"], p["calls"], p["warmup"]
    if kind == "glm_async":
        import asyncio

        from airflow_provider_glm.client import AsyncGLMClient

        async def main() -> tuple[float, float]:
            async with AsyncGLMClient(API_KEY, base_url=base) as client:
                for i in range(warmup):
                    await client.chat_completion(MODEL, _messages(i))
                cpu0, wall0 = time.process_time(), time.perf_counter()
                for i in range(calls):
                    answer = await client.chat_completion(MODEL, _messages(i))
                    assert answer.content
                return time.process_time() - cpu0, time.perf_counter() - wall0

        cpu, wall = asyncio.run(main())
        return {"cpu": cpu, "wall": wall, "calls": calls}
    if kind == "glm_sync":
        from airflow_provider_glm.client import GLMClient

        client: Any = GLMClient(API_KEY, base_url=base)

        def call(i: int) -> str:
            return client.chat_completion(MODEL, _messages(i)).content
    elif kind == "zai":
        from zai import ZhipuAiClient

        client = ZhipuAiClient(api_key=API_KEY, base_url=base)

        def call(i: int) -> str:
            return (
                client.chat.completions.create(model=MODEL, messages=_messages(i)).choices[0].message.content
            )
    elif kind == "openai":
        import openai

        client = openai.OpenAI(base_url=base, api_key=API_KEY)

        def call(i: int) -> str:
            return (
                client.chat.completions.create(model=MODEL, messages=_messages(i)).choices[0].message.content
            )
    else:
        raise ValueError(kind)
    for i in range(warmup):
        call(i)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(calls):
        assert call(i)
    return {"cpu": time.process_time() - cpu0, "wall": time.perf_counter() - wall0, "calls": calls}


def run(ctx: Context) -> str:
    calls = 20 if ctx.quick else 300
    warmup = 3 if ctx.quick else 20
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in CLIENTS}
    with ServerProcess(ctx.env, latency=0.0) as srv:
        for rep in range(ctx.reps):
            for kind in CLIENTS:
                log(f"2 client overhead: {kind}, {calls} calls, run {rep + 1}/{ctx.reps}")
                res = guarded(
                    ctx,
                    f"2 {kind}",
                    run_worker,
                    "benchmarks.client_overhead:client_cpu",
                    {"kind": kind, "base_url": srv.base_url, "calls": calls, "warmup": warmup},
                    ctx.env,
                )
                if res:
                    runs[kind].append(res)
                srv.call("reset")
    zai = median(r["cpu"] / r["calls"] * 1000 for r in runs["zai"]) if runs["zai"] else None
    rows = []
    for kind, label in CLIENTS.items():
        if not runs[kind]:
            rows.append([label, "n/a", "n/a", "n/a", "n/a", "not measured (error)"])
            continue
        cpus = [r["cpu"] / r["calls"] * 1000 for r in runs[kind]]
        walls = [r["wall"] / r["calls"] * 1000 for r in runs[kind]]
        cpu = median(cpus)
        rows.append(
            [
                label,
                f"**{cpu:.3f}**",
                fmt(cpu / zai if zai else None, ".2f", "×"),
                f"{median(walls):.3f}",
                spread(cpus, "{:.3f}"),
                f"{1000 / median(walls):.0f}",
            ]
        )
    out = [
        TITLE,
        "",
        f"CPU time per call (`time.process_time()` of the client process over {calls} sequential calls after "
        f"{warmup} warm-up calls; median of {ctx.reps} run(s), each a fresh process) against the test server "
        "with zero latency. Wall time per call includes the server's own work (its process).",
        "",
        table(
            ["Client", "CPU ms/call", "vs zai-sdk", "Wall ms/call", "Range CPU ms", "Calls/s (sequential)"],
            rows,
        ),
        "",
    ]
    ours = [
        median(r["cpu"] / r["calls"] * 1000 for r in runs[k]) for k in ("glm_sync", "glm_async") if runs[k]
    ]
    if zai and ours:
        met = all(x <= zai for x in ours)
        out.append(
            f"Goal: ours ≤ zai-sdk's CPU per call: **{'met' if met else 'not met'}** "
            f"(sync {ours[0]:.3f} ms, async {ours[-1]:.3f} ms vs zai-sdk {zai:.3f} ms). Ours validates the "
            "request with pydantic, checks deadlines and response size while reading, and parses the answer "
            "into a typed `ChatCompletion`; zai-sdk and openai also build typed responses."
        )
        out.append("")
    return "\n".join(out)
