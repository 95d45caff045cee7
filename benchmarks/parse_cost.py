"""Section 3: DAG parse cost -- what importing the operator module adds on top of ``import airflow.sdk``.

Each measurement is a fresh interpreter (``python -c``, in an empty directory) that imports
``airflow.sdk`` first, then times the operator module import (and the class lookup). It also reports
which heavy modules the operator import itself loads: the HTTP client, the SQL engine and the
pydantic request/response models are meant to load lazily, at ``execute()``.

The comparison rows (``apache-airflow-providers-openai``, ``apache-airflow-providers-common-ai``) run in a
separate throwaway venv given by ``--compare-python`` (so the project venv stays clean)::

    .venv/bin/uv venv .bench-venv
    .venv/bin/uv pip install --python .bench-venv/bin/python apache-airflow==3.3.2 \\
        apache-airflow-providers-openai apache-airflow-providers-common-ai -e .
    .venv/bin/python -m benchmarks --sections parse --compare-python .bench-venv/bin/python
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from benchmarks._common import BenchError, Context, fmt, guarded, log, median, spread, table

TITLE = "## 3. DAG parse cost"
GOAL_MS = 50.0
OURS = ("airflow_provider_glm.operators.chat", "GLMChatOperator")
COMPARE = {
    "apache-airflow-providers-openai": (
        "airflow.providers.openai.operators.openai",
        "OpenAIEmbeddingOperator",
    ),
    "apache-airflow-providers-common-ai": ("airflow.providers.common.ai.operators.llm", "LLMOperator"),
}
CHECKS = (
    "httpx",
    "sqlalchemy",
    "pydantic",
    "airflow_provider_glm.client._client",
    "airflow_provider_glm.client.models",
    "airflow_provider_glm.sinks.sql",
    "airflow_provider_glm.hooks.glm",
    "openai",
    "pydantic_ai",
)

CODE = r"""
import importlib, json, sys, time
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
before = set(sys.modules)
t2 = time.perf_counter()
module = importlib.import_module(MODULE)
getattr(module, CLASS)
t3 = time.perf_counter()
after = set(sys.modules)
state = {n: ("airflow.sdk" if n in before else "operator import" if n in after else "no") for n in CHECKS}
result = {"sdk": t1 - t0, "op": t3 - t2, "added": len(after - before), "state": state}
print("BENCH_RESULT " + json.dumps(result))
"""


def _measure(ctx: Context, python: str, module: str, cls: str) -> dict[str, Any]:
    code = f"MODULE = {module!r}; CLASS = {cls!r}; CHECKS = {CHECKS!r}\n" + CODE
    done = subprocess.run(
        [python, "-c", code],
        cwd=ctx.tmp("parse-cwd"),
        env=ctx.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = json.loads(line[len("BENCH_RESULT ") :])
            return result
    raise BenchError(f"import of {module} in {python} failed: {(done.stderr or done.stdout)[-1200:]}")


def _versions(ctx: Context, python: str) -> dict[str, str]:
    names = ["apache-airflow", "airflow-provider-glm", *COMPARE]
    code = (
        "import importlib.metadata as m, json\nout = {}\n"
        f"for n in {names!r}:\n    try: out[n] = m.version(n)\n    except Exception: out[n] = 'not "
        "installed'\n"
        "print(json.dumps(out))"
    )
    done = subprocess.run(
        [python, "-c", code],
        cwd=ctx.tmp("parse-cwd"),
        env=ctx.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        result: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    except (IndexError, ValueError):
        return {}


def run(ctx: Context) -> str:
    reps = 1 if ctx.quick else max(5, ctx.reps)
    targets: list[tuple[str, str, str, str]] = [
        ("airflow-provider-glm (project venv)", sys.executable, *OURS)
    ]
    compare_versions: dict[str, str] = {}
    if ctx.compare_python:
        compare_versions = _versions(ctx, ctx.compare_python)
        for name, (module, cls) in COMPARE.items():
            targets.append(
                (f"{name} {compare_versions.get(name, '')}".strip(), ctx.compare_python, module, cls)
            )
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in targets}
    for rep in range(reps):
        for label, python, module, cls in targets:
            log(f"3 parse cost: {label}, run {rep + 1}/{reps}")
            res = guarded(ctx, f"3 {label}", _measure, ctx, python, module, cls)
            if res:
                runs[label].append(res)
    rows = []
    for label, _python, module, cls in targets:
        rs = runs[label]
        if not rs:
            rows.append([label, f"`{module}.{cls}`", "n/a", "n/a", "n/a", "n/a", "not measured (error)"])
            continue
        ops = [r["op"] * 1000 for r in rs]
        state = rs[-1]["state"]
        loads = ", ".join(f"{n}: {state[n]}" for n in ("httpx", "sqlalchemy", "pydantic") if n in state)
        rows.append(
            [
                label,
                f"`{module}.{cls}`",
                f"**{median(ops):.1f}**",
                spread(ops, "{:.1f}"),
                fmt(median(r["sdk"] * 1000 for r in rs), ".0f"),
                str(rs[-1]["added"]),
                loads,
            ]
        )
    if not ctx.compare_python:
        for name, (module, cls) in COMPARE.items():
            rows.append(
                [
                    name,
                    f"`{module}.{cls}`",
                    "not measured",
                    "-",
                    "-",
                    "-",
                    "needs `--compare-python` (a separate venv with the provider)",
                ]
            )
    out = [
        TITLE,
        "",
        f"Import time of the operator module on top of an already imported `airflow.sdk`, in fresh processes "
        f'(median of {reps}); "modules added" counts `sys.modules` entries the operator import adds. '
        f"Goal: < {GOAL_MS:.0f} ms added.",
        "",
        table(
            [
                "Operator module",
                "Imported",
                "Added ms",
                "Range ms",
                "`import airflow.sdk` ms",
                "Modules added",
                "Loaded by whom (httpx, sqlalchemy, pydantic)",
            ],
            rows,
        ),
        "",
    ]
    ours = runs[targets[0][0]]
    if ours:
        ms = median(r["op"] * 1000 for r in ours)
        state = ours[-1]["state"]
        lazy = [
            "airflow_provider_glm.client._client",
            "airflow_provider_glm.client.models",
            "airflow_provider_glm.sinks.sql",
            "airflow_provider_glm.hooks.glm",
        ]
        out.append(f"Goal < {GOAL_MS:.0f} ms: **{'met' if ms < GOAL_MS else 'not met'}** ({ms:.1f} ms).")
        out.append("")
        out.append(
            'Lazy loading ("the HTTP client and SQL engine are built lazily"), as seen in the same fresh '
            "process — `airflow.sdk` = already loaded before the operator import, `operator import` = loaded "
            "by it, `no` = not loaded:"
        )
        out.append("")
        out.append(
            table(
                ["Module", "Loaded by"],
                [[f"`{n}`", state.get(n, "?")] for n in ("httpx", "sqlalchemy", "pydantic", *lazy)],
            )
        )
        heavy_by_us = [
            n for n in ("httpx", "sqlalchemy", "pydantic", *lazy) if state.get(n) == "operator import"
        ]
        out.append("")
        sentence = "The operator import itself loads " + (
            "none of them." if not heavy_by_us else "**" + ", ".join(heavy_by_us) + "** (not lazy)."
        )
        already = [n for n in ("httpx", "sqlalchemy", "pydantic") if state.get(n) == "airflow.sdk"]
        if already:
            sentence += (
                f" ({', '.join(already)} {'is' if len(already) == 1 else 'are'} already imported by "
                "`airflow.sdk` itself, so the operator import pays nothing for it.)"
            )
        out.append(sentence)
        out.append("")
    if compare_versions:
        out.append(
            "Comparison venv (`--compare-python`): "
            + ", ".join(f"{k} {v}" for k, v in compare_versions.items())
            + "; same Airflow as the project venv, so the rows "
            "compare (its own `import airflow.sdk` is slower: more providers to discover)."
        )
        out.append("")
    return "\n".join(out)
