"""``python -m benchmarks [--quick] [--sections a,b] [--out docs/benchmarks.md] [--compare-python PY]``.

Runs the sections (see :mod:`benchmarks`), writes the Markdown report and, when section 1 ran, the
throughput plot ``benchmarks-throughput.png`` next to it. Exit status 1 when any measurement failed
(the report still says which, and why).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import SECTIONS
from benchmarks._common import REPO, Context, log, machine_line, worker_env

PLOT_NAME = "benchmarks-throughput.png"
QUICK_NOTE = "**quick mode: tiny sizes, one run each — the numbers mean nothing**; "
TITLES = {
    "throughput": "## 1. Row throughput",
    "client": "## 2. Client overhead",
    "parse": "## 3. DAG parse cost",
    "memory": "## 4. Memory",
    "sink": "## 5. Sink write rate",
    "celery": "## 6. Celery scaling",
    "spend": "## 7. Spend page",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, one run each (seconds; for the smoke test)"
    )
    parser.add_argument(
        "--sections",
        default="all",
        help="comma-separated: throughput,client,parse,memory,sink,celery,spend or 1..7 (default all)",
    )
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="Markdown report path")
    parser.add_argument(
        "--compare-python",
        default=None,
        help="python of a throwaway venv with apache-airflow-providers-openai and -common-ai "
        "(section 3's comparison rows; 'not measured' without it)",
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3, quick 1)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.compare_python:  # workers run elsewhere; abspath keeps the venv's own python (no symlink resolution)
        args.compare_python = os.path.abspath(args.compare_python)
    return args


def select(spec: str) -> list[str]:
    keys = list(SECTIONS)
    if spec.strip().lower() == "all":
        return keys
    chosen = []
    for part in (p.strip().lower() for p in spec.split(",") if p.strip()):
        if part.isdigit() and 1 <= int(part) <= len(keys):
            part = keys[int(part) - 1]
        if part not in SECTIONS:
            raise SystemExit(f"unknown section {part!r}; choose from {', '.join(keys)} or 1..{len(keys)}")
        if part not in chosen:
            chosen.append(part)
    return [k for k in keys if k in chosen]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = select(args.sections)
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="glm-bench-"))
    home = work / "airflow-home"
    home.mkdir()
    ctx = Context(
        quick=args.quick,
        reps=args.reps or (1 if args.quick else 3),
        work=work,
        env=worker_env(home),
        compare_python=args.compare_python,
    )
    started = time.perf_counter()
    bodies: dict[str, str] = {}
    loads: dict[str, tuple[float, float]] = {}
    try:
        for key in chosen:
            log(f"section {key}")
            module = importlib.import_module(SECTIONS[key])
            before = len(ctx.errors)
            load0 = os.getloadavg()[0]
            try:
                bodies[key] = module.run(ctx)
            except Exception as exc:  # noqa: BLE001 - a broken section is reported, the others still run
                ctx.errors.append(f"{key}: {type(exc).__name__}: {exc}")
                log(f"ERROR section {key}: {exc}")
                bodies[key] = f"{TITLES[key]}\n\nFailed: `{type(exc).__name__}: {exc}`\n"
            loads[key] = (load0, os.getloadavg()[0])
            bodies[key] += (
                f"\n_Machine load (1-min load average) at this section's start / end: "
                f"{load0:.2f} / {loads[key][1]:.2f} on {os.cpu_count()} cores._\n"
            )
            if len(ctx.errors) > before:
                bodies[key] += (
                    "\n**Errors in this section:**\n\n"
                    + "\n".join(f"- `{e[:400]}`" for e in ctx.errors[before:])
                    + "\n"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    plot_note = _plot(ctx, out.parent / PLOT_NAME)
    earlier = _earlier_sections(out.read_text(encoding="utf-8")) if out.exists() else {}
    out.write_text(_document(args, chosen, bodies, elapsed, plot_note, earlier), encoding="utf-8")
    log(f"wrote {out} in {elapsed:.0f} s" + (f" with {len(ctx.errors)} error(s)" if ctx.errors else ""))
    return 1 if ctx.errors else 0


def _plot(ctx: Context, path: Path) -> str:
    data = ctx.plots.get("throughput")
    if not data or not data["bars"]:
        return ""
    from benchmarks._png import bar_chart

    path.write_bytes(
        bar_chart(
            data["bars"],
            ideal=data["ideal"],
            title="ROWS/S, L = 100 MS, C = 32",
            ideal_label=f"IDEAL C/L = {data['ideal']:.0f}",
        )
    )
    return f"![Row throughput against the ideal C/L]({path.name})\n"


def _earlier_sections(text: str) -> dict[str, str]:
    """The sections of an earlier report, by key, so that ``--sections`` replaces only what it ran."""
    found: dict[str, str] = {}
    starts = [(text.find(f"{title}\n"), key) for key, title in TITLES.items()]
    starts = sorted((pos, key) for pos, key in starts if pos >= 0)
    for (pos, key), (end, _) in zip(starts, [*starts[1:], (len(text), "")], strict=True):
        body = text[pos:end].rstrip() + "\n"
        if "Not run in this invocation" not in body:
            found[key] = body
    return found


def _document(
    args: argparse.Namespace, chosen: list[str], bodies: dict[str, str], elapsed: float, plot_note: str,
    earlier: dict[str, str] | None = None,
) -> str:
    cmd = " ".join(["python -m benchmarks", *(shlex.quote(a) for a in args.argv)])
    parts = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/` (`make bench` = `.venv/bin/python -m benchmarks`); do not edit by hand.",
        "",
        machine_line(),
        "",
        f"Command: `{cmd.strip()}`; {QUICK_NOTE if args.quick else ''}"
        f"total {elapsed:.0f} s, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "Method: the GLM test server (`airflow_provider_glm.testing.GLMTestServer`) runs in its own process "
        "(`benchmarks/_server.py`) on 127.0.0.1; each client under test runs in a fresh worker process "
        "(`benchmarks/_worker.py`), so the server never shares the client's GIL. Figures are medians of "
        "repeated "
        "runs; ranges show min–max. Other processes on the machine were not stopped: each section ends "
        "with the "
        "load average it ran under (2 cores: a load above ~2 means the benchmark shared the CPU and its "
        "numbers are "
        "lower bounds).",
        "",
    ]
    earlier = earlier or {}
    kept = [key for key in SECTIONS if key not in chosen and key in earlier]
    if kept:
        parts += [f"Sections {', '.join(TITLES[k].split('.')[0].lstrip('# ') for k in kept)} were not run by this "
                  "command (`--sections`): they are kept as an earlier run of `make bench` wrote them, each with "
                  "the load it ran under.", ""]
    if plot_note:
        parts += [plot_note]
    elif "throughput" in kept:
        parts += [f"![Row throughput against the ideal C/L]({PLOT_NAME})\n"]
    for key in SECTIONS:
        if key in chosen:
            parts.append(bodies.get(key, f"{TITLES[key]}\n\nNo output.\n"))
        elif key in earlier:
            parts.append(earlier[key])
        else:
            parts.append(f"{TITLES[key]}\n\nNot run in this invocation (`--sections`).\n")
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
