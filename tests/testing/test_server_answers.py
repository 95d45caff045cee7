"""Answers that conform to the request's schema, scripted answers, web search and content filter,
over real HTTP: chat completions (plain and streamed), async results and batch output lines."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import pytest
from _waits import wait_until
from pydantic import BaseModel, Field

from airflow_provider_glm.testing import Fault, GLMTestServer

AUTH = {"Authorization": "Bearer test-key"}
WAIT_SECONDS = 30.0


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(headers=AUTH, timeout=WAIT_SECONDS) as client:
        yield client


class Party(BaseModel):
    name: str
    role: Literal["buyer", "seller"]
    email: str | None = Field(default=None, json_schema_extra={"format": "email"})


class Extraction(BaseModel):
    """What the provider's ``output_mode="tool"`` sends as the one function's parameters."""

    title: str = Field(max_length=20)
    amount: float = Field(ge=0)
    currency: Literal["EUR", "USD", "CNY"]
    parties: list[Party] = Field(min_length=1)
    due: str = Field(json_schema_extra={"format": "date"})
    lines: int = Field(ge=1, le=50)


def tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))




def post(http: httpx.Client, srv: GLMTestServer, body: dict[str, Any]) -> dict[str, Any]:
    resp = http.post(f"{srv.base_url}/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def function_tool(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "description": f"the {name} function"}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def tool_request(user: str, **extra: Any) -> dict[str, Any]:
    schema = Extraction.model_json_schema()
    return {"model": "glm-4.5",
            "messages": [{"role": "system", "content": "Answer by calling the function `extract_fields`."},
                         {"role": "user", "content": user}],
            "tools": [function_tool("lookup", {"type": "object", "properties": {"q": {"type": "string"}}}),
                      function_tool("extract_fields", schema)], **extra}


def test_tool_mode_answers_the_named_function_with_conforming_arguments(glm_server: GLMTestServer,
                                                                        http: httpx.Client) -> None:
    user = "Invoice from ACME to Bob, 120 EUR, due next month"
    data = post(http, glm_server, tool_request(user))
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "extract_fields" and call["type"] == "function"
    arguments = call["function"]["arguments"]
    assert isinstance(arguments, str)
    parsed = Extraction.model_validate_json(arguments)
    jsonschema.validate(json.loads(arguments), Extraction.model_json_schema())
    assert parsed.lines == len(user) and parsed.parties[0].name == user
    assert data["usage"]["completion_tokens"] == tokens(arguments)
    again = post(http, glm_server, tool_request(user))["choices"][0]["message"]["tool_calls"][0]
    assert again["function"]["arguments"] == arguments and again["id"] != call["id"]

    streamed = http.post(f"{glm_server.base_url}/chat/completions", json=tool_request(user, stream=True))
    events = [json.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: {")]
    fragments = [tc["function"]["arguments"] for e in events for tc in e["choices"][0]["delta"].get("tool_calls", [])]
    assert "".join(fragments) == arguments and events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_rules_call_tool_no_parameters_and_tool_results(glm_server: GLMTestServer, http: httpx.Client) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer",
                                                                                    "maximum": 7}},
              "required": ["city", "days"], "additionalProperties": False}
    user = "Please call tool: weather in Beijing"
    body = {"model": "m", "messages": [{"role": "user", "content": user}],
            "tools": [function_tool("weather", schema), function_tool("other")]}
    call = post(http, glm_server, body)["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"city": user, "days": 7}

    body["messages"][0]["content"] = "use `other` now"
    call = post(http, glm_server, body)["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "other"
    assert json.loads(call["function"]["arguments"]) == {"query": "use `other` now"}

    body["messages"] += [{"role": "assistant", "content": None, "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]
    answer = post(http, glm_server, body)["choices"][0]
    assert answer["finish_reason"] == "stop" and answer["message"]["content"] == "Summary: use `other` now"

    closed = {"model": "m", "messages": [{"role": "user", "content": "call tool"}],
              "tools": [function_tool("ping", {"type": "object", "additionalProperties": False})]}
    call = post(http, glm_server, closed)["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["arguments"] == "{}"
    unnamed = {"model": "m", "messages": [{"role": "user", "content": "mention `nothing` here"}],
               "tools": [function_tool("ping")]}
    assert post(http, glm_server, unnamed)["choices"][0]["message"]["content"].startswith("Summary:")


def schema_prompt(schema: dict[str, Any]) -> str:
    return f"Reply with JSON that matches this schema:\n```json\n{json.dumps(schema, indent=2)}\n```"


def test_json_mode_answers_the_fenced_schema(glm_server: GLMTestServer, http: httpx.Client) -> None:
    schema = Extraction.model_json_schema()
    user = "Invoice 7 from Lin to ACME, 99.5 USD"
    messages = [{"role": "system", "content": schema_prompt(schema)}, {"role": "user", "content": user}]
    body = {"model": "glm-4.5", "messages": messages, "response_format": {"type": "json_object"}}
    data = post(http, glm_server, body)
    content = data["choices"][0]["message"]["content"]
    Extraction.model_validate_json(content)
    jsonschema.validate(json.loads(content), schema)
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"]["completion_tokens"] == tokens(content)
    assert post(http, glm_server, body)["choices"][0]["message"]["content"] == content

    in_user = {"model": "m", "response_format": {"type": "json_object"},
               "messages": [{"role": "user", "content": [{"type": "text", "text": schema_prompt(
                   {"type": "array", "items": {"type": "integer"}, "minItems": 3})}]}]}
    assert len(json.loads(post(http, glm_server, in_user)["choices"][0]["message"]["content"])) == 3

    plain = {"model": "m", "messages": [{"role": "user", "content": "hello"}],
             "response_format": {"type": "json_object"}}
    assert json.loads(post(http, glm_server, plain)["choices"][0]["message"]["content"]) == {
        "summary": "hello", "chars": 5}
    text_mode = {"model": "m", "messages": messages}
    assert post(http, glm_server, text_mode)["choices"][0]["message"]["content"].startswith("Summary: ")


def test_json_schema_response_format(glm_server: GLMTestServer, http: httpx.Client) -> None:
    schema = Extraction.model_json_schema()
    body = {"model": "m", "messages": [{"role": "user", "content": "extract it"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "extraction", "schema": schema}}}
    Extraction.model_validate_json(post(http, glm_server, body)["choices"][0]["message"]["content"])
    body["response_format"] = {"type": "json_schema", "json_schema": {"name": "nothing"}}
    assert json.loads(post(http, glm_server, body)["choices"][0]["message"]["content"]) == {
        "summary": "extract it", "chars": 10}


SEARCH = [{"title": "T", "link": "https://example.org/a", "content": "C", "icon": "", "media": "M",
           "refer": "ref_1", "publish_date": "2025-01-01"}]
FILTER = [{"role": "assistant", "level": 1}]


def test_scripted_answers_match_times_and_precedence(glm_server: GLMTestServer, http: httpx.Client) -> None:
    invoice = glm_server.answer("invoice 42", json={"total": 42, "currency": "EUR"})
    glm_server.answer('say "hi"', content="hi!", times=1)
    glm_server.answer("weather", tool_call={"name": "lookup", "arguments": {"city": "Beijing"}})
    glm_server.answer("two calls", tool_call=[{"name": "a", "arguments": "{\"x\": 1}", "id": "call_x"},
                                              {"name": "b", "arguments": {}}], content="calling")
    glm_server.answer("unsafe", content_filter=FILTER, finish_reason="sensitive")

    def ask(text: str, **extra: Any) -> dict[str, Any]:
        return post(http, glm_server, {"model": "m", "messages": [{"role": "user", "content": text}], **extra})

    data = ask("total of invoice 42?", response_format={"type": "json_object"})
    assert json.loads(data["choices"][0]["message"]["content"]) == {"total": 42, "currency": "EUR"}
    assert invoice.hits == 1 and data["usage"]["completion_tokens"] == tokens(
        json.dumps({"total": 42, "currency": "EUR"}))
    assert ask('please say "hi"')["choices"][0]["message"]["content"] == "hi!"
    assert ask('please say "hi"')["choices"][0]["message"]["content"].startswith("Summary:")
    called = ask("weather today")["choices"][0]
    assert called["finish_reason"] == "tool_calls" and called["message"]["content"] is None
    assert called["message"]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": '{"city": "Beijing"}'}
    two = ask("two calls please")
    calls = two["choices"][0]["message"]["tool_calls"]
    assert [c["id"] for c in calls][0] == "call_x" and [c["index"] for c in calls] == [0, 1]
    assert [c["function"]["arguments"] for c in calls] == ['{"x": 1}', "{}"]
    assert two["choices"][0]["message"]["content"] == "calling"
    assert two["usage"]["completion_tokens"] == tokens('{"x": 1}') + tokens("{}") + tokens("calling")
    unsafe = ask("something unsafe")
    assert unsafe["content_filter"] == FILTER and unsafe["choices"][0]["finish_reason"] == "sensitive"
    assert unsafe["choices"][0]["message"]["content"] == "Summary: something unsafe"
    glm_server.script(Fault.answer(content="scripted first"))
    assert ask("invoice 42")["choices"][0]["message"]["content"] == "scripted first"
    assert glm_server.stats.billed_responses == 7


@pytest.mark.parametrize(("kwargs", "error"), [
    ({}, ValueError), ({"content": "a", "json": {}}, ValueError),
    ({"tool_call": {"name": "bad name!"}}, ValueError), ({"tool_call": []}, TypeError),
    ({"web_search": {"title": "x"}}, TypeError), ({"content": 3}, TypeError),
])
def test_answer_arguments_are_checked(glm_server: GLMTestServer, kwargs: dict[str, Any],
                                      error: type[Exception]) -> None:
    with pytest.raises(error):
        glm_server.answer("x", **kwargs)


def test_web_search_results_and_content_filter_in_streams(glm_server: GLMTestServer, http: httpx.Client) -> None:
    search_tool = {"type": "web_search", "web_search": {"enable": True, "search_result": True, "count": 2}}
    body = {"model": "m", "messages": [{"role": "user", "content": "latest GLM news"}], "tools": [search_tool]}
    first = post(http, glm_server, body)
    results = first["web_search"]
    assert len(results) == 2 and post(http, glm_server, body)["web_search"] == results
    assert all(set(r) == {"title", "link", "content", "icon", "media", "refer", "publish_date"} for r in results)
    assert "latest GLM news" in results[0]["title"] and first["choices"][0]["message"]["content"]
    no_results = {**body, "tools": [{"type": "web_search", "web_search": {"enable": True}}]}
    assert "web_search" not in post(http, glm_server, no_results)

    glm_server.answer("news", web_search=SEARCH, content_filter=FILTER)
    scripted = post(http, glm_server, body)
    assert scripted["web_search"] == SEARCH and scripted["content_filter"] == FILTER
    streamed = http.post(f"{glm_server.base_url}/chat/completions", json={**body, "stream": True})
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert events[0]["web_search"] == SEARCH and events[-1]["content_filter"] == FILTER
    assert all("web_search" not in e for e in events[1:]) and all("content_filter" not in e for e in events[:-1])


def test_scripted_answers_reach_async_results_and_batch_lines(glm_server: GLMTestServer,
                                                              http: httpx.Client) -> None:
    glm_server.async_delay = 0.0
    glm_server.answer("row-1", tool_call={"name": "save", "arguments": {"id": 1}}, content_filter=FILTER)
    glm_server.answer("row-2", json={"ok": True}, web_search=SEARCH)
    schema_body = {"model": "glm-4.5", "response_format": {"type": "json_object"},
                   "messages": [{"role": "system", "content": schema_prompt(Party.model_json_schema())},
                                {"role": "user", "content": "row-3 Alice sells"}]}

    def submit(body: dict[str, Any]) -> dict[str, Any]:
        task = http.post(f"{glm_server.base_url}/async/chat/completions", json=body).json()
        return wait_until(lambda: (r := http.get(f"{glm_server.base_url}/async-result/{task['id']}").json())
                          ["task_status"] == "SUCCESS" and r, "the async task")  # type: ignore[no-any-return]

    one = submit({"model": "glm-4.5", "messages": [{"role": "user", "content": "row-1"}]})
    assert one["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"id": 1}'
    assert one["content_filter"] == FILTER and one["choices"][0]["finish_reason"] == "tool_calls"
    two = submit({"model": "glm-4.5", "messages": [{"role": "user", "content": "row-2"}]})
    assert json.loads(two["choices"][0]["message"]["content"]) == {"ok": True} and two["web_search"] == SEARCH
    Party.model_validate_json(submit(schema_body)["choices"][0]["message"]["content"])

    lines = [{"custom_id": f"c{n}", "method": "POST", "url": "/v4/chat/completions",
              "body": {"model": "glm-4.5", "messages": [{"role": "user", "content": f"row-{n}"}]}} for n in (1, 2)]
    lines.append({"custom_id": "c3", "method": "POST", "url": "/v4/chat/completions", "body": schema_body})
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = http.post(f"{glm_server.base_url}/files", data={"purpose": "batch"},
                       files={"file": ("in.jsonl", content, "application/octet-stream")}).json()
    batch = http.post(f"{glm_server.base_url}/batches", json={
        "input_file_id": upload["id"], "endpoint": "/v4/chat/completions", "completion_window": "24h"}).json()
    done = wait_until(lambda: (b := http.get(f"{glm_server.base_url}/batches/{batch['id']}").json())
                      ["status"] == "completed" and b, "the batch")
    out = http.get(f"{glm_server.base_url}/files/{done['output_file_id']}/content").text.splitlines()
    bodies = {o["custom_id"]: o["response"]["body"] for o in map(json.loads, out)}
    assert bodies["c1"]["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "save"
    assert bodies["c1"]["content_filter"] == FILTER and bodies["c2"]["web_search"] == SEARCH
    Party.model_validate_json(bodies["c3"]["choices"][0]["message"]["content"])
    sources = sorted(b.source for b in glm_server.billed)
    assert sources == ["async"] * 3 + ["batch"] * 3


def test_answers_given_to_the_constructor(tmp_path: Path, http: httpx.Client) -> None:
    path = tmp_path / "answers.json"
    path.write_text(json.dumps([{"match": "from file", "content": "file answer"}]), encoding="utf-8")
    entries = [{"match": "from list", "json": [1, 2], "times": 1}]
    for source, asked, expected in ((path, "from file", "file answer"), (entries, "from list", "[1, 2]")):
        with GLMTestServer(answers=source) as srv:
            body = {"model": "m", "messages": [{"role": "user", "content": asked}]}
            assert post(http, srv, body)["choices"][0]["message"]["content"] == expected
    with pytest.raises(ValueError, match="answer 0: unknown key"):
        GLMTestServer(answers=[{"match": "x", "contents": "typo"}])
