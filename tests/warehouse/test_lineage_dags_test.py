"""End to end: ``airflow dags test`` of the nightly DAG with the OpenLineage provider's listener and its
file transport; the task's COMPLETE event names the query's table, the four tables written and the spend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.airflow_db
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def test_the_listener_reports_the_nightly_jobs_lineage(airflow_metadata_db: None, glm_server: Any,
                                                       tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.db"
    engine = sa.create_engine(f"sqlite:///{warehouse}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE reviews (id INTEGER PRIMARY KEY, product TEXT, body TEXT)"))
        conn.execute(sa.text("INSERT INTO reviews VALUES (:id, :product, :body)"),
                     [{"id": i, "product": f"P{i % 3}", "body": f"Review {i}: fine"} for i in range(12)])
    engine.dispose()
    events_file = tmp_path / "events.jsonl"
    env = dict(os.environ)
    env.update(
        AIRFLOW_CONN_GLM_DEFAULT=json.dumps({"conn_type": "glm", "password": glm_server.api_key,
                                             "host": glm_server.base_url}),
        GLM_WAREHOUSE_URL=f"sqlite:///{warehouse}",
        AIRFLOW__OPENLINEAGE__TRANSPORT=json.dumps({"type": "file", "log_file_path": str(events_file),
                                                    "append": True}),
        AIRFLOW__OPENLINEAGE__NAMESPACE="glm-tests",
    )
    done = subprocess.run([AIRFLOW, "dags", "test", "glm_nightly_summary", "2026-11-28"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert glm_server.stats.billed_responses == 12

    events = [json.loads(line) for line in events_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    (complete,) = [e for e in events if e["eventType"] == "COMPLETE"
                   and e["job"]["name"] == "glm_nightly_summary.summarize_reviews"]
    namespace = f"sqlite://{warehouse}"
    assert [(d["namespace"], d["name"]) for d in complete["inputs"]] == [(namespace, "reviews")]
    assert sorted((d["namespace"], d["name"]) for d in complete["outputs"]) == sorted(
        (namespace, t) for t in ("review_summaries", "glm_usage", "glm_runs", "review_summaries_latest"))
    facet = complete["run"]["facets"]["glm"]
    assert (facet["rows"], facet["ok"], facet["reused"]) == (12, 12, 0)
    assert facet["total_tokens"] == glm_server.stats.billed_total_tokens
    assert facet["cost"] > 0
