"""GLMBatchOperator against the local server's files and batches endpoints."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_glm._compat import TaskDeferred
from airflow_provider_glm.exceptions import GLMRowsFailedError
from airflow_provider_glm.operators.batch import GLMBatchOperator
from airflow_provider_glm.rows._records import RunScope
from airflow_provider_glm.sinks.sql import SQLSink
from airflow_provider_glm.testing import BatchOutcome, Fault
from airflow_provider_glm.triggers.batch import GLMBatchTrigger

SCOPE = RunScope("test_dag", "glm", "run-1")


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i:03d}", "text": f"night note {i}"} for i in range(n)]


def batch_operator(url: str, **kwargs: Any) -> GLMBatchOperator:
    params: dict[str, Any] = {"task_id": "glm", "row_key": "id", "prompt": "Summarize: {{ row.text }}",
                              "sqlalchemy_url": url, "deferrable": False, "poll_interval": 0.02}
    params.update(kwargs)
    return GLMBatchOperator(**params)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'warehouse.db'}"


def run_deferred(op: GLMBatchOperator, context: dict[str, Any]) -> Any:
    """Run like Airflow does: execute until it defers, the trigger in an event loop, then resume."""
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    return resume(op, deferred.value, context)


def resume(op: GLMBatchOperator, deferred: TaskDeferred, context: dict[str, Any]) -> Any:
    """The trigger's one event, handed to the method the operator deferred to."""
    trigger = deferred.trigger
    assert isinstance(trigger, GLMBatchTrigger)

    async def first_event() -> Any:
        async for event in trigger.run():
            return event.payload

    event = asyncio.run(first_event())
    return getattr(op, deferred.method_name)(context, event)


def test_batch_end_to_end_matches_the_server_tally(glm_conn: Any, context: dict[str, Any], url: str) -> None:
    out = batch_operator(url, rows=rows(25)).execute(context)
    assert out == [f"Summary: Summarize: night note {i}" for i in range(25)]
    sink = SQLSink.from_url(url)
    usage = sink.usage(SCOPE)
    assert len(usage) == glm_conn.stats.billed_responses == 25
    assert sum(u["total_tokens"] for u in usage) == glm_conn.stats.billed_total_tokens
    assert {u["response_id"] for u in usage} == {b.response_id for b in glm_conn.billed}
    first = usage[0]
    online = (Decimal(first["prompt_tokens"]) * Decimal("0.60") + Decimal(first["completion_tokens"]) * Decimal("2.20")) / 10**6
    assert Decimal(str(first["cost"])) == (online / 2).quantize(Decimal("1e-10"))
    assert glm_conn.stats.batches_created == 1


def test_deferred_batch_and_trigger_serialization(glm_conn: Any, context: dict[str, Any], url: str) -> None:
    glm_conn.pause_batches()  # the batch is surely still running when the second execute looks
    op = batch_operator(url, rows=rows(5), deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    path, kwargs = deferred.value.trigger.serialize()
    assert path == "airflow_provider_glm.triggers.batch.GLMBatchTrigger"
    assert set(kwargs) == {"batch_ids", "glm_conn_id", "poll_interval", "end_time", "cancel_on_kill"}
    assert glm_conn.api_key not in repr(kwargs)
    second = batch_operator(url, rows=rows(5), deferrable=True)
    with pytest.raises(TaskDeferred) as again:
        second.execute(context)
    glm_conn.resume_batches()
    assert resume(second, again.value, context) is not None
    assert glm_conn.stats.batches_created == 1, "the second execute re-attached instead of submitting again"


def test_retry_after_the_batch_was_created_reattaches(glm_conn: Any, context: dict[str, Any], url: str) -> None:
    glm_conn.pause_batches()
    op = batch_operator(url, rows=rows(8), deferrable=True)
    with pytest.raises(TaskDeferred):
        op.execute(context)
    context["ti"].try_number = 2
    retry = batch_operator(url, rows=rows(8), deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        retry.execute(context)
    glm_conn.resume_batches()
    out = resume(retry, deferred.value, context)
    assert len(out) == 8 and glm_conn.stats.batches_created == 1
    assert len(SQLSink.from_url(url).usage(SCOPE)) == 8


def test_reattach_without_the_state_store_uses_batch_metadata(glm_conn: Any, context: dict[str, Any],
                                                              url: str) -> None:
    glm_conn.pause_batches()
    with pytest.raises(TaskDeferred):
        batch_operator(url, rows=rows(4), deferrable=True).execute(context)
    context["task_state_store"].clear()
    retry = batch_operator(url, rows=rows(4), deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        retry.execute(context)
    glm_conn.resume_batches()
    resume(retry, deferred.value, context)
    assert glm_conn.stats.batches_created == 1


def test_error_lines_become_failed_and_filtered_rows(glm_conn: Any, context: dict[str, Any], url: str) -> None:
    glm_conn.add_rule(match='night note 3"', fault=Fault.error(400, "1301"))
    glm_conn.add_rule(match='night note 5"', fault=Fault.error(400, "1261"))
    with pytest.raises(GLMRowsFailedError, match="1 rows failed and 1 were filtered"):
        batch_operator(url, rows=rows(8)).execute(context)
    results = {r["row_key"]: r for r in SQLSink.from_url(url).results(SCOPE)}
    assert results["r003"]["status"] == "filtered" and results["r005"]["status"] == "failed"
    assert "1261" in results["r005"]["error"]
    assert sum(r["status"] == "ok" for r in results.values()) == 6


def test_rerun_submits_only_rows_not_ok(glm_conn: Any, context: dict[str, Any], url: str) -> None:
    glm_conn.add_rule(match='night note 2"', fault=Fault.error(400, "1261"), times=1)
    with pytest.raises(GLMRowsFailedError):
        batch_operator(url, rows=rows(6)).execute(context)
    context["task_state_store"].clear()
    context["ti"].try_number = 2
    out = batch_operator(url, rows=rows(6)).execute(context)
    assert out[2] == "Summary: Summarize: night note 2"
    second = glm_conn.batches[-1]
    assert second["request_counts"]["total"] == 1
    assert len(SQLSink.from_url(url).usage(SCOPE)) == 6


def test_expired_batch_writes_what_completed(glm_conn: Any, context: dict[str, Any], url: str) -> None:
    glm_conn.batch_script(BatchOutcome.expired(after_lines=3))
    with pytest.raises(GLMRowsFailedError, match="7 rows failed"):
        batch_operator(url, rows=rows(10)).execute(context)
    results = SQLSink.from_url(url).results(SCOPE)
    assert [r["status"] for r in results].count("ok") == 3
    assert len(SQLSink.from_url(url).usage(SCOPE)) == glm_conn.stats.billed_responses == 3


def test_kill_cancels_the_batch(glm_conn: Any, context: dict[str, Any], url: str) -> None:
    glm_conn.pause_batches()
    op = batch_operator(url, rows=rows(4), deferrable=True)
    with pytest.raises(TaskDeferred):
        op.execute(context)
    op.on_kill()
    glm_conn.resume_batches()
    assert glm_conn.stats.cancels == 1
    assert glm_conn.batches[-1]["status"] in ("cancelling", "cancelled")


def test_split_into_several_files(glm_conn: Any, context: dict[str, Any], url: str) -> None:
    out = batch_operator(url, rows=rows(7), max_lines_per_file=3).execute(context)
    assert len(out) == 7 and glm_conn.stats.batches_created == 3


def test_failed_batch_marks_rows_and_a_rerun_resubmits(glm_conn: Any, context: dict[str, Any], url: str) -> None:
    glm_conn.batch_script(BatchOutcome.failed("bad file"))
    with pytest.raises(GLMRowsFailedError, match="no result"):
        batch_operator(url, rows=rows(3)).execute(context)
    assert batch_operator(url, rows=rows(3)).execute(context) is not None
    assert glm_conn.stats.batches_created == 2


def test_batch_results_exported_to_s3(glm_conn: Any, context: dict[str, Any], url: str, s3: Any) -> None:
    import json

    key = "nightly/run-1/results.jsonl"
    batch_operator(url, rows=rows(5), output_path=f"s3://{s3.bucket}/{key}", output_conn_id="aws_moto").execute(context)
    body = s3.get_object(Bucket=s3.bucket, Key=key)["Body"].read().decode()
    lines = [json.loads(x) for x in body.splitlines()]
    assert [x["row_key"] for x in lines] == [f"r{i:03d}" for i in range(5)]
    assert {x["status"] for x in lines} == {"ok"} and context["ti"].xcom["output_path"] == f"s3://{s3.bucket}/{key}"


def test_a_lone_surrogate_does_not_break_the_batch_file(glm_conn: Any, context: dict[str, Any], url: str) -> None:
    data = [*rows(3), {"id": "bad", "text": "broken \ud800 text"}]
    op = batch_operator(url, rows=data, max_failed_rows=1)
    out = op.execute(context)
    assert out[:3] == [f"Summary: Summarize: night note {i}" for i in range(3)]
    assert glm_conn.stats.batches_created == 1
    assert len(SQLSink.from_url(url).results(SCOPE)) == 4


# --- crash windows: a try dies between two steps; the next try neither loses nor double-buys a row --------


class Crash(Exception):
    """Stands for the worker dying at that point."""


def crash_on(monkeypatch: pytest.MonkeyPatch, name: str, after: int) -> list[int]:
    """Make ``BatchJobs.<name>`` die on its call number ``after + 1``."""
    from airflow_provider_glm.rows import _batch_jobs as batch_jobs

    original = getattr(batch_jobs.BatchJobs, name)
    calls: list[int] = []

    async def dying(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == after + 1:
            raise Crash(name)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(batch_jobs.BatchJobs, name, dying)
    return calls


def each_row_billed_once(glm_conn: Any, url: str, count: int) -> None:
    sink = SQLSink.from_url(url)
    results = sink.results(SCOPE)
    assert [r["status"] for r in results] == ["ok"] * count
    assert glm_conn.stats.billed_responses == count, "a row was bought twice"
    assert len(sink.usage(SCOPE)) == count


def test_crash_between_upload_and_batch_creation(glm_conn: Any, context: dict[str, Any], url: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        crash_on(m, "_create", after=0)
        with pytest.raises(Crash):
            batch_operator(url, rows=rows(6)).execute(context)
    assert glm_conn.stats.files_uploaded == 1
    assert glm_conn.stats.batches_created == 0
    context["ti"].try_number = 2
    assert len(batch_operator(url, rows=rows(6)).execute(context)) == 6
    assert glm_conn.stats.batches_created == 1
    each_row_billed_once(glm_conn, url, 6)


def test_crash_between_two_submissions_submits_only_the_rest(glm_conn: Any, context: dict[str, Any], url: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    glm_conn.pause_batches()  # the first batch is still running when the retry looks
    with monkeypatch.context() as m:
        crash_on(m, "_create", after=1)
        with pytest.raises(Crash):
            batch_operator(url, rows=rows(6), max_lines_per_file=3, deferrable=True).execute(context)
    assert glm_conn.stats.batches_created == 1
    context["ti"].try_number = 2
    retry = batch_operator(url, rows=rows(6), max_lines_per_file=3, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        retry.execute(context)
    assert glm_conn.stats.batches_created == 2, "the rows the first batch holds were not submitted again"
    assert sorted(b["request_counts"]["total"] for b in glm_conn.batches) == [3, 3]
    glm_conn.resume_batches()
    assert len(resume(retry, deferred.value, context)) == 6
    each_row_billed_once(glm_conn, url, 6)


def test_crash_after_completion_before_collection(glm_conn: Any, context: dict[str, Any], url: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        crash_on(m, "record", after=0)
        with pytest.raises(Crash):
            batch_operator(url, rows=rows(5)).execute(context)
    assert glm_conn.batches[-1]["status"] == "completed"
    assert SQLSink.from_url(url).results(SCOPE) == []
    context["ti"].try_number = 2
    out = batch_operator(url, rows=rows(5)).execute(context)
    assert out == [f"Summary: Summarize: night note {i}" for i in range(5)]
    assert glm_conn.stats.batches_created == 1, "the finished batch was collected, not submitted again"
    each_row_billed_once(glm_conn, url, 5)


def test_budget_refuses_a_batch_before_uploading(glm_conn: Any, context: dict[str, Any], url: str) -> None:
    from airflow_provider_glm._compat import AirflowFailException

    op = batch_operator(url, rows=rows(4), request_params={"max_tokens": 50}, max_total_tokens=100)
    with pytest.raises(AirflowFailException, match="max_total_tokens=100"):
        op.execute(context)
    assert glm_conn.stats.files_uploaded == 0
    assert {r["status"] for r in SQLSink.from_url(url).results(SCOPE)} == {"skipped"}
    out = batch_operator(url, rows=rows(4), request_params={"max_tokens": 50}, max_total_tokens=100_000)
    assert len(out.execute({**context, "ti": type(context["ti"])(try_number=2)})) == 4
