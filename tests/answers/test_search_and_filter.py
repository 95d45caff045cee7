"""``web_search`` results and ``content_filter`` levels reach the results table, single mode's ``answer``
XCom key and the JSONL export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _databases import BACKENDS
from _warehouse import Warehouse

from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.testing.answers import web_search_results

WEB_SEARCH_TOOL = {"type": "web_search", "web_search": {"enable": True, "search_result": True, "count": 2}}
SCRIPTED_SEARCH = [{"title": "Beijing weather, 26 Nov", "link": "https://weather.example.cn/beijing",
                    "content": "Sunny, 3 °C to 11 °C.", "icon": "https://weather.example.cn/i.png",
                    "media": "天气网", "refer": "ref_1", "publish_date": "2026-11-26"}]
LEVELS = [{"role": "assistant", "level": 2}, {"role": "user", "level": 3}]
QUESTIONS = [
    {"id": "q1", "text": "Who won the 2026 Shanghai marathon?"},
    {"id": "q2", "text": "What is the weather in Beijing today?"},
    {"id": "q3", "text": "Summarize today's tech news."},
]
PROMPT = "Answer with sources: {{ row.text }}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_results_and_filter_levels_reach_the_table_and_the_export(
    glm_conn: Any, context: dict[str, Any], warehouse: Warehouse, tmp_path: Path
) -> None:
    glm_conn.answer("weather in Beijing", web_search=SCRIPTED_SEARCH)
    glm_conn.answer("tech news", content_filter=LEVELS)
    export = tmp_path / "exports" / "answers.jsonl"
    op = GLMChatOperator(task_id="glm", rows=QUESTIONS, row_key="id", prompt=PROMPT,
                         request_params={"tools": [WEB_SEARCH_TOOL]}, output_path=f"file://{export}",
                         **warehouse.operator_kwargs())
    values = op.execute(context)

    assert all(body["tools"] == [WEB_SEARCH_TOOL] for body in (r.body for r in glm_conn.requests))
    results = warehouse.results()
    assert {key: row["status"] for key, row in results.items()} == {"q1": "ok", "q2": "ok", "q3": "ok"}
    assert values == [results[key]["content"] for key in ("q1", "q2", "q3")], "XCom keeps the answer text"
    generated = web_search_results([WEB_SEARCH_TOOL], "Answer with sources: Who won the 2026 Shanghai marathon?")
    assert generated is not None
    assert len(generated) == 2
    assert results["q1"]["web_search"] == generated
    assert results["q2"]["web_search"] == SCRIPTED_SEARCH, "non-ASCII search results round-trip"
    assert results["q1"]["content_filter"] is None
    assert results["q3"]["content_filter"] == LEVELS
    assert results["q3"]["web_search"] is not None, "a scripted filter keeps the generated search results"

    lines = {line["row_key"]: line for line in map(json.loads, export.read_text(encoding="utf-8").splitlines())}
    for key, row in results.items():
        assert (lines[key]["web_search"], lines[key]["content_filter"], lines[key]["tool_calls"]) == (
            row["web_search"], row["content_filter"], row["tool_calls"])
    assert lines["q2"]["web_search"] == SCRIPTED_SEARCH


def test_single_mode_pushes_the_rest_of_the_answer_under_answer(glm_conn: Any, context: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    glm_conn.answer("weather in Beijing", web_search=SCRIPTED_SEARCH, content_filter=LEVELS)
    export = tmp_path / "single.jsonl"
    op = GLMChatOperator(task_id="glm", prompt=QUESTIONS[1]["text"], output_path=f"file://{export}",
                         request_params={"tools": [WEB_SEARCH_TOOL], "thinking": {"type": "enabled"}})
    content = op.execute(context)

    assert content == "Summary: What is the weather in Beijing today?", "return_value stays the answer text"
    assert context["ti"].xcom["answer"] == {
        "finish_reason": "stop",
        "reasoning_content": "Thinking about: What is the weather in Beijing today?",
        "tool_calls": None,
        "web_search": SCRIPTED_SEARCH,
        "content_filter": LEVELS,
    }
    (line,) = map(json.loads, export.read_text(encoding="utf-8").splitlines())
    assert (line["row_key"], line["web_search"], line["content_filter"]) == ("single", SCRIPTED_SEARCH, LEVELS)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cleared_single_task_pushes_the_stored_answer_again(glm_conn: Any, context: dict[str, Any],
                                                              warehouse: Warehouse) -> None:
    """A second try that returns the stored answer (no request) pushes the same ``answer`` as the first."""
    glm_conn.answer("weather in Beijing", web_search=SCRIPTED_SEARCH, content_filter=LEVELS)

    def single() -> GLMChatOperator:
        return GLMChatOperator(task_id="glm", prompt=QUESTIONS[1]["text"], **warehouse.operator_kwargs(),
                               request_params={"tools": [WEB_SEARCH_TOOL]})

    first = single().execute(context)
    pushed = context["ti"].xcom.pop("answer")
    assert pushed["web_search"] == SCRIPTED_SEARCH
    context["ti"].try_number = 2
    assert single().execute(context) == first
    assert glm_conn.stats.requests == 1, "the second try asked nothing"
    assert context["ti"].xcom["answer"] == pushed


def test_no_answer_key_without_xcom_push(glm_conn: Any, context: dict[str, Any]) -> None:
    GLMChatOperator(task_id="glm", prompt="hello", do_xcom_push=False).execute(context)
    assert context["ti"].xcom == {}
