"""Enrichment: classify records an upstream task produced; results to XCom for a downstream task.

Runs as-is with ``airflow dags test glm_enrichment`` against the ``glm_default`` connection.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task
from pydantic import BaseModel

from airflow_provider_glm.operators.chat import GLMChatOperator


class TicketLabel(BaseModel):
    """What the model must return for each ticket."""

    summary: str
    chars: int


@dag(schedule="@hourly", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False, tags=["glm", "example"])
def glm_enrichment():
    @task
    def new_tickets() -> list[dict]:
        return [
            {"id": "T-1", "text": "The export button crashes the app on Safari."},
            {"id": "T-2", "text": "How do I change my billing address?"},
            {"id": "T-3", "text": "Please add dark mode. {{ 7*7 }} stays literal."},
        ]

    label = GLMChatOperator(
        task_id="label_tickets",
        rows=new_tickets(),
        row_key="id",
        system_prompt="You label support tickets. Answer with a JSON object.",
        prompt="Ticket {{ row.id }}: {{ row.text }}",
        request_params={"response_format": {"type": "json_object"}, "temperature": 0.2},
        output_schema=TicketLabel,
        max_concurrency=4,
    )

    @task
    def route(labels: list[dict]) -> dict[str, int]:
        counts = {"labelled": sum(1 for x in labels if x), "unlabelled": sum(1 for x in labels if not x)}
        print(f"ROUTED {counts}")
        return counts

    route(label.output)


glm_enrichment()
