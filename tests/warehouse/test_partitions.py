"""``.partial().expand()`` over ``source_sql`` partitions: each mapped task streams a disjoint part into the
same tables, and reuse does not care which part (map index) paid for an answer."""

from __future__ import annotations

from typing import Any

import pytest
from _databases import BACKENDS
from _nightly import DAG_ID, PROMPT, TASK_ID, Nightly

from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.partitioning import partition_queries

ROWS = 40


def source_query(nightly: Nightly) -> str:
    return f"SELECT id, product, body FROM {nightly.source} ORDER BY id"


def run_parts(nightly: Nightly, run_id: str, parts: list[str]) -> None:
    """What the scheduler does with ``.expand(source_sql=parts)``: one task instance per part, map index i."""
    for index, sql in enumerate(parts):
        op = GLMChatOperator(task_id=TASK_ID, source_sql=sql, row_key="id", prompt=PROMPT, **nightly.sink_kwargs())
        op.execute(nightly.context(run_id, map_index=index))


@pytest.mark.parametrize("backend", BACKENDS)
def test_expanded_partitions_cover_every_row_once_and_reuse_across_map_indexes(glm_conn: Any,
                                                                              nightly: Nightly) -> None:
    from airflow.sdk import DAG

    nightly.seed(ROWS)
    parts = partition_queries(source_query(nightly), partitions=4)
    with DAG(DAG_ID, schedule=None):
        mapped = GLMChatOperator.partial(task_id=TASK_ID, row_key="id", prompt=PROMPT,
                                         **nightly.sink_kwargs()).expand(source_sql=parts)
    assert mapped.expand_input.value == {"source_sql": parts}

    run_parts(nightly, "n1", parts)
    assert glm_conn.stats.requests == ROWS
    keys_per_part = [set(nightly.results("n1", map_index=i)) for i in range(4)]
    assert [sorted(int(k) % 4 for k in keys) for keys in keys_per_part] == [[i] * (ROWS // 4) for i in range(4)]
    assert set().union(*keys_per_part) == {str(i) for i in range(ROWS)}
    assert len(nightly.ledger()) == ROWS
    assert sorted({u["map_index"] for u in nightly.ledger()}) == [0, 1, 2, 3]

    # The next night with 3 partitions: every row lands in another map index, and nothing is asked.
    nightly.edit([7])
    run_parts(nightly, "n2", partition_queries(source_query(nightly), partitions=3))
    assert glm_conn.stats.requests == ROWS + 1
    reused = {k: r for i in range(3) for k, r in nightly.results("n2", map_index=i).items()}
    assert len(reused) == ROWS
    assert {k for k, r in reused.items() if r["reused_from_run_id"] is None} == {"7"}
    assert {r["reused_from_run_id"] for k, r in reused.items() if k != "7"} == {"n1"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_templated_partition_is_rendered_per_mapped_task(glm_conn: Any, nightly: Nightly) -> None:
    """``WHERE id % 4 = {{ params.part }}``: Airflow renders ``source_sql`` (a template field) per task; the
    prompt stays a per-row template."""
    nightly.seed(ROWS)
    sql = f"SELECT id, product, body FROM {nightly.source} WHERE id % 4 = {{{{ params.part }}}} ORDER BY id"
    for part in range(4):
        op = GLMChatOperator(task_id=TASK_ID, source_sql=sql, row_key="id", prompt=PROMPT, **nightly.sink_kwargs())
        context = nightly.context("n1", map_index=part)
        context["params"] = {"part": part}
        op.render_template_fields(context)
        assert op.source_sql.endswith(f"WHERE id % 4 = {part} ORDER BY id")
        assert op.prompt == PROMPT, "the row template is not rendered by Airflow"
        op.execute(context)
        assert {int(k) % 4 for k in nightly.results("n1", map_index=part)} == {part}
    assert glm_conn.stats.requests == ROWS
