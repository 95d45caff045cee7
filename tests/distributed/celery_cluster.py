"""An Airflow 3 cluster on the CeleryExecutor, as separate processes, for one test or benchmark run.

:class:`CeleryCluster` starts the API server, scheduler, DAG processor, triggerer and N Celery
workers (two by default) from its own ``AIRFLOW_HOME``, with Redis as the broker (an empty database
number of its own, flushed afterwards) and PostgreSQL as metadata database and Celery result backend
(a database of its own, created at start and dropped at the end). Every process runs in its own
process group and is stopped by PID on exit (SIGTERM, then SIGKILL after a grace period), and any
process left in its group is killed too, also when the run failed.

Example::

    with CeleryCluster(ClusterSettings(home=tmp_path / "airflow", dags_folder=DAGS,
                                       env={"AIRFLOW_CONN_GLM_DEFAULT": conn_json})) as cluster:
        cluster.create_pool("glm_account", slots=16)
        cluster.wait_for_dag("glm_celery_mapped")
        run_id = cluster.trigger("glm_celery_mapped", conf={"rows": 4000})
        assert cluster.wait_for_run("glm_celery_mapped", run_id) == "success"
        hosts = {ti["hostname"] for ti in cluster.task_instances("glm_celery_mapped", run_id)}

Each Celery worker records its own name as the ``hostname`` of the task instances it runs
(``[core] hostname_callable`` = :func:`worker_hostname.worker_name`), so a test can tell the workers
apart from Airflow's own records. Readiness is awaited, never slept for: ``/api/v2/monitor/health``
must report the metadatabase, scheduler, triggerer and DAG processor healthy, and each worker's log
must show Celery's ``ready.`` line.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from scratch_services import POSTGRES_URL, REDIS_URL, free_ports, scratch_database, scratch_redis_db
from service_process import Service

__all__ = ["CeleryCluster", "ClusterError", "ClusterSettings"]

HERE = Path(__file__).resolve().parent
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
HEALTH_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
FINISHED_RUN_STATES = frozenset({"success", "failed"})
POLL_SECONDS = 0.5
"""Pause between two looks at something awaited (a log line, an endpoint); never a wait for readiness."""
T = TypeVar("T")


class ClusterError(RuntimeError):
    """The cluster did not start, a process died, or something awaited did not happen in time."""


@dataclass
class ClusterSettings:
    """What a :class:`CeleryCluster` runs and where.

    :param home: its ``AIRFLOW_HOME`` (created); process logs go to ``home/process-logs``.
    :param dags_folder: the DAGs folder every process reads.
    :param env: extra environment for every process (connections, the warehouse URL, ...).
    :param workers: one Celery worker per name; the name is also its task instances' ``hostname``.
    :param worker_concurrency: task slots per worker. A worker holds at most this many tasks (Airflow
        sets Celery's prefetch multiplier to 1 and acks late), so with 2 slots each, four tasks
        admitted at once by a pool must spread over both workers.
    :param postgres_url: any database on the PostgreSQL server; the cluster creates its own there.
    :param redis_url: the Redis server, without a database number.
    :param start_timeout: seconds for ``airflow db migrate`` and again for every process to be ready.
    :param stop_grace: seconds between SIGTERM and SIGKILL on exit.
    """

    home: Path
    dags_folder: Path
    env: Mapping[str, str] = field(default_factory=dict)
    workers: Sequence[str] = ("glm-worker-a", "glm-worker-b")
    worker_concurrency: int = 2
    postgres_url: str = POSTGRES_URL
    redis_url: str = REDIS_URL
    start_timeout: float = 600.0
    stop_grace: float = 60.0


class CeleryCluster:
    """Airflow on the CeleryExecutor: API server, scheduler, DAG processor, triggerer and the workers.

    Use as a context manager: entering creates the databases, migrates, starts every process and
    waits until all are ready; leaving stops them all and gives the databases back.

    :param settings: what to run and where.
    """

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.services: list[Service] = []
        self.metadata_url = ""
        self.broker_url = ""
        self.api_url = ""
        self.timings: dict[str, float] = {}
        """Seconds each phase took: ``migrate``, ``ready`` (processes started until all ready), ``stop``."""
        self._stack = contextlib.ExitStack()
        self._http: httpx.Client | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> CeleryCluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _start(self) -> None:
        s = self.settings
        s.home.mkdir(parents=True, exist_ok=True)
        (s.home / "process-logs").mkdir(exist_ok=True)
        self.broker_url = self._stack.enter_context(scratch_redis_db(s.redis_url))
        self.metadata_url = self._stack.enter_context(scratch_database("glm_celery_airflow", s.postgres_url))
        self._stack.callback(self._stop_services)
        api_port, trigger_log_port, *worker_log_ports = free_ports(2 + len(s.workers))
        self.api_url = f"http://127.0.0.1:{api_port}"
        env = self._base_env(api_port, trigger_log_port)
        began = time.monotonic()
        self._migrate(env)
        self.timings["migrate"] = time.monotonic() - began
        self.services = [
            self._service("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(api_port)], env),
            self._service("scheduler", ["scheduler"], env),
            self._service("dag-processor", ["dag-processor"], env),
            self._service("triggerer", ["triggerer"], env),
        ]
        for name, log_port in zip(s.workers, worker_log_ports, strict=True):
            worker_env = dict(env, GLM_CELERY_WORKER_NAME=name,
                              AIRFLOW__CORE__HOSTNAME_CALLABLE="worker_hostname.worker_name",
                              AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(log_port))
            argv = ["celery", "worker", "--celery-hostname", name, "--concurrency", str(s.worker_concurrency),
                    "--without-mingle", "--without-gossip"]
            self.services.append(self._service(f"worker-{name}", argv, worker_env))
        began = time.monotonic()
        for service in self.services:
            service.start()
        self._http = httpx.Client(base_url=self.api_url, timeout=60.0)
        deadline = time.monotonic() + s.start_timeout
        self._await("the API server to report every component healthy", self._healthy, deadline)
        for name in s.workers:
            self._await(f"Celery worker {name} to be ready", functools.partial(self._worker_ready, name), deadline)
        self.timings["ready"] = time.monotonic() - began

    def _base_env(self, api_port: int, trigger_log_port: int) -> dict[str, str]:
        s = self.settings
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GLM_", "PYTHONPATH"))}
        backend = self.metadata_url.replace("postgresql+psycopg2://", "db+postgresql+psycopg2://", 1)
        env = {
            **inherited,
            "AIRFLOW_HOME": str(s.home),
            "PYTHONPATH": str(HERE),  # worker_hostname, for the workers' hostname_callable
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(s.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_url,
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": backend,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(s.worker_concurrency),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log_port),
            # One file, parsed once at start: no second parser, no periodic re-parse competing for the CPU.
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "300",
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "600",
        }
        env.update(s.env)
        return env

    def _service(self, name: str, argv: list[str], env: dict[str, str]) -> Service:
        return Service(name, [AIRFLOW, *argv], env, self.settings.home / "process-logs" / f"{name}.log")

    def _migrate(self, env: dict[str, str]) -> None:
        log_path = self.settings.home / "process-logs" / "db-migrate.log"
        with log_path.open("wb") as log:
            try:
                done = subprocess.run([AIRFLOW, "db", "migrate"], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, timeout=self.settings.start_timeout,
                                      start_new_session=True)
            except subprocess.TimeoutExpired as exc:
                raise ClusterError(f"airflow db migrate did not finish in {exc.timeout:.0f} s") from exc
        if done.returncode != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
            raise ClusterError(f"airflow db migrate exited {done.returncode}:\n{tail}")

    def close(self) -> None:
        """Stop every process, drop the metadata database, flush the broker database (idempotent)."""
        if self._http is not None:
            self._http.close()
            self._http = None
        self._stack.close()

    def _stop_services(self) -> None:
        began = time.monotonic()
        started = [s for s in self.services if s.popen is not None]
        for service in started:
            service.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.stop_grace
        for service in started:
            if not service.wait(deadline):
                service.send_signal(signal.SIGKILL)
                service.wait(time.monotonic() + 30)
        for service in started:
            service.kill_group()
        self.timings["stop"] = time.monotonic() - began

    # ------------------------------------------------------------------ waiting

    def _await(self, what: str, check: Callable[[], T | None], deadline: float) -> T:
        """Look at ``check`` until it returns something truthy; fail at once if a process died.

        A look that cannot reach the API server (a busy machine, a restarting worker) counts as "not
        yet"; the last such error is part of the timeout's message.
        """
        unreachable: Exception | None = None
        while True:
            self._raise_if_a_process_died(what)
            try:
                result = check()
            except httpx.TransportError as exc:
                result, unreachable = None, exc
            if result:
                return result
            if time.monotonic() >= deadline:
                last = f" (last API error: {type(unreachable).__name__}: {unreachable})" if unreachable else ""
                raise ClusterError(f"timed out waiting for {what}{last}\n{self.failure_report()}")
            time.sleep(POLL_SECONDS)

    def _raise_if_a_process_died(self, waiting_for: str) -> None:
        for service in self.services:
            code = service.exit_code()
            if code is not None:
                raise ClusterError(f"{service.name} exited with {code} while waiting for {waiting_for}\n"
                                   f"{self.failure_report()}")

    def _worker_ready(self, name: str) -> bool:
        return f"@{name} ready." in self.service(f"worker-{name}").log_text()

    def _healthy(self) -> bool:
        answer = self.http.get("/api/v2/monitor/health")
        if answer.status_code != 200:
            return False
        body = answer.json()
        return all((body.get(part) or {}).get("status") == "healthy" for part in HEALTH_COMPONENTS)

    # ------------------------------------------------------------------ the REST API

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            raise ClusterError("the cluster is not running")
        return self._http

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the public REST API (``/api/v2/...``); the JSON answer, or :class:`ClusterError`."""
        answer = self.http.request(method, f"/api/v2/{path.lstrip('/')}", **kwargs)
        if answer.status_code >= 400:
            raise ClusterError(f"{method} {path}: HTTP {answer.status_code}: {answer.text[:2000]}")
        return answer.json() if answer.content else None

    def create_pool(self, name: str, slots: int) -> None:
        """Create the Airflow pool ``name`` with ``slots`` slots (deferred tasks do not hold one)."""
        self.api("POST", "pools", json={"name": name, "slots": slots, "include_deferred": False})

    def wait_for_dag(self, dag_id: str, timeout: float = 300.0) -> None:
        """Wait until the DAG processor has stored ``dag_id``; fail at once on an import error."""

        def parsed() -> bool:
            errors = self.api("GET", "importErrors")["import_errors"]
            if errors:
                details = "\n".join(f"{e['filename']}:\n{e['stack_trace']}" for e in errors)
                raise ClusterError(f"DAG import errors:\n{details}")
            return self.http.get(f"/api/v2/dags/{dag_id}").status_code == 200

        self._await(f"DAG {dag_id} to be parsed", parsed, time.monotonic() + timeout)

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Start a run of ``dag_id`` now; its run id."""
        run = self.api("POST", f"dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf or {})})
        return str(run["dag_run_id"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900.0,
                     on_poll: Callable[[], None] | None = None) -> str:
        """Wait until the run has finished; its final state (``success`` or ``failed``).

        :param on_poll: called at every look (e.g. to script faults as the run progresses).
        """

        def finished() -> str | None:
            if on_poll is not None:
                on_poll()
            state = self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}")["state"]
            return state if state in FINISHED_RUN_STATES else None

        state: str = self._await(f"run {run_id} of {dag_id} to finish", finished, time.monotonic() + timeout)
        return state

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run (mapped ones one per map index), as the REST API shows them."""
        found: list[dict[str, Any]] = []
        while True:
            page = self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                            params={"limit": 100, "offset": len(found)})
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    # ------------------------------------------------------------------ diagnostics

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def failure_report(self, lines: int = 40) -> str:
        """The tail of every process log, then of each task log that shows an error."""
        parts = []
        for service in self.services:
            state = "running" if service.exit_code() is None else f"exited {service.exit_code()}"
            parts.append(f"===== {service.name} (pid {service.pid if service.popen else '-'}, {state}): "
                         f"last {lines} lines of {service.log_path.name}\n{service.tail(lines)}")
        migrate = self.settings.home / "process-logs" / "db-migrate.log"
        if migrate.exists() and not self.services:
            parts.append(f"===== db migrate\n{migrate.read_text(errors='replace')[-4000:]}")
        for path in sorted((self.settings.home / "logs").glob("dag_id=*/**/*.log")):
            text = path.read_text(errors="replace")
            if "ERROR" in text or "Traceback" in text:
                rel = path.relative_to(self.settings.home)
                parts.append(f"===== task log {rel}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    @contextlib.contextmanager
    def reported_on_failure(self) -> Iterator[None]:
        """Print :meth:`failure_report` when the block raises (pytest shows it with the failure)."""
        try:
            yield
        except BaseException:
            print(self.failure_report())
            raise
