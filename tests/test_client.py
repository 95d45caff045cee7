"""The HTTP clients end to end: answers, total deadlines, size caps, redirects, broken bodies."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import httpx
import pytest

from airflow_provider_glm.client import AsyncGLMClient, CallInfo, GLMClient
from airflow_provider_glm.client.models import ChatCompletion
from airflow_provider_glm.client.retry import RetryPolicy
from airflow_provider_glm.constants import DEFAULT_BASE_URL, ZAI_BASE_URL
from airflow_provider_glm.exceptions import GLMInvalidResponseError, GLMServerError, GLMTimeoutError
from airflow_provider_glm.testing import Fault, GLMTestServer

MESSAGES = [{"role": "user", "content": "hello"}]


def complete(srv: GLMTestServer, mode: str, *, base_url: str | None = None, **options: Any) -> ChatCompletion:
    """One chat completion with the sync or async client; sleeps are skipped."""
    options.setdefault("retry_policy", RetryPolicy(max_retries=options.pop("max_retries", 3),
                                                   rng=random.Random(0)))
    base = base_url or srv.base_url
    if mode == "sync":
        with GLMClient(srv.api_key, base_url=base, sleep=lambda s: None, **options) as client:
            return client.chat_completion("glm-4.5", MESSAGES)

    async def no_sleep(seconds: float) -> None:
        return None

    async def run() -> ChatCompletion:
        async with AsyncGLMClient(srv.api_key, base_url=base, sleep=no_sleep, **options) as client:
            return await client.chat_completion("glm-4.5", MESSAGES)

    return asyncio.run(run())


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --- normal answers ------------------------------------------------------------------------------


def test_chat_completion(glm_server: GLMTestServer, mode: str) -> None:
    answer = complete(glm_server, mode)
    billed = glm_server.billed[0]
    assert answer.content == "Summary: hello"
    assert answer.id == billed.response_id
    assert answer.usage is not None and answer.usage.total_tokens == billed.total_tokens
    assert isinstance(answer.call_info, CallInfo)
    assert (answer.call_info.attempts, answer.call_info.unknown_billing_attempts) == (1, 0)
    request = glm_server.requests[0]
    assert (request.method, request.path) == ("POST", "/api/paas/v4/chat/completions")
    # each attempt carries a fresh request_id, and the answer was checked to be that request's
    sent = dict(request.body)
    assert sent.pop("request_id") == answer.request_id == billed.request_id
    assert sent == {"model": "glm-4.5", "messages": MESSAGES}
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"


def test_options_reach_the_body(glm_server: GLMTestServer) -> None:
    with GLMClient(glm_server.api_key, base_url=glm_server.base_url + "/") as client:
        answer = client.chat_completion("glm-4.5", MESSAGES, temperature=0.2, max_tokens=2, stop="END",
                                        request_id="req-000001", response_format={"type": "text"})
    assert answer.finish_reason == "length"
    assert answer.request_id == "req-000001"
    assert glm_server.requests[0].body == {
        "model": "glm-4.5", "messages": MESSAGES, "temperature": 0.2, "max_tokens": 2, "stop": ["END"],
        "request_id": "req-000001", "response_format": {"type": "text"}}


def test_coding_base_url_and_generic_request(glm_server: GLMTestServer) -> None:
    with GLMClient(glm_server.api_key, base_url=glm_server.coding_base_url) as client:
        payload = client.request("POST", "/chat/completions", json={"model": "glm-4.5", "messages": MESSAGES})
    assert payload["choices"][0]["message"]["content"] == "Summary: hello"
    assert glm_server.requests[0].path == "/api/coding/paas/v4/chat/completions"


def test_missing_usage_is_fine(glm_server: GLMTestServer, mode: str) -> None:
    glm_server.script(Fault.missing("usage"))
    answer = complete(glm_server, mode)
    assert (answer.content, answer.usage) == ("Summary: hello", None)


# --- total deadline, read timeout, size cap --------------------------------------------------------


def test_trickle_stopped_by_total_timeout(glm_server: GLMTestServer, mode: str) -> None:
    """Bytes keep coming (no read ever waits long), so only the total deadline can end the attempt: its
    own error says so."""
    glm_server.script(Fault.trickle(0.05, 1))
    with pytest.raises(GLMTimeoutError, match="no complete answer within 0.5 s"):
        complete(glm_server, mode, timeout=0.5, read_timeout=60, max_retries=0)
    assert glm_server.stats.requests == 1


def test_hang_hits_read_timeout(glm_server: GLMTestServer, mode: str) -> None:
    """The server stays silent for 10 minutes; the read timeout ends the call while it still hangs."""
    glm_server.script(Fault.hang(600))
    with pytest.raises(GLMTimeoutError, match="ReadTimeout"):
        complete(glm_server, mode, read_timeout=0.2, max_retries=0)
    assert glm_server.stats.in_flight == 1, "the server is still hanging: the client did not wait for it"


def test_caller_deadline_bounds_the_attempt(glm_server: GLMTestServer) -> None:
    glm_server.script(Fault.hang(600))
    with GLMClient(glm_server.api_key, base_url=glm_server.base_url, sleep=lambda s: None) as client, \
            pytest.raises(GLMTimeoutError):
        client.chat_completion("glm-4.5", MESSAGES, deadline=time.monotonic() + 0.3)
    assert glm_server.stats.requests == 1
    assert glm_server.stats.in_flight == 1, "the deadline ended the call, not the server's 10-minute hang"


def test_huge_answer_aborted(glm_server: GLMTestServer, mode: str) -> None:
    glm_server.script(Fault.huge(2_000_000))
    with pytest.raises(GLMInvalidResponseError, match="max_response_bytes=50000"):
        complete(glm_server, mode, max_response_bytes=50_000)
    assert glm_server.stats.requests == 1


def test_answer_under_the_cap_is_read(glm_server: GLMTestServer, mode: str) -> None:
    glm_server.script(Fault.huge(20_000))
    answer = complete(glm_server, mode, max_response_bytes=50_000)
    assert answer.content is not None and len(answer.content) > 15_000


# --- redirects and broken answers ------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_not_followed(glm_server: GLMTestServer, mode: str, status: int) -> None:
    with GLMTestServer(api_key=glm_server.api_key) as other:
        glm_server.script(Fault.redirect(f"{other.base_url}/chat/completions", status=status))
        with pytest.raises(GLMInvalidResponseError, match=f"redirect.*HTTP {status}"):
            complete(glm_server, mode)
        assert other.stats.requests == 0
    assert glm_server.stats.requests == 1


@pytest.mark.parametrize(
    ("fault", "match"),
    [(Fault.malformed_json(), "not JSON.*application/json"), (Fault.html_200(), "not JSON.*text/html"),
     (Fault.missing("choices"), "without choices"), (Fault.truncated_stream(), "not JSON.*event-stream")],
    ids=["malformed-json", "html-200", "missing-choices", "sse-for-plain-call"],
)
def test_broken_answer_is_invalid_response(glm_server: GLMTestServer, mode: str, fault: Fault,
                                           match: str) -> None:
    glm_server.script(fault)
    with pytest.raises(GLMInvalidResponseError, match=match) as info:
        complete(glm_server, mode)
    assert info.value.status_code == 200
    assert glm_server.stats.requests == 1


def test_drop_after_billing_retried_and_counted(glm_server: GLMTestServer, mode: str) -> None:
    glm_server.script(Fault.drop_after_billing())
    answer = complete(glm_server, mode)
    assert answer.content == "Summary: hello"
    assert answer.call_info.attempts == 2
    assert answer.call_info.unknown_billing_attempts == 1
    assert glm_server.stats.billed_responses == 2
    assert [r.status for r in glm_server.requests] == [None, 200]


def test_server_error_then_success(glm_server: GLMTestServer, mode: str) -> None:
    glm_server.script(Fault.error(500, "500"), Fault.error(503, "1234"))
    answer = complete(glm_server, mode)
    assert answer.call_info.attempts == 3
    assert answer.call_info.unknown_billing_attempts == 0


# --- edge cases with httpx.MockTransport -------------------------------------------------------------


def mock_complete(handler: Any, mode: str, **options: Any) -> ChatCompletion:
    if mode == "sync":
        with GLMClient("k", base_url="https://glm.test/v4", transport=httpx.MockTransport(handler),
                       sleep=lambda s: None, **options) as client:
            return client.chat_completion("glm-4.5", MESSAGES)

    async def no_sleep(seconds: float) -> None:
        return None

    async def run() -> ChatCompletion:
        async with AsyncGLMClient("k", base_url="https://glm.test/v4", transport=httpx.MockTransport(handler),
                                  sleep=no_sleep, **options) as client:
            return await client.chat_completion("glm-4.5", MESSAGES)

    return asyncio.run(run())


@pytest.mark.parametrize(
    "payload",
    [{"choices": "x"}, {"choices": [{"message": "text"}]}, {"choices": [{"message": {}}], "usage": "many"},
     {"choices": [{"message": {"tool_calls": "none"}}]}, [1, 2], "just a string", None],
    ids=["choices-string", "message-string", "usage-string", "tool_calls-string", "list", "string", "null"],
)
def test_wrong_shapes_are_invalid_response(payload: Any, mode: str) -> None:
    with pytest.raises(GLMInvalidResponseError, match="GLM answered 200"):
        mock_complete(lambda r: httpx.Response(200, content=json.dumps(payload).encode()), mode)


@pytest.mark.parametrize(("status", "content"), [(204, b""), (200, b""), (200, b"\xff\xfe"), (202, b"{}")])
def test_empty_or_binary_answers(status: int, content: bytes, mode: str) -> None:
    with pytest.raises(GLMInvalidResponseError):
        mock_complete(lambda r: httpx.Response(status, content=content), mode)


def test_error_without_json_body_uses_status(mode: str) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(502, text="<html>Bad Gateway</html>")

    with pytest.raises(GLMServerError, match="GLM answered HTTP 502") as info:
        mock_complete(handler, mode, max_retries=2)
    assert len(calls) == 2, "a gateway's own 502 page may hide a billed answer: resent once only"
    assert info.value.call_info.unknown_billing_attempts == 2


def test_zai_base_adds_accept_language_and_custom_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})

    with GLMClient("k", base_url=ZAI_BASE_URL, transport=httpx.MockTransport(handler),
                   headers={"X-Trace": "t1", "Authorization": "Bearer spoof"}) as client:
        client.chat_completion("glm-4.5", MESSAGES)
    headers = seen[0].headers
    assert str(seen[0].url) == f"{ZAI_BASE_URL}/chat/completions"
    assert headers["accept-language"] == "en-US,en"
    assert headers["x-trace"] == "t1"
    assert headers["authorization"] == "Bearer k"


def test_default_base_url_has_no_accept_language() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})

    with GLMClient("k", transport=httpx.MockTransport(handler)) as client:
        client.chat_completion("glm-4.5", MESSAGES)
    assert str(seen[0].url) == f"{DEFAULT_BASE_URL}/chat/completions"
    assert "accept-language" not in seen[0].headers


@pytest.mark.parametrize(
    ("options", "match"),
    [({"base_url": "ftp://x/v4"}, "base_url must be an http"), ({"base_url": "open.bigmodel.cn"}, "base_url"),
     ({"timeout": 0}, "timeout must be > 0"), ({"connect_timeout": -1}, "connect_timeout must be > 0"),
     ({"read_timeout": 0}, "read_timeout must be > 0"), ({"max_retries": -1}, "max_retries must be >= 0")],
)
def test_bad_client_options(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GLMClient("k", **options)


def test_request_timeouts_never_exceed_time_left() -> None:
    seen: list[dict[str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})

    with GLMClient("k", base_url="https://glm.test/v4", transport=httpx.MockTransport(handler), timeout=2.0,
                   connect_timeout=5.0, read_timeout=60.0) as client:
        client.chat_completion("glm-4.5", MESSAGES)
    assert all(0 < value <= 2.0 for value in seen[0].values())

