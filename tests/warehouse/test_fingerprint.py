"""What decides that a row is asked again: its fingerprint (model, request parameters, rendered messages),
its DAG and task, an earlier answer being ``ok``, and ``reuse_unchanged``."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from _databases import BACKENDS
from _nightly import TASK_ID, Nightly

from airflow_provider_glm.testing import Fault

ROWS = 12


def asked(server: Any, before: int) -> int:
    return server.stats.requests - before


@pytest.mark.parametrize("backend", BACKENDS)
def test_any_change_to_prompt_model_or_parameters_asks_again_and_nothing_else_does(
    glm_conn: Any, nightly: Nightly
) -> None:
    nightly.seed(ROWS)
    nightly.night("base")
    base = nightly.results("base")
    assert asked(glm_conn, 0) == ROWS
    variants: list[tuple[str, dict[str, Any], int]] = [
        ("same", {}, 0),
        ("prompt", {"prompt": "Summarize. Product: {{ row.product }}\nReview: {{ row.body }}"}, ROWS),
        ("system", {"system_prompt": "You write for the weekly report."}, ROWS),
        ("model", {"model": "glm-4.5-air"}, ROWS),
        ("param", {"request_params": {"temperature": 0.2}}, ROWS),
        ("param-order", {"request_params": {"top_p": 0.5, "temperature": 0.2}}, ROWS),
        ("same-params-reordered", {"request_params": {"temperature": 0.2, "top_p": 0.5}}, 0),
        ("chunked-differently", {"source_chunk_size": 5, "max_concurrency": 2}, 0),
    ]
    prints: dict[str, set[str]] = {"base": {r["fingerprint"] for r in base.values()}}
    for run_id, kwargs, expected in variants:
        before = glm_conn.stats.requests
        nightly.night(run_id, **kwargs)
        assert asked(glm_conn, before) == expected, run_id
        results = nightly.results(run_id)
        assert {r["status"] for r in results.values()} == {"ok"}
        prints[run_id] = {r["fingerprint"] for r in results.values()}
    assert prints["same"] == prints["base"] == prints["chunked-differently"]
    assert prints["same-params-reordered"] == prints["param-order"], "options are hashed in a stable order"
    fresh = ["base", "prompt", "system", "model", "param", "param-order"]
    assert all(len(prints[r]) == ROWS for r in fresh), "every row has its own fingerprint"
    assert len(set().union(*(prints[r] for r in fresh))) == ROWS * len(fresh), "each change, new fingerprints"

    # A column the prompt does not use is not part of the request: changing it asks nothing.
    nightly.set_price(3, 99.0)
    before = glm_conn.stats.requests
    nightly.night("price-changed")
    assert asked(glm_conn, before) == 0
    # The same DAG's other task has answers of its own to pay for.
    context = nightly.context("other-task", task_id="summarize_again")
    nightly.operator(task_id="summarize_again").execute(context)
    assert asked(glm_conn, before) == ROWS


@pytest.mark.parametrize("backend", BACKENDS)
def test_reuse_unchanged_false_always_asks_and_reuse_takes_the_newest_paid_answer(
    glm_conn: Any, nightly: Nightly
) -> None:
    nightly.seed(ROWS)
    nightly.night("a", reuse_unchanged=False)
    nightly.night("b", reuse_unchanged=False)
    assert glm_conn.stats.requests == glm_conn.stats.billed_responses == 2 * ROWS
    assert len(nightly.ledger()) == 2 * ROWS
    assert {r["reused_from_run_id"] for r in nightly.results("b").values()} == {None}

    nightly.night("c")
    assert glm_conn.stats.requests == 2 * ROWS
    assert {r["reused_from_run_id"] for r in nightly.results("c").values()} == {"b"}, "the newest ok answer"


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_ok_answers_are_reused_and_a_budget_counts_only_what_is_spent(glm_conn: Any, nightly: Nightly) -> None:
    nightly.seed(ROWS)
    glm_conn.add_rule("Review 5:", Fault.error(400, "1214"), times=1)
    nightly.night("a", max_failed_rows=1)
    assert nightly.results("a")["5"]["status"] == "failed"
    assert len(nightly.ledger()) == ROWS - 1

    before = glm_conn.stats.requests
    context = nightly.night("b", max_total_tokens=1)
    assert asked(glm_conn, before) == 1, "only the row that failed is asked again"
    results = nightly.results("b")
    assert {r["status"] for r in results.values()} == {"ok"}
    assert results["5"]["reused_from_run_id"] is None
    summary = context["ti"].xcom["usage"]
    assert (summary["reused"], summary["ok"]) == (ROWS - 1, ROWS)
    assert 0 < summary["total_tokens"] == nightly.ledger()[-1]["total_tokens"], "reused rows spend nothing"


@pytest.mark.parametrize("backend", BACKENDS)
def test_logical_date_is_stored_and_null_for_a_run_without_one(glm_conn: Any, nightly: Nightly) -> None:
    nightly.seed(3)
    beijing = dt.timezone(dt.timedelta(hours=8))
    nightly.night("dated", dt.datetime(2026, 11, 28, 8, tzinfo=beijing), reuse_unchanged=False)
    nightly.night("undated", reuse_unchanged=False)
    midnight = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    for run_id, expected in (("dated", midnight), ("undated", None)):
        assert {r["logical_date"] for r in nightly.results(run_id).values()} == {expected}
        assert {u["logical_date"] for u in nightly.ledger() if u["run_id"] == run_id} == {expected}
        assert [r["logical_date"] for r in nightly.runs(run_id)] == [expected]
    assert TASK_ID == nightly.results("dated")["0"]["task_id"]
