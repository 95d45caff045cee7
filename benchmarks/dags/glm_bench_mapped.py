"""Benchmark DAGs for section 1(d): GLMChatOperator under dynamic task mapping, and a no-GLM twin.

``glm_bench_mapped`` splits ``GLM_BENCH_ROWS`` rows (default 200) into ``GLM_BENCH_BATCHES`` mapped
``GLMChatOperator`` tasks (default 4) at ``max_concurrency`` ``GLM_BENCH_CONCURRENCY`` (default 32),
writing to ``GLM_WAREHOUSE_URL``. ``glm_bench_mapped_noop`` has the same shape with a mapped task that
does nothing: its ``airflow dags test`` wall time is the fixed cost (process start, DAG parsing,
scheduling, task runner) that the GLM run pays on top of its requests.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task

from airflow_provider_glm.operators.chat import GLMChatOperator

ROWS = int(os.environ.get("GLM_BENCH_ROWS", "200"))
BATCHES = int(os.environ.get("GLM_BENCH_BATCHES", "4"))
CONCURRENCY = int(os.environ.get("GLM_BENCH_CONCURRENCY", "32"))
WAREHOUSE_URL = os.environ.get(
    "GLM_WAREHOUSE_URL",
    f"sqlite:///{os.path.join(os.environ.get('AIRFLOW_HOME', '.'), 'bench-warehouse.db')}",
)
START = pendulum.datetime(2026, 1, 1, tz="UTC")


def make_batches() -> list[list[dict[str, str]]]:
    rows = [{"id": f"r{i:06d}", "text": f"review number {i}: the pump works well"} for i in range(ROWS)]
    size = -(-ROWS // BATCHES)
    return [rows[i : i + size] for i in range(0, ROWS, size)]


@dag(schedule=None, start_date=START, catchup=False, tags=["glm", "benchmark"])
def glm_bench_mapped():
    @task
    def batches() -> list[list[dict[str, str]]]:
        return make_batches()

    GLMChatOperator.partial(
        task_id="answer",
        row_key="id",
        prompt="Summarize: {{ row.text }}",
        sqlalchemy_url=WAREHOUSE_URL,
        max_concurrency=CONCURRENCY,
        progress_interval=60.0,
    ).expand(rows=batches())


@dag(schedule=None, start_date=START, catchup=False, tags=["glm", "benchmark"])
def glm_bench_mapped_noop():
    @task
    def batches() -> list[list[dict[str, str]]]:
        return make_batches()

    @task
    def answer(rows: list[dict[str, str]]) -> int:
        return len(rows)

    answer.expand(rows=batches())


glm_bench_mapped()
glm_bench_mapped_noop()
