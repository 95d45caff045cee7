"""Fault matrix, issue 5: the network rows (N1-N10), the API rows (A1-A11) and the secrets rows (X1-X2).

Each test stages one failure on loopback and checks what must hold against the local GLM server's
own tally (``srv.stats``, ``srv.billed``, ``srv.requests``). Operator rows run ``GLMChatOperator``
in row mode with an SQLite sink and also check the matrix invariants: the ledger's token totals
equal the server's billed tally (or, where a billed answer never arrived, differ by exactly the
responses the server billed and the client could not see), and the results table has one row per
input row. The ledger invariants are shared with the other fault tests (``tests/_ledger.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import sys
import threading
import time
import traceback
import tracemalloc
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from _ledger import check_ledger
from _streams import assemble

from airflow_provider_glm._compat import AirflowFailException, TaskDeferred
from airflow_provider_glm.client import AsyncGLMClient, GLMClient
from airflow_provider_glm.client._error_codes import CODE_TABLE
from airflow_provider_glm.client._streaming import StreamAssembler
from airflow_provider_glm.client.models import ChatCompletion
from airflow_provider_glm.client.retry import RetryPolicy
from airflow_provider_glm.exceptions import (
    GLMConnectionError,
    GLMContentFilterError,
    GLMError,
    GLMInsufficientBalanceError,
    GLMInvalidResponseError,
    GLMRateLimitError,
    GLMRowsFailedError,
    GLMServerError,
    GLMTimeoutError,
)
from airflow_provider_glm.hooks.glm import GLMHook
from airflow_provider_glm.operators.batch import GLMBatchOperator
from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.rows._records import RunScope
from airflow_provider_glm.sinks.sql import SQLSink
from airflow_provider_glm.testing import Fault, GLMTestServer

SCOPE = RunScope("test_dag", "glm", "run-1")
MESSAGES = [{"role": "user", "content": "hello"}]
WORDS = ("alpha", "bravo", "charlie", "delta")
TARGET = "bravo"
"""The row (``r1``) that the API rows stage their fault on."""


# --- helpers -------------------------------------------------------------------------------------------


def input_rows() -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "text": word} for i, word in enumerate(WORDS)]


def chat_operator(url: str, **kwargs: Any) -> GLMChatOperator:
    params: dict[str, Any] = {"task_id": "glm", "row_key": "id", "prompt": "Summarize: {{ row.text }}",
                              "rows": input_rows(), "sqlalchemy_url": url, "max_concurrency": 1,
                              "progress_interval": 60}
    params.update(kwargs)
    return GLMChatOperator(**params)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'warehouse.db'}"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The operator's retry waits, recorded instead of slept (the policy still decides them)."""
    asked: list[float] = []
    original = GLMHook.get_async_client

    async def no_sleep(seconds: float) -> None:
        asked.append(seconds)

    def patched(self: GLMHook, **overrides: Any) -> AsyncGLMClient:
        return original(self, **{"sleep": no_sleep, **overrides})

    monkeypatch.setattr(GLMHook, "get_async_client", patched)
    return asked


def run_operator(op: GLMChatOperator, context: dict[str, Any]) -> tuple[Any, BaseException | None]:
    """``op.execute(context)``: its return value, or the exception it raised."""
    try:
        return op.execute(context), None
    except Exception as exc:  # the row tests assert on which one
        return None, exc


def attempts_for(srv: GLMTestServer, word: str) -> int:
    """Chat requests the server saw for the row whose text is ``word``."""
    return sum(1 for r in srv.requests if r.path.endswith("/chat/completions") and f"Summarize: {word}\""
               in r.raw_body.decode())


def statuses(url: str) -> dict[str, str]:
    return {r["row_key"]: r["status"] for r in SQLSink.from_url(url).results(SCOPE)}


Rows = list[dict[str, Any]]


def check_tally(url: str, srv: GLMTestServer, *, unseen: int = 0) -> tuple[Rows, Rows]:
    """The matrix invariants (``tests/_ledger.py``) and one result per input row; ``unseen`` billed answers
    never reached the ledger as known rows (their answer was lost: each shows as a possibly billed attempt)."""
    sink = SQLSink.from_url(url)
    try:
        results, usage = sink.results(SCOPE), sink.usage(SCOPE)
    finally:
        sink.dispose()
    assert sorted(r["row_key"] for r in results) == [f"r{i}" for i in range(len(WORDS))]
    missing = check_ledger(usage, srv)
    assert len(missing) == unseen
    return results, usage


def complete(srv_or_url: GLMTestServer | str, mode: str, *, key: str = "test-key", stream: bool = False,
             **options: Any) -> ChatCompletion:
    """One chat completion through the sync or async client; retry waits are skipped."""
    if isinstance(srv_or_url, GLMTestServer):
        base, key = srv_or_url.base_url, srv_or_url.api_key
    else:
        base = srv_or_url
    options.setdefault("retry_policy", RetryPolicy(max_retries=options.pop("max_retries", 3),
                                                   rng=random.Random(0)))
    if mode == "sync":
        with GLMClient(key, base_url=base, sleep=lambda s: None, **options) as client:
            if stream:
                return assemble(client.stream_chat_completion("glm-4.5", MESSAGES))
            return client.chat_completion("glm-4.5", MESSAGES)

    async def no_sleep(seconds: float) -> None:
        return None

    async def run() -> ChatCompletion:
        async with AsyncGLMClient(key, base_url=base, sleep=no_sleep, **options) as client:
            if stream:
                assembler = StreamAssembler()
                async for chunk in client.stream_chat_completion("glm-4.5", MESSAGES):
                    assembler.add(chunk)
                return assembler.completion()
            return await client.chat_completion("glm-4.5", MESSAGES)

    return asyncio.run(run())


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def error_texts(error: BaseException) -> str:
    texts = [str(error), repr(error), repr(error.args), "".join(traceback.format_exception(error))]
    if hasattr(error, "__dict__"):
        texts.append(repr(vars(error)))
    cause = error.__cause__ or error.__context__
    return "\n".join(texts + ([error_texts(cause)] if cause is not None else []))


# --- network ------------------------------------------------------------------------------------------


def test_N1_connection_refused(mode: str) -> None:
    base = f"http://127.0.0.1:{free_port()}/api/paas/v4"
    attempts: list[float] = []
    policy = RetryPolicy(max_retries=2, rng=random.Random(0))
    with pytest.raises(GLMConnectionError, match="ConnectError") as info:
        if mode == "sync":
            with GLMClient("k", base_url=base, retry_policy=policy, sleep=attempts.append) as client:
                client.chat_completion("glm-4.5", MESSAGES)
        else:
            async def record(seconds: float) -> None:
                attempts.append(seconds)

            async def run() -> None:
                async with AsyncGLMClient("k", base_url=base, retry_policy=policy, sleep=record) as client:
                    await client.chat_completion("glm-4.5", MESSAGES)

            asyncio.run(run())
    assert len(attempts) == 2, "retried max_retries times before giving up"
    assert info.value.request_sent is False
    assert info.value.may_have_been_billed is False, "a refused connection cannot have been billed"


@contextmanager
def unaccepting_listener() -> Iterator[int]:
    """A loopback port whose accept queue is full: a new connection's SYN is dropped, connect hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(filler)
        time.sleep(0.05)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.parametrize("how", [
    pytest.param("loopback-backlog-full", marks=pytest.mark.skipif(
        sys.platform != "linux", reason="relies on Linux dropping SYNs when the accept queue is full")),
    "mock-transport",
])
def test_N2_connect_timeout(how: str) -> None:
    attempts: list[float] = []
    policy = RetryPolicy(max_retries=1, rng=random.Random(0))
    sent: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.ConnectTimeout("timed out", request=request)

    with pytest.raises(GLMTimeoutError, match="ConnectTimeout") as info:
        if how == "mock-transport":
            with GLMClient("k", base_url="https://glm.test/v4", transport=httpx.MockTransport(refuse),
                           retry_policy=policy, sleep=attempts.append) as client:
                client.chat_completion("glm-4.5", MESSAGES)
        else:
            with unaccepting_listener() as port, GLMClient(
                    "k", base_url=f"http://127.0.0.1:{port}/api/paas/v4", connect_timeout=0.2, timeout=1.0,
                    retry_policy=policy, sleep=attempts.append) as client:
                client.chat_completion("glm-4.5", MESSAGES)
    assert len(attempts) == 1, "a connect timeout is retried"
    assert info.value.request_sent is False and info.value.may_have_been_billed is False
    if how == "mock-transport":
        assert len(sent) == 2


def test_N3_no_response_read_timeout(glm_server: GLMTestServer, mode: str) -> None:
    glm_server.script(Fault.hang(600), Fault.hang(600))
    with pytest.raises(GLMTimeoutError, match="timed out|no complete answer") as info:
        complete(glm_server, mode, read_timeout=0.2, max_retries=1)
    assert glm_server.stats.requests == 2, "a read timeout is retried"
    assert glm_server.stats.in_flight == 2, "both attempts gave up while the server still hung on them"
    assert glm_server.stats.billed_responses == 0
    assert info.value.may_have_been_billed is True, "the request went out: billing is unknown"


def test_N4_trickled_body_total_deadline(glm_server: GLMTestServer, mode: str) -> None:
    glm_server.script(Fault.trickle(0.05, 4))  # a byte stream that never stalls long enough for read_timeout
    deadline = 0.6
    with pytest.raises(GLMTimeoutError, match=f"no complete answer within {deadline:g} s"):
        complete(glm_server, mode, timeout=deadline, read_timeout=60, max_retries=0)
    assert glm_server.stats.requests == 1


@contextmanager
def trickled_head_server(stop_after: float) -> Iterator[str]:
    """A raw loopback server that sends a 200's status line and headers one byte per 20 ms (never the
    body), and gives up after ``stop_after`` seconds. No read waits long: only a total deadline ends it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: " + b"a" * 4000 + b"\r\n\r\n"
            ends = time.monotonic() + stop_after
            try:
                for byte in head:
                    if time.monotonic() > ends:
                        return
                    conn.send(bytes([byte]))
                    time.sleep(0.02)
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/api/paas/v4"
    finally:
        thread.join(timeout=stop_after + 2)
        listener.close()


@pytest.mark.parametrize("head_mode", ["sync", "async"])
def test_N4_trickled_headers_total_deadline(head_mode: str) -> None:
    """Headers trickled a byte at a time never pass the total deadline, in either client (the sync one
    is the async one run on a loop thread): the error is the total deadline's, not a read timeout's,
    while the server would go on trickling for a minute."""
    with trickled_head_server(stop_after=60) as base, \
            pytest.raises(GLMTimeoutError, match="no complete answer within 0.5 s"):
        complete(base, head_mode, timeout=0.5, read_timeout=30, max_retries=0)


def test_N5_reset_mid_body(glm_server: GLMTestServer, mode: str) -> None:
    glm_server.script(Fault.reset_mid_body())
    answer = complete(glm_server, mode)
    assert answer.content == "Summary: hello"
    assert (answer.call_info.attempts, answer.call_info.unknown_billing_attempts) == (2, 1)
    assert glm_server.stats.requests == 2 and glm_server.stats.billed_responses == 2
    assert answer.id == glm_server.billed[1].response_id

    glm_server.reset()
    glm_server.script(Fault.reset_mid_body())
    with pytest.raises(GLMConnectionError) as info:
        complete(glm_server, mode, max_retries=0)
    assert info.value.retryable and info.value.may_have_been_billed
    assert glm_server.stats.requests == 1


def test_N6_billed_then_dropped(glm_conn: GLMTestServer, context: dict[str, Any], url: str,
                                waits: list[float]) -> None:
    glm_conn.add_rule(match=TARGET, fault=Fault.drop_after_billing(), times=1)
    out = chat_operator(url, max_concurrency=4).execute(context)
    assert out == [f"Summary: Summarize: {w}" for w in WORDS]
    assert attempts_for(glm_conn, TARGET) == 2 and len(waits) == 1, "retried once, within max_retries"
    dropped = [r for r in glm_conn.requests if r.billed and r.status is None]
    assert len(dropped) == 1
    results, usage = check_tally(url, glm_conn, unseen=1)
    assert dropped[0].response_id not in {u["response_id"] for u in usage}
    entry = {u["row_key"]: u for u in usage}["r1"]
    assert (entry["attempts"], entry["unknown_billing_attempts"]) == (2, 1)
    others = [u for u in usage if u["row_key"] != "r1"]
    assert all((u["attempts"], u["unknown_billing_attempts"]) == (1, 0) for u in others)
    # the ledger explains the extra billed response: billed = ledger entries + unknown-billing attempts
    assert glm_conn.stats.billed_responses == len(usage) + sum(u["unknown_billing_attempts"] for u in usage)
    assert {r["status"] for r in results} == {"ok"}


class _LazyHugeServer:
    """A raw loopback HTTP server announcing a 64 MiB body and writing it from one reused buffer,
    so the only large allocations in this process are the client's."""

    SIZE = 64 * 1024 * 1024

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = int(self.sock.getsockname()[1])
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")][0])
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % self.SIZE)
            block = b" " * 65536
            try:
                while self.sent < self.SIZE:
                    conn.sendall(block)
                    self.sent += len(block)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)


def test_N7_response_over_max_response_bytes(glm_server: GLMTestServer, mode: str) -> None:
    cap = 200_000
    glm_server.script(Fault.huge(3_000_000))
    with pytest.raises(GLMInvalidResponseError, match=f"max_response_bytes={cap}"):
        complete(glm_server, mode, max_response_bytes=cap)
    assert glm_server.stats.requests == 1, "an oversized answer is not retried"
    assert glm_server.stats.billed_responses == 1  # the server billed it; the answer was refused

    # memory: against a server that streams 64 MiB from one reused buffer, the client's peak stays
    # near the cap, far below the answer's size, and it stops reading soon after the cap
    server = _LazyHugeServer()
    cap = 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(GLMInvalidResponseError, match="max_response_bytes"):
            complete(f"http://127.0.0.1:{server.port}/api/paas/v4", mode, max_response_bytes=cap,
                     max_retries=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        server.close()
    assert peak < 8 * cap < server.SIZE / 8, f"peak {peak} bytes"
    assert server.sent < server.SIZE / 2, f"the server wrote {server.sent} bytes: the read was not aborted"


def test_N8_redirect_to_other_host_keeps_the_key() -> None:
    key = f"sk-canary-{uuid.uuid4().hex}"
    with GLMTestServer(api_key=key) as srv, GLMTestServer(api_key=key, host="127.0.0.2") as other:
        srv.script(Fault.redirect(f"{other.base_url}/chat/completions", status=307))
        with GLMClient(key, base_url=srv.base_url, sleep=lambda s: None) as client, \
                pytest.raises(GLMInvalidResponseError, match="redirect to 127.0.0.2") as info:
            client.chat_completion("glm-4.5", MESSAGES)
        assert other.stats.requests == 0, "the redirect was not followed: the other host never saw the key"
        assert srv.stats.requests == 1 and srv.stats.billed_responses == 0
        assert info.value.status_code == 307 and key not in error_texts(info.value)


def test_N9_stream_truncated_before_done(glm_server: GLMTestServer, mode: str) -> None:
    glm_server.script(Fault.truncated_stream())
    with pytest.raises(GLMInvalidResponseError, match=r"before \[DONE\]") as info:
        complete(glm_server, mode, stream=True)
    assert not info.value.retryable
    assert glm_server.stats.requests == 1, "a stream is never retried once bytes arrived"
    assert glm_server.stats.billed_responses == 1  # billed server-side; the half answer is not used


@pytest.mark.parametrize(
    ("code", "cls"),
    [("1234", GLMServerError), ("1301", GLMContentFilterError), ("1302", GLMRateLimitError),
     ("1113", GLMInsufficientBalanceError)],
)
def test_N10_error_event_inside_200_stream(glm_server: GLMTestServer, mode: str, code: str,
                                           cls: type[GLMError]) -> None:
    glm_server.script(Fault.stream_error(code))
    with pytest.raises(cls) as info:
        complete(glm_server, mode, stream=True)
    assert type(info.value) is cls and info.value.code == code and info.value.status_code == 200
    assert glm_server.stats.requests == 1 and glm_server.stats.billed_responses == 0


# --- API: the business-code table ------------------------------------------------------------------

RATE_LIMITS = [("1302", 429), ("1303", 429), ("1305", 429), ("1312", 429)]
SERVER = [("500", 500), ("1234", 500)]
TEMPORARY = [("1120", 500), ("1230", 500)]
AUTH = [(str(code), 401) for code in range(1000, 1005)]
PERMISSION = [("1110", 401), ("1111", 401), ("1112", 401), ("1121", 401), ("1220", 403), ("1221", 403),
              ("1222", 403)]
BAD_REQUEST = [("1200", 400), *((str(code), 400) for code in range(1210, 1216)), ("1231", 400), ("1261", 400)]
CONTENT_FILTER = [("1300", 400), ("1301", 400)]
QUOTA = [("1113", 429), ("1304", 429), ("1308", 429), ("1309", 429), ("1310", 429), ("1311", 429),
         ("1313", 429)]


def test_A_rows_cover_every_code_of_the_table() -> None:
    staged = {int(code) for group in (RATE_LIMITS, SERVER, TEMPORARY, AUTH, PERMISSION, BAD_REQUEST,
                                      CONTENT_FILTER, QUOTA) for code, _ in group}
    table = {code for rule in CODE_TABLE for lo, hi in rule.codes for code in range(lo, hi + 1)}
    assert staged == table


def _retried_then_ok(srv: GLMTestServer, context: dict[str, Any], url: str, waits: list[float],
                     code: str, status: int) -> None:
    srv.add_rule(match=TARGET, fault=Fault.error(status, code), times=2)
    out = chat_operator(url).execute(context)
    assert out == [f"Summary: Summarize: {w}" for w in WORDS]
    assert attempts_for(srv, TARGET) == 3 and len(waits) == 2
    assert all(attempts_for(srv, w) == 1 for w in WORDS if w != TARGET)
    _, usage = check_tally(url, srv)
    entry = {u["row_key"]: u for u in usage}["r1"]
    assert (entry["attempts"], entry["unknown_billing_attempts"]) == (3, 0)


@pytest.mark.parametrize(("code", "status"), RATE_LIMITS)
def test_A1_rate_limit_retried_then_ok(glm_conn: GLMTestServer, context: dict[str, Any], url: str,
                                       waits: list[float], code: str, status: int) -> None:
    _retried_then_ok(glm_conn, context, url, waits, code, status)


@pytest.mark.parametrize(("code", "status"), SERVER)
def test_A2_server_error_retried_then_ok(glm_conn: GLMTestServer, context: dict[str, Any], url: str,
                                         waits: list[float], code: str, status: int) -> None:
    _retried_then_ok(glm_conn, context, url, waits, code, status)


@pytest.mark.parametrize(("code", "status"), TEMPORARY)
def test_A3_temporary_error_two_attempts_at_most(glm_conn: GLMTestServer, context: dict[str, Any], url: str,
                                                 waits: list[float], code: str, status: int) -> None:
    glm_conn.add_rule(match=TARGET, fault=Fault.error(status, code))
    out = chat_operator(url, max_failed_rows=1).execute(context)
    assert out[1] is None and None not in (out[0], out[2], out[3])
    assert attempts_for(glm_conn, TARGET) == 2, "max_attempts=2 though the connection allows 4"
    assert statuses(url) == {"r0": "ok", "r1": "failed", "r2": "ok", "r3": "ok"}
    check_tally(url, glm_conn)


def _fatal(srv: GLMTestServer, context: dict[str, Any], url: str, code: str, status: int) -> None:
    srv.add_rule(match=TARGET, fault=Fault.error(status, code))
    _, error = run_operator(chat_operator(url), context)
    assert isinstance(error, AirflowFailException), "no Airflow retry can fix the account"
    assert code in str(error)
    assert attempts_for(srv, TARGET) == 1, "exactly one attempt"
    assert srv.stats.requests == 2, "nothing is sent after the account-wide error"
    assert statuses(url) == {"r0": "ok", "r1": "failed", "r2": "skipped", "r3": "skipped"}
    check_tally(url, srv)
    assert context["ti"].xcom["usage"]["skipped"] == 2


@pytest.mark.parametrize(("code", "status"), AUTH)
def test_A4_auth_error_fails_the_task_without_retries(glm_conn: GLMTestServer, context: dict[str, Any],
                                                      url: str, code: str, status: int) -> None:
    _fatal(glm_conn, context, url, code, status)


@pytest.mark.parametrize(("code", "status"), PERMISSION)
def test_A5_permission_error_fails_the_task_without_retries(glm_conn: GLMTestServer, context: dict[str, Any],
                                                            url: str, code: str, status: int) -> None:
    _fatal(glm_conn, context, url, code, status)


@pytest.mark.parametrize(("code", "status"), BAD_REQUEST)
def test_A6_bad_request_fails_only_that_row(glm_conn: GLMTestServer, context: dict[str, Any], url: str,
                                            code: str, status: int) -> None:
    glm_conn.add_rule(match=TARGET, fault=Fault.error(status, code))
    out = chat_operator(url, max_failed_rows=1, max_concurrency=4).execute(context)
    assert out[1] is None and None not in (out[0], out[2], out[3])
    assert attempts_for(glm_conn, TARGET) == 1
    results, _ = check_tally(url, glm_conn)
    assert statuses(url) == {"r0": "ok", "r1": "failed", "r2": "ok", "r3": "ok"}
    assert f"code {code}" in {r["row_key"]: r for r in results}["r1"]["error"]


@pytest.mark.parametrize(("code", "status"), CONTENT_FILTER)
def test_A7_content_filter_marks_only_that_row(glm_conn: GLMTestServer, context: dict[str, Any], url: str,
                                               code: str, status: int) -> None:
    glm_conn.add_rule(match=TARGET, fault=Fault.error(status, code))
    out = chat_operator(url, max_concurrency=4).execute(context)
    assert out[1] is None and None not in (out[0], out[2], out[3])
    assert attempts_for(glm_conn, TARGET) == 1
    check_tally(url, glm_conn)
    assert statuses(url) == {"r0": "ok", "r1": "filtered", "r2": "ok", "r3": "ok"}


@pytest.mark.parametrize(("code", "status"), QUOTA)
def test_A8_quota_or_balance_one_attempt_and_task_fails(glm_conn: GLMTestServer, context: dict[str, Any],
                                                        url: str, code: str, status: int) -> None:
    _fatal(glm_conn, context, url, code, status)


def test_A9_retry_after_honoured(glm_conn: GLMTestServer, context: dict[str, Any], url: str) -> None:
    glm_conn.add_rule(match=TARGET, fault=Fault.error(429, "1302", retry_after=0.4), times=1)
    chat_operator(url).execute(context)
    first, second = [r for r in glm_conn.requests if TARGET in r.raw_body.decode()]
    assert first.ended_at is not None and second.started_at - first.ended_at >= 0.4
    check_tally(url, glm_conn)


def test_A9_retry_after_capped(glm_conn: GLMTestServer, context: dict[str, Any], url: str,
                               waits: list[float]) -> None:
    glm_conn.add_rule(match=TARGET, fault=Fault.error(429, "1302", retry_after=3600), times=1)
    chat_operator(url).execute(context)
    cap = RetryPolicy().retry_after_cap
    assert len(waits) == 1 and cap <= waits[0] <= cap + 1.0
    assert attempts_for(glm_conn, TARGET) == 2
    check_tally(url, glm_conn)


def test_A9_retry_after_never_sleeps_past_execution_timeout(glm_conn: GLMTestServer, context: dict[str, Any],
                                                            url: str) -> None:
    glm_conn.add_rule(match=TARGET, fault=Fault.error(429, "1302", retry_after=30))
    op = chat_operator(url)
    op.execution_timeout = timedelta(seconds=2)
    _, error = run_operator(op, context)
    assert isinstance(error, GLMRowsFailedError) and "GLMRateLimitError" in str(error)
    assert attempts_for(glm_conn, TARGET) == 1, "the 30 s wait would pass execution_timeout: not taken"
    assert statuses(url) == {"r0": "ok", "r1": "failed", "r2": "ok", "r3": "ok"}
    check_tally(url, glm_conn)


@pytest.mark.parametrize(("fault", "kind"), [(Fault.html_200(), "text/html"),
                                             (Fault.malformed_json(), "application/json")],
                         ids=["html", "malformed-json"])
def test_A10_html_or_malformed_json_with_200(glm_conn: GLMTestServer, context: dict[str, Any], url: str,
                                             waits: list[float], fault: Fault, kind: str) -> None:
    glm_conn.add_rule(match=TARGET, fault=fault)
    out = chat_operator(url, max_failed_rows=1).execute(context)
    assert out[1] is None
    assert attempts_for(glm_conn, TARGET) == 1 and waits == [], "billing unknown: not retried"
    results, _ = check_tally(url, glm_conn)
    failed = {r["row_key"]: r for r in results}["r1"]
    assert failed["status"] == "failed"
    assert "GLMInvalidResponseError" in failed["error"] and "not JSON" in failed["error"]
    assert kind in failed["error"] and "HTTP 200" in failed["error"]


def test_A11_200_without_usage(glm_conn: GLMTestServer, context: dict[str, Any], url: str,
                               capfd: pytest.CaptureFixture[str]) -> None:
    glm_conn.add_rule(match=TARGET, fault=Fault.missing("usage"), times=1)
    out = chat_operator(url).execute(context)
    assert out[1] == f"Summary: Summarize: {TARGET}", "the answer itself is good: the row is ok"
    assert attempts_for(glm_conn, TARGET) == 1
    billed = {b.response_id: b for b in glm_conn.billed}
    sink = SQLSink.from_url(url)
    usage = {u["row_key"]: u for u in sink.usage(SCOPE)}
    results = sink.results(SCOPE)
    sink.dispose()
    result_keys = [r["row_key"] for r in results]
    result = {r["row_key"]: r for r in results}["r1"]
    assert sorted(result_keys) == [f"r{i}" for i in range(len(WORDS))]
    entry = usage["r1"]
    # the response is in the ledger (its id, so a rerun never bills it twice), but its tokens are
    # unknown: 0 in the ledger's NOT NULL token columns, the cost NULL (unknown, never a made-up 0),
    # NULL in the results table, and a warning in the task log
    assert entry["response_id"] in billed and billed[entry["response_id"]].total_tokens > 0
    assert (entry["total_tokens"], entry["cost"]) == (0, None)
    assert all(u["cost"] is not None for key, u in usage.items() if key != "r1")
    assert (result["status"], result["total_tokens"], result["prompt_tokens"]) == ("ok", None, None)
    task_log = "".join(capfd.readouterr())  # the operator logs through Airflow's structlog to the task log
    assert f"GLM answered row r1 without usage (response {entry['response_id']})" in task_log
    assert len(usage) == glm_conn.stats.billed_responses
    missing = billed[entry["response_id"]]
    for column in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert sum(u[column] for u in usage.values()) + getattr(missing, column) == getattr(
            glm_conn.stats, f"billed_{column}")


def test_A11_200_without_choices(glm_conn: GLMTestServer, context: dict[str, Any], url: str,
                                 waits: list[float]) -> None:
    glm_conn.add_rule(match=TARGET, fault=Fault.missing("choices"), times=1)
    out = chat_operator(url, max_failed_rows=1).execute(context)
    assert out[1] is None
    assert attempts_for(glm_conn, TARGET) == 1 and waits == []
    results, _ = check_tally(url, glm_conn, unseen=1)  # billed, but the answer was unusable
    failed = {r["row_key"]: r for r in results}["r1"]
    assert failed["status"] == "failed" and "GLMInvalidResponseError" in failed["error"]
    assert "without choices" in failed["error"]


# --- secrets ------------------------------------------------------------------------------------------


def canary_key() -> str:
    return f"sk-canary-{uuid.uuid4().hex}"


@pytest.fixture
def canary_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[GLMTestServer]:
    """A server accepting a fresh canary key, and ``glm_default`` holding that key as its password."""
    with GLMTestServer(api_key=canary_key()) as srv:
        conn = {"conn_type": "glm", "password": srv.api_key, "host": srv.base_url,
                "extra": {"model": "glm-4.5", "max_retries": 3}}
        monkeypatch.setenv("AIRFLOW_CONN_GLM_DEFAULT", json.dumps(conn))
        yield srv


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "aiohttp", "airflow", "airflow.task", "airflow_provider_glm"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def sql_dump(url: str) -> str:
    """Every column of every row of both tables, as text."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = [list(row) for table in ("glm_results", "glm_usage")
                    for row in conn.execute(sa.text(f"SELECT * FROM {table}"))]  # noqa: S608 (fixed names)
    finally:
        engine.dispose()
    assert rows
    return repr(rows)


def test_X1_canary_key_never_leaks(canary_server: GLMTestServer, context: dict[str, Any], url: str,
                                   debug_logs: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
                                   waits: list[float]) -> None:
    key = canary_server.api_key
    seen: list[str] = []

    # a run with an ok row, a retried drop, a failed row and a failing task
    canary_server.add_rule(match="alpha", fault=Fault.drop_after_billing(), times=1)
    canary_server.add_rule(match=TARGET, fault=Fault.error(400, "1261"))
    op = chat_operator(url, max_concurrency=2)
    _, error = run_operator(op, context)
    assert isinstance(error, GLMRowsFailedError)
    seen.append(error_texts(error))
    assert canary_server.requests[0].headers["authorization"] == f"Bearer {key}", "the canary was in use"
    check_tally(url, canary_server, unseen=1)

    # an account-wide failure: the key refused (server now expects another key)
    canary_server.api_key = canary_key()
    other = {**context, "ti": type(context["ti"])(run_id="run-2")}
    _, fatal = run_operator(chat_operator(url), other)
    assert isinstance(fatal, AirflowFailException) and fatal.__cause__ is not None
    seen.append(error_texts(fatal))
    canary_server.api_key = key

    # XCom, SQL rows (every column of both tables)
    seen += [json.dumps(context["ti"].xcom), json.dumps(other["ti"].xcom), sql_dump(url)]

    # reprs of operator, hook, settings and clients
    hook = op.hook
    async_client = hook.get_async_client()
    seen += [repr(op), str(op), repr(hook), str(hook), repr(hook.settings), repr(hook.client),
             repr(hook.client.core), repr(async_client), repr(vars(hook.client.core))]
    asyncio.run(async_client.aclose())
    hook.client.close()

    # rendered template fields
    op.render_template_fields(context)
    seen += [repr({name: getattr(op, name) for name in op.template_fields})]

    # trigger kwargs of a deferred batch
    batch = GLMBatchOperator(task_id="glm", row_key="id", prompt="Summarize: {{ row.text }}",
                             rows=input_rows(), sqlalchemy_url=url.replace("warehouse", "batch"),
                             deferrable=True, poll_interval=0.02)
    with pytest.raises(TaskDeferred) as deferred:
        batch.execute(context)
    path, kwargs = deferred.value.trigger.serialize()
    assert path.endswith("GLMBatchTrigger") and kwargs["glm_conn_id"] == "glm_default"
    seen += [repr(kwargs), json.dumps(kwargs), repr(deferred.value.trigger), repr(deferred.value.kwargs),
             repr(batch)]

    # task logs: stdlib records (the client's and aiohttp's at DEBUG included) and what the operator's
    # structlog logger wrote to the task's stdout/stderr
    assert any(r.name == "airflow_provider_glm.client._client" for r in debug_logs.records), \
        "the client's DEBUG line per request was logged"
    task_log = "".join(capfd.readouterr())
    assert "Done: rows 4/4" in task_log and "GLMChatOperator" in task_log, "the operator's log was captured"
    seen += [debug_logs.text, task_log]
    seen += [f"{r.getMessage()} {r.args!r} {r.exc_text}" for r in debug_logs.records]

    for text in seen:
        assert key not in text


@pytest.mark.parametrize("extra_name", ["api_key", "API_KEY", "token", "secret"])
@pytest.mark.parametrize("with_password", [False, True])
def test_X2_key_in_extra_is_refused(glm_server: GLMTestServer, context: dict[str, Any], url: str,
                                    monkeypatch: pytest.MonkeyPatch, debug_logs: pytest.LogCaptureFixture,
                                    extra_name: str, with_password: bool) -> None:
    key = canary_key()
    conn = {"conn_type": "glm", "host": glm_server.base_url, "extra": {"model": "glm-4.5", extra_name: key}}
    if with_password:
        conn["password"] = glm_server.api_key
    monkeypatch.setenv("AIRFLOW_CONN_GLM_DEFAULT", json.dumps(conn))
    _, error = run_operator(chat_operator(url), context)
    assert isinstance(error, ValueError)
    assert "belongs in the password field" in str(error) and extra_name in str(error)
    ok, message = GLMHook().test_connection()
    assert not ok and "password field" in message
    assert glm_server.stats.requests == 0, "refused before any call"
    for text in (error_texts(error), message, debug_logs.text):
        assert key not in text
