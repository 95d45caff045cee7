"""Issue 9, point 3: a lost answer is not bought again and again.

A request that may have been billed (sent, then dropped or timed out) is resent at most
``max_billed_retries`` times (connection extra, default 1), whatever ``max_retries`` allows; then the
row fails with a message that says it may have been billed and points at ``timeout``. Slow answers
neither multiply the bill nor pile up requests on the server: a worker whose attempt timed out waits
as long as that attempt ran before resending, and timeouts lower the concurrency.
"""

from __future__ import annotations

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

from airflow_provider_glm.exceptions import GLMRowsFailedError
from airflow_provider_glm.testing import Fault, GLMTestServer


@pytest.mark.parametrize(("extra", "max_retries", "attempts"), [
    ({}, 3, 2),                           # the default: one resend
    ({"max_billed_retries": 0}, 3, 1),    # never resend a possibly billed request
    ({"max_billed_retries": 2}, 3, 3),
    ({"max_billed_retries": 5}, 1, 2),    # max_retries still bounds every retry
], ids=["default", "zero", "two", "capped-by-max_retries"])
def test_lost_answer_resent_at_most_max_billed_retries(glm_server: GLMTestServer, wh: Warehouse,
                                                       context: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                       extra: dict[str, Any], max_retries: int,
                                                       attempts: int) -> None:
    use_connection(monkeypatch, glm_server, max_retries=max_retries, timeout=7, **extra)
    glm_server.add_rule(match=TARGET, fault=Fault.drop_after_billing())
    _, error = run_operator(chat_operator(wh, max_concurrency=4), context)
    assert isinstance(error, GLMRowsFailedError), "the row failed: max_failed_rows=0 fails the task"
    assert "may have been billed" in str(error)
    assert chat_attempts(glm_server, TARGET) == attempts
    assert all(chat_attempts(glm_server, w) == 1 for w in WORDS if w != TARGET)
    results, usage = checked_ledger(wh, glm_server, unseen=attempts)
    (entry,) = [u for u in usage if u["row_key"] == "r1"]
    assert (entry["billing"], entry["attempts"], entry["unknown_billing_attempts"]) == ("unknown", attempts, attempts)
    message = results["r1"]["error"]
    assert "may have been billed" in message and "timeout, now 7 s" in message and "max_billed_retries" in message
    times = "once" if attempts == 1 else f"{attempts} times"
    assert f"lost {times}" in message
    assert [s for s in context["ti"].xcom["usage"]["failures"] if s.startswith("r1: ")], "the failure is in XCom"


def test_lost_then_answered_row_is_ok_with_its_lost_attempt_counted(glm_server: GLMTestServer, wh: Warehouse,
                                                                      context: dict[str, Any],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    use_connection(monkeypatch, glm_server, max_retries=3)
    glm_server.add_rule(match=TARGET, fault=Fault.drop_after_billing(), times=1)
    out, error = run_operator(chat_operator(wh), context)
    assert error is None and out[1] == f"Summary: Summarize: {TARGET}"
    _, usage = checked_ledger(wh, glm_server, unseen=1)
    (entry,) = [u for u in usage if u["row_key"] == "r1"]
    assert (entry["billing"], entry["attempts"], entry["unknown_billing_attempts"]) == ("known", 2, 1)
    assert entry["unknown_tokens_max"] > 0 and entry["total_tokens"] > 0


def test_slow_answers_are_bought_twice_at_most_and_stay_near_max_concurrency(
        glm_server: GLMTestServer, sqlite_wh: Warehouse, context: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every answer takes 0.6 s, the client gives up after 0.5 s: each row is sent twice (not
    ``max_retries + 1`` times) and fails saying it may have been billed; the resend waits as long as the
    lost attempt ran, by which time the server has finished the first copy, so the server never holds
    more than ``max_concurrency`` requests of the task (one more at most while the limit adapts; the
    assertion leaves room for a loaded machine)."""
    timeout, limit, n = 0.5, 8, 9
    glm_server.latency = 0.6
    use_connection(monkeypatch, glm_server, max_retries=2, timeout=timeout)
    rows = [{"id": f"r{i}", "text": f"slow {i}"} for i in range(n)]
    _, error = run_operator(chat_operator(sqlite_wh, rows=rows, max_concurrency=limit), context)
    assert isinstance(error, GLMRowsFailedError) and f"{n} rows failed" in str(error)
    assert "may have been billed" in str(error) and "timeout" in str(error)
    wait_until(lambda: glm_server.stats.in_flight == 0, "the late answers")
    assert glm_server.stats.requests == 2 * n, "a lost answer is resent once, not max_retries times"
    assert glm_server.stats.billed_responses == 2 * n
    # normally limit + 1 at most; the margin is for a loaded machine, where the server can finish a
    # first copy late. Before the resend waited, this task put 21 requests in flight at a limit of 8.
    assert glm_server.stats.peak_chat_in_flight < 2 * limit
    for i in range(n):
        first, second = [r for r in glm_server.requests if f'slow {i}"' in r.raw_body.decode()]
        assert second.started_at - first.started_at >= 1.5 * timeout, "the resend waited after the timeout"
    results, usage = checked_ledger(sqlite_wh, glm_server, unseen=2 * n)
    assert {r["status"] for r in results.values()} == {"failed"}
    assert sorted((u["billing"], u["unknown_billing_attempts"]) for u in usage) == [("unknown", 2)] * n
