"""Issue 9, points 5 and 6: plaintext off loopback is refused; a dead endpoint stops the run early.

* An ``http://`` base URL to a host other than loopback is refused before any call, with a message
  naming the fixes (https, or the extra ``allow_insecure_http``); loopback ``http://`` stays allowed.
* Against a closed loopback port, a circuit breaker stops dispatch after a few consecutive
  connection failures: the remaining rows are ``skipped`` with a reason naming ``host:port``, and the
  attempts made stay a small number whatever the row count (counted, not timed).
"""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any

import httpx
import pytest
from _spend_common import Warehouse, chat_operator, checked_ledger, run_operator, use_connection

from airflow_provider_glm.client._transport import AiohttpTransport
from airflow_provider_glm.client._urls import check_base_url
from airflow_provider_glm.exceptions import GLMConnectionError, GLMEndpointUnreachableError, GLMTimeoutError
from airflow_provider_glm.hooks.glm import GLMHook
from airflow_provider_glm.rows._concurrency import UNREACHABLE_THRESHOLD, CircuitBreaker
from airflow_provider_glm.testing import GLMTestServer


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    """Every request any GLM client tries to send; none leaves the machine (each fails to connect)."""
    requests: list[httpx.Request] = []

    async def record(self: AiohttpTransport, request: httpx.Request) -> httpx.Response:
        requests.append(request)
        raise httpx.ConnectError("not sent by this test", request=request)

    monkeypatch.setattr(AiohttpTransport, "handle_async_request", record)
    return requests


@pytest.fixture
def no_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry waits recorded instead of slept (the retry policy still decides them)."""
    asked: list[float] = []
    original = GLMHook.get_async_client

    async def no_sleep(seconds: float) -> None:
        asked.append(seconds)

    def patched(self: GLMHook, **overrides: Any) -> Any:
        return original(self, **{"sleep": no_sleep, **overrides})

    monkeypatch.setattr(GLMHook, "get_async_client", patched)
    return asked


@pytest.mark.parametrize("host", ["http://glm-gateway.internal:8080/api/paas/v4", "http://10.1.2.3/api/paas/v4",
                                  "http://localhost.example.com/api/paas/v4", "http://[2001:db8::1]/v4"])
@pytest.mark.parametrize("rows", [True, False], ids=["rows", "single"])
def test_plaintext_off_loopback_refused_before_any_call(sqlite_wh: Warehouse, context: dict[str, Any],
                                                        monkeypatch: pytest.MonkeyPatch, sent: list[httpx.Request],
                                                        host: str, rows: bool) -> None:
    use_connection(monkeypatch, host=host)
    op = chat_operator(sqlite_wh, **({} if rows else {"rows": None, "prompt": "hello"}))
    _, error = run_operator(op, context)
    assert isinstance(error, ValueError)
    assert "allow_insecure_http" in str(error) and "https://" in str(error)
    assert sent == [], "refused before any call"
    ok, message = GLMHook().test_connection()
    assert not ok and "allow_insecure_http" in message and sent == []


def test_allow_insecure_http_opts_in(context: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                     sent: list[httpx.Request], no_waits: list[float]) -> None:
    use_connection(monkeypatch, host="http://glm-gateway.internal:8080/api/paas/v4", allow_insecure_http=True,
                   max_retries=0)
    _, error = run_operator(chat_operator(None, rows=None, prompt="hello"), context)
    assert isinstance(error, GLMConnectionError) and not isinstance(error, ValueError)
    assert [str(r.url) for r in sent] == ["http://glm-gateway.internal:8080/api/paas/v4/chat/completions"]


@pytest.mark.parametrize("base", ["http://127.0.0.1:1/v4", "http://localhost:8080/v4", "http://[::1]:8080/v4",
                                  "http://127.0.0.2/v4", "https://glm.example.com/v4"])
def test_loopback_http_and_https_are_allowed(base: str) -> None:
    assert check_base_url(base + "/") == base


def test_loopback_http_operator_runs(glm_server: GLMTestServer, sqlite_wh: Warehouse, context: dict[str, Any],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert glm_server.base_url.startswith("http://127.0.0.1:")
    use_connection(monkeypatch, glm_server)
    assert chat_operator(sqlite_wh).execute(context) is not None
    checked_ledger(sqlite_wh, glm_server, unseen=0)


# --- the circuit breaker ----------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def observed(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Attempt outcomes the run's breaker was told of (every attempt of every row)."""
    kinds: Counter[str] = Counter()
    original = CircuitBreaker.observe

    def count(self: CircuitBreaker, kind: str, error: Any = None) -> None:
        kinds[kind] += 1
        original(self, kind, error)

    monkeypatch.setattr(CircuitBreaker, "observe", count)
    return kinds


@pytest.mark.parametrize("concurrency", [1, 4])
def test_unreachable_endpoint_stops_after_a_few_attempts(wh: Warehouse, context: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch, no_waits: list[float],
                                                         observed: Counter[str], concurrency: int) -> None:
    port, n, max_retries = closed_port(), 200, 3
    use_connection(monkeypatch, host=f"http://127.0.0.1:{port}/api/paas/v4", max_retries=max_retries)
    rows = [{"id": f"r{i:03d}", "text": f"row {i}"} for i in range(n)]
    _, error = run_operator(chat_operator(wh, rows=rows, max_concurrency=concurrency, max_failed_rows=n), context)
    assert isinstance(error, GLMEndpointUnreachableError)
    assert f"127.0.0.1:{port}" in str(error) and "could not be reached" in str(error)
    attempts = observed["unreachable"]
    assert set(observed) == {"unreachable"}
    # the breaker opens after UNREACHABLE_THRESHOLD attempts; rows already in flight finish their retries
    assert UNREACHABLE_THRESHOLD <= attempts <= UNREACHABLE_THRESHOLD + concurrency * (max_retries + 1)
    with GLMTestServer() as nobody:  # nothing was billed anywhere: an empty tally
        results, usage = checked_ledger(wh, nobody)
    assert usage == [], "connect-refused attempts are not possibly billed"
    statuses = Counter(r["status"] for r in results.values())
    assert statuses["failed"] <= concurrency + UNREACHABLE_THRESHOLD // (max_retries + 1)
    assert statuses["skipped"] == n - statuses["failed"] >= n - 2 * concurrency - UNREACHABLE_THRESHOLD
    skipped = [r for r in results.values() if r["status"] == "skipped"]
    assert all(f"127.0.0.1:{port}" in r["error"] and "could not be reached" in r["error"] for r in skipped)
    summary = context["ti"].xcom["usage"]
    assert summary["stop_kind"] == "unreachable" and summary["unknown_billing_attempts"] == 0


def error(kind: str) -> GLMConnectionError:
    return GLMTimeoutError("timed out") if kind == "timeout" else GLMConnectionError("ConnectError: refused")


def test_breaker_opens_after_consecutive_unreachable_attempts() -> None:
    breaker = CircuitBreaker("glm.example.com:443", threshold=3)
    for _ in range(2):
        breaker.observe("unreachable", error("unreachable"))
    assert breaker.open_reason is None
    breaker.observe("unreachable", error("unreachable"))
    assert breaker.open_reason is not None
    assert "glm.example.com:443" in breaker.open_reason and "3 attempts in a row" in breaker.open_reason
    assert "ConnectError: refused" in breaker.open_reason


@pytest.mark.parametrize("kind", ["ok", "timeout", "lost", "error", "rate_limited"])
def test_an_answer_in_between_resets_the_breaker(kind: str) -> None:
    """Anything but a connect failure proves the endpoint is reachable: the count starts again."""
    breaker = CircuitBreaker("127.0.0.1:9", threshold=3)
    for _ in range(5):
        breaker.observe("unreachable", error("unreachable"))
        breaker.observe("unreachable", error("unreachable"))
        breaker.observe(kind, error(kind) if kind != "ok" else None)
    assert breaker.open_reason is None


def test_a_later_success_closes_an_open_breaker() -> None:
    breaker = CircuitBreaker("127.0.0.1:9", threshold=2)
    breaker.observe("unreachable", error("unreachable"))
    breaker.observe("unreachable", error("unreachable"))
    assert breaker.open_reason is not None
    breaker.observe("ok")
    assert breaker.open_reason is None
    breaker.observe("unreachable", error("unreachable"))
    assert breaker.open_reason is None, "one failure after a success does not open it again"
