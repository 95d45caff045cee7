"""Nightly summary at half price: the warehouse rows through GLM's Batch API, deferred.

Same input and tables as ``glm_nightly_summary``, but the rows go as one JSONL batch and the task
defers to ``GLMBatchTrigger`` while GLM works (no worker slot held). Results land in
``review_summaries_batch``, usage in ``glm_usage`` at the batch discount, and a JSONL copy of the
results next to the warehouse (``GLM_RESULTS_EXPORT``, any ObjectStoragePath URL such as s3://).
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task
from example_warehouse import AIRFLOW_HOME, WAREHOUSE_URL, read_reviews

from airflow_provider_glm.operators.batch import GLMBatchOperator

EXPORT = os.environ.get("GLM_RESULTS_EXPORT", f"file://{AIRFLOW_HOME}/exports/{{{{ ds }}}}/review_summaries.jsonl")


@dag(schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False, tags=["glm", "example"])
def glm_nightly_batch():
    @task
    def extract_reviews() -> list[dict]:
        """Yesterday's reviews from the warehouse."""
        return read_reviews()

    GLMBatchOperator(
        task_id="summarize_reviews_batch",
        rows=extract_reviews(),
        row_key="id",
        system_prompt="You summarize product reviews in one neutral sentence.",
        prompt="Product: {{ row.product }}\nReview: {{ row.body }}",
        request_params={"max_tokens": 200},
        sqlalchemy_url=WAREHOUSE_URL,
        results_table="review_summaries_batch",
        output_path=EXPORT,
        deferrable=True,
        poll_interval=float(os.environ.get("GLM_BATCH_POLL_SECONDS", "60")),
        max_failed_rows=5,
        max_xcom_rows=50,
    )


glm_nightly_batch()
