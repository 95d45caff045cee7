"""Nightly summary: every row of a warehouse table summarized by GLM into the results table.

The warehouse and the results live in the database at ``GLM_WAREHOUSE_URL`` (default: an embedded
SQLite file under ``$AIRFLOW_HOME``). Usage lands in the ``glm_usage`` ledger next to them.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task
from example_warehouse import WAREHOUSE_URL, read_reviews

from airflow_provider_glm.operators.chat import GLMChatOperator


@dag(schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False, tags=["glm", "example"])
def glm_nightly_summary():
    @task
    def extract_reviews() -> list[dict]:
        """Yesterday's reviews from the warehouse."""
        return read_reviews()

    GLMChatOperator(
        task_id="summarize_reviews",
        rows=extract_reviews(),
        row_key="id",
        system_prompt="You summarize product reviews in one neutral sentence.",
        prompt="Product: {{ row.product }}\nReview: {{ row.body }}",
        request_params={"max_tokens": 200},
        sqlalchemy_url=WAREHOUSE_URL,
        results_table="review_summaries",
        max_concurrency=16,
        max_failed_rows=5,
        max_xcom_rows=50,
    )


glm_nightly_summary()
