"""Fault matrix, rows C (concurrency), T (templates and inputs), S (SQL) and R (reruns).

Each test stages one failure against the local GLM server and checks what the provider promises
against the server's own records: in every test that runs the operator, the ledger's token totals
equal the server's billed tally (or, where answers are lost by design, differ by exactly the answers
the server billed for requests the task never saw answered) and the results table has exactly one
row per input row. Row ids are in the test names; docs/reliability.md lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _databases import BACKENDS, backend_url
from _ledger import check_ledger
from _waits import wait_until

from airflow_provider_glm._compat import AirflowTaskTimeout
from airflow_provider_glm.client import AsyncGLMClient
from airflow_provider_glm.client.retry import RetryPolicy
from airflow_provider_glm.exceptions import GLMRowsFailedError
from airflow_provider_glm.hooks.glm import GLMHook
from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.rows._records import RunScope
from airflow_provider_glm.rows._writer import RecordWriter
from airflow_provider_glm.sinks.sql import SQLSink
from airflow_provider_glm.testing import Fault, GLMTestServer

SCOPE = RunScope("test_dag", "glm", "run-1")
PROMPT = "Summarize: {{ row.text }}"


# --------------------------------------------------------------------------------------------------
# Helpers


@dataclass
class Warehouse:
    """Fresh, uniquely named results and usage tables on one backend (dropped after the test)."""

    url: str
    results: str
    usage: str
    sink: SQLSink

    @property
    def options(self) -> dict[str, Any]:
        return {"sqlalchemy_url": self.url, "results_table": self.results, "usage_table": self.usage}

    def has_table(self, name: str) -> bool:
        with self.sink._engine.connect() as conn:
            return sa.inspect(conn).has_table(name)


def _warehouse(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Warehouse:
    url = backend_url(backend, tmp_path)
    tag = uuid.uuid4().hex[:12]
    results, usage = f"mres_{tag}", f"muse_{tag}"
    sink = SQLSink.from_url(url, results_table=results, usage_table=usage)

    def drop() -> None:
        with sink._engine.begin() as conn:
            for name in (results, usage):
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        sink.dispose()

    request.addfinalizer(drop)
    return Warehouse(url, results, usage, sink)


@pytest.fixture
def sqlite_wh(tmp_path: Path, request: pytest.FixtureRequest) -> Warehouse:
    return _warehouse("sqlite", tmp_path, request)


def _rows(n: int, text: str = "row number {i}") -> list[dict[str, Any]]:
    return [{"id": f"r{i:04d}", "text": text.format(i=i)} for i in range(n)]


def _op(wh: Warehouse | None, rows: Any, **kwargs: Any) -> GLMChatOperator:
    params: dict[str, Any] = {"task_id": "glm", "row_key": "id", "prompt": PROMPT, "rows": rows,
                              "max_concurrency": 8}
    if wh is not None:
        params.update(wh.options)
    params.update(kwargs)
    return GLMChatOperator(**params)


def _ctx(context: dict[str, Any], **ti: Any) -> dict[str, Any]:
    """The test context with another task instance (try number, run id, map index)."""
    return {**context, "ti": type(context["ti"])(**ti)}


def _ledger_vs_tally(wh: Warehouse, srv: GLMTestServer, *, lost_allowed: int = 0) -> set[str]:
    """The ledger against the server's billed tally (see ``tests/_ledger.py``); the billed ids it lacks."""
    usage = wh.sink.usage() if wh.has_table(wh.usage) else []  # no table: validation stopped the task
    return check_ledger(usage, srv, lost_allowed=lost_allowed)


def _one_row_per_input(wh: Warehouse, keys: list[str], scope: RunScope = SCOPE) -> dict[str, dict[str, Any]]:
    results = wh.sink.results(scope)
    assert sorted(r["row_key"] for r in results) == sorted(keys)
    return {r["row_key"]: r for r in results}


def _prompts(keys: Any) -> set[str]:
    """The user messages the rows with these keys were sent as (keys r0001 or r00001)."""
    return {f"Summarize: row number {int(key[1:])}" for key in keys}


def _user_text(body: Any) -> str:
    return body["messages"][-1]["content"]


def _chat_requests(srv: GLMTestServer) -> list[Any]:
    return [r for r in srv.requests if r.path.endswith("/chat/completions")]


def _wait_idle(srv: GLMTestServer) -> None:
    """Wait until the server has finished every request (a killed client's included)."""
    wait_until(lambda: srv.stats.in_flight == 0, "the server to finish every request")


def _fast_retries(monkeypatch: pytest.MonkeyPatch, policy: RetryPolicy) -> None:
    """Give the operator's clients ``policy`` (the operator exposes no retry options of its own)."""
    monkeypatch.setattr(GLMChatOperator, "hook", property(
        lambda self: GLMHook(glm_conn_id=self.glm_conn_id, client_options={"retry_policy": policy})))


class _ScaledSleepAsyncio:
    """The writer's waits between write attempts, 20x shorter."""

    @staticmethod
    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds / 20)


def _failing_writes(monkeypatch: pytest.MonkeyPatch, failures: int | None) -> list[int]:
    """Make ``SQLSink.write`` raise OperationalError for its first ``failures`` calls (None: always)."""
    original = SQLSink.write
    calls: list[int] = []

    def write(self: SQLSink, results: Any, usage: Any) -> None:
        calls.append(len(results))
        if failures is None or len(calls) <= failures:
            raise sa.exc.OperationalError("INSERT", {}, Exception("server closed the connection"))
        original(self, results, usage)

    monkeypatch.setattr(SQLSink, "write", write)
    return calls


_CHILD = r'''
import json, sys, time, tracemalloc
params = json.loads(sys.argv[1])
from airflow_provider_glm.operators.chat import GLMChatOperator


class TI:
    dag_id, task_id, run_id, map_index = "test_dag", "glm", "run-1", -1

    def __init__(self, try_number):
        self.try_number, self.xcom = try_number, {}

    def xcom_push(self, key, value):
        json.dumps(value)
        self.xcom[key] = value


ti = TI(params["try_number"])
if params["trace"]:
    tracemalloc.start()
rows = [{"id": f"r{i:05d}", "text": f"row number {i}"} for i in range(params["rows"])]
op = GLMChatOperator(task_id="glm", row_key="id", prompt="Summarize: {{ row.text }}", rows=rows,
                     sqlalchemy_url=params["url"], max_concurrency=params["max_concurrency"])
out = op.execute({"ti": ti, "ds": "2026-11-26", "params": {}})
peak = tracemalloc.get_traced_memory()[1] if params["trace"] else None
print(json.dumps({"return_value": out, "xcom": ti.xcom, "peak_bytes": peak}))
'''


@pytest.fixture(scope="module")
def pycache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A bytecode cache outside the tree, shared by the child processes (imports take seconds without)."""
    return str(tmp_path_factory.mktemp("pycache"))


def _child(tmp_path: Path, pycache: str, **params: Any) -> subprocess.Popen[str]:
    """Start a fresh process running GLMChatOperator.execute (the glm_default connection is inherited)."""
    script = tmp_path / "child_task.py"
    script.write_text(_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = pycache
    params = {"try_number": 1, "trace": False, "max_concurrency": 8, **params}
    return subprocess.Popen([sys.executable, str(script), json.dumps(params)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _child_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------------
# C: concurrency


def test_C1_429_storm_completes_within_max_concurrency(glm_conn: GLMTestServer, context: dict[str, Any],
                                                       sqlite_wh: Warehouse,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    glm_conn.rate_limit_fraction, glm_conn.seed, glm_conn.latency = 0.6, 1234, 0.02
    _fast_retries(monkeypatch, RetryPolicy(max_retries=40, backoff_base=0.01, backoff_cap=0.05,
                                           rng=random.Random(7)))
    data = _rows(60)
    out = _op(sqlite_wh, data, max_concurrency=8).execute(context)
    assert len(out) == 60 and all(out)
    stats = glm_conn.stats
    assert stats.status_counts.get(429, 0) >= 40, "the storm did not happen"
    assert stats.peak_in_flight <= 8
    assert stats.billed_responses == 60 and stats.requests == 60 + stats.status_counts[429]
    results = _one_row_per_input(sqlite_wh, [r["id"] for r in data])
    assert {r["status"] for r in results.values()} == {"ok"}
    _ledger_vs_tally(sqlite_wh, glm_conn)
    # The ledger's attempts explain every 429.
    assert sum(u["attempts"] for u in sqlite_wh.sink.usage()) == stats.requests


def test_C2_results_identical_at_concurrency_1_and_32(glm_conn: GLMTestServer, context: dict[str, Any],
                                                      sqlite_wh: Warehouse,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    glm_conn.rate_limit_fraction, glm_conn.latency = 0.3, 0.01
    _fast_retries(monkeypatch, RetryPolicy(max_retries=40, backoff_base=0.01, backoff_cap=0.05))
    glm_conn.add_rule(match="row number 7\"", fault=Fault.error(400, "1301"))
    glm_conn.add_rule(match="row number 11\"", fault=Fault.finish("length"))
    data = _rows(40)
    keys = [r["id"] for r in data]
    tables = {}
    for concurrency in (1, 32):
        scope = RunScope("test_dag", "glm", f"run-c{concurrency}")
        _op(sqlite_wh, data, max_concurrency=concurrency, max_filtered_rows=1).execute(
            _ctx(context, run_id=scope.run_id))
        if concurrency == 1:
            assert glm_conn.stats.peak_in_flight == 1
        columns = ("status", "content", "finish_reason", "error", "output", "prompt_tokens",
                   "completion_tokens", "total_tokens")
        # every attempt carries its own request_id, which an error names: the same error, another id
        tables[concurrency] = {k: tuple(re.sub(r"request_id glm-[0-9a-f]{32}", "request_id <id>", r[c])
                                        if c == "error" and r[c] else r[c] for c in columns)
                               for k, r in _one_row_per_input(sqlite_wh, keys, scope).items()}
    assert tables[1] == tables[32]
    assert tables[1]["r0007"][0] == "filtered" and tables[1]["r0011"][2] == "length"
    assert glm_conn.stats.peak_in_flight <= 32
    _ledger_vs_tally(sqlite_wh, glm_conn)


def test_C3_retries_after_a_synchronized_429_are_spread_by_jitter(glm_conn: GLMTestServer,
                                                                  context: dict[str, Any],
                                                                  sqlite_wh: Warehouse) -> None:
    glm_conn.latency = 0.05
    glm_conn.script(*[Fault.error(429, "1302")] * 20)
    data = _rows(20)
    _op(sqlite_wh, data, max_concurrency=20).execute(context)  # default policy: backoff_base 1 s
    attempts: dict[str, list[Any]] = {}
    for r in _chat_requests(glm_conn):
        attempts.setdefault(_user_text(r.body), []).append(r)
    assert len(attempts) == 20 and all(len(a) == 2 for a in attempts.values())
    refused = [a[0].ended_at for a in attempts.values()]
    assert all(a[0].status == 429 for a in attempts.values())
    assert max(refused) - min(refused) < 0.5, "the 429s were not synchronized"
    second = sorted(a[1].started_at for a in attempts.values())
    assert second[-1] - second[0] > 0.3, f"retries not spread: {second[-1] - second[0]:.3f} s"
    assert len({int(t * 50) for t in second}) >= 8, "retries bunch up within the same 20 ms"
    results = _one_row_per_input(sqlite_wh, [r["id"] for r in data])
    assert {r["status"] for r in results.values()} == {"ok"}
    _ledger_vs_tally(sqlite_wh, glm_conn)
    assert sum(u["attempts"] for u in sqlite_wh.sink.usage()) == 40


# --------------------------------------------------------------------------------------------------
# T: templates and inputs


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompt": "{{ row.text }} {{ undefined_name }}"}, "undefined_name"),
        ({"prompt": "{{ row.no_such_column }}"}, "no_such_column"),
        ({"prompt": None, "messages": [{"role": "system", "content": "{{ params.missing }}"},
                                       {"role": "user", "content": "{{ row.text }}"}]}, "missing"),
    ],
    ids=["name", "row-column", "messages"],
)
def test_T1_undefined_variable_costs_zero_calls(glm_conn: GLMTestServer, context: dict[str, Any],
                                                sqlite_wh: Warehouse, kwargs: dict[str, Any],
                                                match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _op(sqlite_wh, _rows(5), **kwargs).execute(context)
    assert glm_conn.stats.requests == 0 and glm_conn.stats.billed_total_tokens == 0
    assert not sqlite_wh.has_table(sqlite_wh.results), "nothing is written before validation passes"


def test_T2_empty_or_none_upstream(glm_conn: GLMTestServer, context: dict[str, Any],
                                   sqlite_wh: Warehouse) -> None:
    assert _op(sqlite_wh, []).execute(context) == []
    assert _op(sqlite_wh, "[]").execute(context) == []  # an upstream XCom as a JSON string
    assert _op(None, []).execute(context) == []
    _one_row_per_input(sqlite_wh, [])
    op = _op(sqlite_wh, [])
    op.rows = None  # what rows=upstream.output renders to when the upstream returned None
    with pytest.raises(ValueError, match="`rows` is None: the upstream task returned nothing"):
        op.execute(context)
    assert glm_conn.stats.requests == 0
    _ledger_vs_tally(sqlite_wh, glm_conn)


def test_T3_jinja_and_shell_syntax_in_row_data_sent_literally(glm_conn: GLMTestServer,
                                                              context: dict[str, Any],
                                                              sqlite_wh: Warehouse) -> None:
    texts = ["{{ 7*7 }}", "{% for x in range(3) %}{{ x }}{% endfor %}", "${HOME} $(id) `id`",
             "{# comment #} {{ ti.dag_id }}", "{{ row.text }}", "{% raw %}x{% endraw %} {{",
             "${{ secrets.KEY }}"]
    data = [{"id": f"t{i}", "text": t} for i, t in enumerate(texts)]
    messages = [{"role": "system", "content": "Day {{ ds }}."},
                {"role": "user", "content": [{"type": "text", "text": "Echo: {{ row.text }}"}]}]
    out = _op(sqlite_wh, data, prompt=None, messages=messages).execute(context)
    sent = {}
    for r in _chat_requests(glm_conn):
        assert r.body["messages"][0] == {"role": "system", "content": "Day 2026-11-26."}
        part = r.body["messages"][1]["content"][0]["text"]
        sent[part] = r
    assert sorted(sent) == sorted(f"Echo: {t}" for t in texts)
    assert out == [f"Summary: Echo: {t}" for t in texts]
    results = _one_row_per_input(sqlite_wh, [r["id"] for r in data])
    assert [results[f"t{i}"]["content"] for i in range(len(texts))] == out
    _ledger_vs_tally(sqlite_wh, glm_conn)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ({"role": "user", "content": "a dict, not a list"}, "non-empty list"),
        ("not json", "not a JSON list"),
        ("{\"role\": \"user\"}", "non-empty list"),
        ([], "non-empty list"),
        (["just a string"], r"messages\[0\]"),
        ([{"content": "no role"}], "role"),
        ([{"role": 1, "content": "x"}], "role"),
        ([{"role": "wizard", "content": "x"}], "role"),
        ([{"role": "user", "content": 42}], "content"),
        ([{"role": "user", "content": {"text": "x"}}], "content"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], "text"),
        ([{"role": "user", "content": ["part as string"]}], "content"),
        ([{"role": "system", "content": "only system"}], "user"),
        ([{"role": "user", "content": ""}], "non-empty content"),
    ],
)
@pytest.mark.parametrize("mode", ["single", "rows"])
def test_T4_malformed_messages_cost_zero_calls(glm_conn: GLMTestServer, context: dict[str, Any],
                                               sqlite_wh: Warehouse, messages: Any, match: str,
                                               mode: str) -> None:
    kwargs: dict[str, Any] = {"task_id": "glm", "messages": messages, **sqlite_wh.options}
    if mode == "rows":
        kwargs.update(rows=_rows(3), row_key="id")
    with pytest.raises(ValueError, match=match):
        GLMChatOperator(**kwargs).execute(context)
    assert glm_conn.stats.requests == 0 and glm_conn.stats.billed_total_tokens == 0
    assert not sqlite_wh.has_table(sqlite_wh.results)


T5_TEXTS = {
    "nul": "before\x00after",
    "surrogate": "lone \ud800 high",
    "low-surrogate": "lone \udfff low",
    "emoji": "\U0001F600 \U0001F44D\U0001F3FD \U0001F468\u200d\U0001F469\u200d\U0001F467 "
             "flags \U0001F1EF\U0001F1F5",
    "rtl": "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd \u202eoverride\u202c \u200f",
    "combining": "e\u0301 \ufeffBOM \u00a0nbsp \u2028line-sep",
    "control": "bell\x07 esc\x1b[31m tab\t cr\r",
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_T5_nul_surrogates_emoji_rtl_are_sent_or_fail_per_row(glm_conn: GLMTestServer,
                                                              context: dict[str, Any], tmp_path: Path,
                                                              request: pytest.FixtureRequest,
                                                              backend: str) -> None:
    wh = _warehouse(backend, tmp_path, request)
    data = [{"id": key, "text": text} for key, text in T5_TEXTS.items()]
    bad = {"surrogate", "low-surrogate"}
    with pytest.raises(GLMRowsFailedError, match="not valid Unicode"):
        _op(wh, data).execute(context)  # the task fails only after writing every row's outcome
    out = _op(wh, data, max_failed_rows=2).execute(_ctx(context, try_number=2))
    requests = _chat_requests(glm_conn)
    # The ok rows are not asked again on the second try; the bad ones are never sent.
    assert len(requests) == len(T5_TEXTS) - len(bad)
    for r in requests:
        body = json.loads(r.raw_body.decode("utf-8"))  # strict UTF-8, valid JSON
        assert _user_text(body) in {f"Summarize: {T5_TEXTS[k]}" for k in T5_TEXTS if k not in bad}
    results = _one_row_per_input(wh, list(T5_TEXTS))
    for key, text in T5_TEXTS.items():
        if key in bad:
            assert results[key]["status"] == "failed" and "not valid Unicode" in results[key]["error"]
            assert out[list(T5_TEXTS).index(key)] is None
        else:
            expected = f"Summary: Summarize: {text}"
            stored = expected.replace("\x00", "\ufffd") if backend == "postgresql" else expected
            assert results[key]["status"] == "ok" and results[key]["content"] == stored
            assert out[list(T5_TEXTS).index(key)] == stored  # resumed rows return the stored answer
    _ledger_vs_tally(wh, glm_conn)
    with pytest.raises(ValueError, match="row key"):  # a key is an identifier: refused before any call
        _op(wh, [{"id": "key\ud800", "text": "x"}]).execute(context)
    assert len(_chat_requests(glm_conn)) == len(requests)


def test_T6_10000_rows_xcom_summary_and_bounded_memory(glm_conn: GLMTestServer, tmp_path: Path,
                                                       request: pytest.FixtureRequest, pycache: str) -> None:
    url = f"sqlite:///{tmp_path / 't6.db'}"
    proc = _child(tmp_path, pycache, rows=10_000, url=url, max_concurrency=16, trace=True)
    done = _child_result(proc, timeout=300)
    summary = done["return_value"]
    assert isinstance(summary, dict) and summary["rows"] == summary["ok"] == 10_000
    assert summary["results_table"] == "glm_results" and done["xcom"]["usage"] == summary
    assert len(json.dumps(summary)) < 48_000  # max_xcom_bytes
    peak_mb = done["peak_bytes"] / 2**20
    print(f"\nT6: tracemalloc peak {peak_mb:.1f} MiB for 10,000 rows")
    request.node.user_properties.append(("tracemalloc_peak_mib", round(peak_mb, 1)))
    assert peak_mb < 100
    wh = _default_tables(url, request)
    results = _one_row_per_input(wh, [f"r{i:05d}" for i in range(10_000)])
    assert {r["status"] for r in results.values()} == {"ok"}
    _ledger_vs_tally(wh, glm_conn)
    assert summary["total_tokens"] == glm_conn.stats.billed_total_tokens


def _default_tables(url: str, request: pytest.FixtureRequest) -> Warehouse:
    """The tables a child task wrote (the operator's default names)."""
    sink = SQLSink.from_url(url)
    request.addfinalizer(sink.dispose)
    return Warehouse(url, "glm_results", "glm_usage", sink)


# --------------------------------------------------------------------------------------------------
# S: SQL, on every backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_S1_injected_table_names_rejected_before_any_call(glm_conn: GLMTestServer, context: dict[str, Any],
                                                          tmp_path: Path, request: pytest.FixtureRequest,
                                                          backend: str) -> None:
    wh = _warehouse(backend, tmp_path, request)
    canary = f"canary_{uuid.uuid4().hex[:10]}"
    with wh.sink._engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {canary} (id INTEGER)"))
    request.addfinalizer(lambda: _drop(wh, canary))
    names = [f"x; DROP TABLE {canary}", f"{canary}; --", "a'b", "a\"b", "`ticks`", "[brackets]",
             "db.schema.table.extra", "a.b.c", "x -- comment", "", " ", "t" * 64, "ok.", ".ok", "new\nline"]
    for name in names:
        for option in ("results_table", "usage_table"):
            with pytest.raises(ValueError, match="invalid table name"):
                _op(wh, _rows(3), **{option: name}).execute(context)
    assert glm_conn.stats.requests == 0
    assert wh.has_table(canary) and not wh.has_table(wh.results)
    _ledger_vs_tally(wh, glm_conn)


def _drop(wh: Warehouse, name: str) -> None:
    with wh.sink._engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_S2_missing_table_created_mismatched_table_refused(glm_conn: GLMTestServer, context: dict[str, Any],
                                                           tmp_path: Path, request: pytest.FixtureRequest,
                                                           backend: str) -> None:
    wh = _warehouse(backend, tmp_path, request)
    assert not wh.has_table(wh.results) and not wh.has_table(wh.usage)
    data = _rows(5)
    _op(wh, data).execute(context)
    assert wh.has_table(wh.results) and wh.has_table(wh.usage)
    _one_row_per_input(wh, [r["id"] for r in data])
    _ledger_vs_tally(wh, glm_conn)
    calls = glm_conn.stats.requests

    wrong = f"mwrong_{uuid.uuid4().hex[:10]}"
    request.addfinalizer(lambda: _drop(wh, wrong))
    with wh.sink._engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {wrong} (id INTEGER PRIMARY KEY, note VARCHAR(20))"))
    for option in ("results_table", "usage_table"):
        with pytest.raises(ValueError, match=f"'{wrong}' exists but lacks required column"):
            _op(wh, data, **{option: wrong}).execute(_ctx(context, run_id="run-2"))
    assert glm_conn.stats.requests == calls
    with wh.sink._engine.connect() as conn:
        assert [c["name"] for c in sa.inspect(conn).get_columns(wrong)] == ["id", "note"]  # left untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_S3_database_down_at_write_time_keeps_answers(glm_conn: GLMTestServer, context: dict[str, Any],
                                                      tmp_path: Path, request: pytest.FixtureRequest,
                                                      backend: str, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    wh = _warehouse(backend, tmp_path, request)
    data, keys = _rows(20), [f"r{i:04d}" for i in range(20)]
    glm_conn.latency = 0.01
    with monkeypatch.context() as m:
        m.setitem(RecordWriter.__init__.__kwdefaults__, "sleep", _ScaledSleepAsyncio.sleep)
        calls = _failing_writes(m, failures=3)
        out = _op(wh, data, max_concurrency=4).execute(context)
    assert len(calls) > 3 and all(out)
    assert "the records are kept; retrying" in capsys.readouterr().out  # the task log
    results = _one_row_per_input(wh, keys)
    assert {r["status"] for r in results.values()} == {"ok"}
    assert glm_conn.stats.requests == 20, "an answer was requested again"
    _ledger_vs_tally(wh, glm_conn)

    # Down for good: the task fails after write_timeout, dispatching nothing new once it gave up.
    run2 = RunScope("test_dag", "glm", "run-2")
    asked: list[str] = []
    with monkeypatch.context() as m:
        _failing_writes(m, failures=None)
        original_ask = AsyncGLMClient.send_chat

        async def ask(self: AsyncGLMClient, body: bytes, **params: Any) -> Any:
            asked.append(_user_text(json.loads(body)))
            return await original_ask(self, body, **params)

        m.setattr(AsyncGLMClient, "send_chat", ask)
        with pytest.raises(RuntimeError, match="could not be written") as failed:
            _op(wh, data, max_concurrency=4, write_timeout=1.5, reuse_unchanged=False).execute(
                _ctx(context, run_id=run2.run_id))
        assert isinstance(failed.value.__cause__, sa.exc.OperationalError)
    assert "Giving up writing" in capsys.readouterr().out
    _wait_idle(glm_conn)
    lost = glm_conn.stats.requests - 20
    assert 1 <= lost <= 4 and len(asked) == lost, "a worker started a new row after the database gave up"
    assert wh.sink.results(run2) == [] and wh.sink.usage(run2) == []
    # The rerun once the database is back asks every unwritten row; the ledger explains the rest.
    _op(wh, data, max_concurrency=4, reuse_unchanged=False).execute(_ctx(context, run_id=run2.run_id, try_number=2))
    assert glm_conn.stats.requests == 20 + lost + 20
    assert {r["status"] for r in _one_row_per_input(wh, keys, run2).values()} == {"ok"}
    assert len(_ledger_vs_tally(wh, glm_conn, lost_allowed=4)) == lost


@pytest.mark.parametrize("backend", BACKENDS)
def test_S4_mapped_and_concurrent_tasks_upsert_the_same_keys(glm_conn: GLMTestServer, context: dict[str, Any],
                                                             tmp_path: Path, request: pytest.FixtureRequest,
                                                             backend: str) -> None:
    wh = _warehouse(backend, tmp_path, request)
    glm_conn.latency = 0.005
    data, keys = _rows(40), [f"r{i:04d}" for i in range(40)]

    def together(contexts: list[dict[str, Any]]) -> None:
        barrier, errors = threading.Barrier(len(contexts)), []

        def run(ctx: dict[str, Any]) -> None:
            try:
                op = _op(wh, data, max_concurrency=8, reuse_unchanged=False)  # every task asks: real concurrent upserts
                barrier.wait()
                op.execute(ctx)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(ctx,)) for ctx in contexts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors

    together([_ctx(context, run_id="run-mapped", map_index=i) for i in (0, 1)])
    for index in (0, 1):
        _one_row_per_input(wh, keys, RunScope("test_dag", "glm", "run-mapped", index))
    together([_ctx(context, run_id="run-same"), _ctx(context, run_id="run-same")])
    results = _one_row_per_input(wh, keys, RunScope("test_dag", "glm", "run-same"))
    assert {r["status"] for r in results.values()} == {"ok"}
    assert 120 <= glm_conn.stats.billed_responses <= 160
    _ledger_vs_tally(wh, glm_conn)


@pytest.mark.parametrize("backend", BACKENDS)
def test_S5_crash_between_writes_leaves_no_half_batch(glm_conn: GLMTestServer, context: dict[str, Any],
                                                      tmp_path: Path, request: pytest.FixtureRequest,
                                                      backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    wh = _warehouse(backend, tmp_path, request)
    glm_conn.latency = 0.01
    data, keys = _rows(24), [f"r{i:04d}" for i in range(24)]
    original_usage_rows, original_write = SQLSink._usage_rows, SQLSink.write
    writes: list[tuple[set[str], set[str]]] = []
    checked: list[int] = []

    def poisoned_usage_rows(self: SQLSink, usage: Any) -> list[dict[str, Any]]:
        rows = original_usage_rows(self, usage)
        if len(writes) >= 2 and rows:  # from the second write on, the usage part fails mid-transaction
            rows.append({**rows[0], "response_id": f"poison-{len(writes)}", "model": None})  # NOT NULL
        return rows

    def write(self: SQLSink, results: Any, usage: Any) -> None:
        batch = ({r.row_key for r in results}, {u.response_id for u in usage})
        writes.append(batch)
        try:
            original_write(self, results, usage)
        except sa.exc.IntegrityError:
            visible = {r["row_key"] for r in wh.sink.results(SCOPE)}
            ledger = {u["response_id"] for u in wh.sink.usage(SCOPE)}
            assert not batch[0] & visible and not batch[1] & ledger, "half a batch is visible"
            checked.append(len(batch[0]))
            raise

    with monkeypatch.context() as m:
        m.setattr(SQLSink, "_usage_rows", poisoned_usage_rows)
        m.setattr(SQLSink, "write", write)
        with pytest.raises(RuntimeError, match="could not be written") as failed:
            _op(wh, data, max_concurrency=4, write_timeout=1.5).execute(context)
        assert isinstance(failed.value.__cause__, sa.exc.IntegrityError)
    assert checked, "no write failed"
    _wait_idle(glm_conn)
    first_try = glm_conn.stats.requests
    visible = {r["row_key"]: r for r in wh.sink.results(SCOPE)}
    assert 0 < len(visible) < 24 and {r["status"] for r in visible.values()} == {"ok"}
    assert {u["row_key"] for u in wh.sink.usage(SCOPE)} == set(visible), "results and ledger disagree"

    _op(wh, data, max_concurrency=4).execute(_ctx(context, try_number=2))
    rerun = [_user_text(r.body) for r in _chat_requests(glm_conn)[first_try:]]
    assert len(rerun) == 24 - len(visible) and not _prompts(visible) & set(rerun)
    assert {r["status"] for r in _one_row_per_input(wh, keys).values()} == {"ok"}
    lost = _ledger_vs_tally(wh, glm_conn, lost_allowed=24)
    assert len(lost) == first_try - len(visible)  # billed in the crashed try, never written


@pytest.mark.parametrize("backend", BACKENDS)
def test_S6_quotes_newlines_and_1mb_content_round_trip(glm_conn: GLMTestServer, context: dict[str, Any],
                                                       tmp_path: Path, request: pytest.FixtureRequest,
                                                       backend: str) -> None:
    wh = _warehouse(backend, tmp_path, request)
    tricky = ("It's \"quoted\" `x` \\ back\\slash; DROP TABLE y; --\nline 2\r\nline 3\t"
              "\u00e9\u4e2d\U0001F600 %s %% ?")
    unit = "Line with 'single' and \"double\" quotes, \\backslash, tab\t, unicode \u00e9\u4e2d\U0001F600\r\n"
    big = (unit * (2**20 // len(unit) + 1))[: 2**20]
    glm_conn.add_rule(match="payload-big", fault=Fault.content(big))
    glm_conn.add_rule(match="payload-tricky", fault=Fault.content(tricky))
    data = [{"id": "it's \"big\"", "text": "payload-big"},
            {"id": "line\nbreak 'key'", "text": "payload-tricky"},
            {"id": "plain", "text": "a 'quoted'\n\"prompt\""}]
    out = _op(wh, data).execute(context)
    assert isinstance(out, dict) and out["ok"] == 3  # 1 MB of values does not fit max_xcom_bytes
    results = _one_row_per_input(wh, [r["id"] for r in data])
    assert len(results["it's \"big\""]["content"]) == 2**20
    assert results["it's \"big\""]["content"] == big
    assert results["line\nbreak 'key'"]["content"] == tricky
    assert results["plain"]["content"] == "Summary: Summarize: a 'quoted'\n\"prompt\""
    _ledger_vs_tally(wh, glm_conn)


# --------------------------------------------------------------------------------------------------
# R: reruns


def _ok_keys(path: Path) -> set[str]:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as conn:
            return {k for (k,) in conn.execute("SELECT row_key FROM glm_results WHERE status = 'ok'")}
    except sqlite3.OperationalError:  # not created yet, or locked for a moment
        return set()


def test_R1_sigkill_mid_run_then_rerun(glm_conn: GLMTestServer, tmp_path: Path,
                                       request: pytest.FixtureRequest, pycache: str) -> None:
    db = tmp_path / "r1.db"
    glm_conn.latency = 0.2
    url = f"sqlite:///{db}"
    proc = _child(tmp_path, pycache, rows=200, url=url, max_concurrency=8)
    deadline = time.monotonic() + 120
    while len(_ok_keys(db)) < 40:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the task never got going"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    in_flight_at_kill = glm_conn.stats.in_flight
    _wait_idle(glm_conn)
    ok_at_kill = _ok_keys(db)
    first_try = glm_conn.stats.requests
    assert 40 <= len(ok_at_kill) < 200 and first_try <= len(ok_at_kill) + 8

    done = _child_result(_child(tmp_path, pycache, rows=200, url=url, max_concurrency=8, try_number=2), 120)
    assert len(done["return_value"]) == 200 and all(done["return_value"])
    assert done["xcom"]["usage"]["resumed"] == len(ok_at_kill)
    rerun = {_user_text(r.body) for r in _chat_requests(glm_conn)[first_try:]}
    assert not rerun & _prompts(ok_at_kill), "an ok row was asked again"
    extra = glm_conn.stats.requests - 200
    print(f"\nR1: killed with {len(ok_at_kill)} rows ok and {in_flight_at_kill} requests in flight; "
          f"{extra} extra calls after the rerun")
    request.node.user_properties.append(("extra_calls", extra))
    assert 0 <= extra <= 8 and glm_conn.stats.requests <= 200 + 8
    wh = _default_tables(url, request)
    results = _one_row_per_input(wh, [f"r{i:05d}" for i in range(200)])
    assert {r["status"] for r in results.values()} == {"ok"}
    lost = _ledger_vs_tally(wh, glm_conn, lost_allowed=8)
    assert len(lost) == extra  # each extra call answers a row whose first answer was billed, then lost


def test_R2_clear_and_rerun_three_times_changes_nothing(glm_conn: GLMTestServer, context: dict[str, Any],
                                                        sqlite_wh: Warehouse) -> None:
    data = _rows(30)
    first = _op(sqlite_wh, data).execute(context)
    results, usage = sqlite_wh.sink.results(SCOPE), sqlite_wh.sink.usage(SCOPE)
    calls = glm_conn.stats.requests
    assert calls == 30
    for try_number in (2, 3, 4):
        ctx = _ctx(context, try_number=try_number)
        assert _op(sqlite_wh, data).execute(ctx) == first
        summary = ctx["ti"].xcom["usage"]
        assert summary["resumed"] == 30 and summary["total_tokens"] == 0
        assert summary["spent_before"]["total_tokens"] == glm_conn.stats.billed_total_tokens
        assert sqlite_wh.sink.results(SCOPE) == results and sqlite_wh.sink.usage(SCOPE) == usage
        assert glm_conn.stats.requests == calls
    _one_row_per_input(sqlite_wh, [r["id"] for r in data])
    _ledger_vs_tally(sqlite_wh, glm_conn)


def test_R3_execution_timeout_with_calls_in_flight(glm_conn: GLMTestServer, context: dict[str, Any],
                                                   sqlite_wh: Warehouse,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The server holds every answer, so exactly max_concurrency calls are in flight when the operator's
    deadline (shortly before execution_timeout) comes: those are cut (failed, possibly billed), the rest
    are never sent (skipped), and the clients are closed. Nothing depends on how fast the machine is."""
    glm_conn.hold()
    clients: list[AsyncGLMClient] = []
    original = GLMHook.get_async_client

    def get_async_client(self: GLMHook, **overrides: Any) -> AsyncGLMClient:
        clients.append(original(self, **overrides))
        return clients[-1]

    monkeypatch.setattr(GLMHook, "get_async_client", get_async_client)
    data = _rows(100)
    op = _op(sqlite_wh, data, max_concurrency=8, adaptive_concurrency=False)
    op.execution_timeout = timedelta(seconds=1)
    try:
        with pytest.raises(AirflowTaskTimeout, match="execution_timeout was reached"):
            op.execute(context)
    finally:
        glm_conn.release()
    assert clients and all(c.closed for c in clients)
    requests = _chat_requests(glm_conn)
    assert len(requests) == 8, "only the calls in flight at the deadline were sent"
    results = _one_row_per_input(sqlite_wh, [r["id"] for r in data])
    by_status = {s: {k for k, r in results.items() if r["status"] == s} for s in ("ok", "failed", "skipped")}
    assert (len(by_status["ok"]), len(by_status["failed"]), len(by_status["skipped"])) == (0, 8, 92)
    assert all("execution_timeout" in results[k]["error"] for k in by_status["skipped"])
    assert all("GLMTimeoutError" in results[k]["error"] for k in by_status["failed"])  # cut at the deadline
    assert {_user_text(r.body) for r in requests} == _prompts(by_status["failed"])
    _wait_idle(glm_conn)
    # The cut calls were answered (and billed) by the server after the client left: each is in the ledger
    # as a possibly billed attempt, with an upper bound of its tokens.
    usage = sqlite_wh.sink.usage(SCOPE)
    assert {u["billing"] for u in usage} == {"unknown"}
    assert sum(u["unknown_billing_attempts"] for u in usage) == 8
    assert _ledger_vs_tally(sqlite_wh, glm_conn) == {b.response_id for b in glm_conn.billed}


def test_R3_airflow_alarm_with_calls_in_flight_then_resume(glm_conn: GLMTestServer, context: dict[str, Any],
                                                           sqlite_wh: Warehouse,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The same timeout enforced the way Airflow's task runner does it: SIGALRM around ``execute``.

    Airflow's clock starts before the operator's, so its alarm ends the task first: nothing new
    starts, the client closes, what was written stays consistent, and the next try resumes. The server
    holds every answer, so exactly the 8 calls in flight are what the alarm cuts, on any machine.
    """
    from airflow.sdk.execution_time.timeout import timeout

    glm_conn.hold()
    clients: list[AsyncGLMClient] = []
    original = GLMHook.get_async_client

    def get_async_client(self: GLMHook, **overrides: Any) -> AsyncGLMClient:
        clients.append(original(self, **overrides))
        return clients[-1]

    monkeypatch.setattr(GLMHook, "get_async_client", get_async_client)
    data = _rows(100)
    op = _op(sqlite_wh, data, max_concurrency=8)
    op.execution_timeout = timedelta(seconds=1)
    previous, pending = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)[0]
    started = time.monotonic()
    # Airflow's alarm replaces pytest-timeout's: should the alarm ever be lost again, the held answers
    # are released after a generous while, so the test fails on its assertions instead of hanging
    watchdog = threading.Timer(240, glm_conn.release)
    watchdog.start()
    try:
        with pytest.raises(AirflowTaskTimeout), timeout(1):
            op.execute(context)
    finally:
        watchdog.cancel()
        glm_conn.release()
        signal.signal(signal.SIGALRM, previous)  # hand the alarm back to pytest-timeout
        if pending:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, pending - (time.monotonic() - started)))
    assert clients and all(c.closed for c in clients)
    requests = _chat_requests(glm_conn)
    assert len(requests) == 8, "nothing started after the alarm"
    _wait_idle(glm_conn)
    written = {k: r for k, r in ((r["row_key"], r) for r in sqlite_wh.sink.results(SCOPE))}
    assert {r["status"] for r in written.values()} <= {"ok", "failed", "skipped"}
    ok = {k for k, r in written.items() if r["status"] == "ok"}
    known = {u["row_key"] for u in sqlite_wh.sink.usage(SCOPE) if u["billing"] == "known"}
    assert known == ok, "results and ledger disagree"
    lost = _ledger_vs_tally(sqlite_wh, glm_conn, lost_allowed=8)  # answered after the alarm, never read
    first_try = len(requests)
    assert len(lost) == first_try - len(ok)

    _op(sqlite_wh, data, max_concurrency=8).execute(_ctx(context, try_number=2))
    assert glm_conn.stats.requests == first_try + 100 - len(ok)
    assert {r["status"] for r in _one_row_per_input(sqlite_wh, [r["id"] for r in data]).values()} == {"ok"}
    assert _ledger_vs_tally(sqlite_wh, glm_conn, lost_allowed=8) == lost
