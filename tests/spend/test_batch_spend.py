"""Issue 9, points 1 and 7 for ``GLMBatchOperator``: what a batch may have billed is in the ledger,
and budgets are checked against an estimate before anything is submitted.

Faults the test server cannot stage on the batch endpoints (a lost create answer, an output file
missing a line the batch counts as completed) are staged by a transport between the client and the
server: the server does the work and bills it, the client loses what it would have learned.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from _spend_common import Warehouse, checked_ledger, run_operator, use_connection

from airflow_provider_glm._compat import AirflowFailException
from airflow_provider_glm.exceptions import GLMBudgetExceededError, GLMRowsFailedError
from airflow_provider_glm.hooks.glm import GLMHook
from airflow_provider_glm.operators.batch import GLMBatchOperator
from airflow_provider_glm.testing import BatchOutcome, GLMTestServer


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i:03d}", "text": f"night note {i}"} for i in range(n)]


def batch_operator(wh: Warehouse, n: int, **kwargs: Any) -> GLMBatchOperator:
    params: dict[str, Any] = {"task_id": "glm", "row_key": "id", "prompt": "Summarize: {{ row.text }}",
                              "rows": rows(n), "deferrable": False, "poll_interval": 0.02, **wh.options}
    params.update(kwargs)
    return GLMBatchOperator(**params)


class Losing(httpx.AsyncBaseTransport):
    """Forwards to the server; loses the answer of the first batch creation (after the server created it)
    and drops the output lines of ``drop_outputs`` from downloaded files."""

    def __init__(self, *, lose_create: bool = False, drop_outputs: frozenset[str] = frozenset()) -> None:
        self.lose_create = lose_create
        self.drop_outputs = drop_outputs
        self.lost: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async with httpx.AsyncClient(trust_env=False) as inner:
            forwarded = inner.build_request(request.method, request.url, headers=request.headers,
                                            content=await request.aread())
            response = await inner.send(forwarded)
        path = request.url.path
        if self.lose_create and request.method == "POST" and path.endswith("/batches"):
            self.lose_create = False
            self.lost.append(response.json()["id"])
            raise httpx.ReadError("the connection dropped before the answer", request=request)
        content = response.content
        if path.endswith("/content") and self.drop_outputs:
            kept = [line for line in content.splitlines()
                    if not (b'"response"' in line and json.loads(line)["custom_id"] in self.drop_outputs)]
            content = b"".join(line + b"\n" for line in kept)
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length",
                                                                                  "content-encoding")}
        return httpx.Response(response.status_code, headers=headers, content=content, request=request)


@pytest.fixture
def losing(monkeypatch: pytest.MonkeyPatch) -> Losing:
    transport = Losing()
    original = GLMHook.get_async_client

    def patched(self: GLMHook, **overrides: Any) -> Any:
        return original(self, **{"transport": transport, **overrides})

    monkeypatch.setattr(GLMHook, "get_async_client", patched)
    return transport


def test_lost_create_answer_reuses_the_created_batch(glm_server: GLMTestServer, wh: Warehouse,
                                                     context: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                     losing: Losing, capfd: pytest.CaptureFixture[str]) -> None:
    use_connection(monkeypatch, glm_server, max_retries=3)
    losing.lose_create = True
    out = batch_operator(wh, 5).execute(context)
    assert out == [f"Summary: Summarize: night note {i}" for i in range(5)]
    assert len(losing.lost) == 1 and glm_server.stats.batches_created == 1, "the create was not sent twice"
    assert [b["id"] for b in glm_server.batches] == losing.lost
    results, usage = checked_ledger(wh, glm_server, unseen=0)
    assert len(usage) == 5 and {u["api"] for u in usage} == {"batch"}
    assert "Creating the batch lost its answer" in "".join(capfd.readouterr())


def test_answers_missing_from_the_output_are_possibly_billed(glm_server: GLMTestServer, wh: Warehouse,
                                                             context: dict[str, Any],
                                                             monkeypatch: pytest.MonkeyPatch, losing: Losing) -> None:
    """The batch says it completed 6 requests (billed), its output holds 4: the 2 missing answers are a
    ``billing='unknown'`` ledger entry bounded like lost online answers; their rows fail."""
    use_connection(monkeypatch, glm_server)
    losing.drop_outputs = frozenset({"r001", "r004"})
    _, error = run_operator(batch_operator(wh, 6, request_params={"max_tokens": 50}), context)
    assert isinstance(error, GLMRowsFailedError) and "2 rows failed" in str(error)
    assert glm_server.stats.billed_responses == 6
    results, usage = checked_ledger(wh, glm_server, unseen=2)
    (unknown,) = [u for u in usage if u["billing"] == "unknown"]
    assert (unknown["row_key"], unknown["unknown_billing_attempts"]) == (None, 2)
    assert unknown["unknown_tokens_max"] >= 2 * 50
    assert {k for k, r in results.items() if r["status"] == "failed"} == {"r001", "r004"}
    assert "no result for this row" in results["r001"]["error"]
    summary = context["ti"].xcom["usage"]
    assert summary["possibly_billed"].startswith("2 attempts may have been billed, up to ")


def test_expired_batch_bills_only_what_completed(glm_server: GLMTestServer, wh: Warehouse, context: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    use_connection(monkeypatch, glm_server)
    glm_server.batch_script(BatchOutcome.expired(after_lines=3))
    _, error = run_operator(batch_operator(wh, 7, max_failed_rows=4), context)
    assert error is None
    results, usage = checked_ledger(wh, glm_server, unseen=0)
    assert len(usage) == glm_server.stats.billed_responses == 3
    assert sum(r["status"] == "ok" for r in results.values()) == 3


def test_cost_budget_refuses_a_batch_before_uploading(glm_server: GLMTestServer, wh: Warehouse,
                                                      context: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    """``max_cost`` against the estimate at batch prices (``max_total_tokens`` is covered in
    ``tests/operators/test_batch_operator.py``); the run still ends with its ``Done:`` line."""
    use_connection(monkeypatch, glm_server)
    op = batch_operator(wh, 4, request_params={"max_tokens": 1000}, max_cost=0.0001)
    _, error = run_operator(op, context)
    assert isinstance(error, AirflowFailException) and isinstance(error.__cause__, GLMBudgetExceededError)
    assert "max_cost=0.0001" in str(error) and "at batch prices" in str(error)
    assert glm_server.stats.files_uploaded == 0 and glm_server.stats.batches_created == 0
    assert [r.path for r in glm_server.requests if r.method != "GET"] == [], "only look-ups of earlier batches"
    results, usage = checked_ledger(wh, glm_server, unseen=0)
    assert usage == [] and {r["status"] for r in results.values()} == {"skipped"}
    assert "Done: rows 4/4 (ok 0, failed 0, filtered 0, skipped 4" in "".join(capfd.readouterr())
    # the same rows under a budget above the estimate go through
    out = batch_operator(wh, 4, request_params={"max_tokens": 1000}, max_cost=1).execute(
        {**context, "ti": type(context["ti"])(try_number=2)})
    assert len(out) == 4 and glm_server.stats.batches_created == 1
