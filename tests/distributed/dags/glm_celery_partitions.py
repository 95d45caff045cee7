"""Rows split over mapped ``GLMChatOperator`` tasks that share one account through an Airflow pool.

``glm_celery_mapped``: ``split_rows`` returns 8 lists of rows (``params.rows`` in all, 4,000 by default)
and ``GLMChatOperator`` is mapped over them with ``.partial(...).expand(rows=...)``. Each mapped task
sends up to ``max_concurrency=4`` rows at once and takes 4 of the 16 slots of the ``glm_account``
pool, so at most 4 tasks run at a time, on any worker, and at most 16 requests are in flight: the
pool is sized to the account's concurrency limit.

``glm_celery_one_task``: the same rows in a single task at the pool's whole concurrency (16), the
baseline of the Celery scaling benchmark.

Results and the usage ledger go to ``GLM_WAREHOUSE_URL`` (the test's own PostgreSQL database).
"""

from __future__ import annotations

import datetime as dt
import os

import pendulum
from airflow.sdk import dag, task

from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.partitioning import split_rows as split_evenly

WAREHOUSE_URL = os.environ.get("GLM_WAREHOUSE_URL")
POOL = "glm_account"
POOL_SLOTS = 16
RESULTS_TABLE = "glm_celery_results"
USAGE_TABLE = "glm_celery_usage"
DEFAULT_ROWS = 4000


def build(dag_id: str, partitions: int, concurrency: int) -> None:
    """A DAG answering ``params.rows`` rows in ``partitions`` mapped tasks of ``concurrency`` rows each."""

    @dag(dag_id=dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
         params={"rows": DEFAULT_ROWS}, tags=["glm", "celery"])
    def partitioned_rows() -> None:
        @task
        def split_rows(params: dict | None = None) -> list[list[dict]]:
            total = int((params or {}).get("rows", DEFAULT_ROWS))
            rows = [{"id": f"r{i:06d}", "text": f"review {i}: the pump works well"} for i in range(total)]
            return split_evenly(rows, partitions)

        GLMChatOperator.partial(
            task_id="answer",
            row_key="id",
            prompt="Summarize: {{ row.text }}",
            sqlalchemy_url=WAREHOUSE_URL,
            results_table=RESULTS_TABLE,
            usage_table=USAGE_TABLE,
            max_concurrency=concurrency,
            # every run asks every row: the benchmark (section 6) triggers these DAGs again and again
            # with the same rows, which reuse would answer from the first run at no cost
            reuse_unchanged=False,
            pool=POOL,  # in a pool, each task holds max_concurrency slots (pool_slots defaults to it)
            retries=2,
            retry_delay=dt.timedelta(seconds=2),
        ).expand(rows=split_rows())

    partitioned_rows()


build("glm_celery_mapped", partitions=8, concurrency=POOL_SLOTS // 4)
build("glm_celery_one_task", partitions=1, concurrency=POOL_SLOTS)
