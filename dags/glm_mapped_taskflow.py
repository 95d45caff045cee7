"""TaskFlow and dynamic task mapping: ``@task.glm`` prompts built in Python, one mapped task per batch.

``draft_reply`` is a ``@task.glm`` function: it receives an upstream value and returns the prompt.
``summarize_batches`` maps ``GLMChatOperator`` over batches of rows with ``.partial().expand()``;
each mapped task has its own ``map_index`` in the results table and the ledger.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task
from example_warehouse import WAREHOUSE_URL

from airflow_provider_glm.operators.chat import GLMChatOperator


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False, tags=["glm", "example"])
def glm_mapped_taskflow():
    @task
    def latest_complaint() -> dict:
        return {"customer": "Ada", "text": "My parcel arrived late and the box was crushed."}

    @task.glm(model="glm-4.5", request_params={"temperature": 0.3})
    def draft_reply(complaint: dict) -> str:
        return f"Draft a two-sentence apology to {complaint['customer']} about: {complaint['text']}"

    @task
    def batches() -> list[list[dict]]:
        rows = [{"id": f"n{i}", "note": f"Field note {i}: pump {i % 3} pressure nominal."} for i in range(9)]
        return [rows[i : i + 3] for i in range(0, len(rows), 3)]

    summaries = GLMChatOperator.partial(
        task_id="summarize_batches",
        row_key="id",
        prompt="Summarize the field note: {{ row.note }}",
        sqlalchemy_url=WAREHOUSE_URL,
        results_table="field_note_summaries",
        max_concurrency=3,
    ).expand(rows=batches())

    @task
    def report(reply: str, mapped: list) -> None:
        print(f"REPLY {reply}")
        print(f"MAPPED {sum(len(x) for x in mapped)} summaries in {len(mapped)} tasks")

    report(draft_reply(latest_complaint()), summaries.output)


glm_mapped_taskflow()
