"""Tests for the JSON Lines export to object storage: local files, a SQLite sink, and S3 (moto server)."""

from __future__ import annotations

import datetime as dt
import json
import os
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _databases import BACKENDS, server_url

from airflow_provider_glm.rows._records import ResultRecord, RunScope
from airflow_provider_glm.sinks._objectstorage import FIELDS, JSONLResultsExport
from airflow_provider_glm.sinks.sql import SQLSink

SCOPE = RunScope("dag", "task", "run-1")
OTHER = RunScope("dag", "task", "run-2")
MAPPED = RunScope("dag", "task", "run-1", map_index=3)
BEIJING = dt.timezone(dt.timedelta(hours=8))
BIG = "长文本😀\"\n" * (1024 * 1024 // 16)
"""About 1 MB of UTF-8 with quotes, newlines and emoji."""
TRICKY = 'He said "hi",\nthen\t\\left\r\n 😀🎉 你好 \u2028 end'
KEYS = ["a", "a ", "a\t", "B", "b", "é", "😀", "10", "9", "Z", "_", "r-01", "r-02"]


def _record(row_key: str, status: Any = "ok", scope: RunScope = SCOPE, **kwargs: Any) -> ResultRecord:
    values: dict[str, Any] = {
        "content": f"answer {row_key}", "finish_reason": "stop", "model": "glm-4.5",
        "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
        "updated_at": dt.datetime(2026, 11, 26, 21, 0, 35, 59410, tzinfo=BEIJING),
    }
    values.update(kwargs)
    return ResultRecord(scope=scope, row_key=row_key, status=status, **values)


TOOL_CALLS = [
    {"id": "call_1", "type": "function", "name": "lookup_order", "arguments": {"order_id": "A-1", "n": [1, 2.5]}},
    {"id": "call_2", "type": "function", "name": "lookup_order", "arguments": "A-2, not JSON"},
    {"id": "call_3", "type": "mcp", "mcp": {"type": "mcp_call", "server_label": "crm", "output": {"tier": None}}},
]
WEB_SEARCH = [{"title": "Résumé \"quoted\"", "link": "https://example.com/a", "content": "C\n😀", "icon": "",
               "media": "example.com", "refer": "ref_1", "publish_date": "2025-01-02"}]
CONTENT_FILTER = [{"role": "assistant", "level": 3}, {"role": "user", "level": 0}]


def _records() -> list[ResultRecord]:
    return [
        _record("r-03", content=TRICKY, reasoning_content="thinking…\n\"quoted\"",
                output={"a": [1, 2.5, None, True], "s": 'é"\n', "nested": {"k": "v"}},
                tool_calls=TOOL_CALLS, web_search=WEB_SEARCH, content_filter=CONTENT_FILTER,
                fingerprint="f" * 64, reused_from_run_id="run-0"),
        _record("r-01", content=BIG, prompt_tokens=1, completion_tokens=300_000, total_tokens=300_001),
        _record("r-02", "failed", content=None, finish_reason=None, error="GLMServerError: boom\nline 2",
                prompt_tokens=None, completion_tokens=None, total_tokens=None),
        _record("r-04", "filtered", content=None, finish_reason="sensitive", error="blocked"),
        _record("r-05", "skipped", content=None, model=None, error="budget reached",
                updated_at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
    ]


def _utc_text(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _expected(record: ResultRecord) -> dict[str, Any]:
    return {
        "dag_id": record.scope.dag_id, "task_id": record.scope.task_id, "run_id": record.scope.run_id,
        "map_index": record.scope.map_index, "logical_date": _utc_text(record.scope.logical_date),
        "row_key": record.row_key, "status": record.status,
        "content": record.content, "reasoning_content": record.reasoning_content,
        "finish_reason": record.finish_reason, "output": record.output, "tool_calls": record.tool_calls,
        "web_search": record.web_search, "content_filter": record.content_filter, "error": record.error,
        "model": record.model, "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens, "total_tokens": record.total_tokens,
        "fingerprint": record.fingerprint, "reused_from_run_id": record.reused_from_run_id,
        "updated_at": _utc_text(record.updated_at),
    }


def _no_constant(name: str) -> Any:
    raise AssertionError(f"not plain JSON: {name}")


def _parse(data: bytes) -> list[dict[str, Any]]:
    """Lines as dicts; checks the framing (one object per '\\n'-terminated line) and the key order."""
    if not data:
        return []
    assert data.endswith(b"\n")
    lines = [json.loads(line, parse_constant=_no_constant) for line in data.split(b"\n")[:-1]]
    for line in lines:
        assert list(line) == list(FIELDS)
    return lines


def _sqlite_sink(tmp_path: Path) -> SQLSink:
    sink = SQLSink.from_url(f"sqlite:///{tmp_path / 'sink.db'}")
    sink.ensure_tables()
    return sink


def _failing(rows: int) -> Iterator[dict[str, Any]]:
    for record in _records()[:rows]:
        yield {**record.__dict__, **record.scope.__dict__}
    raise RuntimeError("the source broke midway")


# ---------------------------------------------------------------------------------------------- validate


@pytest.mark.parametrize(
    ("path", "conn_id", "url"),
    [
        ("file:///data/glm/results.jsonl", None, "file:///data/glm/results.jsonl"),
        ("  s3://bucket/glm/run-1/results.jsonl ", "aws_moto", "s3://bucket/glm/run-1/results.jsonl"),
        ("s3://aws_moto@bucket/results.jsonl", None, "s3://bucket/results.jsonl"),
        ("s3://aws_moto@bucket/results.jsonl", "aws_moto", "s3://bucket/results.jsonl"),
        ("S3://bucket/scheduled__2026-11-26T00:00:00+00:00/r.jsonl", None,
         "s3://bucket/scheduled__2026-11-26T00:00:00+00:00/r.jsonl"),
        ("local:///var/data/r.jsonl", None, "local:///var/data/r.jsonl"),
    ],
)
def test_validate_accepts(path: str, conn_id: str | None, url: str) -> None:
    assert JSONLResultsExport(path, conn_id).validate() == url


@pytest.mark.parametrize(
    ("path", "conn_id", "message"),
    [
        ("/data/results.jsonl", None, "has no scheme"),
        ("results.jsonl", None, "has no scheme"),
        ("C:\\results.jsonl", None, "has no scheme"),
        ("s3:/bucket/key.jsonl", None, "has no scheme"),
        ("file://data/results.jsonl", None, "not an absolute local path"),
        ("file://localhost/data/results.jsonl", None, "not an absolute local path"),
        ("file:///data/glm/", None, "must name a file"),
        ("s3://bucket", None, "needs a bucket and a key"),
        ("s3://bucket/", None, "needs a bucket and a key"),
        ("s3:///key.jsonl", None, "needs a bucket and a key"),
        ("s3://bucket/glm/", None, "must name a file"),
        ("s3://bucket/key.jsonl?versionId=1", None, "must not contain"),
        ("s3://one@bucket/key.jsonl", "two", "names connection 'one'"),
        ("s3://@bucket/key.jsonl", None, "empty connection id"),
        ("nosuchfs://bucket/key.jsonl", None, "no Airflow filesystem is registered for scheme 'nosuchfs'"),
        ("s3://bucket/key.jsonl", "", "conn_id must be"),
        (42, None, "must be a URL string or an ObjectStoragePath"),
    ],
)
def test_validate_refuses(path: Any, conn_id: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JSONLResultsExport(path, conn_id).validate()


def test_validate_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pre-flight must not look up the connection nor build the store's filesystem."""
    import airflow.sdk.io.store as store
    from airflow.sdk import BaseHook

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("validate() did I/O")

    monkeypatch.setattr(store, "attach", forbidden)
    monkeypatch.setattr(BaseHook, "get_connection", forbidden)
    export = JSONLResultsExport("s3://bucket/glm/results.jsonl", conn_id="does_not_exist")
    assert export.validate() == "s3://bucket/glm/results.jsonl"
    assert export.url == "s3://bucket/glm/results.jsonl"


def test_validate_object_storage_path(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    target = ObjectStoragePath(f"file://{tmp_path}/out/results.jsonl")
    assert JSONLResultsExport(target).validate() == f"file://{tmp_path}/out/results.jsonl"
    with pytest.raises(ValueError, match="has no scheme"):
        JSONLResultsExport(ObjectStoragePath("relative/results.jsonl")).validate()
    url = JSONLResultsExport(target).write(SCOPE, records=_records())
    assert [line["row_key"] for line in _parse((tmp_path / "out" / "results.jsonl").read_bytes())] == [
        "r-01", "r-02", "r-03", "r-04", "r-05"
    ]
    assert url == f"file://{tmp_path}/out/results.jsonl"


# ------------------------------------------------------------------------------------------- local files


def test_file_from_records_round_trips(tmp_path: Path) -> None:
    records = _records()
    dest = tmp_path / "deep" / "er" / "results.jsonl"
    url = JSONLResultsExport(f"file://{dest}").write(SCOPE, records=records)
    assert url == f"file://{dest}"
    data = dest.read_bytes()
    lines = _parse(data)
    assert lines == [_expected(r) for r in sorted(records, key=lambda r: r.row_key)]
    assert lines[0]["content"] == BIG
    assert len(data) > 1_000_000
    assert lines[0]["updated_at"] == "2026-11-26T13:00:35.059410Z"
    assert lines[2]["content"] == TRICKY
    assert "😀".encode() in data, "UTF-8, not \\u escapes"
    assert "你好".encode() in data
    assert os.listdir(dest.parent) == ["results.jsonl"]


def test_in_memory_last_record_wins_and_scope_is_checked(tmp_path: Path) -> None:
    dest = tmp_path / "results.jsonl"
    export = JSONLResultsExport(f"file://{dest}")
    records = [_record("b", "failed", error="first"), _record("a"), _record("b", content="second")]
    export.write(SCOPE, records=records)
    assert [(line["row_key"], line["status"], line["content"]) for line in _parse(dest.read_bytes())] == [
        ("a", "ok", "answer a"), ("b", "ok", "second")
    ]
    with pytest.raises(ValueError, match="belongs to"):
        export.write(SCOPE, records=[_record("a"), _record("c", scope=MAPPED)])
    with pytest.raises(ValueError, match="not both"):
        export.write(SCOPE, sink=_sqlite_sink(tmp_path), records=records)
    assert export.write(SCOPE) == f"file://{dest}"
    assert dest.read_bytes() == b"", "no rows: an empty file"


def test_values_that_are_not_plain_json(tmp_path: Path) -> None:
    dest = tmp_path / "results.jsonl"
    records = [
        _record("nan", output={"x": float("nan"), "y": [float("inf"), 1.5]}),
        _record("surrogate", content="bad \ud800 half", error="nul \x00 byte"),
        _record("naive", updated_at=dt.datetime(2026, 5, 6, 7, 8, 9)),
    ]
    JSONLResultsExport(f"file://{dest}").write(SCOPE, records=records)
    lines = {line["row_key"]: line for line in _parse(dest.read_bytes())}
    assert lines["nan"]["output"] == {"x": None, "y": [None, 1.5]}
    assert lines["surrogate"]["content"] == "bad \ud800 half"
    assert lines["surrogate"]["error"] == "nul \x00 byte"
    assert lines["naive"]["updated_at"] == "2026-05-06T07:08:09.000000Z"
    with pytest.raises(ValueError, match="'obj' is not plain JSON"):
        JSONLResultsExport(f"file://{dest}").write(SCOPE, records=[_record("obj", output=object())])
    kept = {line["row_key"]: line for line in _parse(dest.read_bytes())}
    assert kept == lines, "the failed rerun kept the file"


def test_file_from_sqlite_sink(tmp_path: Path) -> None:
    sink = _sqlite_sink(tmp_path)
    records = _records()
    try:
        # An earlier try left r-01 failed and r-03 ok; this try rewrote r-01 and added the rest.
        sink.write([_record("r-01", "failed", error="timeout"), records[0]], [])
        sink.write(records[1:], [])
        sink.write([_record("r-01", scope=OTHER), _record("r-09", scope=MAPPED)], [])
        dest = tmp_path / "from-sql.jsonl"
        url = JSONLResultsExport(f"file://{dest}", batch_size=2).write(SCOPE, sink=sink)
        assert url == f"file://{dest}"
        lines = _parse(dest.read_bytes())
        assert lines == [_expected(r) for r in sorted(records, key=lambda r: r.row_key)]
        memory = tmp_path / "from-memory.jsonl"
        JSONLResultsExport(f"file://{memory}").write(SCOPE, records=records)
        assert dest.read_bytes() == memory.read_bytes(), "both sources give the same bytes"
        mapped = tmp_path / "mapped.jsonl"
        JSONLResultsExport(f"file://{mapped}").write(MAPPED, sink=sink)
        assert [line["row_key"] for line in _parse(mapped.read_bytes())] == ["r-09"]
        assert _parse(mapped.read_bytes())[0]["map_index"] == 3
    finally:
        sink.dispose()


def test_failure_midway_leaves_no_file(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "results.jsonl"
    export = JSONLResultsExport(f"file://{dest}")
    with pytest.raises(RuntimeError, match="broke midway"):
        export.write_rows(_failing(3))
    assert not dest.exists()
    assert os.listdir(dest.parent) == [], "no temporary file is left behind"
    export.write(SCOPE, records=_records()[:2])
    before = dest.read_bytes()
    with pytest.raises(RuntimeError, match="broke midway"):
        export.write_rows(_failing(3))
    assert dest.read_bytes() == before, "the previous export is untouched"
    assert os.listdir(dest.parent) == ["results.jsonl"]


def test_sink_failure_midway_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = _sqlite_sink(tmp_path)
    sink.write(_records(), [])
    streamed = sink.iter_results

    def breaking(scope: RunScope, batch_size: int = 1000) -> Iterator[dict[str, Any]]:
        for count, row in enumerate(streamed(scope, batch_size), start=1):
            yield row
            if count == 3:
                raise sa.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(sink, "iter_results", breaking)
    out = tmp_path / "out"
    with pytest.raises(sa.exc.OperationalError):
        JSONLResultsExport(f"file://{out}/results.jsonl").write(SCOPE, sink=sink)
    assert os.listdir(out) == []
    sink.dispose()


def test_rerun_overwrites(tmp_path: Path) -> None:
    dest = tmp_path / "results.jsonl"
    export = JSONLResultsExport(f"local://{dest}")
    export.write(SCOPE, records=_records())
    assert len(_parse(dest.read_bytes())) == 5
    export.write(SCOPE, records=[_record("only", content="new")])
    assert [(line["row_key"], line["content"]) for line in _parse(dest.read_bytes())] == [("only", "new")]
    assert os.listdir(tmp_path) == ["results.jsonl"]


# -------------------------------------------------------------------------------------- the whole answer


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_answer_and_logical_date_are_exported_alike_from_sink_and_memory(backend: str,
                                                                               tmp_path: Path) -> None:
    """Tool calls (MCP entry included), web search, content filter, fingerprint, reuse and the logical date
    reach the file unchanged, and the SQL round trip on each database gives the same bytes as memory."""
    dated = RunScope("dag", "task", "scheduled__2026-11-26", logical_date=dt.datetime(2026, 11, 26, 8, tzinfo=BEIJING))
    records = [_record(r.row_key, r.status, scope=dated, **{k: v for k, v in r.__dict__.items()
                                                             if k not in ("scope", "row_key", "status")})
               for r in _records()[:1] + _records()[2:]]
    url = f"sqlite:///{tmp_path / 'sink.db'}" if backend == "sqlite" else server_url(backend)
    suffix = uuid.uuid4().hex[:12]
    sink = SQLSink.from_url(url, f"glm_results_{suffix}", f"glm_usage_{suffix}", runs_table=f"glm_runs_{suffix}")
    try:
        sink.ensure_tables()
        sink.write(records, [])
        from_sink, from_memory = tmp_path / "sink.jsonl", tmp_path / "memory.jsonl"
        JSONLResultsExport(f"file://{from_sink}").write(dated, sink=sink)
        JSONLResultsExport(f"file://{from_memory}").write(dated, records=records)
        lines = _parse(from_sink.read_bytes())
        assert lines == [_expected(r) for r in sorted(records, key=lambda r: r.row_key)]
        assert from_sink.read_bytes() == from_memory.read_bytes()
        whole = lines[1]
        assert whole["row_key"] == "r-03"
        assert (whole["tool_calls"], whole["web_search"], whole["content_filter"]) == (
            TOOL_CALLS, WEB_SEARCH, CONTENT_FILTER)
        assert (whole["fingerprint"], whole["reused_from_run_id"]) == ("f" * 64, "run-0")
        assert {line["logical_date"] for line in lines} == {"2026-11-26T00:00:00.000000Z"}
        assert lines[0]["tool_calls"] is None, "no calls: null, not an empty list"
    finally:
        for table in (sink.results_table, sink.usage_table, sink.runs_table):
            table.drop(sink._engine, checkfirst=True)
        sink.dispose()


def test_no_logical_date_and_non_finite_arguments(tmp_path: Path) -> None:
    dest = tmp_path / "results.jsonl"
    calls = [{"id": "c", "type": "function", "name": "f", "arguments": {"x": float("nan"), "y": [float("-inf")]}}]
    JSONLResultsExport(f"file://{dest}").write(SCOPE, records=[_record("a", tool_calls=calls)])
    (line,) = _parse(dest.read_bytes())
    assert line["logical_date"] is None
    assert line["tool_calls"][0]["arguments"] == {"x": None, "y": [None]}


# ----------------------------------------------------------------------------------- SQLSink.iter_results


@pytest.mark.parametrize("backend", BACKENDS)
def test_iter_results_streams_in_code_point_order(backend: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sink.db'}" if backend == "sqlite" else server_url(backend)
    suffix = uuid.uuid4().hex[:12]
    sink = SQLSink.from_url(url, f"glm_results_{suffix}", f"glm_usage_{suffix}")
    try:
        sink.ensure_tables()
        sink.write([_record(key, content=f"c{key}") for key in reversed(KEYS)], [])
        sink.write([_record("x", scope=OTHER), _record("y", scope=MAPPED)], [])
        rows = sink.iter_results(SCOPE, batch_size=2)
        assert iter(rows) is rows, "a lazy iterator, not a list"
        keys = [row["row_key"] for row in rows]
        assert keys == sorted(KEYS)
        first = next(sink.iter_results(SCOPE, batch_size=3))
        assert first["row_key"] == sorted(KEYS)[0]
        assert first["content"] == f"c{sorted(KEYS)[0]}"
        assert [row["row_key"] for row in sink.iter_results(MAPPED)] == ["y"]
        with pytest.raises(ValueError, match="batch_size"):
            next(sink.iter_results(SCOPE, batch_size=0))
    finally:
        sink.results_table.drop(sink._engine, checkfirst=True)
        sink.usage_table.drop(sink._engine, checkfirst=True)
        sink.dispose()


def test_iter_results_uses_a_server_side_cursor(backend_sink: SQLSink) -> None:
    """PostgreSQL gets a named cursor, MySQL/MariaDB an unbuffered one: rows are not all fetched at once."""
    cursors: list[Any] = []
    sa.event.listen(backend_sink._engine, "before_cursor_execute",
                    lambda conn, cursor, *args: cursors.append(cursor))
    backend_sink.write([_record(key) for key in KEYS], [])
    cursors.clear()
    assert len(list(backend_sink.iter_results(SCOPE, batch_size=4))) == len(KEYS)
    (cursor,) = cursors
    if backend_sink._dialect == "postgresql":
        assert cursor.name, "a named (server-side) cursor"
    else:
        assert "SSCursor" in [cls.__name__ for cls in type(cursor).__mro__]


@pytest.fixture(params=[p for p in BACKENDS if p.id != "sqlite"])
def backend_sink(request: pytest.FixtureRequest) -> Iterator[SQLSink]:
    suffix = uuid.uuid4().hex[:12]
    sink = SQLSink.from_url(server_url(request.param), f"glm_results_{suffix}", f"glm_usage_{suffix}")
    sink.ensure_tables()
    yield sink
    sink.results_table.drop(sink._engine, checkfirst=True)
    sink.usage_table.drop(sink._engine, checkfirst=True)
    sink.dispose()


def test_export_from_sink_keeps_memory_flat(tmp_path: Path) -> None:
    """20 000 rows (about 10 MB of JSON) go through the export without ever being held at once."""
    sink = _sqlite_sink(tmp_path)
    rows = 20_000
    text = "回答 answer " * 40
    for start in range(0, rows, 5000):
        sink.write([_record(f"r{i:06d}", content=text) for i in range(start, start + 5000)], [])
    dest = tmp_path / "big.jsonl"
    JSONLResultsExport(f"file://{dest}").write(SCOPE, records=[])  # imports happen outside the measure
    tracemalloc.start()
    try:
        JSONLResultsExport(f"file://{dest}", batch_size=500).write(SCOPE, sink=sink)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        sink.dispose()
    size = dest.stat().st_size
    assert size > 10_000_000
    assert peak < size / 4, f"peak {peak} bytes for a {size}-byte export"
    with dest.open("rb") as lines:
        count = sum(1 for _ in lines)
    assert count == rows


# ------------------------------------------------------------------------------------- S3 (moto server)


def _keys(client: Any) -> list[str]:
    listing = client.list_objects_v2(Bucket=client.bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_s3_from_records_and_sink(s3: Any, tmp_path: Path) -> None:
    key = "glm/run-1/results.jsonl"
    export = JSONLResultsExport(f"s3://{s3.bucket}/{key}", conn_id="aws_moto")
    assert export.validate() == f"s3://{s3.bucket}/{key}"
    records = _records()
    assert export.write(SCOPE, records=records) == f"s3://{s3.bucket}/{key}"
    body = s3.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    assert _parse(body) == [_expected(r) for r in sorted(records, key=lambda r: r.row_key)]
    assert _keys(s3) == [key], "the temporary key is gone"

    sink = _sqlite_sink(tmp_path)
    try:
        sink.write(records[:2], [])
        url = JSONLResultsExport(f"s3://aws_moto@{s3.bucket}/{key}").write(SCOPE, sink=sink)
    finally:
        sink.dispose()
    assert url == f"s3://{s3.bucket}/{key}"
    body = s3.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    expected = [_expected(r) for r in sorted(records[:2], key=lambda r: r.row_key)]
    assert _parse(body) == expected, "overwritten"
    assert _keys(s3) == [key]


def test_s3_failure_midway_leaves_no_object(s3: Any) -> None:
    export = JSONLResultsExport(f"s3://{s3.bucket}/glm/run-1/results.jsonl", conn_id="aws_moto")
    with pytest.raises(RuntimeError, match="broke midway"):
        export.write_rows(_failing(3))
    assert _keys(s3) == []
    export.write(SCOPE, records=_records()[:1])
    before = s3.get_object(Bucket=s3.bucket, Key="glm/run-1/results.jsonl")["Body"].read()
    with pytest.raises(RuntimeError, match="broke midway"):
        export.write_rows(_failing(3))
    assert s3.get_object(Bucket=s3.bucket, Key="glm/run-1/results.jsonl")["Body"].read() == before
    assert _keys(s3) == ["glm/run-1/results.jsonl"]
