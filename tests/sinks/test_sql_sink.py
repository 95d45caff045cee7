"""Tests for the SQL sink on SQLite, PostgreSQL and MariaDB/MySQL."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _databases import BACKENDS, server_url
from sqlalchemy.engine import Engine

from airflow_provider_glm.rows._records import ResultRecord, RunScope, UsageRecord
from airflow_provider_glm.sinks.sql import SQLSink, result_key, validate_table_name

SCOPE = RunScope("dag", "task", "run-1")
OTHER = RunScope("dag", "task", "run-2")
MAPPED = RunScope("dag", "task", "run-1", map_index=3)
UNREACHABLE = "postgresql+psycopg2://nobody@127.0.0.1:1/none"

@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = sa.create_engine(f"sqlite:///{tmp_path / 'sink.db'}", connect_args={"timeout": 30})
    else:
        eng = sa.create_engine(server_url(request.param), pool_pre_ping=True)
    yield eng
    eng.dispose()


def _names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:12]
    return f"glm_results_{suffix}", f"glm_usage_{suffix}"


def _drop(sink: SQLSink, engine: Engine) -> None:
    sink.dispose()
    sink.results_table.drop(engine, checkfirst=True)
    sink.usage_table.drop(engine, checkfirst=True)


@pytest.fixture
def sink(engine: Engine) -> Iterator[SQLSink]:
    results_table, usage_table = _names()
    made = SQLSink(engine, results_table, usage_table)
    made.ensure_tables()
    yield made
    _drop(made, engine)


def _result(row_key: str, status: Any = "ok", scope: RunScope = SCOPE, **kwargs: Any) -> ResultRecord:
    return ResultRecord(scope=scope, row_key=row_key, status=status, **kwargs)


def _usage(response_id: str, scope: RunScope = SCOPE, **kwargs: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": f"req-{response_id}",
        "try_number": 1,
        "row_key": "r1",
        "model": "glm-4.5",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
    }
    values.update(kwargs)
    return UsageRecord(scope=scope, response_id=response_id, **values)


def test_valid_table_names() -> None:
    assert validate_table_name("glm_results") == (None, "glm_results")
    assert validate_table_name("analytics.GLM_usage_2") == ("analytics", "GLM_usage_2")
    assert validate_table_name("_x" + "y" * 61) == (None, "_x" + "y" * 61)


@pytest.mark.parametrize(
    "name",
    [
        "x; DROP TABLE y",
        "x'y",
        'x"y',
        "`x`",
        "[x]",
        "a.b.c",
        "my table",
        " glm",
        "glm\n",
        "",
        ".x",
        "x.",
        "1abc",
        "x--",
        "x" * 64,
        "résultats",
    ],
)
def test_bad_table_names_raise_without_database_io(name: str) -> None:
    with pytest.raises(ValueError, match="invalid table name") as info:
        validate_table_name(name)
    assert repr(name) in str(info.value)
    unreachable = sa.create_engine(UNREACHABLE)
    with pytest.raises(ValueError, match="invalid table name"):
        SQLSink(unreachable, results_table=name)
    with pytest.raises(ValueError, match="invalid table name"):
        SQLSink(unreachable, usage_table=name)
    with pytest.raises(ValueError, match="invalid table name"):
        SQLSink.from_url(UNREACHABLE, results_table=name)


def test_construction_does_no_io_and_rejects_unsupported_dialects() -> None:
    sink = SQLSink(sa.create_engine(UNREACHABLE), "s.results", "s.usage")
    assert sink.results_table.fullname == "s.results"
    mock = sa.create_mock_engine("oracle://", executor=lambda *a, **k: None)
    with pytest.raises(ValueError, match="unsupported SQL dialect 'oracle'"):
        SQLSink(mock)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must have different names"):
        SQLSink(sa.create_engine(UNREACHABLE), "same", "same")


def test_result_key_is_sha256_of_the_logical_key() -> None:
    key = result_key(SCOPE, "r1")
    assert len(key) == 64
    assert int(key, 16) >= 0
    assert key != result_key(MAPPED, "r1")
    assert result_key(RunScope("a", "b,c", "d"), "e") != result_key(RunScope("a,b", "c", "d"), "e")


def test_ensure_tables_creates_and_is_idempotent(engine: Engine) -> None:
    results_table, usage_table = _names()
    sink = SQLSink(engine, results_table, usage_table)
    try:
        sink.ensure_tables()
        sink.ensure_tables()
        inspector = sa.inspect(engine)
        assert inspector.has_table(results_table)
        assert inspector.has_table(usage_table)
        assert inspector.get_pk_constraint(results_table)["constrained_columns"] == ["result_key"]
        assert inspector.get_pk_constraint(usage_table)["constrained_columns"] == ["response_id"]
        for table in (results_table, usage_table):
            indexed = [index["column_names"] for index in inspector.get_indexes(table)]
            assert ["dag_id", "task_id", "run_id"] in indexed
        SQLSink(engine, results_table, usage_table).ensure_tables()
    finally:
        _drop(sink, engine)


def test_concurrent_ensure_tables(engine: Engine) -> None:
    results_table, usage_table = _names()
    sinks = [SQLSink(engine, results_table, usage_table) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(sinks))

    def create(sink: SQLSink) -> None:
        barrier.wait()
        try:
            sink.ensure_tables()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(sink,)) for sink in sinks]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
    finally:
        _drop(sinks[0], engine)


def test_mismatched_existing_table_is_a_clear_error(engine: Engine) -> None:
    results_table, usage_table = _names()
    legacy = sa.Table(
        results_table,
        sa.MetaData(),
        sa.Column("result_key", sa.String(64), primary_key=True),
        sa.Column("dag_id", sa.String(250)),
        sa.Column("content", sa.Text),
    )
    legacy.create(engine)
    sink = SQLSink(engine, results_table, usage_table)
    try:
        with pytest.raises(ValueError, match=results_table) as info:
            sink.ensure_tables()
        message = str(info.value)
        assert "lacks required column" in message
        for column in ("status", "row_key", "updated_at"):
            assert column in message
        assert "'content'" not in message
    finally:
        _drop(sink, engine)
        legacy.drop(engine, checkfirst=True)


def test_upsert_updates_the_same_key(sink: SQLSink) -> None:
    sink.write([_result("r1", "failed", error="timeout"), _result("r2", content="two")], [])
    later = dt.datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    sink.write([_result("r1", content="one", model="glm-4.5", total_tokens=7, updated_at=later)], [])
    rows = sink.results(SCOPE)
    assert [(r["row_key"], r["status"], r["content"], r["error"]) for r in rows] == [
        ("r1", "ok", "one", None),
        ("r2", "ok", "two", None),
    ]
    assert rows[0]["total_tokens"] == 7
    assert rows[0]["updated_at"] == later
    assert rows[0]["updated_at"].tzinfo == dt.UTC
    assert rows[0]["result_key"] == result_key(SCOPE, "r1")


def test_repeated_key_in_one_write_keeps_the_last(sink: SQLSink) -> None:
    sink.write([_result("r1", "failed"), _result("r1", content="final")], [])
    assert [(r["status"], r["content"]) for r in sink.results()] == [("ok", "final")]


def test_usage_duplicate_response_id_is_ignored(sink: SQLSink) -> None:
    created = dt.datetime(2026, 7, 31, 12, 0, 0, 654321, tzinfo=dt.UTC)
    first = _usage("resp-1", cost=Decimal("0.0000123456"), currency="USD", latency_ms=850, created_at=created)
    sink.write([], [first, _usage("resp-1", total_tokens=999)])
    sink.write([], [_usage("resp-1", total_tokens=1234), _usage("resp-2")])
    rows = sink.usage(SCOPE)
    assert [r["response_id"] for r in rows] == ["resp-1", "resp-2"]
    assert rows[0]["total_tokens"] == 15
    assert rows[0]["cost"] == Decimal("0.0000123456")
    assert rows[0]["currency"] == "USD"
    assert rows[0]["latency_ms"] == 850
    assert rows[0]["created_at"] == created
    assert rows[0]["request_id"] == "req-resp-1"


def ok_keys(sink: SQLSink, scope: RunScope) -> set[str]:
    return {r["row_key"] for r in sink.results(scope) if r["status"] == "ok"}


def spent(sink: SQLSink, scope: RunScope) -> tuple[int, Decimal | None]:
    sums = sink.spent(scope)
    return sums["total_tokens"], sums["cost"]


def test_ok_row_keys_and_spent_per_scope(sink: SQLSink) -> None:
    sink.write(
        [
            _result("a"),
            _result("b", "failed"),
            _result("c", "filtered"),
            _result("d"),
            _result("a", scope=OTHER),
            _result("z", scope=MAPPED),
        ],
        [
            _usage("u1", total_tokens=100, try_number=1),
            _usage("u2", total_tokens=50, try_number=2),
            _usage("u3", scope=OTHER, total_tokens=10, cost=Decimal("0.25")),
            _usage("u4", scope=OTHER, total_tokens=20, cost=Decimal("0.0000000001")),
            _usage("u5", scope=OTHER, total_tokens=30),
        ],
    )
    assert ok_keys(sink, SCOPE) == {"a", "d"}
    assert ok_keys(sink, OTHER) == {"a"}
    assert ok_keys(sink, MAPPED) == {"z"}
    assert ok_keys(sink, RunScope("dag", "task", "nope")) == set()
    assert spent(sink, SCOPE) == (150, None)
    assert spent(sink, OTHER) == (60, Decimal("0.2500000001"))
    assert spent(sink, MAPPED) == (0, None)
    assert spent(sink, RunScope("DAG", "task", "run-1")) == (0, None)


def test_spent_sums_many_small_costs_exactly(sink: SQLSink) -> None:
    usage = [_usage(f"u{i}", cost=Decimal("0.0000028000"), total_tokens=2) for i in range(1000)]
    sink.write([], usage)
    assert spent(sink, SCOPE) == (2000, Decimal("0.0028"))


def test_text_round_trips_exactly(sink: SQLSink) -> None:
    tricky = (
        'it\'s "quoted" `back` \\ ; DROP TABLE x; --\r\nline2\ttab 😀🚀 中文 \u00e9\u0301 %s %(x)s :param ?'
    )
    megabyte = ("ab'\"\n😀" * 200_000)[: 1024 * 1024]
    sink.write(
        [
            _result("quotes", content=tricky, reasoning_content=tricky, error=tricky, finish_reason="stop"),
            _result("big", content=megabyte, reasoning_content=megabyte, error=megabyte),
            _result(tricky[:200]),
        ],
        [],
    )
    rows = {r["row_key"]: r for r in sink.results(SCOPE)}
    assert rows["quotes"]["content"] == tricky
    assert rows["quotes"]["reasoning_content"] == tricky
    assert rows["quotes"]["error"] == tricky
    for column in ("content", "reasoning_content", "error"):
        assert len(rows["big"][column]) == 1024 * 1024
        assert rows["big"][column] == megabyte
    assert tricky[:200] in rows
    assert ok_keys(sink, SCOPE) == {"quotes", "big", tricky[:200]}


@pytest.mark.parametrize(
    "output",
    [
        {"answer": "x😀", "items": [1, 2.5, None, True, False, "é"], "nested": {"a": {"b": []}}},
        [1, "two", {"three": 3}],
        "just a string",
        42,
        -3.25,
        True,
        {},
        [],
    ],
    ids=["object", "list", "string", "int", "float", "bool", "empty-object", "empty-list"],
)
def test_json_output_round_trips(sink: SQLSink, output: Any) -> None:
    sink.write([_result("r1", output=output)], [])
    assert sink.results(SCOPE)[0]["output"] == output


def test_none_output_is_sql_null(sink: SQLSink, engine: Engine) -> None:
    sink.write([_result("r1", output=None), _result("r2", output={"a": None})], [])
    table = sink.results_table
    with engine.connect() as conn:
        nulls = conn.execute(sa.select(table.c.row_key).where(table.c.output.is_(None))).scalars().all()
    assert nulls == ["r1"]
    assert [r["output"] for r in sink.results()] == [None, {"a": None}]


def test_failing_usage_part_leaves_results_invisible(sink: SQLSink) -> None:
    sink.write([_result("before", content="kept")], [_usage("u0")])
    with pytest.raises(sa.exc.IntegrityError):
        sink.write(
            [_result("before", content="changed"), _result("new")],
            [_usage("u1"), _usage("u2", model=None)],
        )
    assert [(r["row_key"], r["content"]) for r in sink.results()] == [("before", "kept")]
    assert [r["response_id"] for r in sink.usage()] == ["u0"]


def test_invalid_records_raise_before_any_write(sink: SQLSink) -> None:
    with pytest.raises(ValueError, match="response_id"):
        sink.write([_result("new")], [_usage("x" * 129)])
    with pytest.raises(ValueError, match="row_key"):
        sink.write([_result("k" * 256)], [])
    with pytest.raises(ValueError, match="'done'"):
        sink.write([_result("r", status="done")], [])
    with pytest.raises(ValueError, match="dag_id"):
        sink.write([_result("r", scope=RunScope("", "t", "r"))], [])
    assert sink.results() == []
    assert sink.usage() == []


def test_concurrent_upserts_of_the_same_keys(sink: SQLSink) -> None:
    keys = [f"row-{i:03d}" for i in range(100)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        barrier.wait()
        try:
            for round_ in range(10):
                results = [_result(key, content=f"{name}-{round_}") for key in keys]
                usage = [_usage(f"{name}-{round_}-{key}") for key in keys[:10]] + [_usage("shared")]
                sink.write(results, usage)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("t1", "t2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    rows = sink.results()
    assert [r["row_key"] for r in rows] == keys
    assert {r["content"] for r in rows} <= {"t1-9", "t2-9"}
    assert len(sink.usage()) == 2 * 10 * 10 + 1


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mysql", id="mariadb", marks=pytest.mark.mysql),
    ],
)
def test_schema_qualified_tables(backend: str) -> None:
    url = server_url(backend)
    admin = sa.create_engine(url)
    schema = f"glm_schema_{uuid.uuid4().hex[:10]}"
    statement = "CREATE SCHEMA" if backend == "postgresql" else "CREATE DATABASE"
    with admin.begin() as conn:
        conn.execute(sa.text(f"{statement} {schema}"))
    results_table, usage_table = _names()
    sink = SQLSink.from_url(url, f"{schema}.{results_table}", f"{schema}.{usage_table}")
    try:
        sink.ensure_tables()
        sink.ensure_tables()
        sink.write([_result("r1")], [_usage("u1", cost=Decimal("1.5"))])
        assert ok_keys(sink, SCOPE) == {"r1"}
        assert spent(sink, SCOPE) == (15, Decimal("1.5"))
        assert sa.inspect(admin).has_table(results_table, schema=schema)
        assert not sa.inspect(admin).has_table(results_table)
    finally:
        sink.dispose()
        with admin.begin() as conn:
            drop = f"DROP SCHEMA {schema} CASCADE" if backend == "postgresql" else f"DROP DATABASE {schema}"
            conn.execute(sa.text(drop))
        admin.dispose()


def test_from_url_sqlite_sets_busy_timeout(tmp_path: Path) -> None:
    sink = SQLSink.from_url(f"sqlite:///{tmp_path / 'x.db'}", "r", "u")
    try:
        sink.ensure_tables()
        sink.write([_result("r1")], [_usage("u1")])
        assert ok_keys(sink, SCOPE) == {"r1"}
    finally:
        sink.dispose()


def test_write_rate_sanity(sink: SQLSink) -> None:
    count = 10_000
    results = [
        _result(f"row-{i:05d}", content="x" * 200, output={"i": i}, total_tokens=30) for i in range(count)
    ]
    usage = [
        _usage(f"resp-{i:05d}", row_key=f"row-{i:05d}", cost=Decimal("0.0000100000")) for i in range(count)
    ]
    started = time.perf_counter()
    sink.write(results, usage)
    elapsed = time.perf_counter() - started
    print(f"\n{sink.results_table.name}: {2 * count / elapsed:,.0f} rows/s")
    assert len(ok_keys(sink, SCOPE)) == count
    assert spent(sink, SCOPE) == (15 * count, Decimal("0.1"))
