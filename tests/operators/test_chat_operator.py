"""GLMChatOperator against the local GLM server: single requests, rows, sinks, resume, budgets."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from _databases import BACKENDS, backend_url
from pydantic import BaseModel

from airflow_provider_glm._compat import AirflowFailException
from airflow_provider_glm.exceptions import GLMInvalidOutputError, GLMRowsFailedError
from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.rows._records import RunScope
from airflow_provider_glm.sinks.sql import SQLSink
from airflow_provider_glm.testing import Fault

SCOPE = RunScope("test_dag", "glm", "run-1")


def rows(n: int, text: str = "review number {i}") -> list[dict[str, Any]]:
    return [{"id": f"r{i:03d}", "text": text.format(i=i)} for i in range(n)]


def row_operator(url: str | None, **kwargs: Any) -> GLMChatOperator:
    params: dict[str, Any] = {
        "task_id": "glm", "row_key": "id", "prompt": "Summarize: {{ row.text }}", "max_concurrency": 8,
    }
    if url:
        params["sqlalchemy_url"] = url
    params.update(kwargs)
    return GLMChatOperator(**params)


def ledger_matches_server(sink: SQLSink, srv: Any) -> None:
    usage = sink.usage(SCOPE)
    assert len(usage) == srv.stats.billed_responses
    assert sum(u["total_tokens"] for u in usage) == srv.stats.billed_total_tokens
    assert {u["response_id"] for u in usage} == {b.response_id for b in srv.billed}


def test_single_prompt_returns_content_and_pushes_usage(glm_conn: Any, context: dict[str, Any]) -> None:
    op = GLMChatOperator(task_id="glm", prompt="Hello there", system_prompt="Be brief")
    content = op.execute(context)
    assert content == "Summary: Hello there"
    usage = context["ti"].xcom["usage"]
    billed = glm_conn.billed[0]
    assert usage["response_id"] == billed.response_id
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        billed.prompt_tokens, billed.completion_tokens, billed.total_tokens)
    expected = (Decimal(billed.prompt_tokens) * Decimal("0.60") + Decimal(billed.completion_tokens) * Decimal("2.20")) / 10**6
    assert Decimal(str(usage["cost"])) == expected
    assert usage["currency"] == "USD" and usage["model"] == "glm-4.5" and usage["try_number"] == 1
    assert glm_conn.requests[0].body["messages"][0] == {"role": "system", "content": "Be brief"}


def test_single_prompt_without_xcom_push(glm_conn: Any, context: dict[str, Any]) -> None:
    GLMChatOperator(task_id="glm", prompt="Hi", do_xcom_push=False).execute(context)
    assert "usage" not in context["ti"].xcom


def test_single_prompt_is_not_rendered_twice(glm_conn: Any, context: dict[str, Any]) -> None:
    GLMChatOperator(task_id="glm", prompt="upstream said {{ 7*7 }}").execute(context)
    assert glm_conn.requests[0].body["messages"][-1]["content"] == "upstream said {{ 7*7 }}"


class Summary(BaseModel):
    summary: str
    chars: int


def test_structured_output_with_pydantic_model(glm_conn: Any, context: dict[str, Any]) -> None:
    op = GLMChatOperator(task_id="glm", prompt="abc", request_params={"response_format": {"type": "json_object"}},
                         output_schema=Summary)
    assert op.execute(context) == {"summary": "abc", "chars": 3}


def test_invalid_structured_output_fails_after_usage_is_pushed(glm_conn: Any, context: dict[str, Any]) -> None:
    glm_conn.script(Fault.content("not json at all"))
    op = GLMChatOperator(task_id="glm", prompt="abc", output_schema=Summary)
    with pytest.raises(GLMInvalidOutputError, match="not valid JSON"):
        op.execute(context)
    assert context["ti"].xcom["usage"]["response_id"] == glm_conn.billed[0].response_id


def test_truncation_warns_or_fails(glm_conn: Any, context: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    glm_conn.script(Fault.finish("length"), Fault.finish("length"))
    assert GLMChatOperator(task_id="glm", prompt="abc").execute(context) == "Summary: abc"
    with pytest.raises(GLMInvalidOutputError, match="truncated"):
        GLMChatOperator(task_id="glm", prompt="abc", fail_on_truncation=True).execute(context)


def test_bad_request_params_cost_zero_calls(glm_conn: Any, context: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="temperature"):
        GLMChatOperator(task_id="glm", prompt="x", request_params={"temperature": 3}).execute(context)
    with pytest.raises(ValueError, match="messages"):
        GLMChatOperator(task_id="glm", messages=[{"content": "no role"}]).execute(context)
    assert glm_conn.stats.requests == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_filtered_row_of_100_and_rerun_requests_nothing(
    glm_conn: Any, context: dict[str, Any], tmp_path: Path, backend: str
) -> None:
    url = backend_url(backend, tmp_path)
    table, ledger = f"res_{tmp_path.name[-8:]}".replace("-", "_"), f"use_{tmp_path.name[-8:]}".replace("-", "_")
    glm_conn.add_rule(match="review number 42", fault=Fault.error(400, "1301"))
    op = row_operator(url, rows=rows(100), results_table=table, usage_table=ledger)
    sink = SQLSink.from_url(url, results_table=table, usage_table=ledger)
    try:
        contents = op.execute(context)
        assert len(contents) == 100 and contents[42] is None
        assert contents[0] == "Summary: Summarize: review number 0"
        results = sink.results(SCOPE)
        statuses = [r["status"] for r in results]
        assert statuses.count("ok") == 99 and statuses.count("filtered") == 1
        assert results[42]["row_key"] == "r042" and "1301" in results[42]["error"]
        ledger_matches_server(sink, glm_conn)
        requests_before = glm_conn.stats.requests
        again = row_operator(url, rows=rows(100), results_table=table, usage_table=ledger).execute(context)
        assert glm_conn.stats.requests == requests_before + 1  # only the filtered row is asked again
        assert again[:42] == contents[:42]
        ledger_matches_server(sink, glm_conn)
        assert [r["content"] for r in sink.results(SCOPE)][:3] == contents[:3]
    finally:
        sink.results_table.drop(sink._engine, checkfirst=True)
        sink.usage_table.drop(sink._engine, checkfirst=True)
        sink.dispose()


def test_row_data_is_sent_literally(glm_conn: Any, context: dict[str, Any]) -> None:
    data = [{"id": 1, "text": "{{ 7*7 }} and {% if true %}x{% endif %} and ${HOME}"}]
    row_operator(None, rows=data).execute(context)
    sent = glm_conn.requests[0].body["messages"][-1]["content"]
    assert sent == "Summarize: {{ 7*7 }} and {% if true %}x{% endif %} and ${HOME}"


@pytest.mark.parametrize(
    ("prompt", "match"),
    [("{{ row.missing }}", "missing"), ("{{ nothing_here }}", "nothing_here"), ("{{ row.text", "syntax")],
)
def test_template_errors_cost_zero_calls(glm_conn: Any, context: dict[str, Any], prompt: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        row_operator(None, rows=rows(3), prompt=prompt).execute(context)
    assert glm_conn.stats.requests == 0


@pytest.mark.parametrize("table", ["x; DROP TABLE y", "a.b.c", "bad name", "'quoted'"])
def test_invalid_table_names_cost_zero_calls(glm_conn: Any, context: dict[str, Any], tmp_path: Path,
                                             table: str) -> None:
    with pytest.raises(ValueError, match="table"):
        row_operator(f"sqlite:///{tmp_path / 'w.db'}", rows=rows(3), results_table=table).execute(context)
    assert glm_conn.stats.requests == 0


@pytest.mark.parametrize(
    ("value", "match"),
    [(None, "returned nothing"), ({"id": 1}, "list"), ([{"id": 1}, {"id": 1}], "duplicate"), ("[1", "JSON")],
)
def test_bad_rows_cost_zero_calls(glm_conn: Any, context: dict[str, Any], value: Any, match: str) -> None:
    op = row_operator(None, rows=[])
    op.rows = value  # what an upstream XCom resolved to
    with pytest.raises(ValueError, match=match):
        op.execute(context)
    assert glm_conn.stats.requests == 0


def test_empty_rows_make_no_calls(glm_conn: Any, context: dict[str, Any]) -> None:
    assert row_operator(None, rows=[]).execute(context) == []
    assert glm_conn.stats.requests == 0


def test_sequence_rows_with_columns(glm_conn: Any, context: dict[str, Any]) -> None:
    out = row_operator(None, rows=[(1, "a"), (2, "b")], columns=["id", "text"]).execute(context)
    assert out == ["Summary: Summarize: a", "Summary: Summarize: b"]


def test_failed_rows_over_the_limit_fail_after_writing(glm_conn: Any, context: dict[str, Any], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    glm_conn.add_rule(match="review number 3", fault=Fault.error(400, "1261"))
    with pytest.raises(GLMRowsFailedError, match="1 rows failed"):
        row_operator(url, rows=rows(10)).execute(context)
    statuses = {r["row_key"]: r["status"] for r in SQLSink.from_url(url).results(SCOPE)}
    assert statuses.pop("r003") == "failed" and set(statuses.values()) == {"ok"} and len(statuses) == 9
    assert row_operator(url, rows=rows(10), max_failed_rows=1).execute(context) is not None


def test_insufficient_balance_stops_everything_without_retries(glm_conn: Any, context: dict[str, Any],
                                                                tmp_path: Path) -> None:
    glm_conn.add_rule(match="review", fault=Fault.error(429, "1113"))
    url = f"sqlite:///{tmp_path / 'w.db'}"
    with pytest.raises(AirflowFailException, match="1113"):
        row_operator(url, rows=rows(20), max_concurrency=1).execute(context)
    assert glm_conn.stats.requests == 1
    results = SQLSink.from_url(url).results(SCOPE)
    assert [r["status"] for r in results].count("skipped") == 19


def test_budget_stops_dispatch_and_counts_earlier_tries(glm_conn: Any, context: dict[str, Any], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    with pytest.raises(AirflowFailException, match="max_total_tokens=50"):
        row_operator(url, rows=rows(20), max_concurrency=1, max_total_tokens=50).execute(context)
    first = glm_conn.stats.requests
    assert 0 < first < 20
    sink = SQLSink.from_url(url)
    assert sum(u["total_tokens"] for u in sink.usage(SCOPE)) >= 50
    assert {r["status"] for r in sink.results(SCOPE)} == {"ok", "skipped"}
    with pytest.raises(AirflowFailException, match="budget"):
        row_operator(url, rows=rows(20), max_concurrency=1, max_total_tokens=50).execute(context)
    assert glm_conn.stats.requests == first


def test_concurrency_is_bounded(glm_conn: Any, context: dict[str, Any]) -> None:
    glm_conn.latency = 0.05
    row_operator(None, rows=rows(40), max_concurrency=5).execute(context)
    assert glm_conn.stats.peak_in_flight == 5


def test_many_rows_without_sink_are_refused_before_calls(glm_conn: Any, context: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="max_xcom_rows"):
        row_operator(None, rows=rows(30), max_xcom_rows=10).execute(context)
    assert glm_conn.stats.requests == 0


def test_large_runs_return_a_summary(glm_conn: Any, context: dict[str, Any], tmp_path: Path) -> None:
    out = row_operator(f"sqlite:///{tmp_path / 'w.db'}", rows=rows(30), max_xcom_rows=10).execute(context)
    assert isinstance(out, dict) and out["ok"] == 30 and out["results_table"] == "glm_results"
    assert out["total_tokens"] == glm_conn.stats.billed_total_tokens


def test_json_rows_validated_by_json_schema(glm_conn: Any, context: dict[str, Any]) -> None:
    schema = {"type": "object", "required": ["summary", "chars"],
              "properties": {"chars": {"type": "integer", "maximum": 12}}}
    data = [{"id": 1, "text": "short"}, {"id": 2, "text": "a much longer text"}]
    glm_conn.answer(match="a much longer text", json={"summary": "a much longer text", "chars": 18})
    with pytest.raises(GLMRowsFailedError, match="maximum"):
        row_operator(None, rows=data, prompt="{{ row.text }}", output_schema=schema).execute(context)
    out = row_operator(None, rows=data[:1], prompt="{{ row.text }}", output_schema=schema).execute(context)
    assert out == [{"summary": "short", "chars": 5}]


def test_single_request_over_budget_fails_instead_of_returning_none(
    glm_conn: Any, context: dict[str, Any], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    glm_conn.script(Fault.content("not json"))
    with pytest.raises(GLMInvalidOutputError):
        GLMChatOperator(task_id="glm", prompt="first", sqlalchemy_url=url, output_schema=Summary).execute(context)
    retry = {**context, "ti": type(context["ti"])(try_number=2)}
    with pytest.raises(AirflowFailException, match="max_total_tokens=5"):
        GLMChatOperator(task_id="glm", prompt="first", sqlalchemy_url=url, output_schema=Summary,
                        max_total_tokens=5).execute(retry)
    assert glm_conn.stats.requests == 1
    assert SQLSink.from_url(url).results(SCOPE)[0]["status"] == "skipped"


def test_max_cost_on_an_unpriced_model_is_refused_before_calls(glm_conn: Any, context: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="needs a price for model 'my-finetune'"):
        row_operator(None, rows=rows(2), model="my-finetune", max_cost=1.0).execute(context)
    assert glm_conn.stats.requests == 0


def test_request_id_in_row_mode_is_refused(glm_conn: Any, context: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="request_id"):
        row_operator(None, rows=rows(2), request_params={"request_id": "abcdef12"}).execute(context)
    assert glm_conn.stats.requests == 0


def test_cost_budget_stops_dispatch(glm_conn: Any, context: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(AirflowFailException, match="max_cost"):
        row_operator(f"sqlite:///{tmp_path / 'w.db'}", rows=rows(30), max_concurrency=1,
                     max_cost=0.00005).execute(context)
    assert 0 < glm_conn.stats.requests < 30


@pytest.mark.parametrize("backend", BACKENDS[:2])  # MariaDB runs through sqlalchemy_url above
def test_sql_conn_id_uses_the_connections_engine(glm_conn: Any, context: dict[str, Any], tmp_path: Path,
                                                 backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy as sa

    url = sa.engine.make_url(backend_url(backend, tmp_path))
    suffix = tmp_path.name[-6:].replace("-", "_")
    if backend == "sqlite":
        conn = {"conn_type": "sqlite", "host": url.database}
    else:
        conn = {"conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username,
                "schema": url.database}
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", __import__("json").dumps(conn))
    op = row_operator(None, rows=rows(3), sql_conn_id="warehouse", results_table=f"r_{suffix}",
                      usage_table=f"u_{suffix}")
    assert len(op.execute(context)) == 3
    sink = SQLSink.from_url(str(url.render_as_string(hide_password=False)), results_table=f"r_{suffix}",
                            usage_table=f"u_{suffix}")
    try:
        assert [r["status"] for r in sink.results(SCOPE)] == ["ok"] * 3
    finally:
        sink.results_table.drop(sink._engine, checkfirst=True)
        sink.usage_table.drop(sink._engine, checkfirst=True)
        sink.dispose()


def test_literal_rows_in_the_dag_are_not_rendered(glm_conn: Any) -> None:
    from airflow.sdk import DAG

    with DAG("literal_rows", schedule=None):
        op = row_operator(None, rows=[{"id": 1, "text": "{{ 7*7 }}"}])
    op._do_render_template_fields(op, op.template_fields, {"ds": "x"}, op.get_template_env(), set())
    assert op.rows == [{"id": 1, "text": "{{ 7*7 }}"}]
    assert op.prompt == "Summarize: {{ row.text }}"


def test_results_exported_as_jsonl_with_and_without_sql(glm_conn: Any, context: dict[str, Any],
                                                        tmp_path: Path) -> None:
    import json

    target = tmp_path / "out" / "results.jsonl"
    out = row_operator(None, rows=rows(3), output_path=f"file://{target}").execute(context)
    lines = [json.loads(x) for x in target.read_text().splitlines()]
    assert [x["content"] for x in lines] == out and context["ti"].xcom["output_path"] == f"file://{target}"
    target2 = tmp_path / "with-sql.jsonl"
    row_operator(f"sqlite:///{tmp_path / 'w.db'}", rows=rows(4), output_path=f"file://{target2}").execute(context)
    assert [json.loads(x)["row_key"] for x in target2.read_text().splitlines()] == ["r000", "r001", "r002", "r003"]


def test_bad_output_path_costs_zero_calls(glm_conn: Any, context: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="file://"):
        row_operator(None, rows=rows(2), output_path="/data/relative-or-bare.jsonl").execute(context)
    assert glm_conn.stats.requests == 0


def test_async_api_mode_records_like_online(glm_conn: Any, context: dict[str, Any], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    glm_conn.uppercase_models = True
    glm_conn.add_rule(match='review number 1"', fault=Fault.error(400, "1261"))
    op = row_operator(url, rows=rows(6), api="async", async_poll_interval=0.02, max_failed_rows=1)
    out = op.execute(context)
    assert out[0] == "Summary: Summarize: review number 0" and out[1] is None
    assert glm_conn.stats.async_submitted == 6
    sink = SQLSink.from_url(url)
    usage = sink.usage(SCOPE)
    assert len(usage) == glm_conn.stats.billed_responses == 5
    assert {u["model"] for u in usage} == {"GLM-4.5"} and all(u["cost"] is not None for u in usage)
    failed = [r for r in sink.results(SCOPE) if r["status"] == "failed"]
    assert len(failed) == 1 and "1261" in failed[0]["error"]
