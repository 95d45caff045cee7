"""Every example DAG runs green under ``airflow dags test`` against the local GLM server.

Each DAG runs in its own ``airflow dags test`` process (real scheduler-less Airflow run, real task
runner, real XCom), talking over loopback to the server this test process hosts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_glm.sinks.sql import SQLSink

pytestmark = pytest.mark.airflow_db
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Create the metadata database of the session's private AIRFLOW_HOME once."""
    done = subprocess.run([AIRFLOW, "db", "migrate"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture
def dag_env(airflow_db: None, glm_server: Any, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["AIRFLOW_CONN_GLM_DEFAULT"] = json.dumps(
        {"conn_type": "glm", "password": glm_server.api_key, "host": glm_server.base_url}
    )
    env["GLM_WAREHOUSE_URL"] = f"sqlite:///{tmp_path / 'warehouse.db'}"
    env["GLM_RESULTS_EXPORT"] = f"file://{tmp_path}/exports/results.jsonl"
    env["GLM_BATCH_POLL_SECONDS"] = "0.2"
    return env


def run_dag(dag_id: str, env: dict[str, str], logical_date: str | None = None) -> str:
    command = [AIRFLOW, "dags", "test", dag_id, *([logical_date] if logical_date else [])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert "state=success" in output, output[-5000:]
    return output


def table_rows(url: str, table: str) -> list[dict[str, Any]]:
    """Every row of a table as dicts, all columns (the typed output columns included)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY row_key"))]
    finally:
        engine.dispose()


def seed_reviews(url: str, n: int) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE reviews (id INTEGER PRIMARY KEY, product TEXT, body TEXT)"))
        conn.execute(
            sa.text("INSERT INTO reviews (id, product, body) VALUES (:id, :product, :body)"),
            [{"id": i, "product": f"P{i % 4}", "body": f"Review {i}: works well {{{{ 6*7 }}}}"} for i in range(n)],
        )
    engine.dispose()


def test_enrichment_dag(dag_env: dict[str, str], glm_server: Any) -> None:
    output = run_dag("glm_enrichment", dag_env)
    assert "ROUTED {'labelled': 3, 'unlabelled': 0}" in output
    assert glm_server.stats.billed_responses == 3
    sent = [r.body["messages"][-1]["content"] for r in glm_server.requests]
    assert "Ticket T-3: Please add dark mode. {{ 7*7 }} stays literal." in sent


def test_nightly_summary_reuses_unchanged_rows_and_spend_report(dag_env: dict[str, str], glm_server: Any) -> None:
    """Three nights of the main job: all rows asked, then none (reused), then only the edited ones."""
    url = dag_env["GLM_WAREHOUSE_URL"]
    seed_reviews(url, 60)
    run_dag("glm_nightly_summary", dag_env, "2026-11-28")
    sink = SQLSink.from_url(url, results_table="review_summaries")
    first = table_rows(url, "review_summaries")
    assert len(first) == 60
    assert {r["status"] for r in first} == {"ok"}
    assert {r["sentiment"] for r in first} <= {"positive", "mixed", "negative"}, "typed column from the schema"
    assert all(isinstance(r["summary"], str) and r["summary"] for r in first)
    assert glm_server.stats.billed_responses == 60
    ledger = sink.usage()
    assert len(ledger) == 60
    assert sum(u["total_tokens"] for u in ledger) == glm_server.stats.billed_total_tokens
    assert {str(u["logical_date"])[:10] for u in ledger} == {"2026-11-28"}

    run_dag("glm_nightly_summary", dag_env, "2026-11-29")
    assert glm_server.stats.billed_responses == 60, "the second night asked again"
    assert len(sink.usage()) == 60, "the second night added ledger rows"
    second = [r for r in sink.results() if str(r["logical_date"])[:10] == "2026-11-29"]
    assert len(second) == 60
    assert {r["reused_from_run_id"] for r in second} == {first[0]["run_id"]}
    assert {r["status"] for r in second} == {"ok"}
    night2 = next(r for r in sink.runs() if str(r["logical_date"])[:10] == "2026-11-29")
    assert (night2["reused"], night2["total_tokens"], night2["cost"]) == (60, 0, 0)

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE reviews SET body = body || ' (edited)' WHERE id < 5"))
    engine.dispose()
    asked = glm_server.stats.requests
    run_dag("glm_nightly_summary", dag_env, "2026-11-30")
    assert glm_server.stats.requests - asked == 5
    latest = table_rows(url, "review_summaries_latest")
    assert len(latest) == 60
    fresh = {r["row_key"] for r in latest if r["reused_from_run_id"] is None}
    assert fresh == {"0", "1", "2", "3", "4"}, "the latest answer of an edited review is the new one"

    metadata = sa.create_engine(f"sqlite:///{os.environ['AIRFLOW_HOME']}/airflow.db")
    with metadata.connect() as conn:
        rendered = conn.execute(sa.text(
            "SELECT rendered_fields FROM rendered_task_instance_fields WHERE task_id = 'summarize_reviews'"
        )).scalars().first()
    metadata.dispose()
    fields = json.loads(rendered) if isinstance(rendered, str) else rendered
    assert "FROM reviews" in fields["source_sql"]

    report = run_dag("glm_spend_report", dag_env)
    line = next(x for x in report.splitlines() if "glm_nightly_summary" in x and "glm-4.5" in x)
    assert " 65 " in line
    assert str(glm_server.stats.billed_total_tokens) in line


def test_mapped_taskflow_dag(dag_env: dict[str, str], glm_server: Any) -> None:
    output = run_dag("glm_mapped_taskflow", dag_env)
    assert "REPLY Summary: Draft a two-sentence apology to Ada" in output
    assert "MAPPED 9 summaries in 3 tasks" in output
    sink = SQLSink.from_url(dag_env["GLM_WAREHOUSE_URL"], results_table="field_note_summaries")
    assert sorted({r["map_index"] for r in sink.results()}) == [0, 1, 2]
    assert len(sink.usage()) == 9
    assert glm_server.stats.billed_responses == 10


def test_nightly_batch_dag_defers_and_writes(dag_env: dict[str, str], glm_server: Any, tmp_path: Path) -> None:
    url = dag_env["GLM_WAREHOUSE_URL"]
    seed_reviews(url, 40)
    output = run_dag("glm_nightly_batch", dag_env)
    assert "deferred" in output.lower()
    assert glm_server.stats.batches_created == 1
    sink = SQLSink.from_url(url, results_table="review_summaries_batch")
    assert [r["status"] for r in sink.results()] == ["ok"] * 40
    usage = sink.usage()
    assert len(usage) == glm_server.stats.billed_responses == 40
    assert sum(u["total_tokens"] for u in usage) == glm_server.stats.billed_total_tokens
    lines = (tmp_path / "exports" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 40 and json.loads(lines[0])["status"] == "ok"


def test_extract_fields_dag_stores_typed_fields(dag_env: dict[str, str], glm_server: Any) -> None:
    """Function calling end to end: one function per request, its arguments validated into typed columns."""
    output = run_dag("glm_extract_fields", dag_env)
    assert glm_server.stats.billed_responses == 4
    for request in glm_server.requests:
        body = request.body
        assert [tool["function"]["name"] for tool in body["tools"]] == ["order_issue"]
        assert body["tools"][0]["function"]["parameters"]["required"] == ["customer", "issue", "urgency",
                                                                           "refund_requested"]
        assert body["tool_choice"] == "auto"
        assert "response_format" not in body

    url = dag_env["GLM_WAREHOUSE_URL"]
    engine = sa.create_engine(url)
    try:
        columns = {c["name"]: c["type"] for c in sa.inspect(engine).get_columns("order_issues")}
    finally:
        engine.dispose()
    expected_types = {"customer": sa.Text, "order_id": sa.Text, "issue": sa.Text, "urgency": sa.BigInteger,
                      "refund_requested": sa.Boolean, "amount": sa.Float, "items": sa.JSON}
    for name, kind in expected_types.items():
        assert isinstance(columns[name], kind), f"{name} is {columns[name]!r}, not {kind.__name__}"

    rows = table_rows(url, "order_issues")
    assert [r["row_key"] for r in rows] == ["M-1", "M-2", "M-3", "M-4"]
    for row in rows:
        assert row["status"] == "ok"
        output_value = json.loads(row["output"])
        assert output_value["customer"] == row["customer"]
        assert row["issue"] in {"damaged", "late", "wrong_item", "billing", "other"}
        assert isinstance(row["urgency"], int)
        assert 1 <= row["urgency"] <= 5
        assert row["refund_requested"] in (0, 1), "SQLite stores a boolean as 0 or 1"
        assert bool(row["refund_requested"]) is output_value["refund_requested"]
        assert json.loads(row["items"]) == output_value["items"]
        (call,) = json.loads(row["tool_calls"])
        assert (call["name"], call["arguments"]) == ("order_issue", output_value)
    assert "EXTRACTED 4 messages" in output
    assert sum(line.startswith("TRIAGE M-") for line in output.splitlines()) == 4
