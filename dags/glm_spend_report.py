"""Token-spend report: tokens and cost per DAG, model and day, read from the usage ledger."""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task
from example_warehouse import WAREHOUSE_URL


@dag(schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False, tags=["glm", "example"])
def glm_spend_report():
    @task
    def spend_by_dag_model_day() -> list[dict]:
        """Aggregate ``glm_usage``; the printed table is the report."""
        from airflow_provider_glm.sinks.sql import SQLSink

        sink = SQLSink.from_url(WAREHOUSE_URL)
        try:
            rows = sink.spend_report()
        finally:
            sink.dispose()
        header = f"{'day':<10}  {'dag_id':<24}  {'model':<14}  {'calls':>6}  {'tokens':>9}  {'cost':>12}"
        lines = [header, "-" * len(header)]
        for r in rows:
            cost = "unknown" if r["cost"] is None else f"{r['cost']:.6f} {r['currency'] or ''}".strip()
            lines.append(
                f"{r['day']:<10}  {r['dag_id']:<24}  {r['model']:<14}  {r['calls']:>6}  "
                f"{r['total_tokens']:>9}  {cost:>12}"
            )
        print("\n".join(lines))
        return rows

    spend_by_dag_model_day()


glm_spend_report()
