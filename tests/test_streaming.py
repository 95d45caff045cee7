"""Streamed answers: the SSE decoder, the chunk assembler, and streaming end to end (sync and async)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import pytest
from _streams import assemble

from airflow_provider_glm.client import AsyncGLMClient, GLMClient
from airflow_provider_glm.client._streaming import DONE, SSEDecoder, StreamAssembler
from airflow_provider_glm.client.models import ChatCompletion, ChatCompletionChunk
from airflow_provider_glm.client.retry import RetryPolicy
from airflow_provider_glm.exceptions import (
    GLMAuthenticationError,
    GLMConnectionError,
    GLMContentFilterError,
    GLMError,
    GLMInsufficientBalanceError,
    GLMInvalidResponseError,
    GLMRateLimitError,
    GLMServerError,
    GLMTimeoutError,
)
from airflow_provider_glm.testing import Fault, GLMTestServer

MESSAGES = [{"role": "user", "content": "hello streaming world"}]
TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]


def event(payload: Any) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


def chunk(**delta: Any) -> dict[str, Any]:
    return {"id": "c1", "created": 5, "model": "glm-4.5", "choices": [{"index": 0, "delta": delta}]}


# --- SSEDecoder ------------------------------------------------------------------------------------


def test_decoder_events_comments_and_done() -> None:
    decoder = SSEDecoder()
    stream = b": keep-alive\n\n" + event(chunk(content="Hel")) + b":another comment\n" + event(
        chunk(content="lo")) + event("[DONE]")
    items = decoder.feed(stream)
    assert items[-1] is DONE
    assert [i.choices[0].delta.content for i in items[:-1]] == ["Hel", "lo"]
    assert all(isinstance(i, ChatCompletionChunk) for i in items[:-1])
    assert decoder.done
    assert decoder.close() == []


def test_decoder_multi_line_data_crlf_and_no_space() -> None:
    stream = (b'data: {"id": "c1",\r\ndata:"choices": [{"delta": {"content": "x"}}]}\r\n\r\n'
              b"event: message\nid: 7\nretry: 100\ndata:[DONE]\n\n")
    items = SSEDecoder().feed(stream)
    assert items[0].id == "c1"
    assert items[0].choices[0].delta.content == "x"
    assert items[1] is DONE


def test_decoder_any_split_gives_the_same_events() -> None:
    stream = event(chunk(content="你好")) + b": ping\n\n" + event(chunk(content="!")) + event("[DONE]")
    whole = SSEDecoder().feed(stream)
    decoder = SSEDecoder()
    pieces: list[Any] = []
    for i in range(len(stream)):
        pieces += decoder.feed(stream[i:i + 1])
    assert [getattr(p, "choices", p) for p in pieces] == [getattr(w, "choices", w) for w in whole]
    assert pieces[0].choices[0].delta.content == "你好"


def test_decoder_close_flushes_a_last_event_without_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(event(chunk(content="a")) + b"data: [DONE]") != []
    assert decoder.close() == [DONE]


@pytest.mark.parametrize(
    "stream",
    [b"", event(chunk(content="a")), event(chunk(content="a")) + b"data: {\"id\": "],
    ids=["empty", "no-done", "cut-mid-event"],
)
def test_decoder_truncated_stream_raises(stream: bytes) -> None:
    decoder = SSEDecoder(request_id="rid-7")
    with pytest.raises(GLMInvalidResponseError, match=r"stream .*request_id rid-7"):
        decoder.feed(stream)
        decoder.close()


@pytest.mark.parametrize(
    ("code", "cls"),
    [("1301", GLMContentFilterError), ("1234", GLMServerError), (1302, GLMRateLimitError),
     ("1113", GLMInsufficientBalanceError), ("1000", GLMAuthenticationError)],
)
def test_decoder_error_event_raises_matching_class(code: object, cls: type[GLMError]) -> None:
    decoder = SSEDecoder(request_id="rid-1")
    decoder.feed(event(chunk(content="partial")))
    with pytest.raises(cls, match=f"oops .*code {code}, request_id rid-1"):
        decoder.feed(event({"error": {"code": code, "message": "oops"}}))


@pytest.mark.parametrize(
    "data",
    [b"data: {not json}\n\n", b"data: \xff\xfe\n\n", b"data: [1, 2]\n\n", b'data: {"choices": "x"}\n\n',
     b'data: {"choices": [{"delta": "x"}]}\n\n'],
    ids=["not-json", "not-utf8", "json-list", "choices-string", "delta-string"],
)
def test_decoder_garbage_is_invalid_response(data: bytes) -> None:
    with pytest.raises(GLMInvalidResponseError, match="stream"):
        SSEDecoder().feed(data)


# --- StreamAssembler ---------------------------------------------------------------------------------


def test_assembler_joins_content_reasoning_usage_and_finish() -> None:
    assembler = StreamAssembler()
    for delta in [{"role": "assistant"}, {"reasoning_content": "think "}, {"reasoning_content": "hard"},
                  {"content": "Hi"}, {"content": " there"}]:
        assembler.add(ChatCompletionChunk.model_validate(chunk(**delta)))
    assembler.add(ChatCompletionChunk.model_validate({
        "id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10,
                  "completion_tokens_details": {"reasoning_tokens": 2}}}))
    completion = assembler.completion("req-1")
    assert isinstance(completion, ChatCompletion)
    assert (completion.id, completion.model, completion.created, completion.request_id) == (
        "c1", "glm-4.5", 5, "req-1")
    message = completion.choices[0].message
    assert (message.content, message.reasoning_content) == ("Hi there", "think hard")
    assert message.tool_calls is None
    assert completion.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.total_tokens, completion.usage.reasoning_tokens) == (10, 2)


def test_assembler_joins_tool_call_fragments_by_index() -> None:
    fragments = [
        {"index": 1, "id": "call_b", "type": "function",
         "function": {"name": "lookup", "arguments": '{"id"'}},
        {"index": 0, "id": "call_a", "type": "function",
         "function": {"name": "search", "arguments": '{"q": '}},
        {"index": 1, "function": {"arguments": ": 7}"}},
        {"index": 0, "function": {"arguments": '"cats"'}},
        {"index": 0, "function": {"arguments": "}"}},
    ]
    assembler = StreamAssembler()
    for fragment in fragments:
        assembler.add(ChatCompletionChunk.model_validate(chunk(tool_calls=[fragment])))
    assembler.add(ChatCompletionChunk.model_validate(
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}))
    completion = assembler.completion()
    calls = completion.choices[0].message.tool_calls
    assert calls is not None
    assert [(c.index, c.id, c.type, c.function.name) for c in calls] == [  # type: ignore[union-attr]
        (0, "call_a", "function", "search"), (1, "call_b", "function", "lookup")]
    arguments = [c.function.parsed_arguments() for c in calls]  # type: ignore[union-attr]
    assert arguments == [{"q": "cats"}, {"id": 7}]
    assert completion.content is None
    assert completion.finish_reason == "tool_calls"
    assert completion.usage is None


def test_assembler_accepts_object_arguments() -> None:
    assembler = StreamAssembler()
    assembler.add(ChatCompletionChunk.model_validate(chunk(tool_calls=[
        {"index": 0, "id": "c", "function": {"name": "f", "arguments": {"a": 1}}}])))
    call = assembler.completion().choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function is not None and call.function.parsed_arguments() == {"a": 1}
    assert call.type == "function"


def test_assembler_empty_stream_gives_empty_content() -> None:
    completion = StreamAssembler().completion()
    assert completion.content == ""
    assert completion.finish_reason is None


# --- end to end against the server -------------------------------------------------------------------

MODES = ["sync-chunks", "sync-assembled", "async-chunks"]


def stream(srv: GLMTestServer, mode: str, messages: Any = MESSAGES, *, sleeps: list[float] | None = None,
           **params: Any) -> tuple[ChatCompletion, list[ChatCompletionChunk]]:
    """Stream one answer with the chosen client; return it assembled and the chunks seen."""
    recorded = [] if sleeps is None else sleeps
    options = {"base_url": srv.base_url, "retry_policy": RetryPolicy(max_retries=2, rng=random.Random(0)),
               **{k: params.pop(k) for k in ("timeout", "read_timeout", "retry_policy") if k in params}}
    chunks: list[ChatCompletionChunk] = []
    if mode.startswith("sync"):
        with GLMClient(srv.api_key, sleep=recorded.append, **options) as client:
            if mode == "sync-assembled":
                return assemble(client.stream_chat_completion("glm-4.5", messages, **params), params.get("request_id")), chunks
            for item in client.stream_chat_completion("glm-4.5", messages, **params):
                chunks.append(item)
    else:
        async def sleep(seconds: float) -> None:
            recorded.append(seconds)

        async def run() -> None:
            async with AsyncGLMClient(srv.api_key, sleep=sleep, **options) as client:
                async for item in client.stream_chat_completion("glm-4.5", messages, **params):
                    chunks.append(item)

        asyncio.run(run())
    assembler = StreamAssembler()
    for item in chunks:
        assembler.add(item)
    return assembler.completion(params.get("request_id")), chunks


@pytest.mark.parametrize("mode", MODES)
def test_stream_matches_the_billed_answer(glm_server: GLMTestServer, mode: str) -> None:
    completion, chunks = stream(glm_server, mode, request_id="req-stream-1")
    billed = glm_server.billed[0]
    assert completion.content == "Summary: hello streaming world"
    assert completion.finish_reason == "stop"
    assert completion.request_id == "req-stream-1"
    assert completion.id == billed.response_id
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        billed.prompt_tokens, billed.completion_tokens)
    request = glm_server.requests[0]
    assert request.body["stream"] is True
    assert request.status == 200
    if chunks:
        assert len(chunks) > 3
        assert all(c.usage is None for c in chunks[:-1]) and chunks[-1].usage is not None


@pytest.mark.parametrize("mode", MODES)
def test_stream_tool_call_and_reasoning(glm_server: GLMTestServer, mode: str) -> None:
    text = "please call tool for the weather in Paris"
    completion, _ = stream(glm_server, mode, [{"role": "user", "content": text}], tools=TOOLS,
                           thinking={"type": "enabled"})
    message = completion.choices[0].message
    assert message.content is None
    assert message.reasoning_content == f"Thinking about: {text}"
    assert message.tool_calls is not None and message.tool_calls[0].function is not None
    assert message.tool_calls[0].function.name == "search"
    assert message.tool_calls[0].function.parsed_arguments() == {"query": text[:40]}
    assert completion.finish_reason == "tool_calls"


@pytest.mark.parametrize("mode", MODES)
def test_truncated_stream_raises(glm_server: GLMTestServer, mode: str) -> None:
    glm_server.script(Fault.truncated_stream())
    with pytest.raises(GLMInvalidResponseError, match=r"before \[DONE\]"):
        stream(glm_server, mode)
    assert glm_server.stats.requests == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("code", "cls"), [("1234", GLMServerError), ("1301", GLMContentFilterError),
                                           ("1302", GLMRateLimitError)])
def test_stream_error_event_raises(glm_server: GLMTestServer, mode: str, code: str,
                                   cls: type[GLMError]) -> None:
    glm_server.script(Fault.stream_error(code))
    with pytest.raises(cls, match=f"HTTP 200, code {code}"):
        stream(glm_server, mode)
    assert glm_server.stats.requests == 1


@pytest.mark.parametrize("mode", MODES)
def test_connection_cut_mid_stream_is_a_glm_error(glm_server: GLMTestServer, mode: str) -> None:
    glm_server.script(Fault.reset_mid_body())
    with pytest.raises(GLMError) as info:
        stream(glm_server, mode)
    assert isinstance(info.value, GLMConnectionError | GLMInvalidResponseError)
    assert not isinstance(info.value.__cause__, httpx.HTTPError)


@pytest.mark.parametrize("mode", MODES)
def test_stream_trickle_hits_total_timeout(glm_server: GLMTestServer, mode: str) -> None:
    glm_server.script(Fault.trickle(0.05, 8))
    with pytest.raises(GLMTimeoutError, match="within 0.4 s"):
        stream(glm_server, mode, timeout=0.4)
    assert glm_server.stats.requests == 1


@pytest.mark.parametrize("mode", MODES)
def test_stream_retried_before_first_byte(glm_server: GLMTestServer, mode: str) -> None:
    sleeps: list[float] = []
    glm_server.script(Fault.error(429, "1302"), Fault.hang(5))
    completion, _ = stream(glm_server, mode, sleeps=sleeps, read_timeout=0.2)
    assert completion.content == "Summary: hello streaming world"
    assert [r.status for r in glm_server.requests] == [429, None, 200]
    assert len(sleeps) == 2


@pytest.mark.parametrize("mode", MODES)
def test_stream_final_error_before_first_byte(glm_server: GLMTestServer, mode: str) -> None:
    glm_server.script(Fault.error(429, "1113"))
    with pytest.raises(GLMInsufficientBalanceError, match="code 1113"):
        stream(glm_server, mode)
    assert glm_server.stats.requests == 1


@pytest.mark.parametrize("mode", MODES)
def test_stream_not_sse_is_invalid(glm_server: GLMTestServer, mode: str) -> None:
    glm_server.script(Fault.html_200())
    with pytest.raises(GLMInvalidResponseError):
        stream(glm_server, mode)
