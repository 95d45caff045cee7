"""Issue 9, point 4 (X3): the key never leaves through the server's own words.

A server (or gateway) that echoes the Authorization value in its error messages: the key, the
Bearer token, a JWT and the JWT's secret half are redacted from every server-provided string before
it is stored (results ``error``), pushed (XCom failures), exported (JSONL), raised or logged, for the
online, async and batch APIs. Each test first proves the server really echoed the key (``***``
where it stood), then that the key appears nowhere.
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _spend_common import TARGET, WORDS, Warehouse, chat_operator, checked_ledger, run_operator, use_connection

from airflow_provider_glm._compat import AirflowFailException
from airflow_provider_glm.exceptions import GLMRowsFailedError
from airflow_provider_glm.operators.batch import GLMBatchOperator
from airflow_provider_glm.testing import Fault, GLMTestServer


def canary() -> str:
    return f"sk-canary-{uuid.uuid4().hex}"


@pytest.fixture
def echo_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[GLMTestServer]:
    """A server that appends ``(invalid request from key <Authorization>)`` to every JSON error, with a
    fresh canary key that ``glm_default`` holds."""
    with GLMTestServer(api_key=canary(), echo_key=True) as srv:
        use_connection(monkeypatch, srv, max_retries=1)
        yield srv


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "airflow", "airflow.task", "airflow_provider_glm"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def error_texts(error: BaseException) -> str:
    texts = [str(error), repr(error), repr(error.args), "".join(traceback.format_exception(error))]
    cause = error.__cause__ or error.__context__
    return "\n".join(texts + ([error_texts(cause)] if cause is not None else []))


def table_dump(wh: Warehouse) -> str:
    engine = sa.create_engine(wh.url)
    try:
        with engine.connect() as conn:
            return repr([list(row) for name in wh.tables.values()
                         for row in conn.execute(sa.text(f"SELECT * FROM {name}"))])  # noqa: S608 (own names)
    finally:
        engine.dispose()


def test_X3_echoed_key_is_redacted_everywhere(echo_server: GLMTestServer, wh: Warehouse, context: dict[str, Any],
                                              tmp_path: Path, logs: pytest.LogCaptureFixture,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    key = echo_server.api_key
    echo_server.add_rule(match=TARGET, fault=Fault.error(400, "1261"))                # JSON, echo appended
    echo_server.add_rule(match="charlie", fault=Fault.echo_key(status=400, code="1214", html=True))  # HTML page
    export = tmp_path / "results.jsonl"
    op = chat_operator(wh, max_failed_rows=2, output_path=f"file://{export}")
    out, error = run_operator(op, context)
    assert error is None and out[1] is None and out[2] is None

    results, _ = checked_ledger(wh, echo_server)
    assert "invalid request from key Bearer ***" in results["r1"]["error"], "the server echoed, the key was cut"
    seen = [table_dump(wh), json.dumps(context["ti"].xcom), export.read_text()]
    assert any("Bearer ***" in f for f in context["ti"].xcom["usage"]["failures"])

    # over max_failed_rows: the exception names the first failures
    other = {**context, "ti": type(context["ti"])(run_id="run-2")}
    _, failed = run_operator(chat_operator(wh, max_failed_rows=0, reuse_unchanged=False), other)
    assert isinstance(failed, GLMRowsFailedError) and "Bearer ***" in str(failed)
    seen += [error_texts(failed), json.dumps(other["ti"].xcom)]

    # an account error whose message echoes the key: the task fails, the key stays out
    echo_server.add_rule(match="alpha", fault=Fault.echo_key())
    third = {**context, "ti": type(context["ti"])(run_id="run-3")}
    _, fatal = run_operator(chat_operator(wh, reuse_unchanged=False), third)
    assert isinstance(fatal, AirflowFailException) and "1000" in str(fatal)
    seen += [error_texts(fatal), json.dumps(third["ti"].xcom)]

    log = "".join(capfd.readouterr())
    assert "within max_failed_rows" in log and "Bearer ***" in log, "the first failures were logged, redacted"
    seen += [log, logs.text, *(f"{r.getMessage()} {r.args!r} {r.exc_text}" for r in logs.records)]
    for text in seen:
        assert key not in text

    from airflow.sdk import log as airflow_log

    masked = airflow_log._secrets_masker().redact(f"gateway said: invalid request from key {key}")
    assert key not in str(masked), "the key is registered with Airflow's secrets masker too"


def test_X4_jwt_token_and_secret_half_are_redacted(monkeypatch: pytest.MonkeyPatch, sqlite_wh: Warehouse,
                                                   context: dict[str, Any],
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    key_id, secret = f"id{uuid.uuid4().hex[:8]}", f"secret{uuid.uuid4().hex}"
    with GLMTestServer(api_key=f"{key_id}.{secret}", echo_key=True) as srv:
        use_connection(monkeypatch, srv, auth="jwt", max_retries=1)
        srv.add_rule(match=TARGET, fault=Fault.error(400, "1261"))  # echoes "Bearer <jwt>"
        srv.add_rule(match="delta", fault=Fault.error(400, "1214", f"signature check failed for secret {secret}"))
        out, error = run_operator(chat_operator(sqlite_wh, max_failed_rows=2), context)
        assert error is None and out[1] is None and out[3] is None
        token = srv.requests[0].headers["authorization"].removeprefix("Bearer ")
        assert token.count(".") == 2, "the client sent a JWT"
        results, _ = checked_ledger(sqlite_wh, srv)
    assert "Bearer ***" in results["r1"]["error"] and "secret ***" in results["r3"]["error"]
    log = "".join(capfd.readouterr())
    for text in (table_dump(sqlite_wh), json.dumps(context["ti"].xcom), log):
        for secret_part in (token, secret, f"{key_id}.{secret}"):
            assert secret_part not in text


def test_X5_async_and_batch_failures_are_redacted(echo_server: GLMTestServer, sqlite_wh: Warehouse,
                                                  context: dict[str, Any],
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    """Async task failures and batch error lines carry the server's message too."""
    key = echo_server.api_key
    echoed = f"invalid request from key Bearer {key}"
    echo_server.async_delay = 0.0
    echo_server.add_rule(match=TARGET, fault=Fault.error(400, "1261", echoed))
    out, error = run_operator(chat_operator(sqlite_wh, api="async", async_poll_interval=0.01, max_failed_rows=1),
                              context)
    assert error is None and out[1] is None
    results, _ = checked_ledger(sqlite_wh, echo_server)
    assert "FAIL" in results["r1"]["error"] and "Bearer ***" in results["r1"]["error"]
    seen = [table_dump(sqlite_wh), json.dumps(context["ti"].xcom)]

    batch_ctx = {**context, "ti": type(context["ti"])(run_id="run-batch")}
    batch = GLMBatchOperator(task_id="glm", row_key="id", prompt="Summarize: {{ row.text }}",
                             rows=[{"id": f"r{i}", "text": w} for i, w in enumerate(WORDS)],
                             deferrable=False, poll_interval=0.02, max_failed_rows=0, **sqlite_wh.options)
    _, failed = run_operator(batch, batch_ctx)
    assert isinstance(failed, GLMRowsFailedError) and "Bearer ***" in str(failed)
    batch_results = {r["row_key"]: r for r in sqlite_wh.read(None)[0] if r["run_id"] == "run-batch"}
    assert "Bearer ***" in batch_results["r1"]["error"]
    seen += [error_texts(failed), table_dump(sqlite_wh), json.dumps(batch_ctx["ti"].xcom), "".join(capfd.readouterr())]
    for text in seen:
        assert key not in text
