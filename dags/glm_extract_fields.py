"""Extract fields with function calling: typed columns out of free-text customer messages.

Each message goes to GLM with one function whose parameters are ``OrderIssue``'s JSON schema
(``output_mode="tool"``). The call's arguments are validated against the model and stored in
``order_issues``, one typed column per field (``output_columns=True``), next to the raw
``tool_calls``. GLM accepts only ``tool_choice="auto"``, so a model may answer in text instead of
calling the function: that row is ``failed`` with the reason, and ``max_failed_rows`` says how many
such rows the task tolerates. A downstream task reads the typed columns back with plain SQL.

Runs as-is with ``airflow dags test glm_extract_fields`` against the ``glm_default`` connection; the
results go to the database at ``GLM_WAREHOUSE_URL`` (default: an embedded SQLite file under
``$AIRFLOW_HOME``).
"""

from __future__ import annotations

from typing import Literal

import pendulum
from airflow.sdk import dag, task
from example_warehouse import WAREHOUSE_URL
from pydantic import BaseModel, Field

from airflow_provider_glm.operators.chat import GLMChatOperator


class OrderIssue(BaseModel):
    """The fields support needs from one customer message."""

    customer: str = Field(description="The customer's name as written in the message.")
    order_id: str | None = Field(default=None, description="The order number, e.g. A-1042, when the message has one.")
    issue: Literal["damaged", "late", "wrong_item", "billing", "other"]
    urgency: int = Field(ge=1, le=5, description="1: can wait; 5: the customer is blocked or angry.")
    refund_requested: bool
    amount: float | None = Field(default=None, description="The amount in question, in the order's currency.")
    items: list[str] = Field(default_factory=list, description="The products the message names.")


@dag(schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False, tags=["glm", "example"])
def glm_extract_fields():
    @task
    def customer_messages() -> list[dict]:
        return [
            {"id": "M-1", "channel": "email",
             "text": "Hi, Mei Chen here. Order A-1042 arrived with a cracked teapot lid. I'd like 35.90 back."},
            {"id": "M-2", "channel": "chat", "text": "Where is my parcel?? Ordered A-1077 ten days ago. - Tom Berg"},
            {"id": "M-3", "channel": "email",
             "text": "Ana Lima: you charged my card twice for A-1100 (2 x 89.00). Please fix."},
            {"id": "M-4", "channel": "form", "text": "Got blue mugs instead of the green ones. Jonas, order A-1123."},
        ]

    extract = GLMChatOperator(
        task_id="extract_fields",
        rows=customer_messages(),
        row_key="id",
        system_prompt="You read customer service messages for an online tea shop.",
        prompt="Message {{ row.id }} ({{ row.channel }}):\n{{ row.text }}",
        request_params={"temperature": 0.1},
        output_schema=OrderIssue,
        output_mode="tool",
        output_columns=True,
        sqlalchemy_url=WAREHOUSE_URL,
        results_table="order_issues",
        max_failed_rows=1,
    )

    @task
    def triage(run_id: str | None = None) -> int:
        """The typed columns, straight from SQL: the most urgent issues first."""
        import sqlalchemy as sa

        engine = sa.create_engine(WAREHOUSE_URL)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text(
                    "SELECT row_key, customer, issue, urgency, refund_requested, amount FROM order_issues "
                    "WHERE dag_id = 'glm_extract_fields' AND run_id = :run_id AND status = 'ok' "
                    "ORDER BY urgency DESC, row_key"
                ), {"run_id": run_id}).mappings().all()
        finally:
            engine.dispose()
        for row in rows:
            refund = f"refund {row['amount']}" if row["refund_requested"] else "no refund"
            print(f"TRIAGE {row['row_key']} urgency={row['urgency']} issue={row['issue']} {refund}")
        print(f"EXTRACTED {len(rows)} messages")
        return len(rows)

    extract >> triage()


glm_extract_fields()
