"""Each ``finish_reason`` GLM documents has its outcome, in row mode (status, error, value, the table) and
in single mode (the return value or the exception); docs/operator.md has the same table."""

from __future__ import annotations

from typing import Any

import pytest
from _databases import BACKENDS
from _warehouse import Warehouse

from airflow_provider_glm.exceptions import GLMContentFilterError, GLMInvalidOutputError
from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.testing import Fault

CALL = {"name": "lookup_order", "arguments": {"order_id": "A-7"}, "id": "call_7"}
TRUNCATION_WARNING = "1 answers were cut short (finish_reason length or model_context_window_exceeded)."

# row key: (scripted answer, status, error or None, XCom value: "content" for the answer's content)
OUTCOMES: dict[str, tuple[dict[str, Any], str, str | None, Any]] = {
    "stop": ({}, "ok", None, "content"),
    "tool_calls": ({"tool_call": CALL}, "ok", None,
                   [{"id": "call_7", "type": "function", "name": "lookup_order", "arguments": {"order_id": "A-7"}}]),
    "sensitive": ({"finish_reason": "sensitive", "content_filter": [{"role": "assistant", "level": 1}]},
                  "filtered",
                  "GLMContentFilterError: the answer was blocked by content review (finish_reason=sensitive)", None),
    "network_error": ({"finish_reason": "network_error"}, "failed",
                      "GLMInvalidOutputError: inference failed on the server (finish_reason=network_error)", None),
    "length": ({"finish_reason": "length"}, "ok", None, "content"),
}
TRUNCATED = ["length", "model_context_window_exceeded"]


def rows_operator(keys: list[str], warehouse: Warehouse, **kwargs: Any) -> GLMChatOperator:
    return GLMChatOperator(task_id="glm", rows=[{"id": key} for key in keys], row_key="id",
                           prompt="Answer ends with {{ row.id }}.", max_failed_rows=5, **warehouse.operator_kwargs(),
                           **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_outcome_of_each_finish_reason(glm_conn: Any, context: dict[str, Any], warehouse: Warehouse,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    keys = [*OUTCOMES, "model_context_window_exceeded"]
    for key, (scripted, *_) in OUTCOMES.items():
        if scripted:
            glm_conn.answer(f"ends with {key}.", **scripted)
    glm_conn.answer("ends with model_context_window_exceeded.", finish_reason="model_context_window_exceeded")
    values = dict(zip(keys, rows_operator(keys, warehouse).execute(context), strict=True))

    results = warehouse.results()
    assert {key: row["finish_reason"] for key, row in results.items()} == {key: key for key in keys}
    for key, (_, status, error, value) in {**OUTCOMES, "model_context_window_exceeded": OUTCOMES["length"]}.items():
        row = results[key]
        assert (row["status"], row["error"]) == (status, error), key
        assert values[key] == (row["content"] if value == "content" else value), key
        assert row["prompt_tokens"] is not None, f"{key}: the answer was billed and its tokens kept"
    assert results["sensitive"]["content_filter"] == [{"role": "assistant", "level": 1}]
    assert len(warehouse.sink.usage()) == glm_conn.stats.billed_responses == 6, "every answer is in the ledger"
    assert TRUNCATION_WARNING.replace("1 answers", "2 answers") in capsys.readouterr().out


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncation_fails_the_row_with_fail_on_truncation(glm_conn: Any, context: dict[str, Any],
                                                          warehouse: Warehouse) -> None:
    for reason in TRUNCATED:
        glm_conn.answer(f"ends with {reason}.", finish_reason=reason)
    assert rows_operator([*TRUNCATED, "stop"], warehouse, fail_on_truncation=True).execute(context)[:2] == [None] * 2
    results = warehouse.results()
    for reason in TRUNCATED:
        assert (results[reason]["status"], results[reason]["error"]) == (
            "failed", f"GLMInvalidOutputError: the answer was truncated (finish_reason={reason})")
        assert results[reason]["content"] is not None, "the cut answer is kept for inspection"
    assert results["stop"]["status"] == "ok"


@pytest.mark.parametrize("reason", TRUNCATED)
def test_single_mode_truncation_warns_or_fails(glm_conn: Any, context: dict[str, Any], reason: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    glm_conn.script(Fault.finish(reason), Fault.finish(reason))
    assert GLMChatOperator(task_id="glm", prompt="abc").execute(context) == "Summary: abc"
    assert TRUNCATION_WARNING in capsys.readouterr().out
    with pytest.raises(GLMInvalidOutputError, match=rf"the answer was truncated \(finish_reason={reason}\)"):
        GLMChatOperator(task_id="glm", prompt="abc", fail_on_truncation=True).execute(context)
    assert "cut short" not in capsys.readouterr().out


def test_single_mode_outcomes(glm_conn: Any, context: dict[str, Any]) -> None:
    glm_conn.answer("call it", tool_call=CALL)
    assert GLMChatOperator(task_id="glm", prompt="call it").execute(context) == OUTCOMES["tool_calls"][3]
    glm_conn.script(Fault.finish("sensitive"))
    with pytest.raises(GLMContentFilterError, match=r"blocked by content review \(finish_reason=sensitive\)"):
        GLMChatOperator(task_id="glm", prompt="abc").execute(context)
    glm_conn.script(Fault.finish("network_error"))
    with pytest.raises(GLMInvalidOutputError, match=r"inference failed on the server \(finish_reason=network_error\)"):
        GLMChatOperator(task_id="glm", prompt="abc").execute(context)
    assert context["ti"].xcom["answer"]["finish_reason"] == "network_error"
    assert context["ti"].xcom["usage"]["response_id"] == glm_conn.billed[-1].response_id, "billed, so in usage"
