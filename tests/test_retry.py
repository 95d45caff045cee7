"""Retry policy: which failures are tried again, how often, and how long the client waits.

Unit tests pin :class:`RetryPolicy`; the end-to-end tables run the sync and async clients against
the local GLM server and count the attempts it saw. Sleeps are recorded, never taken.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import socket
import time
from typing import Any

import httpx
import pytest

from airflow_provider_glm.client import AsyncGLMClient, GLMClient
from airflow_provider_glm.client.models import ChatCompletion
from airflow_provider_glm.client.retry import RetryPolicy, parse_retry_after
from airflow_provider_glm.exceptions import (
    GLMAuthenticationError,
    GLMBadRequestError,
    GLMConnectionError,
    GLMContentFilterError,
    GLMError,
    GLMInsufficientBalanceError,
    GLMPermissionError,
    GLMQuotaExceededError,
    GLMRateLimitError,
    GLMServerError,
    GLMTimeoutError,
)
from airflow_provider_glm.testing import Fault, GLMTestServer

MESSAGES = [{"role": "user", "content": "hello"}]

# One representative code per CODE_TABLE rule: (code, HTTP status, class, attempts with max_retries=3)
RETRYABLE_CODES = [
    ("500", 500, GLMServerError, 4),
    ("1234", 500, GLMServerError, 4),
    ("1302", 429, GLMRateLimitError, 4),
    ("1303", 429, GLMRateLimitError, 4),
    ("1305", 429, GLMRateLimitError, 4),
    ("1312", 429, GLMRateLimitError, 4),
    ("1120", 500, GLMServerError, 2),
    ("1230", 429, GLMServerError, 2),
]
FINAL_CODES = [
    ("1002", 401, GLMAuthenticationError),
    ("1110", 401, GLMPermissionError),
    ("1113", 429, GLMInsufficientBalanceError),
    ("1214", 400, GLMBadRequestError),
    ("1221", 403, GLMPermissionError),
    ("1231", 400, GLMBadRequestError),
    ("1261", 400, GLMBadRequestError),
    ("1301", 400, GLMContentFilterError),
    ("1304", 429, GLMQuotaExceededError),
    ("1310", 429, GLMQuotaExceededError),
]
RETRYABLE_STATUS = [408, 409, 429, 500, 502, 503, 504]
FINAL_STATUS = [400, 401, 403, 404, 413, 422]


class Caller:
    """Runs one chat completion with the sync or async client, recording the sleeps it asks for."""

    def __init__(self, srv: GLMTestServer, mode: str) -> None:
        self.srv = srv
        self.mode = mode
        self.sleeps: list[float] = []

    def __call__(self, *, max_retries: int = 3, deadline: float | None = None,
                 **options: Any) -> ChatCompletion:
        options.setdefault("retry_policy", RetryPolicy(max_retries=max_retries, rng=random.Random(7)))
        if "base_url" not in options:
            options["base_url"] = self.srv.base_url
        if self.mode == "sync":
            with GLMClient(self.srv.api_key, sleep=self.sleeps.append, **options) as client:
                return client.chat_completion("glm-4.5", MESSAGES, deadline=deadline)

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        async def run() -> ChatCompletion:
            async with AsyncGLMClient(self.srv.api_key, sleep=sleep, **options) as client:
                return await client.chat_completion("glm-4.5", MESSAGES, deadline=deadline)

        return asyncio.run(run())


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest, glm_server: GLMTestServer) -> Caller:
    return Caller(glm_server, request.param)


def backoff_ceilings(n: int, base: float = 1.0, cap: float = 30.0) -> list[float]:
    return [min(cap, base * 2 ** i) for i in range(n)]


# --- RetryPolicy, unit ---------------------------------------------------------------------------


def rate_limited(retry_after: float | None = None) -> GLMError:
    return GLMRateLimitError("busy", status_code=429, code="1302", retry_after=retry_after)


def test_backoff_is_jittered_capped_exponential() -> None:
    policy = RetryPolicy(max_retries=10, backoff_base=1.0, backoff_cap=8.0, rng=random.Random(1))
    waits = [policy.delay(rate_limited(), attempt) for attempt in range(1, 11)]
    for wait, ceiling in zip(waits, [1, 2, 4, 8, 8, 8, 8, 8, 8, 8], strict=True):
        assert wait is not None
        assert 0.0 <= wait <= ceiling
    again = RetryPolicy(max_retries=10, backoff_base=1.0, backoff_cap=8.0, rng=random.Random(1))
    assert [again.delay(rate_limited(), a) for a in range(1, 11)] == waits


@pytest.mark.parametrize(("max_retries", "attempt", "retries"), [(0, 1, False), (3, 3, True), (3, 4, False)])
def test_attempt_budget(max_retries: int, attempt: int, retries: bool) -> None:
    policy = RetryPolicy(max_retries=max_retries, rng=random.Random(0))
    assert (policy.delay(rate_limited(), attempt) is not None) is retries
    assert policy.attempts_allowed(rate_limited()) == max_retries + 1


def test_rule_cap_and_non_retryable() -> None:
    policy = RetryPolicy(max_retries=5, rng=random.Random(0))
    capped = GLMServerError("temporary", code="1120")
    capped.max_attempts = 2
    assert policy.attempts_allowed(capped) == 2
    assert policy.delay(capped, 1) is not None
    assert policy.delay(capped, 2) is None
    assert policy.delay(GLMInsufficientBalanceError("no money", status_code=429, code="1113"), 1) is None


@pytest.mark.parametrize(("asked", "low", "high"), [(3.0, 3.0, 3.3), (0.0, 0.0, 0.0), (20.0, 20.0, 21.0),
                                                    (600.0, 10.0, 11.0)])
def test_retry_after_honoured_and_capped(asked: float, low: float, high: float) -> None:
    policy = RetryPolicy(retry_after_cap=60.0 if asked < 60 else 10.0, rng=random.Random(3))
    wait = policy.delay(rate_limited(retry_after=asked), 1)
    assert wait is not None
    assert low <= wait <= high


def test_no_wait_past_the_deadline() -> None:
    policy = RetryPolicy(rng=random.Random(0))
    assert policy.delay(rate_limited(retry_after=5.0), 1, remaining=4.9) is None
    assert policy.delay(rate_limited(retry_after=5.0), 1, remaining=5.0) is None
    assert policy.delay(rate_limited(retry_after=5.0), 1, remaining=60.0) is not None
    slow = RetryPolicy(backoff_base=100.0, rng=random.Random(0))
    assert slow.delay(rate_limited(), 1, remaining=0.001) is None


def test_negative_max_retries_rejected() -> None:
    with pytest.raises(ValueError, match="max_retries must be >= 0"):
        RetryPolicy(max_retries=-1)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, None), ("", None), ("3", 3.0), (" 2.5 ", 2.5), ("-4", 0.0), ("soon", None),
     ("Thu, 01 Jan 1970 00:00:30 GMT", 20.0), ("Thu, 01 Jan 1970 00:00:05 GMT", 0.0)],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=10.0) == seconds


# --- against the server: codes --------------------------------------------------------------------


@pytest.mark.parametrize(("code", "status", "cls", "attempts"), RETRYABLE_CODES)
def test_retryable_code_uses_every_attempt(call: Caller, code: str, status: int, cls: type[GLMError],
                                           attempts: int) -> None:
    call.srv.script(*[Fault.error(status, code)] * 6)
    with pytest.raises(cls, match=f"HTTP {status}, code {code}"):
        call(max_retries=3)
    assert len(call.srv.requests) == attempts
    assert len(call.sleeps) == attempts - 1
    assert all(0 <= s <= c for s, c in zip(call.sleeps, backoff_ceilings(attempts - 1), strict=True))
    assert call.srv.stats.billed_responses == 0


@pytest.mark.parametrize(("code", "status", "cls", "attempts"), RETRYABLE_CODES)
def test_retryable_code_then_success(call: Caller, code: str, status: int, cls: type[GLMError],
                                     attempts: int) -> None:
    call.srv.script(*[Fault.error(status, code)] * (attempts - 1))
    answer = call(max_retries=3)
    assert answer.content == "Summary: hello"
    assert answer.call_info.attempts == attempts
    assert answer.call_info.unknown_billing_attempts == 0
    assert [r.status for r in call.srv.requests] == [status] * (attempts - 1) + [200]
    assert call.srv.stats.billed_responses == 1


@pytest.mark.parametrize("code", ["1120", "1230"])
def test_temporary_codes_capped_at_two_attempts(call: Caller, code: str) -> None:
    call.srv.script(*[Fault.error(500, code)] * 6)
    with pytest.raises(GLMServerError, match=f"code {code}"):
        call(max_retries=8)
    assert len(call.srv.requests) == 2


@pytest.mark.parametrize(("code", "status", "cls"), FINAL_CODES)
def test_final_code_gets_one_attempt(call: Caller, code: str, status: int, cls: type[GLMError]) -> None:
    call.srv.script(Fault.error(status, code))
    with pytest.raises(cls, match=f"code {code}") as info:
        call(max_retries=3)
    assert not info.value.retryable
    assert len(call.srv.requests) == 1
    assert call.sleeps == []


def test_1113_as_429_is_one_attempt(call: Caller) -> None:
    call.srv.script(*[Fault.error(429, "1113")] * 4)
    with pytest.raises(GLMInsufficientBalanceError, match="HTTP 429, code 1113"):
        call(max_retries=5)
    assert call.srv.stats.requests == 1
    assert call.srv.stats.status_counts == {429: 1}


@pytest.mark.parametrize("code", [1302, "1302"], ids=["int", "str"])
@pytest.mark.parametrize("top_level", [False, True], ids=["nested", "top-level"])
def test_code_shapes_from_the_server(call: Caller, code: object, top_level: bool) -> None:
    call.srv.script(Fault.error(429, code, top_level=top_level), Fault.error(429, code, top_level=top_level))
    answer = call(max_retries=3)
    assert answer.call_info.attempts == 3


# --- against the server: no business code, transport failures ------------------------------------


@pytest.mark.parametrize("status", RETRYABLE_STATUS)
def test_status_without_code_retried(call: Caller, status: int) -> None:
    """A gateway's own 500/502/504 page may hide a billed answer: it is resent once (max_billed_retries),
    the other retryable statuses up to max_retries."""
    call.srv.script(*[Fault.error(status, "")] * 5)
    with pytest.raises(GLMError, match=f"HTTP {status}") as info:
        call(max_retries=2)
    assert info.value.code is None
    maybe_billed = status in (500, 502, 504)
    assert len(call.srv.requests) == (2 if maybe_billed else 3)
    assert info.value.call_info.unknown_billing_attempts == (2 if maybe_billed else 0)
    assert ("may have been billed" in str(info.value)) is maybe_billed


@pytest.mark.parametrize("status", FINAL_STATUS)
def test_status_without_code_not_retried(call: Caller, status: int) -> None:
    call.srv.script(Fault.error(status, ""))
    with pytest.raises(GLMError, match=f"HTTP {status}"):
        call(max_retries=2)
    assert len(call.srv.requests) == 1


def test_read_timeout_retried(call: Caller) -> None:
    call.srv.script(Fault.hang(5))
    answer = call(max_retries=1, read_timeout=0.2)
    assert answer.call_info.attempts == 2
    assert answer.call_info.unknown_billing_attempts == 1
    assert len(call.srv.requests) == 2


def test_read_timeout_gives_up_after_budget(call: Caller) -> None:
    call.srv.script(Fault.hang(5), Fault.hang(5))
    with pytest.raises(GLMTimeoutError, match="timed out"):
        call(max_retries=1, read_timeout=0.2)
    assert len(call.srv.requests) == 2


@pytest.mark.parametrize("fault", [Fault.drop_after_billing(), Fault.reset_mid_body()], ids=["drop", "reset"])
def test_broken_connection_retried(call: Caller, fault: Fault) -> None:
    call.srv.script(fault)
    answer = call(max_retries=1)
    assert answer.call_info.attempts == 2
    assert answer.call_info.unknown_billing_attempts == 1
    assert call.srv.stats.billed_responses == 2


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_connection_refused_retried(mode: str) -> None:
    srv = GLMTestServer()
    caller = Caller(srv, mode)
    with pytest.raises(GLMConnectionError, match="connection failed"):
        caller(max_retries=2, base_url=f"http://127.0.0.1:{closed_port()}/api/paas/v4")
    assert len(caller.sleeps) == 2


def test_connect_error_then_success_mock_transport() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})

    sleeps: list[float] = []
    with GLMClient("k", base_url="https://glm.test/v4", transport=httpx.MockTransport(handler),
                   sleep=sleeps.append, retry_policy=RetryPolicy(rng=random.Random(0))) as client:
        answer = client.chat_completion("glm-4.5", MESSAGES)
    assert (answer.content, len(calls), len(sleeps)) == ("ok", 2, 1)
    assert answer.call_info.unknown_billing_attempts == 0, "a refused connection never sent the request"


def test_408_answer_is_not_counted_as_maybe_billed(call: Caller) -> None:
    call.srv.script(Fault.error(408, ""))
    answer = call(max_retries=1)
    assert answer.call_info.attempts == 2
    assert answer.call_info.unknown_billing_attempts == 0


# --- Retry-After and the caller's deadline ---------------------------------------------------------


def test_retry_after_honoured(call: Caller) -> None:
    call.srv.script(Fault.error(429, "1302", retry_after=3))
    answer = call()
    assert answer.call_info.attempts == 2
    assert len(call.sleeps) == 1
    assert 3.0 <= call.sleeps[0] <= 3.3


def test_retry_after_capped(call: Caller) -> None:
    call.srv.script(Fault.error(503, "1305", retry_after=3600))
    call(retry_policy=RetryPolicy(retry_after_cap=2.0, rng=random.Random(0)))
    assert len(call.sleeps) == 1
    assert 2.0 <= call.sleeps[0] <= 2.2


def test_no_retry_when_wait_passes_deadline(call: Caller) -> None:
    call.srv.script(Fault.error(429, "1302", retry_after=30))
    with pytest.raises(GLMRateLimitError, match="code 1302"):
        call(deadline=time.monotonic() + 5.0)
    assert call.sleeps == []
    assert len(call.srv.requests) == 1


def test_retry_within_deadline(call: Caller) -> None:
    call.srv.script(Fault.error(429, "1302", retry_after=3))
    call(deadline=time.monotonic() + 60.0)
    assert len(call.sleeps) == 1
    assert len(call.srv.requests) == 2


def test_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 10, usegmt=True)
    answers = iter([httpx.Response(429, headers={"Retry-After": when}, json={"error": {"code": "1302"}}),
                    httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})])
    sleeps: list[float] = []
    with GLMClient("k", base_url="https://glm.test/v4", transport=httpx.MockTransport(lambda r: next(answers)),
                   sleep=sleeps.append, retry_policy=RetryPolicy(rng=random.Random(0))) as client:
        assert client.chat_completion("glm-4.5", MESSAGES).content == "ok"
    assert len(sleeps) == 1
    assert 8.5 <= sleeps[0] <= 11.0
