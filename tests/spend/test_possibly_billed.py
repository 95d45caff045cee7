"""Issue 9, point 1: every attempt that may have been billed is in the usage ledger.

Each test stages a fault on the local GLM server, runs ``GLMChatOperator`` (row mode, and single
mode where it differs) with a SQL sink on SQLite, PostgreSQL and MariaDB, and checks the ledger
against the server's own billed tally (``tests/_ledger.py``): known tokens <= billed <= known +
``unknown_tokens_max``, and known rows + ``unknown_billing_attempts`` >= billed responses.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from _spend_common import (
    TARGET,
    WORDS,
    Warehouse,
    chat_attempts,
    chat_operator,
    checked_ledger,
    run_operator,
    use_connection,
)
from _waits import wait_until

from airflow_provider_glm.exceptions import GLMTimeoutError
from airflow_provider_glm.testing import Fault, GLMTestServer

MAX_TOKENS = 40


def settled(srv: GLMTestServer) -> None:
    """Wait until the server finished every request (late answers billed), so its tally is final."""
    wait_until(lambda: srv.stats.in_flight == 0, "the server to finish every request")


def row_billed_tokens(srv: GLMTestServer, word: str) -> int:
    """Tokens the server billed for the row whose text is ``word``."""
    ids = {r.response_id for r in srv.requests if r.billed and f'Summarize: {word}"' in r.raw_body.decode()}
    return sum(b.total_tokens for b in srv.billed if b.response_id in ids)


def unknown_entry(usage: list[dict[str, Any]], key: str) -> dict[str, Any]:
    (entry,) = [u for u in usage if u["row_key"] == key]
    return entry


def test_billed_then_dropped_twice_is_in_the_ledger(glm_server: GLMTestServer, wh: Warehouse,
                                                    context: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    use_connection(monkeypatch, glm_server, max_retries=3)
    glm_server.add_rule(match=TARGET, fault=Fault.drop_after_billing())
    op = chat_operator(wh, max_failed_rows=1, request_params={"max_tokens": MAX_TOKENS})
    out, error = run_operator(op, context)
    assert error is None and out[1] is None and None not in (out[0], out[2], out[3])
    assert chat_attempts(glm_server, TARGET) == 2, "a lost answer is resent once (max_billed_retries=1), not 4 times"
    results, usage = checked_ledger(wh, glm_server, unseen=2)
    entry = unknown_entry(usage, "r1")
    assert (entry["billing"], entry["attempts"], entry["unknown_billing_attempts"]) == ("unknown", 2, 2)
    assert (entry["prompt_tokens"], entry["completion_tokens"], entry["total_tokens"]) == (0, 0, 0)
    billed = row_billed_tokens(glm_server, TARGET)
    assert billed <= entry["unknown_tokens_max"], "the bound covers what the lost attempts were billed"
    assert entry["unknown_tokens_max"] >= 2 * MAX_TOKENS and entry["unknown_cost_max"] is not None
    assert results["r1"]["status"] == "failed" and "may have been billed" in results["r1"]["error"]
    assert all(u["billing"] == "known" and u["unknown_billing_attempts"] == 0
               for u in usage if u["row_key"] != "r1")


def test_answer_after_the_client_timed_out_is_in_the_ledger(glm_server: GLMTestServer, wh: Warehouse,
                                                             context: dict[str, Any],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # the server answers (and bills) the row 5 s after the client gave up at 0.5 s
    use_connection(monkeypatch, glm_server, timeout=0.5, max_retries=3)
    glm_server.add_rule(match=TARGET, fault=Fault.delay(5))
    out, error = run_operator(chat_operator(wh, max_failed_rows=1, max_concurrency=4), context)
    assert error is None and out[1] is None
    assert chat_attempts(glm_server, TARGET) == 2
    # (no check that the late answers are still unbilled here: on a loaded machine the run can
    # outlast their 5 s, and nothing below depends on when they were billed)
    settled(glm_server)
    assert glm_server.stats.billed_responses == 5
    results, usage = checked_ledger(wh, glm_server, unseen=2)
    entry = unknown_entry(usage, "r1")
    assert (entry["billing"], entry["unknown_billing_attempts"]) == ("unknown", 2)
    assert "may have been billed" in results["r1"]["error"] and "timeout" in results["r1"]["error"]


def test_single_mode_answer_after_timeout_is_in_the_ledger(glm_server: GLMTestServer, wh: Warehouse,
                                                           context: dict[str, Any],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    use_connection(monkeypatch, glm_server, timeout=0.3, max_retries=3)
    glm_server.hold()  # no answer until the client is gone
    try:
        _, error = run_operator(chat_operator(wh, prompt="Summarize: bravo", rows=None), context)
        assert isinstance(error, GLMTimeoutError)
        assert "may have been billed" in str(error) and "timeout" in str(error)
        assert glm_server.stats.requests == 2 and glm_server.stats.billed_responses == 0
    finally:
        glm_server.release()
    settled(glm_server)
    assert glm_server.stats.billed_responses == 2, "both abandoned attempts were billed"
    _, usage = checked_ledger(wh, glm_server, unseen=2, scope=None)
    (entry,) = usage
    assert (entry["row_key"], entry["billing"], entry["attempts"], entry["unknown_billing_attempts"]) == (
        "single", "unknown", 2, 2)
    pushed = context["ti"].xcom["usage"]
    assert (pushed["billing"], pushed["unknown_billing_attempts"]) == ("unknown", 2)
    assert pushed["unknown_tokens_max"] == entry["unknown_tokens_max"] > 0


@pytest.mark.parametrize("fault", [Fault.html_200(billed=True), Fault.malformed_json(billed=True),
                                   Fault.huge(400_000)], ids=["html", "malformed-json", "oversized"])
def test_billed_unreadable_answer_is_in_the_ledger(glm_server: GLMTestServer, wh: Warehouse,
                                                   context: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                   fault: Fault) -> None:
    use_connection(monkeypatch, glm_server, max_response_bytes=100_000)
    glm_server.add_rule(match=TARGET, fault=fault)
    out, error = run_operator(chat_operator(wh, max_failed_rows=1), context)
    assert error is None and out[1] is None
    assert chat_attempts(glm_server, TARGET) == 1, "an unreadable 200 is not bought again"
    results, usage = checked_ledger(wh, glm_server, unseen=1)
    entry = unknown_entry(usage, "r1")
    assert (entry["billing"], entry["attempts"], entry["unknown_billing_attempts"]) == ("unknown", 1, 1)
    assert results["r1"]["status"] == "failed" and "GLMInvalidResponseError" in results["r1"]["error"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_refused_is_not_billing_unknown(wh: Warehouse, context: dict[str, Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    with GLMTestServer() as srv:  # an empty tally: nothing can have been billed
        use_connection(monkeypatch, srv, host=f"http://127.0.0.1:{port}/api/paas/v4", max_retries=0)
        _, error = run_operator(chat_operator(wh, max_failed_rows=len(WORDS)), context)
        results, usage = checked_ledger(wh, srv)
    assert error is None, "4 failed rows are within max_failed_rows"
    assert usage == [], "a request that never left cannot have been billed"
    assert [results[f"r{i}"]["status"] for i in range(len(WORDS))] == ["failed"] * len(WORDS)
    assert all("ConnectError" in r["error"] and "may have been billed" not in r["error"] for r in results.values())
    assert context["ti"].xcom["usage"]["unknown_billing_attempts"] == 0
    assert context["ti"].xcom["usage"]["possibly_billed"] is None


def test_async_resubmit_after_a_lost_submit_answer_is_visible(glm_server: GLMTestServer, wh: Warehouse,
                                                              context: dict[str, Any],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The submit created (and billed) an async task, but its answer was lost: the resubmitted row says
    attempts 2, one possibly billed; a second loss fails the row with both attempts in the ledger."""
    use_connection(monkeypatch, glm_server, max_retries=3)
    glm_server.async_delay = 0.0
    # one row at a time: the first row's submit answer is lost twice, the second row's once
    glm_server.script(Fault.drop_after_billing(), Fault.drop_after_billing(), Fault.drop_after_billing())
    op = chat_operator(wh, api="async", async_poll_interval=0.01, max_failed_rows=1)
    out, error = run_operator(op, context)
    assert error is None
    assert out[0] is None and out[1:] == [f"Summary: Summarize: {w}" for w in WORDS[1:]]
    assert [chat_attempts(glm_server, w) for w in WORDS] == [2, 2, 1, 1]
    wait_until(lambda: all(t["task_status"] != "PROCESSING" for t in glm_server.async_tasks),
               "every async task the lost submits created to finish")
    assert glm_server.stats.async_submitted == 6 and glm_server.stats.billed_responses == 6
    results, usage = checked_ledger(wh, glm_server, unseen=3)
    lost = unknown_entry(usage, "r0")
    assert (lost["billing"], lost["attempts"], lost["unknown_billing_attempts"]) == ("unknown", 2, 2)
    assert results["r0"]["status"] == "failed" and "may have been billed" in results["r0"]["error"]
    resubmitted = unknown_entry(usage, "r1")
    assert (resubmitted["billing"], resubmitted["attempts"], resubmitted["unknown_billing_attempts"]) == (
        "known", 2, 1)
    assert resubmitted["unknown_tokens_max"] > 0
    assert {u["api"] for u in usage} == {"async"}
    summary = context["ti"].xcom["usage"]
    assert summary["unknown_billing_attempts"] == 3
    assert summary["possibly_billed"].startswith("3 attempts may have been billed, up to ")
