"""Wire models: lenient answers, strict requests that fail before any HTTP call."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from airflow_provider_glm.client import AsyncGLMClient, GLMClient
from airflow_provider_glm.client.models import ChatCompletion, ChatCompletionChunk, FunctionCall, build_chat_request
from airflow_provider_glm.exceptions import GLMRateLimitError, error_from_response
from airflow_provider_glm.testing import GLMTestServer

# The response example of the seed reference (/work/shared/seed/000_63e7fd6e0c7b53cd.txt), verbatim.
SEED_RESPONSE = """
{
  "id": "<string>",
  "request_id": "<string>",
  "created": 123,
  "model": "<string>",
  "choices": [
    {
      "index": 123,
      "message": {
        "role": "assistant",
        "content": "<string>",
        "reasoning_content": "<string>",
        "audio": {
          "id": "<string>",
          "data": "<string>",
          "expires_at": "<string>"
        },
        "tool_calls": [
          {
            "function": {
              "name": "<string>",
              "arguments": {}
            },
            "mcp": {
              "id": "<string>",
              "type": "mcp_list_tools",
              "server_label": "<string>",
              "error": "<string>",
              "tools": [
                {
                  "name": "<string>",
                  "description": "<string>",
                  "annotations": {},
                  "input_schema": {
                    "type": "object",
                    "properties": {},
                    "required": [
                      "<string>"
                    ],
                    "additionalProperties": true
                  }
                }
              ],
              "arguments": "<string>",
              "name": "<string>",
              "output": {}
            },
            "id": "<string>",
            "type": "<string>"
          }
        ]
      },
      "finish_reason": "<string>"
    }
  ],
  "usage": {
    "prompt_tokens": 123,
    "completion_tokens": 123,
    "total_tokens": 123
  },
  "video_result": [
    {
      "url": "<string>",
      "cover_image_url": "<string>"
    }
  ],
  "web_search": [
    {
      "icon": "<string>",
      "title": "<string>",
      "link": "<string>",
      "media": "<string>",
      "publish_date": "<string>",
      "content": "<string>",
      "refer": "<string>"
    }
  ],
  "content_filter": [
    {
      "role": "<string>",
      "level": 123
    }
  ]
}
"""

USER = {"role": "user", "content": "hello"}


# --- answers ------------------------------------------------------------------------------------


def test_seed_response_parses() -> None:
    completion = ChatCompletion.model_validate_json(SEED_RESPONSE)
    assert (completion.id, completion.request_id, completion.created, completion.model) == (
        "<string>", "<string>", 123, "<string>")
    choice = completion.choices[0]
    assert (choice.index, choice.finish_reason, completion.finish_reason) == (123, "<string>", "<string>")
    message = choice.message
    assert (message.role, message.content, message.reasoning_content) == ("assistant", "<string>", "<string>")
    assert completion.content == "<string>"
    assert message.audio is not None and message.audio.expires_at == "<string>"
    call = message.tool_calls[0]  # type: ignore[index]
    assert (call.id, call.type) == ("<string>", "<string>")
    assert call.function is not None and call.function.arguments == {}
    assert call.function.parsed_arguments() == {}
    assert call.mcp is not None and call.mcp["tools"][0]["input_schema"]["additionalProperties"] is True
    assert completion.usage is not None
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (123, 123, 123)
    assert (completion.usage.cached_tokens, completion.usage.reasoning_tokens) == (0, 0)
    assert completion.video_result == [{"url": "<string>", "cover_image_url": "<string>"}]
    assert completion.web_search is not None and completion.web_search[0]["publish_date"] == "<string>"
    assert completion.content_filter == [{"role": "<string>", "level": 123}]
    assert completion.model_dump(exclude_none=True)["choices"][0]["message"]["audio"]["id"] == "<string>"


@pytest.mark.parametrize(
    "arguments",
    ['{"city": "Beijing", "days": 2}', {"city": "Beijing", "days": 2}],
    ids=["json-string", "object"],
)
def test_function_arguments_string_or_object(arguments: Any) -> None:
    body = {"choices": [{"message": {"content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": arguments}}]},
        "finish_reason": "tool_calls"}]}
    completion = ChatCompletion.model_validate(body)
    assert completion.content is None
    function = completion.choices[0].message.tool_calls[0].function  # type: ignore[index]
    assert function is not None
    assert function.arguments == arguments
    assert function.parsed_arguments() == {"city": "Beijing", "days": 2}


@pytest.mark.parametrize(("arguments", "parsed"), [(None, {}), ("", {}), ("  ", {}), ("[1, 2]", [1, 2])])
def test_parsed_arguments_edge_cases(arguments: Any, parsed: Any) -> None:
    assert FunctionCall(name="f", arguments=arguments).parsed_arguments() == parsed


def test_unknown_fields_kept_and_no_object_field_needed() -> None:
    body = {
        "id": "c1",
        "choices": [{"message": {"content": "hi", "future_field": 1}, "finish_reason": "stop",
                     "logprobs": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4,
                  "prompt_tokens_details": {"cached_tokens": 2},
                  "completion_tokens_details": {"reasoning_tokens": 1}, "surprise": True},
        "brand_new": {"x": 1},
    }
    completion = ChatCompletion.model_validate(body)
    assert "object" not in completion.model_dump()
    assert completion.model_extra == {"brand_new": {"x": 1}}
    assert completion.choices[0].message.model_extra == {"future_field": 1}
    assert completion.usage is not None and completion.usage.model_extra == {"surprise": True}
    assert (completion.usage.cached_tokens, completion.usage.reasoning_tokens) == (2, 1)
    with_object = ChatCompletion.model_validate({**body, "object": "chat.completion"})
    assert with_object.model_extra == {"brand_new": {"x": 1}, "object": "chat.completion"}


def test_sparse_answer_defaults() -> None:
    completion = ChatCompletion.model_validate({"choices": [{"message": {}}]})
    assert (completion.content, completion.finish_reason, completion.usage) == (None, None, None)
    assert ChatCompletion.model_validate({}).content is None
    chunk = ChatCompletionChunk.model_validate({"choices": [{"delta": {}}], "extra": 1})
    assert chunk.choices[0].delta.content is None and chunk.model_extra == {"extra": 1}


@pytest.mark.parametrize(
    "payload",
    [{"error": {"code": "1302", "message": "busy"}}, {"error": {"code": 1302, "message": "busy"}},
     {"code": 1302, "message": "busy"}, {"code": "1302", "msg": "busy"}],
    ids=["nested-str", "nested-int", "top-level-int", "top-level-msg"],
)
def test_error_body_shapes(payload: dict[str, Any]) -> None:
    error = error_from_response(429, json.dumps(payload).encode())
    assert isinstance(error, GLMRateLimitError)
    assert (error.code, error.message) == ("1302", "busy")


# --- requests -----------------------------------------------------------------------------------

# (request options, a word the ValueError must contain)
BAD_REQUESTS = [
    pytest.param({"temperature": 1.5}, "temperature", id="temperature-high"),
    pytest.param({"temperature": -0.1}, "temperature", id="temperature-negative"),
    pytest.param({"top_p": 0.0}, "top_p", id="top_p-zero"),
    pytest.param({"top_p": 1.01}, "top_p", id="top_p-high"),
    pytest.param({"max_tokens": 0}, "max_tokens", id="max_tokens-zero"),
    pytest.param({"max_tokens": 2.5}, "max_tokens", id="max_tokens-fraction"),
    pytest.param({"stop": ["a", "b"]}, "stop", id="stop-two-words"),
    pytest.param({"stop": []}, "stop", id="stop-empty"),
    pytest.param({"tool_choice": "none"}, "tool_choice", id="tool_choice-none"),
    pytest.param({"tool_choice": {"type": "function"}}, "tool_choice", id="tool_choice-object"),
    pytest.param({"messages": [USER, {"role": "tool", "content": "42"}]}, "tool_call_id", id="tool-no-id"),
    pytest.param({"messages": []}, "messages", id="messages-empty"),
    pytest.param({"messages": [{"role": "system", "content": "be brief"}]}, "messages", id="only-system"),
    pytest.param({"messages": [{"role": "assistant", "content": "hi"}]}, "messages", id="only-assistant"),
    pytest.param({"messages": [{"role": "robot", "content": "hi"}]}, "role", id="unknown-role"),
    pytest.param({"messages": [{"role": "user", "content": ""}]}, "user message", id="empty-user"),
    pytest.param({"user_id": "abc"}, "user_id", id="user_id-short"),
    pytest.param({"user_id": "u" * 129}, "user_id", id="user_id-long"),
    pytest.param({"request_id": "r1"}, "request_id", id="request_id-short"),
    pytest.param({"request_id": "r" * 65}, "request_id", id="request_id-long"),
    pytest.param({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "function.name",
                 id="function-name-space"),
    pytest.param({"tools": [{"type": "function", "function": {"name": "f" * 65}}]}, "function.name",
                 id="function-name-long"),
    pytest.param({"tools": [{"type": "code_interpreter"}]}, "tools", id="tool-kind"),
    pytest.param({"tools": [{"type": "web_search"}] * 129}, "tools", id="too-many-tools"),
    pytest.param({"tool_stream": True}, "tool_stream", id="tool_stream-without-stream"),
    pytest.param({"thinking": {"type": "maybe"}}, "thinking", id="thinking-type"),
    pytest.param({"response_format": {"type": "json_schema"}}, "response_format", id="json_schema"),
    pytest.param({"model": ""}, "model", id="model-empty"),
]


def request_args(options: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    options = dict(options)
    return options.pop("model", "glm-4.5"), options.pop("messages", [USER]), options


@pytest.mark.parametrize(("options", "field"), BAD_REQUESTS)
def test_bad_request_names_the_field(options: dict[str, Any], field: str) -> None:
    model, messages, params = request_args(options)
    with pytest.raises(ValueError, match=r"invalid chat request: .*" + field.replace(".", r"\.")):
        build_chat_request(model, messages, **params)


# A streamed call sets stream=True itself, so tool_stream is valid there.
BAD_STREAM_REQUESTS = [p for p in BAD_REQUESTS if p.id != "tool_stream-without-stream"]
CALLS = [pytest.param("chat_completion", BAD_REQUESTS), pytest.param("async_chat_completion", BAD_REQUESTS),
         pytest.param("stream_chat_completion", BAD_STREAM_REQUESTS),
         pytest.param("async_stream_chat_completion", BAD_STREAM_REQUESTS)]


@pytest.mark.parametrize(("method", "options", "field"), [
    pytest.param(call.values[0], *bad.values, id=f"{call.values[0]}-{bad.id}")
    for call in CALLS for bad in call.values[1]
])
def test_bad_request_makes_zero_calls(glm_server: GLMTestServer, options: dict[str, Any], field: str,
                                      method: str) -> None:
    model, messages, params = request_args(options)
    params.pop("stream", None)
    kwargs = {"base_url": glm_server.base_url, "max_retries": 0}
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        if method.startswith("async_"):
            async def run() -> None:
                async with AsyncGLMClient(glm_server.api_key, **kwargs) as client:
                    if method == "async_chat_completion":
                        await client.chat_completion(model, messages, **params)
                    else:
                        async for _ in client.stream_chat_completion(model, messages, **params):
                            pass

            asyncio.run(run())
        else:
            with GLMClient(glm_server.api_key, **kwargs) as client:
                result = getattr(client, method)(model, messages, **params)
                if method == "stream_chat_completion":
                    list(result)
    assert glm_server.stats.requests == 0


def test_tool_stream_with_stream_is_fine() -> None:
    body = build_chat_request("glm-4.6", [USER], stream=True, tool_stream=True).to_body()
    assert (body["stream"], body["tool_stream"]) == (True, True)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"temperature": 0.0, "top_p": 0.01, "max_tokens": 1},
         {"temperature": 0.0, "top_p": 0.01, "max_tokens": 1}),
        ({"temperature": 1.0, "top_p": 1.0}, {"temperature": 1.0, "top_p": 1.0}),
        ({"stop": "END"}, {"stop": ["END"]}),
        ({"tool_choice": "auto"}, {"tool_choice": "auto"}),
        ({"user_id": "user-1", "request_id": "req-001"}, {"user_id": "user-1", "request_id": "req-001"}),
        ({"do_sample": False}, {"do_sample": False}),
        ({"thinking": {"type": "enabled", "clear_thinking": True}},
         {"thinking": {"type": "enabled", "clear_thinking": True}}),
        ({"response_format": {"type": "json_object"}}, {"response_format": {"type": "json_object"}}),
        ({"brand_new_option": {"a": 1}}, {"brand_new_option": {"a": 1}}),
    ],
    ids=["low-edges", "high-edges", "stop-string", "auto", "ids", "do_sample", "thinking", "json", "unknown"],
)
def test_valid_requests_pass_unchanged(options: dict[str, Any], expected: dict[str, Any]) -> None:
    body = build_chat_request("glm-4.5", [USER], **options).to_body()
    assert body == {"model": "glm-4.5", "messages": [USER], **expected}


def test_rich_conversation_passes() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
    ]
    tools = [{"type": "function", "function": {"name": "look-up_2", "parameters": {"type": "object"}}},
             {"type": "web_search", "web_search": {"enable": True}},
             {"type": "retrieval", "retrieval": {"knowledge_id": "k"}},
             {"type": "mcp", "mcp": {"server_label": "s"}}]
    body = build_chat_request("glm-4.5v", messages, tools=tools).to_body()
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}
    assert body["messages"][2]["tool_calls"][0]["id"] == "call_1"
    assert len(body["tools"]) == 4


def test_seed_request_example_passes() -> None:
    message = {"role": "user", "content": "What opportunities and challenges will the Chinese large model "
                                          "industry face in 2025?", "tool_call_id": None, "tool_calls": []}
    body = build_chat_request("glm-4.5", [message]).to_body()
    assert body["messages"][0]["content"].startswith("What opportunities")
