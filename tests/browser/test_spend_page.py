"""Issue 13 end to end: ``airflow api-server`` with the plugin, a seeded ledger, headless Chromium.

For a ledger on SQLite and on PostgreSQL: the page opened from the Airflow navigation shows totals
equal to SQL sums over the seeded ledger, the DAG and model filters change them, a user who may not
read a DAG sees none of its spend, and an anonymous request is refused (only the schema,
``openapi.json``, is public). Issue 22: extreme dates answer 422, and a database error is logged in
the API server's log with an error id while the viewer sees only the id. The SQLite run saves the
screenshot docs/dashboard.md shows (into ``GLM_SCREENSHOT_DIR`` when set, else the test's temp dir).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from _airflow_server import DAG_IDS, HIDDEN_DAG, ApiServer, open_as
from _databases import server_url
from _spend_seed import seed, unique_names

from airflow_provider_glm.sinks.sql._tables import usage_table_def

pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def spend_server(request: pytest.FixtureRequest, start_api_server: Any,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, sa.Engine, Any]]:
    """An API server whose ``[glm]`` section points at a freshly seeded ledger."""
    names = unique_names("e2e")
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("ledger") / "warehouse.db"
        url, conn = f"sqlite:///{path}", {"conn_type": "sqlite", "host": str(path)}
    else:
        url = server_url("postgresql")
        parts = sa.make_url(url)
        conn = {"conn_type": "postgres", "host": parts.host, "port": parts.port, "login": parts.username,
                "password": parts.password or "", "schema": parts.database}
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    seed(engine, names, now=dt.datetime.now(dt.UTC))
    try:
        server = start_api_server(
            f"spend-{request.param}",
            AIRFLOW__GLM__SPEND_CONN_ID="glm_spend_db", AIRFLOW_CONN_GLM_SPEND_DB=json.dumps(conn),
            AIRFLOW__GLM__USAGE_TABLE=names.usage, AIRFLOW__GLM__RESULTS_TABLE=names.results,
            AIRFLOW__GLM__RUNS_TABLE=names.runs, PYTHONUNBUFFERED="1",  # the log test reads the log as it is written
        )
        ledger = usage_table_def(sa.MetaData(), None, names.usage)
        yield server, engine, ledger
    finally:
        names.drop(engine)
        engine.dispose()


def expected_totals(engine: sa.Engine, ledger: sa.Table, first: str, last: str, dag_ids: set[str],
                    model: str | None = None) -> dict[str, Any]:
    """The totals the page must show, summed by the database over the seeded ledger."""
    start = dt.datetime.fromisoformat(first).replace(tzinfo=dt.UTC)
    end = dt.datetime.fromisoformat(last).replace(tzinfo=dt.UTC) + dt.timedelta(days=1)
    where = [ledger.c.created_at >= start, ledger.c.created_at < end, ledger.c.dag_id.in_(sorted(dag_ids))]
    if model:
        where.append(ledger.c.model == model)
    known = sa.func.sum(sa.case((ledger.c.billing == "known", 1), else_=0))
    with engine.connect() as conn:
        calls, tokens, attempts, tokens_max = conn.execute(
            sa.select(known, sa.func.sum(ledger.c.total_tokens), sa.func.sum(ledger.c.unknown_billing_attempts),
                      sa.func.sum(ledger.c.unknown_tokens_max)).where(*where)).one()
        costs = conn.execute(sa.select(ledger.c.currency, sa.func.sum(ledger.c.cost)).where(
            *where, ledger.c.cost.is_not(None)).group_by(ledger.c.currency)).all()
    return {"calls": int(calls or 0), "tokens": int(tokens or 0), "attempts": int(attempts or 0),
            "tokens_max": int(tokens_max or 0),
            "cost": {currency: Decimal(total).quantize(Decimal("0.0001")) for currency, total in costs}}


def shown_totals(frame: Any) -> dict[str, Any]:
    """The totals as the page shows them."""
    def number(testid: str) -> int:
        return int(frame.locator(f"[data-testid={testid}]").inner_text().replace(",", ""))

    cost = {}
    for item in frame.locator("[data-testid=total-cost]").all():
        amount, currency = item.inner_text().split(" ", 1)
        cost[currency] = Decimal(amount.replace(",", ""))
    return {"calls": number("total-calls"), "tokens": number("total-tokens"),
            "attempts": number("total-possibly-billed"), "tokens_max": number("total-possibly-billed-tokens"),
            "cost": cost}


def period(frame: Any) -> tuple[str, str]:
    return (frame.locator("input[name=start]").input_value(), frame.locator("input[name=end]").input_value())


def open_spend_page(page: Any, server: ApiServer) -> Any:
    """Browse -> GLM spend in the Airflow UI; the page lives in the plugin's iframe."""
    page.goto(f"{server.url}/")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="GLM spend").click()
    frame = page.frame_locator("iframe[title='GLM spend']")
    frame.locator("[data-testid=total-calls]").wait_for()
    return frame


def test_anonymous_requests_are_refused(spend_server: tuple[ApiServer, sa.Engine, Any], browser: Any) -> None:
    server, _, _ = spend_server
    for path in ("/glm-spend/api/summary", "/glm-spend/api/daily", "/glm-spend/api/tasks", "/glm-spend/api/runs",
                 "/glm-spend/api/budgets", "/glm-spend/"):
        answer = httpx.get(server.url + path, timeout=60)
        assert answer.status_code in (401, 403), (path, answer.status_code)
        assert "total-calls" not in answer.text
    assert httpx.get(f"{server.url}/glm-spend/api/summary", headers={"Authorization": "Bearer forged"},
                     timeout=60).status_code in (401, 403)
    page = open_as(browser, server, None)
    page.goto(f"{server.url}/glm-spend/")
    assert "Log in to Airflow first" in page.get_by_test_id("message").inner_text()
    page.context.close()


def test_only_the_schema_is_public_and_it_names_nothing(spend_server: tuple[ApiServer, sa.Engine, Any]) -> None:
    """``openapi.json`` is served without login, as the API server serves Airflow's own schema; every path it
    lists refuses anonymous requests, and it names no table, connection or DAG."""
    server, _, ledger = spend_server
    assert httpx.get(f"{server.url}/openapi.json", timeout=60).status_code == 200, "Airflow's own schema is public"
    schema = httpx.get(f"{server.url}/glm-spend/openapi.json", timeout=60)
    assert schema.status_code == 200
    paths = set(schema.json()["paths"])
    assert paths == {"/api/summary", "/api/daily", "/api/tasks", "/api/runs", "/api/budgets", "/"}
    for path in paths:
        assert httpx.get(f"{server.url}/glm-spend{path}", timeout=60).status_code == 401, path
    for name in (ledger.name, "glm_spend_db", *DAG_IDS):
        assert name not in schema.text


def test_extreme_dates_answer_422(spend_server: tuple[ApiServer, sa.Engine, Any]) -> None:
    server, _, _ = spend_server
    admin = {"Authorization": f"Bearer {server.token('admin')}"}
    for end in ("9999-12-31", "0001-01-01"):
        answer = httpx.get(f"{server.url}/glm-spend/api/summary", params={"end": end}, headers=admin, timeout=60)
        assert answer.status_code == 422, answer.text
        assert f"end={end} is outside the dates the page can show" in answer.json()["detail"]


def test_totals_equal_the_ledger_and_filters_change_them(
        spend_server: tuple[ApiServer, sa.Engine, Any], browser: Any, request: pytest.FixtureRequest,
        tmp_path: Path) -> None:
    server, engine, ledger = spend_server
    page = open_as(browser, server, "admin")
    frame = open_spend_page(page, server)
    first, last = period(frame)
    assert (dt.date.fromisoformat(last) - dt.date.fromisoformat(first)).days == 29
    everything = expected_totals(engine, ledger, first, last, set(DAG_IDS))
    assert everything["calls"] > 0
    assert len(everything["cost"]) == 2
    assert shown_totals(frame) == everything
    if "sqlite" in request.node.callspec.id:
        where = Path(os.environ.get("GLM_SCREENSHOT_DIR") or tmp_path)
        page.screenshot(path=str(where / "dashboard.png"))

    frame.get_by_test_id("filter-dag").select_option("glm_enrichment")
    frame.get_by_test_id("apply").click()
    frame.get_by_text("· DAG glm_enrichment").wait_for()
    one_dag = expected_totals(engine, ledger, first, last, {"glm_enrichment"})
    assert shown_totals(frame) == one_dag != everything
    assert {row.inner_text().split("\t")[0] for row in frame.locator("[data-testid=tasks] tbody tr").all()} == {
        "glm_enrichment"}

    frame.get_by_test_id("filter-model").select_option("glm-4.6")
    frame.get_by_test_id("apply").click()
    frame.get_by_text("· model glm-4.6").wait_for()
    assert shown_totals(frame) == expected_totals(engine, ledger, first, last, {"glm_enrichment"}, "glm-4.6") != one_dag

    run_link = frame.locator("[data-testid=runs] a.airflow-link").first
    dag_id = run_link.locator("xpath=ancestor::tr/td[1]").inner_text()
    run_id = run_link.inner_text()
    run_link.click()
    page.wait_for_url(f"**/dags/{dag_id}/runs/{quote(run_id, safe='')}")
    page.context.close()


def test_a_user_sees_only_dags_they_may_read(spend_server: tuple[ApiServer, sa.Engine, Any], browser: Any) -> None:
    server, engine, ledger = spend_server
    page = open_as(browser, server, "restricted")
    frame = open_spend_page(page, server)
    first, last = period(frame)
    readable = set(DAG_IDS) - {HIDDEN_DAG}
    assert shown_totals(frame) == expected_totals(engine, ledger, first, last, readable)
    assert HIDDEN_DAG not in frame.locator("main").inner_text()
    assert HIDDEN_DAG not in frame.get_by_test_id("filter-dag").inner_text()
    page.context.close()

    restricted = {"Authorization": f"Bearer {server.token('restricted')}"}
    summary = httpx.get(f"{server.url}/glm-spend/api/summary", headers=restricted, timeout=60).json()
    assert {row["dag_id"] for row in summary["by_dag"]} == readable
    refused = httpx.get(f"{server.url}/glm-spend/api/summary", params={"dag_id": HIDDEN_DAG}, headers=restricted,
                        timeout=60)
    assert refused.status_code == 403
    admin = {"Authorization": f"Bearer {server.token('admin')}"}
    allowed = httpx.get(f"{server.url}/glm-spend/api/summary", params={"dag_id": HIDDEN_DAG}, headers=admin,
                        timeout=60)
    assert allowed.status_code == 200
    assert [row["dag_id"] for row in allowed.json()["by_dag"]] == [HIDDEN_DAG]


def test_a_database_error_is_logged_with_its_id_and_viewers_see_only_the_id(
        spend_server: tuple[ApiServer, sa.Engine, Any], browser: Any) -> None:
    """Last in the module: the ledger is renamed for the length of the test, then put back."""
    server, engine, ledger = spend_server
    hidden = f"{ledger.name}_away"
    with engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {ledger.name} RENAME TO {hidden}"))
    try:
        admin = {"Authorization": f"Bearer {server.token('admin')}"}
        answer = httpx.get(f"{server.url}/glm-spend/api/summary", params={"days": 3, "model": "glm-4.5"},
                           headers=admin, timeout=60)
        assert answer.status_code == 503
        (error_id,) = re.findall(r"error id ([0-9a-f]{12})", answer.json()["detail"])
        assert ledger.name not in answer.text
        page = open_as(browser, server, "admin")
        page.goto(f"{server.url}/glm-spend/?days=2")
        shown = page.get_by_test_id("message").inner_text()
        assert "could not read its data (error id" in shown
        assert ledger.name not in page.content()
        page.context.close()
        deadline = time.monotonic() + 120
        while error_id not in server.log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.2)  # polling the log file the server writes, not waiting for a result
        log = server.log.read_text(errors="replace")
        line = next(line for line in log.splitlines() if error_id in line)
        assert ledger.name in log[log.index(line):], "the server's log has the whole error after the id"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {hidden} RENAME TO {ledger.name}"))
