"""Shared pieces of the spend-truth tests (issue 9): a warehouse per test on each database, the
connection with chosen extras, operators over a few rows, and the ledger check against the server.

Each warehouse gets its own table names, dropped afterwards, so the shared PostgreSQL and MariaDB
databases never mix one test's ledger with another's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _databases import backend_url
from _ledger import check_ledger

from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.rows._records import RunScope
from airflow_provider_glm.sinks.sql import SQLSink
from airflow_provider_glm.testing import GLMTestServer

SCOPE = RunScope("test_dag", "glm", "run-1")
WORDS = ("alpha", "bravo", "charlie", "delta")
TARGET = "bravo"
"""The row (``r1``) most tests stage their fault on."""


def input_rows(words: tuple[str, ...] = WORDS) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "text": word} for i, word in enumerate(words)]


def use_connection(monkeypatch: pytest.MonkeyPatch, srv: GLMTestServer | None = None, *, host: str | None = None,
                   **extra: Any) -> None:
    """``glm_default`` pointing at ``srv`` (or ``host``), with these extras on top of the model."""
    conn = {"conn_type": "glm", "password": srv.api_key if srv is not None else "sk-unused-key",
            "host": host or (srv.base_url if srv is not None else ""), "extra": {"model": "glm-4.5", **extra}}
    monkeypatch.setenv("AIRFLOW_CONN_GLM_DEFAULT", json.dumps(conn))


@dataclass
class Warehouse:
    """One test's tables on one database."""

    url: str
    tables: dict[str, str]

    @property
    def options(self) -> dict[str, Any]:
        return {"sqlalchemy_url": self.url, **self.tables}

    def sink(self) -> SQLSink:
        return SQLSink.from_url(self.url, **{k: v for k, v in self.tables.items() if k != "runs_table"})

    def read(self, scope: RunScope | None = SCOPE) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(results, usage) of ``scope`` (every scope with ``None``)."""
        sink = self.sink()
        try:
            return sink.results(scope), sink.usage(scope)
        finally:
            sink.dispose()

    def runs(self) -> list[dict[str, Any]]:
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text(f"SELECT * FROM {self.tables['runs_table']}"))  # noqa: S608
                return [dict(r._mapping) for r in rows]
        finally:
            engine.dispose()


def make_warehouse(backend: str, tmp_path: Path) -> Iterator[Warehouse]:
    url = backend_url(backend, tmp_path)
    tag = uuid.uuid4().hex[:10]
    tables = {"results_table": f"sres_{tag}", "usage_table": f"suse_{tag}", "runs_table": f"sruns_{tag}"}
    yield Warehouse(url, tables)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for name in tables.values():
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    finally:
        engine.dispose()


def chat_operator(wh: Warehouse | None, **kwargs: Any) -> GLMChatOperator:
    params: dict[str, Any] = {"task_id": "glm", "row_key": "id", "prompt": "Summarize: {{ row.text }}",
                              "rows": input_rows(), "max_concurrency": 1, "progress_interval": 60}
    if wh is not None:
        params.update(wh.options)
    params.update(kwargs)
    return GLMChatOperator(**params)


def run_operator(op: Any, context: dict[str, Any]) -> tuple[Any, BaseException | None]:
    """``op.execute(context)``: its return value, or the exception it raised."""
    try:
        return op.execute(context), None
    except Exception as exc:  # the tests assert on which one
        return None, exc


def chat_attempts(srv: GLMTestServer, word: str) -> int:
    """Chat requests (online or async submits) the server saw for the row whose text is ``word``."""
    return sum(1 for r in srv.requests if r.path.endswith("chat/completions")
               and f'Summarize: {word}"' in r.raw_body.decode())


def checked_ledger(wh: Warehouse, srv: GLMTestServer, *, unseen: int | None = None,
                   scope: RunScope | None = SCOPE) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The spend-truth invariants (``tests/_ledger.py``) over the warehouse's ledger; results by row key and
    the ledger rows. ``unseen``: how many billed responses must be missing from the known rows."""
    results, usage = wh.read(scope)
    missing = check_ledger(usage, srv)
    if unseen is not None:
        assert len(missing) == unseen, f"{len(missing)} billed answers are not known rows, expected {unseen}"
    return {r["row_key"]: r for r in results}, usage
