"""A real distributed run: Airflow 3 on the CeleryExecutor, two workers, 8 mapped GLM tasks in one pool.

The cluster (``celery_cluster.py``) runs the API server, scheduler, DAG processor, triggerer and two
Celery workers as separate processes, with Redis as the broker and PostgreSQL as the metadata
database and Celery result backend. The GLM test server runs here, in the pytest process, and
refuses requests with 429/1302 ("concurrency too high") at random and in scripted bursts, so rows
are retried. ``glm_celery_mapped`` (``dags/glm_celery_partitions.py``) answers 4,000 rows in 8 mapped
tasks of 500, each with ``max_concurrency=4`` and 4 slots of a 16-slot pool.

The run must answer every row exactly once, bill exactly what the ledger records, never have more
requests in flight than the pool has slots, and use both workers.

Needs Redis and PostgreSQL on 127.0.0.1 (``GLM_TEST_REDIS_URL``, ``GLM_TEST_POSTGRES_URL``); skips
without them, or fails when ``GLM_REQUIRE_DATABASES=1`` (CI). Select it with ``pytest -m celery``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery_cluster import CeleryCluster, ClusterSettings
from scratch_services import scratch_database, unreachable

from airflow_provider_glm.sinks.sql import SQLSink
from airflow_provider_glm.testing import Fault

pytestmark = [pytest.mark.celery, pytest.mark.timeout(1800)]

DAGS = Path(__file__).resolve().parent / "dags"
DAG_ID = "glm_celery_mapped"
POOL, POOL_SLOTS = "glm_account", 16  # as in dags/glm_celery_partitions.py
ROWS, TASKS = 4000, 8
WORKERS = ("glm-worker-a", "glm-worker-b")
BURST = Fault.error(429, "1302")
STORM = POOL_SLOTS
"""429/1302 answers in one burst: every request the account lets in gets one, or fewer tasks get more."""
CONN_MAX_RETRIES = 8
"""Retries per request in the task; far more than a burst plus the random refusals need."""


@pytest.fixture
def glm_server_kwargs() -> dict[str, Any]:
    """5 % of requests refused at random (seeded), on top of the bursts; 50 ms per answer."""
    return {"latency": 0.05, "rate_limit_fraction": 0.05, "seed": 12}


@pytest.fixture
def services() -> None:
    """Redis, PostgreSQL and the Celery provider, or a skip (a failure under GLM_REQUIRE_DATABASES=1)."""
    reason = None
    if importlib.util.find_spec("airflow.providers.celery") is None:
        reason = "apache-airflow-providers-celery is not installed (pip install -e '.[test]')"
    reason = reason or unreachable()
    if reason is not None:
        if os.environ.get("GLM_REQUIRE_DATABASES") == "1":
            pytest.fail(f"{reason} (GLM_REQUIRE_DATABASES=1: the Celery test must run)")
        pytest.skip(reason)


@pytest.fixture
def warehouse(services: None) -> Iterator[str]:
    """The PostgreSQL database the tasks write results and the ledger to, dropped afterwards."""
    with scratch_database("glm_celery_warehouse") as url:
        yield url


@pytest.fixture
def cluster(warehouse: str, glm_server: Any, tmp_path: Path) -> Iterator[CeleryCluster]:
    """Airflow on the CeleryExecutor with two workers, reaching the GLM test server as ``glm_default``."""
    conn = {"conn_type": "glm", "password": glm_server.api_key, "host": glm_server.base_url,
            "extra": {"model": "glm-4.5", "max_retries": CONN_MAX_RETRIES}}
    settings = ClusterSettings(
        home=tmp_path / "airflow",
        dags_folder=DAGS,
        workers=WORKERS,
        env={"AIRFLOW_CONN_GLM_DEFAULT": json.dumps(conn), "GLM_WAREHOUSE_URL": warehouse},
    )
    with CeleryCluster(settings) as running:
        yield running


def test_mapped_tasks_share_one_pool_across_two_celery_workers(
    cluster: CeleryCluster, glm_server: Any, warehouse: str
) -> None:
    with cluster.reported_on_failure():
        cluster.create_pool(POOL, POOL_SLOTS)
        cluster.wait_for_dag(DAG_ID)

        storms = [glm_server.add_rule('"model"', BURST, times=STORM)]  # as the first tasks start

        def burst_again_a_quarter_in() -> None:
            if len(storms) == 1 and glm_server.stats.billed_responses >= ROWS // 4:
                storms.append(glm_server.add_rule('"model"', BURST, times=STORM))

        triggered = time.monotonic()
        run_id = cluster.trigger(DAG_ID, conf={"rows": ROWS})
        state = cluster.wait_for_run(DAG_ID, run_id, timeout=1200, on_poll=burst_again_a_quarter_in)
        run_seconds = time.monotonic() - triggered

        task_instances = cluster.task_instances(DAG_ID, run_id)
        mapped = [ti for ti in task_instances if ti["task_id"] == "answer"]
        hosts = Counter(ti["hostname"] for ti in mapped)
        stats = glm_server.stats
        refused = stats.status_counts.get(429, 0)
        print(f"run {run_id} ended {state} after {run_seconds:.0f} s: {stats.billed_responses} rows billed, "
              f"{refused} 429s, peak in flight {stats.peak_in_flight}, mapped tasks per worker {dict(hosts)}, "
              f"tries {[ti['try_number'] for ti in mapped]}; cluster start: db migrate "
              f"{cluster.timings['migrate']:.0f} s, processes ready {cluster.timings['ready']:.0f} s")

        outline = [(ti["task_id"], ti["map_index"], ti["state"], ti["try_number"], ti["hostname"])
                   for ti in task_instances]
        assert state == "success", f"run {run_id} ended {state}: {outline}"
        assert sorted(ti["map_index"] for ti in mapped) == list(range(TASKS)), outline
        assert {ti["state"] for ti in mapped} == {"success"}, outline

        # Every row answered exactly once, and ok.
        sink = SQLSink.from_url(warehouse, results_table="glm_celery_results", usage_table="glm_celery_usage")
        try:
            results = [r for r in sink.results() if r["run_id"] == run_id]
            usage = [u for u in sink.usage() if u["run_id"] == run_id]
        finally:
            sink.dispose()
        expected_keys = {f"r{i:06d}" for i in range(ROWS)}
        per_row = Counter(r["row_key"] for r in results)
        assert set(per_row) == expected_keys, f"{len(expected_keys - set(per_row))} rows have no result"
        assert max(per_row.values()) == 1, f"rows with several results: {[k for k, n in per_row.items() if n > 1]}"
        not_ok = [(r["row_key"], r["status"], r["error"]) for r in results if r["status"] != "ok"]
        assert not not_ok, f"{len(not_ok)} rows not ok, e.g. {not_ok[:5]}"

        # The server billed each row once (429s are not billed), and the ledger is that bill.
        billed = glm_server.billed
        billed_prompts = Counter(r.body["messages"][-1]["content"] for r in glm_server.requests if r.billed)
        assert stats.billed_responses == ROWS, f"server billed {stats.billed_responses} responses for {ROWS} rows"
        assert set(billed_prompts.values()) == {1}, "some row was answered (and billed) more than once"
        ledger_rows = Counter(u["row_key"] for u in usage)
        assert set(ledger_rows) == expected_keys, f"{len(expected_keys - set(ledger_rows))} rows not in the ledger"
        assert set(ledger_rows.values()) == {1}, "rows with several ledger entries"
        assert {u["response_id"] for u in usage} == {b.response_id for b in billed}, "ledger != server's bill"
        assert sum(u["total_tokens"] for u in usage) == stats.billed_total_tokens

        # Both bursts and the random 429s were absorbed by retries; the pool bounded the requests in flight.
        assert [rule.hits for rule in storms] == [STORM, STORM], "both bursts of 429s must have been answered"
        assert stats.requests == ROWS + refused, f"requests {stats.requests} != {ROWS} answers + {refused} refusals"
        assert stats.peak_in_flight <= POOL_SLOTS, (
            f"{stats.peak_in_flight} requests were in flight at once; the pool allows {POOL_SLOTS}"
        )

        # Both Celery workers ran GLM tasks (each records its own name as the task instances' hostname).
        assert set(hosts) == set(WORKERS), f"mapped tasks ran on {dict(hosts)}, expected both of {WORKERS}"
