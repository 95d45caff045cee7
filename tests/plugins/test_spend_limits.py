"""Issue 22, finding 6: the spend page under real data and real permissions.

Each view does bounded work (the ledger grouped by day, DAG, task, model and currency, never by
run; the top runs cut by ``LIMIT`` in SQL; at most two connections per view and a gate on queries
at once per process), answers are cached briefly per filters and readable DAGs, extreme dates are
refused with 422, and database errors reach the server log in full but the viewer only as a generic
message with an error id. On SQLite, PostgreSQL and MariaDB where the database matters.

The app runs in-process with the auth manager's dependencies replaced (the browser test runs the
real ones). Its engine is the test's own: the page normally builds it from an Airflow connection,
which for MariaDB needs the MySQL provider this environment does not install; the lookup itself is
tested in ``test_spend_plugin.py``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _databases import BACKENDS, backend_url
from _spend_seed import DAGS, SeededTables, seed, unique_names

from airflow_provider_glm.plugins import _app
from airflow_provider_glm.plugins._spend_cache import AnswerCache, QueryGate
from airflow_provider_glm.plugins._spend_queries import SpendFilters, SpendQueries

NOW = dt.datetime.now(dt.UTC)
LIMIT_S = 120.0
"""Generous limit for waiting on a state another thread reaches (never a wall-clock assertion)."""
HIDDEN = "glm_secret_costs"


@dataclass
class Clock:
    """A monotonic clock the test moves by hand."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Page:
    """The app on a seeded database, and the knobs the tests turn."""

    client: Any
    engine: sa.Engine
    names: SeededTables
    cache: AnswerCache
    gate: QueryGate
    clock: Clock
    readable: set[str] = field(default_factory=lambda: set(DAGS))


@pytest.fixture(params=BACKENDS)
def page(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:
    from fastapi.testclient import TestClient

    engine = sa.create_engine(backend_url(request.param, tmp_path))
    names = unique_names("lim")
    clock = Clock()
    try:
        seed(engine, names, now=NOW)
        monkeypatch.setattr(_app, "_engine_of", lambda conn_id: engine)
        cache, gate = AnswerCache(60, clock=clock), QueryGate(2, wait=LIMIT_S)
        app = _app.create_app(_app.SpendConfig("glm_spend_limits", names.usage, names.results, names.runs),
                              cache=cache, gate=gate)
        state = Page(None, engine, names, cache, gate, clock)
        deps = app.state.auth_dependencies
        app.dependency_overrides[deps["may_read_dags"]] = lambda: None
        app.dependency_overrides[deps["readable_dag_ids"]] = lambda: frozenset(state.readable)
        with TestClient(app) as client:
            state.client = client
            yield state
    finally:
        names.drop(engine)
        engine.dispose()


class Records(logging.Handler):
    """The page logger's records, collected on the logger itself: Airflow's logging set-up, which may run
    for the first time inside a request, replaces the root logger's handlers (and pytest's caplog with
    them)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def page_log() -> Iterator[Records]:
    records = Records()
    _app.log.addHandler(records)
    try:
        yield records
    finally:
        _app.log.removeHandler(records)


# --- extreme dates ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "says"), [
    ({"end": "9999-12-31"}, "end=9999-12-31 is outside the dates the page can show, 1970-01-01 to 9999-12-30"),
    ({"end": "0001-01-01"}, "end=0001-01-01 is outside"),
    ({"start": "0001-01-01", "end": "0001-01-05"}, "start=0001-01-01 is outside"),
    ({"start": "9999-12-31", "end": "9999-12-31"}, "start=9999-12-31 is outside"),
    ({"days": 366, "end": "1970-06-01"}, "the 366 days up to end=1970-06-01 start before 1970-01-01"),
    ({"start": "2024-01-01", "end": "2025-01-01"}, "span at most 366 days"),
])
def test_extreme_dates_answer_422_with_the_reason(page: Page, params: dict[str, Any], says: str) -> None:
    """Before: 9999-12-31 and 0001-01-01 raised OverflowError (HTTP 500); 367 days passed the 366-day cap."""
    for path in ("/api/summary", "/api/runs"):
        answer = page.client.get(path, params=params)
        assert answer.status_code == 422, answer.text
        assert says in answer.json()["detail"]
    html = page.client.get("/", params=params, headers={"Accept": "text/html"})
    assert html.status_code == 422
    assert says.replace("<", "&lt;") in html.text


@pytest.mark.parametrize("params", [
    {"start": "1970-01-01", "end": "1970-01-01"}, {"start": "9999-12-30", "end": "9999-12-30"},
    {"start": "2024-01-01", "end": "2024-12-31"},  # 366 days (a leap year)
])
def test_the_first_and_last_days_still_answer(page: Page, params: dict[str, Any]) -> None:
    for path in ("/api/summary", "/api/daily", "/api/tasks", "/api/runs", "/api/budgets", "/"):
        answer = page.client.get(path, params=params)
        assert answer.status_code == 200, (path, answer.text)
    assert page.client.get("/api/summary", params=params).json()["totals"]["entries"] == 0


# --- database errors -------------------------------------------------------------------------------

def test_database_errors_are_logged_with_an_id_and_never_shown(page: Page, page_log: Records) -> None:
    """Before: the driver's first line (up to 300 characters, naming the table) was shown to viewers."""
    with page.engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {page.names.usage}"))
    for path, accept in (("/api/summary", "application/json"), ("/", "text/html")):
        page_log.records.clear()
        answer = page.client.get(path, headers={"Accept": accept})
        assert answer.status_code == 503
        shown = answer.json()["detail"] if accept == "application/json" else answer.text
        (error_id,) = re.findall(r"error id ([0-9a-f]{12})", shown)
        assert "could not read its data" in shown
        for secret in (page.names.usage, "SELECT", "exist", "table", "Error", "glm_spend_limits"):
            assert secret not in shown, secret
        (record,) = [r for r in page_log.records if error_id in r.getMessage()]
        assert page.names.usage in record.getMessage(), "the log has the whole error"
        assert record.exc_info is not None


def test_a_missing_connection_is_logged_with_an_id_and_not_named(page_log: Records) -> None:
    from fastapi.testclient import TestClient

    app = _app.create_app(_app.SpendConfig(spend_conn_id="warehouse_secret_name"))
    deps = app.state.auth_dependencies
    app.dependency_overrides[deps["may_read_dags"]] = lambda: None
    app.dependency_overrides[deps["readable_dag_ids"]] = lambda: frozenset(DAGS)
    with TestClient(app) as client:
        answer = client.get("/api/summary")
    assert answer.status_code == 503
    assert "warehouse_secret_name" not in answer.text
    (error_id,) = re.findall(r"error id ([0-9a-f]{12})", answer.json()["detail"])
    (record,) = [r for r in page_log.records if error_id in r.getMessage()]
    assert "warehouse_secret_name" in record.getMessage()
    assert record.levelno == logging.ERROR


# --- bounded work ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_view_reads_no_more_groups_when_runs_multiply(backend: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """400 runs of one DAG, task and model on one day: the page's queries return the same number of rows
    as for one run. Before: the page grouped the ledger by run too (400 more rows, and more with every run)."""
    engine = sa.create_engine(backend_url(backend, tmp_path), poolclass=sa.pool.NullPool)
    names = unique_names("runs")
    try:
        seed(engine, names, now=NOW, runs_per_day=1, rows_per_run=1)
        queries = SpendQueries(engine, names.usage, names.results, names.runs)
        f = SpendFilters.last_days(30, now=NOW, limit=5)
        fetched: list[int] = []
        original = SpendQueries._fetch

        def counting(self: SpendQueries, query: Any, **kwargs: Any) -> list[dict[str, Any]]:
            rows = original(self, query, **kwargs)
            fetched.append(len(rows))
            return rows

        monkeypatch.setattr(SpendQueries, "_fetch", counting)
        before = queries.page(f)
        rows_before = sorted(fetched)
        template = {k: v for k, v in _one_ledger_row(engine, queries).items() if k != "id"}
        day = NOW.replace(hour=0, minute=0, second=1, microsecond=0)
        with engine.begin() as conn:
            conn.execute(sa.insert(queries.usage), [
                {**template, "response_id": f"many-{i}", "run_id": f"manual__{i:04d}", "created_at": day}
                for i in range(400)])
        fetched.clear()
        after = queries.page(f)
        assert sorted(fetched) == rows_before, "every query returns as many rows as with one run a day"
        assert after["overview"]["totals"]["entries"] == before["overview"]["totals"]["entries"] + 400
        assert len(after["runs"]) == 5
    finally:
        names.drop(engine)
        engine.dispose()


def _one_ledger_row(engine: sa.Engine, queries: SpendQueries) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(sa.select(queries.usage).where(queries.usage.c.cost.is_not(None)).limit(1)).mappings().one()
    return dict(row)


def test_queries_wait_for_a_slot_of_the_gate(tmp_path: Path) -> None:
    """Three views at once through a gate of two: two queries run, the third waits for a slot."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}", connect_args={"check_same_thread": False})
    names = unique_names("gate")
    seed(engine, names, now=NOW)
    gate = QueryGate(2, wait=LIMIT_S)
    release = threading.Event()
    blocked = threading.Semaphore(0)

    @sa.event.listens_for(engine, "before_cursor_execute")
    def hold(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if names.usage in statement:  # the ledger's statement (WITH ... SELECT); nothing else reads it here
            blocked.release()
            assert release.wait(LIMIT_S), "the test never released the query"

    queries = SpendQueries(engine, names.usage, names.results, names.runs, gate=gate)
    answers: list[Any] = []
    threads = [threading.Thread(target=lambda d=d: answers.append(queries.overview(SpendFilters.last_days(d, now=NOW))))
               for d in (5, 6, 7)]
    for thread in threads:
        thread.start()
    try:
        assert gate.wait_for(lambda g: g.running == 2 and g.waiting == 1, LIMIT_S), (gate.running, gate.waiting)
    finally:
        release.set()
        for thread in threads:
            thread.join(LIMIT_S)
    assert len(answers) == 3
    assert gate.most_running == 2
    engine.dispose()


def test_a_full_gate_answers_503_busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    names = unique_names("busy")
    seed(engine, names, now=NOW)
    monkeypatch.setattr(_app, "_engine_of", lambda conn_id: engine)
    busy = QueryGate(1, wait=0)
    app = _app.create_app(_app.SpendConfig("glm_spend_limits", names.usage, names.results, names.runs), gate=busy)
    deps = app.state.auth_dependencies
    app.dependency_overrides[deps["may_read_dags"]] = lambda: None
    app.dependency_overrides[deps["readable_dag_ids"]] = lambda: frozenset(DAGS)
    with busy.slot(), TestClient(app) as client:
        answer = client.get("/api/summary")
        html = client.get("/", headers={"Accept": "text/html"})
    assert answer.status_code == html.status_code == 503
    assert answer.headers["Retry-After"] == "30"
    assert "busy" in answer.json()["detail"]
    assert "busy" in html.text
    with TestClient(app) as client:
        assert client.get("/api/summary").status_code == 200, "the slot is free again"
    engine.dispose()


# --- the cache -------------------------------------------------------------------------------------

def _total(page: Page, **params: Any) -> int:
    answer = page.client.get("/api/summary", params=params)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["totals"]["entries"])


def test_answers_are_cached_for_the_ttl_per_filters(page: Page) -> None:
    """The same filters within 60 s are answered from memory; other filters, or later, from the database."""
    first = _total(page)
    computed = page.cache.computed
    with page.engine.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM {page.names.usage}"))
    assert _total(page) == first > 0, "served from memory"
    assert page.client.get("/api/daily").status_code == 200  # the daily series come from the same answer
    assert page.cache.computed == computed
    assert _total(page, days=29) == 0, "another period is another key"
    page.clock.now += 59.9
    assert _total(page) == first
    page.clock.now += 0.2
    assert _total(page) == 0, "60 s later the ledger is read again"


def test_users_never_share_an_answer_they_could_not_compute(page: Page) -> None:
    everything = page.client.get("/api/summary").json()
    assert HIDDEN in {row["dag_id"] for row in everything["by_dag"]}
    page.readable = set(DAGS) - {HIDDEN}
    restricted = page.client.get("/api/summary").json()
    assert HIDDEN not in {row["dag_id"] for row in restricted["by_dag"]}
    assert HIDDEN not in page.client.get("/", params={"stack": "dag"}).text
    assert restricted["totals"]["entries"] < everything["totals"]["entries"]


# --- who may read what -----------------------------------------------------------------------------

def test_only_the_schema_and_static_files_are_served_without_the_guard(page: Page) -> None:
    """``/openapi.json`` stays public, as Airflow's own API schema is: it lists routes and parameters and
    names no table, connection or DAG. Every other route depends on the auth guard."""
    from fastapi.routing import APIRoute

    app = page.client.app
    guard = app.state.auth_dependencies["may_read_dags"]
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert {r.path for r in routes} == {"/api/summary", "/api/daily", "/api/tasks", "/api/runs", "/api/budgets", "/"}
    for route in routes:
        assert guard in [d.call for d in route.dependant.dependencies], route.path
    schema = page.client.get("/openapi.json")
    assert schema.status_code == 200
    for name in (page.names.usage, page.names.results, page.names.runs, "glm_spend_limits", *DAGS):
        assert name not in schema.text

