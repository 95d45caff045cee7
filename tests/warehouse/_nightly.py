"""The nightly warehouse job of the tests: a source table of reviews on one backend, the sink's tables
beside it, and one call per night of ``GLMChatOperator`` with ``source_sql``.

Every night is a new ``run_id`` of the same DAG and task, as the scheduler (or ``airflow dags test``)
would make it; the task is executed directly with a stand-in task instance.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from _fakes import FakeTaskInstance, FakeTaskStateStore

from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.rows._records import RunScope
from airflow_provider_glm.sinks.sql import SQLSink

DAG_ID = "nightly_reviews"
TASK_ID = "summarize"
PROMPT = "Product: {{ row.product }}\nReview: {{ row.body }}"


def review_body(i: int) -> str:
    return f"Review {i}: the lid {'fits' if i % 3 else 'leaks'}, battery {i % 7} days"


def expected_content(product: str, body: str) -> str:
    """The test server's plain answer to the nightly prompt (its ``Summary: `` rule)."""
    return "Summary: " + f"Product: {product}\nReview: {body}"[:200]


@dataclass
class Nightly:
    """Unique tables on one backend: the ``source`` reviews and the sink's results, usage, runs and latest."""

    backend: str
    url: str
    source: str
    results_table: str
    usage_table: str
    runs_table: str
    latest_table: str
    engine: sa.Engine
    bodies: dict[str, str] = field(default_factory=dict)

    # --- the source -------------------------------------------------------------------------------------

    def seed(self, n: int, start: int = 0) -> None:
        """``n`` reviews with ids ``start..start+n-1``."""
        rows = [{"id": i, "product": f"P{i % 4}", "body": review_body(i)} for i in range(start, start + n)]
        with self.engine.begin() as conn:
            if start == 0:
                conn.execute(sa.text(f"CREATE TABLE {self.source} (id INTEGER PRIMARY KEY, product VARCHAR(20), "
                                     "body VARCHAR(400), price FLOAT)"))
            conn.execute(sa.text(f"INSERT INTO {self.source} (id, product, body, price) "
                                 "VALUES (:id, :product, :body, 1.5)"), rows)
        self.bodies.update({str(r["id"]): r["body"] for r in rows})

    def edit(self, ids: list[int]) -> None:
        """Append " (edited)" to the body of these reviews (so their prompts change, again each time)."""
        changed = [{"id": i, "body": self.bodies[str(i)] + " (edited)"} for i in ids]
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {self.source} SET body = :body WHERE id = :id"), changed)
        self.bodies.update({str(r["id"]): r["body"] for r in changed})

    def set_price(self, review_id: int, price: float | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {self.source} SET price = :price WHERE id = :id"),
                         {"id": review_id, "price": price})

    def content_of(self, key: str) -> str:
        return expected_content(f"P{int(key) % 4}", self.bodies[key])

    # --- the task ---------------------------------------------------------------------------------------

    def sink_kwargs(self) -> dict[str, Any]:
        return {"sqlalchemy_url": self.url, "results_table": self.results_table, "usage_table": self.usage_table,
                "runs_table": self.runs_table}

    def operator(self, **kwargs: Any) -> GLMChatOperator:
        params: dict[str, Any] = {
            "task_id": TASK_ID, "source_sql": f"SELECT id, product, body, price FROM {self.source} ORDER BY id",
            "row_key": "id", "prompt": PROMPT, "max_concurrency": 8, **self.sink_kwargs(),
        }
        params.update(kwargs)
        return GLMChatOperator(**params)

    @staticmethod
    def context(run_id: str, logical_date: dt.datetime | None = None, map_index: int = -1,
                task_id: str = TASK_ID) -> dict[str, Any]:
        ti = FakeTaskInstance(dag_id=DAG_ID, task_id=task_id, run_id=run_id, map_index=map_index)
        context: dict[str, Any] = {"ti": ti, "run_id": run_id, "params": {}, "task_state_store": FakeTaskStateStore()}
        if logical_date is not None:
            context.update(logical_date=logical_date, ds=logical_date.strftime("%Y-%m-%d"))
        return context

    def night(self, run_id: str, logical_date: dt.datetime | None = None, **kwargs: Any) -> dict[str, Any]:
        """Run the task once as ``run_id``; return its context (the XCom is on ``context["ti"].xcom``)."""
        context = self.context(run_id, logical_date)
        context["ti"].return_value = self.operator(**kwargs).execute(context)
        return context

    # --- the tables -------------------------------------------------------------------------------------

    def sink(self, output_columns: Any = ()) -> SQLSink:
        return SQLSink(self.engine, self.results_table, self.usage_table, self.runs_table,
                       latest_table=self.latest_table, output_columns=output_columns)

    def results(self, run_id: str, map_index: int = -1, output_columns: Any = ()) -> dict[str, dict[str, Any]]:
        scope = RunScope(DAG_ID, TASK_ID, run_id, map_index)
        return {row["row_key"]: row for row in self.sink(output_columns).results(scope)}

    def ledger(self) -> list[dict[str, Any]]:
        return self.sink().usage()

    def runs(self, run_id: str) -> list[dict[str, Any]]:
        return [r for r in self.sink().runs() if r["run_id"] == run_id]

    def latest(self, output_columns: Any = ()) -> dict[str, dict[str, Any]]:
        table = self.sink(output_columns).latest_table
        assert table is not None
        with self.engine.connect() as conn:
            return {r["row_key"]: dict(r) for r in conn.execute(sa.select(table)).mappings()}

    def columns(self, table: str) -> dict[str, Any]:
        """The columns of a table as the database reports them (name -> reflected type)."""
        return {c["name"]: c["type"] for c in sa.inspect(self.engine).get_columns(table)}
