"""OpenLineage: a finished ``source_sql`` run names the tables it read and wrote, and what it spent, in an
event written by OpenLineage's own client through its file transport (no network)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from _databases import BACKENDS
from _nightly import DAG_ID, TASK_ID, Nightly
from sqlalchemy import text


def emit(lineage: Any, path: Path) -> list[dict[str, Any]]:
    """A COMPLETE event for ``lineage`` through the file transport, read back as JSON."""
    from openlineage.client import OpenLineageClient
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.transport.file import FileConfig, FileTransport
    from openlineage.client.uuid import generate_new_uuid

    client = OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=str(path), append=True)))
    client.emit(RunEvent(eventType=RunState.COMPLETE, eventTime="2026-11-29T01:00:00Z",
                         run=Run(runId=str(generate_new_uuid()), facets=lineage.run_facets),
                         job=Job(namespace="airflow", name=f"{DAG_ID}.{TASK_ID}"),
                         inputs=lineage.inputs, outputs=lineage.outputs, producer="tests/warehouse"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def expected_names(nightly: Nightly, table: str) -> tuple[str, str]:
    """(namespace, name) as OpenLineage's Airflow SQL integrations name a table on each backend."""
    url = nightly.engine.url
    if nightly.backend == "sqlite":
        return f"sqlite://{url.database}", table
    if nightly.backend == "postgresql":
        return f"postgres://{url.host}:{url.port or 5432}", f"{url.database}.public.{table}"
    return f"mysql://{url.host}:{url.port or 3306}", f"{url.database}.{table}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_lineage_names_the_source_the_results_and_the_ledger_and_what_was_spent(
    glm_conn: Any, nightly: Nightly, tmp_path: Path
) -> None:
    nightly.seed(30)
    other = f"prod_{uuid.uuid4().hex[:8]}"
    with nightly.engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {other} (product VARCHAR(20), name VARCHAR(40))"))
    try:
        sql = (f"SELECT r.id, r.product, r.body FROM {nightly.source} r JOIN {other} p ON p.product = r.product "
               f"UNION ALL SELECT id, product, body FROM {nightly.source} ORDER BY id")
        op = nightly.operator(source_sql=sql, latest_table=nightly.latest_table)
        assert op.get_openlineage_facets_on_complete(None) is None, "nothing to report before a run"
        context = nightly.context("n1")
        op.execute(context)

        events = emit(op.get_openlineage_facets_on_complete(context["ti"]), tmp_path / "lineage.jsonl")
        (event,) = events
        inputs = {(d["namespace"], d["name"]) for d in event["inputs"]}
        assert inputs == {expected_names(nightly, nightly.source), expected_names(nightly, other)}
        outputs = {(d["namespace"], d["name"]) for d in event["outputs"]}
        tables = (nightly.results_table, nightly.usage_table, nightly.runs_table, nightly.latest_table)
        assert outputs == {expected_names(nightly, t) for t in tables}
        facet = event["run"]["facets"]["glm"]
        ledger = nightly.ledger()
        assert (facet["rows"], facet["ok"], facet["reused"]) == (30, 30, 0)
        assert facet["total_tokens"] == sum(u["total_tokens"] for u in ledger) == glm_conn.stats.billed_total_tokens
        assert facet["cost"] == pytest.approx(float(sum(u["cost"] for u in ledger)))
        assert facet["currency"] == ledger[0]["currency"]
        assert facet["_producer"]
        assert facet["_schemaURL"]

        # The next night reuses everything: the facet says so, and that nothing was spent.
        op = nightly.operator(source_sql=sql, latest_table=nightly.latest_table)
        op.execute(nightly.context("n2"))
        facet = emit(op.get_openlineage_facets_on_complete(None), tmp_path / "night2.jsonl")[0]["run"]["facets"]["glm"]
        assert (facet["rows"], facet["reused"], facet["total_tokens"]) == (30, 30, 0)
        assert facet["cost"] == 0, "no call: the cost is exactly 0, not unknown"
    finally:
        with nightly.engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {other}"))
