"""Shared pieces of the harness: the server process, worker processes, statistics and Markdown."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DAGS = Path(__file__).resolve().parent / "dags"
API_KEY = "test-key"
MODEL = "glm-4.5"
RESULT_PREFIX = "BENCH_RESULT "
VERSIONED = (
    "httpx",
    "zai-sdk",
    "openai",
    "apache-airflow",
    "apache-airflow-task-sdk",
    "sqlalchemy",
    "pydantic",
    "airflow-provider-glm",
)


class BenchError(RuntimeError):
    """A measurement could not be taken (its worker failed); reported in the Markdown, never hidden."""


def log(message: str) -> None:
    """Progress on stderr, so a long run shows where it is."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


@dataclass
class Context:
    """What every section gets: mode, sizes, the scratch directory and the worker environment."""

    quick: bool
    reps: int
    work: Path
    env: dict[str, str]
    compare_python: str | None = None
    errors: list[str] = field(default_factory=list)
    plots: dict[str, Any] = field(default_factory=dict)

    def tmp(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def worker_env(home: Path) -> dict[str, str]:
    """The environment of every worker: a private AIRFLOW_HOME, no inherited GLM connection or settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__", "GLM_", "ZAI_", "OPENAI_", "PYTHONPATH"))
        # byte code is cached, as on any deployment (otherwise each worker compiles every import anew)
        and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        PYTHONUNBUFFERED="1",
    )
    return env


def conn_json(base_url: str) -> str:
    """``AIRFLOW_CONN_GLM_DEFAULT`` pointing at a test server."""
    return json.dumps({"conn_type": "glm", "password": API_KEY, "host": base_url, "extra": {"model": MODEL}})


class ServerProcess:
    """The GLM test server in its own process (``python -m benchmarks._server``), driven over stdin.

    :param latency: seconds before each answer.
    :param concurrency_limit: answer 429 above this many requests in flight (None: unlimited).
    :param auto_reset: forget the server's records every so many seconds (long runs), 0: never.
    """

    def __init__(
        self,
        env: dict[str, str],
        latency: float = 0.0,
        concurrency_limit: int | None = None,
        auto_reset: float = 0.0,
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks._server",
            "--latency",
            str(latency),
            "--auto-reset",
            str(auto_reset),
        ]
        if concurrency_limit is not None:
            cmd += ["--concurrency-limit", str(concurrency_limit)]
        self._proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        assert self._proc.stdout is not None
        first = self._proc.stdout.readline()
        if not first:
            self._proc.wait(10)
            raise BenchError(f"the GLM test server process exited with {self._proc.returncode}")
        self.base_url: str = json.loads(first)["base_url"]
        self.latency = latency

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        """Send one command (``stats``, ``window``, ``reset``, ``cpu``, ``set``) and return its JSON "
        "answer."""
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise BenchError("the GLM test server process died")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self.call("quit")
                self._proc.wait(10)
            except (BenchError, OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_worker(
    target: str, params: dict[str, Any], env: dict[str, str], timeout: float = 900, python: str | None = None
) -> dict[str, Any]:
    """Run ``module:function(params)`` in a fresh ``python -m benchmarks._worker`` process; return its "
    "dict."""
    cmd = [python or sys.executable, "-m", "benchmarks._worker", target, json.dumps(params)]
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{target} timed out after {timeout:.0f} s") from exc
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            if "error" in result:
                raise BenchError(f"{target}: {result['error']}")
            return result
    tail = (done.stderr or done.stdout)[-1500:]
    raise BenchError(f"{target} exited {done.returncode} without a result: {tail}")


def run_process(
    cmd: Sequence[str], env: dict[str, str], timeout: float = 600, cwd: Path | None = None
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run a command; return its wall time and the completed process."""
    start = time.perf_counter()
    done = subprocess.run(
        list(cmd), env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO
    )
    return time.perf_counter() - start, done


def median(values: Iterable[float]) -> float:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else float("nan")


def spread(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    """``min–max`` of repeated runs (or the single value)."""
    data = [v for v in values if v is not None]
    if not data:
        return "-"
    if len(data) == 1:
        return fmt.format(data[0])
    return f"{fmt.format(min(data))}–{fmt.format(max(data))}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    v = versions()
    pkgs = ", ".join(f"{k} {val}" for k, val in v.items())
    return (
        f"**Machine:** {os.cpu_count()} cores ({cpu_model()}), {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}; {pkgs}"
    )


def guarded(ctx: Context, label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)``; on failure record the error (it goes into the report) and return None."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none aborts the run
        message = f"{label}: {type(exc).__name__}: {exc}"
        log("ERROR " + message[:500])
        ctx.errors.append(message)
        return None


def fmt(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    if value is None or value != value:  # None or NaN
        return "n/a"
    return f"{value:{spec}}{suffix}"


def save_raw(section: str, raw: dict[str, Any]) -> None:
    """With ``BENCH_RAW_DIR`` set, keep a section's raw measurements as JSON there (for re-checking a "
    "report)."""
    where = os.environ.get("BENCH_RAW_DIR")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / f"{section}.json").write_text(json.dumps(raw, indent=1, default=str))


def raw_fallback(title: str, raw: dict[str, Any], exc: Exception) -> str:
    """The section's raw measurements, when formatting them failed."""
    return (
        f"{title}\n\nFormatting the report failed (`{type(exc).__name__}: {exc}`); raw measurements:\n\n"
        f"<details><summary>raw JSON</summary>\n\n```json\n{json.dumps(raw, indent=1, default=str)}\n```\n\n"
        "</details>\n"
    )
