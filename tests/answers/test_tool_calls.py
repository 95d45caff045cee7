"""A row-mode run with the user's own tools keeps every call: parsed arguments, text arguments, MCP entries."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from _databases import BACKENDS
from _warehouse import Warehouse

from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.testing.completions import generate_completion

LOOKUP_ORDER = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Look an order up by its id.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "include_items": {"type": "boolean"}},
            "required": ["order_id"],
        },
    },
}
MESSAGES = [
    {"id": "m1", "text": "Where is my order A-1001? It was due Monday."},
    {"id": "m2", "text": "Order A-1002 came without the charger."},
    {"id": "m3", "text": "Please cancel A-1003, the usual way."},
]
PROMPT = "Use `lookup_order` when the message names an order.\nMessage: {{ row.text }}"


def tools_operator(**kwargs: Any) -> GLMChatOperator:
    params: dict[str, Any] = {"task_id": "glm", "rows": MESSAGES, "row_key": "id", "prompt": PROMPT,
                              "request_params": {"tools": [LOOKUP_ORDER]}}
    params.update(kwargs)
    return GLMChatOperator(**params)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_rows_function_call_is_stored_with_parsed_arguments(
    glm_conn: Any, context: dict[str, Any], warehouse: Warehouse
) -> None:
    glm_conn.answer("A-1002", tool_call={"name": "lookup_order", "id": "call_scripted",
                                         "arguments": {"order_id": "A-1002", "include_items": True}})
    glm_conn.answer("A-1003", tool_call={"name": "lookup_order", "arguments": "A-1003 (the usual way)"})
    values = tools_operator(**warehouse.operator_kwargs()).execute(context)

    sent = [r.body for r in glm_conn.requests]
    assert len(sent) == 3
    assert all(body["tools"] == [LOOKUP_ORDER] for body in sent)
    results = warehouse.results()
    assert {key: row["status"] for key, row in results.items()} == {"m1": "ok", "m2": "ok", "m3": "ok"}
    for row in results.values():
        assert row["content"] is None
        assert row["output"] is None
        assert row["finish_reason"] == "tool_calls"

    generated = results["m1"]["tool_calls"]
    assert len(generated) == 1
    assert set(generated[0]) == {"id", "type", "name", "arguments"}
    assert (generated[0]["type"], generated[0]["name"]) == ("function", "lookup_order")
    assert isinstance(generated[0]["arguments"], dict), "the JSON text GLM sends is parsed"
    assert isinstance(generated[0]["arguments"]["order_id"], str)
    assert results["m2"]["tool_calls"] == [{"id": "call_scripted", "type": "function", "name": "lookup_order",
                                            "arguments": {"order_id": "A-1002", "include_items": True}}]
    (kept,) = results["m3"]["tool_calls"]
    assert kept["arguments"] == "A-1003 (the usual way)", "arguments that are not JSON are kept as text"

    assert values == [results[key]["tool_calls"] for key in ("m1", "m2", "m3")], \
        "a row answered only with tool calls has its calls as its XCom value"


def test_a_text_answer_next_to_tools_stays_the_value(glm_conn: Any, context: dict[str, Any]) -> None:
    """The model may answer in text although tools were offered: the row is ok, its value the text."""
    glm_conn.answer("A-1001", content="Your order A-1001 left the warehouse on Monday.")
    values = tools_operator().execute(context)
    assert values[0] == "Your order A-1001 left the warehouse on Monday."
    assert isinstance(values[1], list)
    assert values[1][0]["name"] == "lookup_order"


MCP_CALL = {
    "id": "call_mcp_7", "type": "mcp", "index": 0,
    "mcp": {"id": "mcp_7", "type": "mcp_call", "server_label": "crm", "name": "find_customer",
            "arguments": '{"email": "mei@example.com"}', "output": {"tier": "gold", "orders": [1001, 1002]},
            "error": None},
}
MCP_TOOL = {"type": "mcp", "mcp": {"server_label": "crm", "server_url": "https://crm.example.com/mcp",
                                   "transport_type": "streamable-http", "allowed_tools": ["find_customer"]}}


async def _answer_with_an_mcp_call(ctx: Any) -> None:
    """The local server's answer to the request, with an MCP call in front of its tool calls (what GLM
    sends after it called a remote MCP tool; the scripted answers only make function calls)."""
    completion = generate_completion(ctx.server, ctx.json)
    completion = replace(completion, content=None, finish_reason="tool_calls",
                         tool_calls=[MCP_CALL, *(completion.tool_calls or [])])
    ctx.bill(completion)
    await ctx.send_json(200, completion.to_dict())


def test_mcp_calls_are_kept_whole(glm_conn: Any, context: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                  tmp_path: Path) -> None:
    glm_conn.route("POST", "mcp/chat/completions", _answer_with_an_mcp_call)
    conn = {"conn_type": "glm", "password": glm_conn.api_key, "host": f"{glm_conn.base_url}/mcp"}
    monkeypatch.setenv("AIRFLOW_CONN_GLM_DEFAULT", json.dumps(conn))
    url = f"sqlite:///{tmp_path / 'w.db'}"
    values = tools_operator(rows=MESSAGES[:1], sqlalchemy_url=url,
                            request_params={"tools": [MCP_TOOL, LOOKUP_ORDER]}).execute(context)

    assert glm_conn.stats.billed_responses == 1
    (calls,) = values
    assert calls[0] == MCP_CALL, "an MCP entry is stored as GLM sent it"
    assert calls[1]["name"] == "lookup_order"
    assert isinstance(calls[1]["arguments"], dict)
    from airflow_provider_glm.sinks.sql import SQLSink

    sink = SQLSink.from_url(url)
    try:
        (row,) = sink.results()
    finally:
        sink.dispose()
    assert (row["status"], row["tool_calls"]) == ("ok", calls)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_results_table_from_before_gains_the_answer_columns(
    glm_conn: Any, context: dict[str, Any], warehouse: Warehouse
) -> None:
    """A results table created without tool_calls, web_search and content_filter gets them on the next run."""
    import sqlalchemy as sa

    from airflow_provider_glm.sinks.sql._tables import results_table_def

    new = results_table_def(sa.MetaData(), None, warehouse.results_table)
    answer_columns = ("tool_calls", "web_search", "content_filter")
    old = sa.Table(warehouse.results_table, sa.MetaData(),
                   *(column._copy() for column in new.columns if column.name not in answer_columns))
    old.create(warehouse.sink.engine)

    values = tools_operator(rows=MESSAGES[:1], **warehouse.operator_kwargs()).execute(context)
    columns = {c["name"] for c in sa.inspect(warehouse.sink.engine).get_columns(warehouse.results_table)}
    assert set(answer_columns) <= columns
    assert warehouse.results()["m1"]["tool_calls"] == values[0]
