"""Issue 9, point 11: the small ones found while trying.

* ``max_tokens=True`` is refused (a bool is not an int here), at zero calls;
* ``{"stream": "false"}`` is read as false and runs; a true stream is refused, at zero calls;
* ``model`` / ``messages`` / ``prompt`` in ``request_params`` give a clear ``ValueError``, not a ``TypeError``;
* a row whose template needs a missing column lists the row's columns;
* failed rows within ``max_failed_rows`` are logged, the first few of them, not only a count;
* ``GLMBatchOperator`` ends with the same ``Done:`` line as the chat operator.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from _spend_common import Warehouse, chat_operator, checked_ledger, run_operator

from airflow_provider_glm.exceptions import GLMRowsFailedError
from airflow_provider_glm.operators.batch import GLMBatchOperator
from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.testing import Fault, GLMTestServer

MODES = [pytest.param({}, id="rows"), pytest.param({"rows": None, "prompt": "hello"}, id="single")]


def batch(wh: Warehouse | None, **kwargs: Any) -> GLMBatchOperator:
    params: dict[str, Any] = {"task_id": "glm", "row_key": "id", "prompt": "Summarize: {{ row.text }}",
                              "rows": [{"id": f"r{i}", "text": f"note {i}"} for i in range(4)],
                              "deferrable": False, "poll_interval": 0.02}
    if wh is not None:
        params.update(wh.options)
    params.update(kwargs)
    return GLMBatchOperator(**params)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("value", [True, False])
def test_boolean_max_tokens_refused(glm_conn: GLMTestServer, context: dict[str, Any], mode: dict[str, Any],
                                    value: bool) -> None:
    _, error = run_operator(chat_operator(None, request_params={"max_tokens": value}, **mode), context)
    assert isinstance(error, ValueError) and "max_tokens" in str(error) and "boolean" in str(error)
    _, batch_error = run_operator(batch(None, request_params={"max_tokens": value}), context)
    assert isinstance(batch_error, ValueError) and "max_tokens" in str(batch_error)
    assert glm_conn.stats.requests == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stream", ["false", False, "0", None])
def test_false_stream_values_run(glm_conn: GLMTestServer, context: dict[str, Any], mode: dict[str, Any],
                                 stream: Any) -> None:
    out, error = run_operator(chat_operator(None, request_params={"stream": stream}, **mode), context)
    assert error is None and out
    assert glm_conn.stats.requests >= 1
    assert all(not r.body.get("stream") for r in glm_conn.requests), "no request asked for a stream"


@pytest.mark.parametrize("stream", ["true", True, "1"])
def test_true_stream_refused(glm_conn: GLMTestServer, context: dict[str, Any], stream: Any) -> None:
    _, error = run_operator(chat_operator(None, request_params={"stream": stream}), context)
    assert isinstance(error, ValueError) and "stream=True" in str(error)
    _, bad = run_operator(chat_operator(None, request_params={"stream": "sometimes"}), context)
    assert isinstance(bad, ValueError) and "must be a boolean" in str(bad)
    assert glm_conn.stats.requests == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["model", "messages", "prompt"])
def test_model_or_messages_in_request_params_is_a_clear_error(glm_conn: GLMTestServer, context: dict[str, Any],
                                                               mode: dict[str, Any], name: str) -> None:
    params = {name: "glm-4" if name == "model" else [{"role": "user", "content": "hi"}]}
    for op in (chat_operator(None, request_params=params, **mode), batch(None, request_params=params)):
        _, error = run_operator(op, context)
        assert type(error) is ValueError, f"{type(error).__name__}: {error}"
        assert f"request_params cannot set ['{name}']" in str(error) and "operator's own" in str(error)
    assert glm_conn.stats.requests == 0


def test_missing_template_column_lists_the_rows_columns(glm_conn: GLMTestServer, context: dict[str, Any]) -> None:
    rows = [{"id": "a", "text": "x", "lang": "en"}, {"id": "b", "body": "y"}]
    op = GLMChatOperator(task_id="glm", row_key="id", rows=rows, prompt="Say {{ row.text }}")
    _, error = run_operator(op, context)
    assert isinstance(error, ValueError)
    assert "row 'b'" in str(error) and "text" in str(error) and "(the row's columns: body, id)" in str(error)
    _, batch_error = run_operator(batch(None, rows=rows, prompt="Say {{ row.text }}"), context)
    assert isinstance(batch_error, ValueError) and "(the row's columns: body, id)" in str(batch_error)
    assert glm_conn.stats.requests == 0


def test_failures_within_max_failed_rows_are_logged(glm_conn: GLMTestServer, sqlite_wh: Warehouse,
                                                    context: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    rows = [{"id": f"r{i}", "text": f"{'bad' if i % 2 else 'good'} {i}"} for i in range(16)]
    glm_conn.add_rule(match="Summarize: bad", fault=Fault.error(400, "1261", "Prompt exceeds max length"))
    out = chat_operator(sqlite_wh, rows=rows, max_failed_rows=8).execute(context)
    assert sum(v is None for v in out) == 8
    checked_ledger(sqlite_wh, glm_conn, unseen=0)
    log = "".join(capfd.readouterr())
    (line,) = [x for x in log.splitlines() if "within max_failed_rows=8" in x]
    assert "8 rows failed and 0 were filtered" in line
    listed = re.findall(r"\b(r\d+): GLMBadRequestError: Prompt exceeds max length", line)
    assert listed == ["r1", "r3", "r5", "r7", "r9"], "the first five failures, in order, each with its reason"
    assert "code 1261" in line


def test_batch_operator_ends_with_the_done_line(glm_conn: GLMTestServer, sqlite_wh: Warehouse,
                                                context: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    glm_conn.add_rule(match="note 2", fault=Fault.error(400, "1261"))
    out = batch(sqlite_wh, max_failed_rows=1).execute(context)
    assert out[2] is None and None not in (out[0], out[1], out[3])
    checked_ledger(sqlite_wh, glm_conn, unseen=0)
    log = "".join(capfd.readouterr())
    done = [x for x in log.splitlines() if "Done: rows" in x]
    assert len(done) == 1 and "GLMBatchOperator" in done[0]
    assert "Done: rows 4/4 (ok 3, failed 1, filtered 0, skipped 0, reused 0, resumed 0); tokens " in done[0]
    assert "within max_failed_rows=1; first: r2: " in log

    # the chat operator's line over the same rows reads the same up to its rate and concurrency details
    chat_ctx = {**context, "ti": type(context["ti"])(run_id="run-chat")}
    chat = GLMChatOperator(task_id="glm", row_key="id", prompt="Summarize: {{ row.text }}", max_failed_rows=1,
                           rows=[{"id": f"r{i}", "text": f"note {i}"} for i in range(4)], reuse_unchanged=False,
                           **sqlite_wh.options)
    chat.execute(chat_ctx)
    (chat_done,) = [x for x in "".join(capfd.readouterr()).splitlines() if "Done: rows" in x]
    prefix = "Done: rows 4/4 (ok 3, failed 1, filtered 0, skipped 0, reused 0, resumed 0); tokens "
    assert prefix in chat_done


def test_batch_stopped_by_a_failed_run_still_logs_done(glm_conn: GLMTestServer, sqlite_wh: Warehouse,
                                                       context: dict[str, Any],
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    glm_conn.add_rule(match="note", fault=Fault.error(400, "1261"))
    _, error = run_operator(batch(sqlite_wh), context)
    assert isinstance(error, GLMRowsFailedError)
    log = "".join(capfd.readouterr())
    assert "Done: rows 4/4 (ok 0, failed 4" in log
