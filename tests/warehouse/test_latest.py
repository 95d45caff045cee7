"""The current answer per row key: the maintained latest table, and the docs' query over the results table,
agree on every backend after nights that reuse, re-ask edited rows and fail one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _databases import BACKENDS
from _nightly import DAG_ID, TASK_ID, Nightly

from airflow_provider_glm.testing import Fault

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operator.md"
ROWS = 20


def docs_current_answer_sql() -> str:
    """The query docs/operator.md gives for "the current answer per row_key" (the one with ROW_NUMBER)."""
    blocks = re.findall(r"```sql\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    (query,) = [b for b in blocks if "ROW_NUMBER()" in b]
    return query


@pytest.mark.parametrize("backend", BACKENDS)
def test_latest_table_and_the_documented_query_give_one_current_answer_per_row(glm_conn: Any,
                                                                              nightly: Nightly) -> None:
    nightly.seed(ROWS)
    latest = {"latest_table": nightly.latest_table}
    nightly.night("n1", **latest)
    nightly.edit([3, 4])
    nightly.night("n2", **latest)
    nightly.edit([4, 5])
    glm_conn.add_rule("Review 5:", Fault.error(400, "1214"), times=1)
    nightly.night("n3", max_failed_rows=1, **latest)
    assert glm_conn.stats.requests == ROWS + 2 + 2
    assert nightly.results("n3")["5"]["status"] == "failed"

    rows = nightly.latest()
    assert len(rows) == ROWS, "one row per row key"
    assert {r["run_id"] for r in rows.values()} == {"n3", "n2"}
    assert rows["5"]["run_id"] == "n2", "a row that failed later keeps its last ok answer"
    for key, row in rows.items():
        assert row["status"] == "ok"
        expected_payer = {"3": "n2", "4": "n3"}.get(key, "n1")
        assert (row["reused_from_run_id"] or row["run_id"]) == expected_payer, key
    assert rows["4"]["content"] == nightly.content_of("4"), "the newest answer of an edited row"
    assert rows["3"]["content"] == nightly.content_of("3")
    assert rows["5"]["content"] != nightly.content_of("5"), "row 5's current prompt was never answered"

    query = docs_current_answer_sql().replace("glm_results", nightly.results_table)
    with nightly.engine.connect() as conn:
        current = {r["row_key"]: r for r in conn.execute(sa.text(query), {"dag_id": DAG_ID, "task_id": TASK_ID})
                   .mappings()}
    assert set(current) == set(rows)
    for key, row in rows.items():
        assert (current[key]["run_id"], current[key]["content"]) == (row["run_id"], row["content"]), key
