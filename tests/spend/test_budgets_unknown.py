"""Issue 9, point 2: budgets, the run summary in XCom, the runs table and the final log line count
what may have been billed.

Every answer of the server is billed and then lost (``Fault.drop_after_billing``): the known spend
stays 0 while the server bills. ``max_total_tokens`` / ``max_cost`` compare known spend plus the
upper bound of the possibly billed attempts, so dispatch stops after the first row instead of
buying every row twice while the task reports 0.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from _spend_common import WORDS, Warehouse, chat_attempts, chat_operator, checked_ledger, run_operator, use_connection

from airflow_provider_glm._compat import AirflowFailException
from airflow_provider_glm.exceptions import GLMBudgetExceededError
from airflow_provider_glm.testing import Fault, GLMTestServer

MAX_TOKENS = 30


def lose_every_answer(srv: GLMTestServer) -> None:
    srv.add_rule(match="Summarize", fault=Fault.drop_after_billing())


@pytest.mark.parametrize("budget", [{"max_total_tokens": 20}, {"max_cost": 0.000001}], ids=["tokens", "cost"])
def test_budget_stops_dispatch_on_the_possibly_billed_bound(glm_server: GLMTestServer, wh: Warehouse,
                                                            context: dict[str, Any],
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capfd: pytest.CaptureFixture[str],
                                                            budget: dict[str, Any]) -> None:
    use_connection(monkeypatch, glm_server, max_retries=3)
    lose_every_answer(glm_server)
    op = chat_operator(wh, request_params={"max_tokens": MAX_TOKENS}, **budget)
    _, error = run_operator(op, context)
    assert isinstance(error, AirflowFailException) and isinstance(error.__cause__, GLMBudgetExceededError)
    name = next(iter(budget))
    assert f"budget {name}=" in str(error) and "possibly billed" in str(error)
    assert chat_attempts(glm_server, WORDS[0]) == 2
    assert glm_server.stats.requests == 2, "nothing is sent once known + possibly billed reach the budget"

    results, usage = checked_ledger(wh, glm_server, unseen=2)
    (entry,) = usage
    assert (entry["row_key"], entry["billing"], entry["unknown_billing_attempts"]) == ("r0", "unknown", 2)
    bound = entry["unknown_tokens_max"]
    assert bound >= 2 * MAX_TOKENS
    assert [results[f"r{i}"]["status"] for i in range(len(WORDS))] == ["failed", "skipped", "skipped", "skipped"]
    reason = results["r1"]["error"]
    assert reason.startswith(f"not sent: budget {name}=") and "possibly billed" in reason
    if name == "max_total_tokens":
        assert f"(0 tokens spent, up to {bound} more possibly billed)" in reason

    summary = context["ti"].xcom["usage"]
    assert (summary["total_tokens"], summary["unknown_billing_attempts"], summary["unknown_tokens_max"]) == (
        0, 2, bound)
    assert summary["unknown_cost_max"] == pytest.approx(float(entry["unknown_cost_max"]))
    assert summary["stop_kind"] == "budget"
    text = summary["possibly_billed"]
    assert text.startswith(f"2 attempts may have been billed, up to {bound} tokens / ")
    assert re.search(r" / \d+\.\d{6} USD$", text)

    (run,) = wh.runs()
    assert (run["unknown_billing_attempts"], run["unknown_tokens_max"], run["state"]) == (2, bound, "failed")
    assert Decimal(str(run["unknown_cost_max"])) == Decimal(str(entry["unknown_cost_max"]))

    log = "".join(capfd.readouterr())
    (done,) = [line for line in log.splitlines() if "Done: rows 4/4" in line]
    assert "skipped 3" in done and f"2 attempts may have been billed, up to {bound} tokens" in done


def test_budget_counts_possibly_billed_attempts_of_earlier_tries(glm_server: GLMTestServer, wh: Warehouse,
                                                                 context: dict[str, Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Single mode: the first try's lost answers are in the ledger; the retry's budget counts their bound
    and sends nothing."""
    use_connection(monkeypatch, glm_server, max_retries=3)
    lose_every_answer(glm_server)
    single = {"prompt": "Summarize: once", "rows": None, "request_params": {"max_tokens": MAX_TOKENS}}
    _, first = run_operator(chat_operator(wh, **single), context)
    assert first is not None and "may have been billed" in str(first)
    assert glm_server.stats.requests == 2
    _, usage = checked_ledger(wh, glm_server, unseen=2, scope=None)
    bound = usage[0]["unknown_tokens_max"]

    retry = {**context, "ti": type(context["ti"])(try_number=2)}
    _, error = run_operator(chat_operator(wh, max_total_tokens=bound, **single), retry)
    assert isinstance(error, AirflowFailException) and "max_total_tokens" in str(error)
    assert glm_server.stats.requests == 2, "the retry sent nothing: the earlier try may have spent the budget"
    assert f"up to {bound} more possibly billed" in str(error)

    retry2 = {**context, "ti": type(context["ti"])(try_number=3)}
    glm_server.reset()
    run_operator(chat_operator(wh, max_total_tokens=bound + 10_000, **single), retry2)
    assert glm_server.stats.requests == 1, "a budget above the bound lets the row go"
