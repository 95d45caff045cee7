"""Nightly summary: every review in the warehouse summarized by GLM, paying only for what changed.

The rows stream straight from the warehouse (``source_sql``), never through XCom. Each answer is a
sentiment and a one-line summary, validated against ``ReviewSummary`` and stored in typed columns of
``review_summaries`` (one copy per run) and ``review_summaries_latest`` (the current answer per review).
A review whose prompt did not change since an earlier night reuses that night's answer: no request,
no cost. Usage lands in the ``glm_usage`` ledger next to them.

The warehouse and the results live in the database at ``GLM_WAREHOUSE_URL`` (default: an embedded
SQLite file under ``$AIRFLOW_HOME``).
"""

from __future__ import annotations

from typing import Literal

import pendulum
from airflow.sdk import dag
from example_warehouse import WAREHOUSE_URL
from pydantic import BaseModel, Field

from airflow_provider_glm.operators.chat import GLMChatOperator


class ReviewSummary(BaseModel):
    """What GLM returns for each review."""

    sentiment: Literal["positive", "mixed", "negative"]
    summary: str = Field(description="One neutral sentence.")


@dag(schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False, tags=["glm", "example"])
def glm_nightly_summary():
    GLMChatOperator(
        task_id="summarize_reviews",
        source_sql="SELECT id, product, body FROM reviews ORDER BY id",
        row_key="id",
        system_prompt="You summarize product reviews for a weekly report.",
        prompt="Product: {{ row.product }}\nReview: {{ row.body }}",
        request_params={"max_tokens": 200},
        output_schema=ReviewSummary,
        output_columns=True,
        sqlalchemy_url=WAREHOUSE_URL,
        results_table="review_summaries",
        latest_table="review_summaries_latest",
        max_concurrency=16,
        max_failed_rows=5,
        max_xcom_rows=50,
    )


glm_nightly_summary()
