"""The spend plugin without a browser: registration, import cost, the app's routes, the SVG chart.

The app runs in-process here, with the auth manager's two dependencies replaced; the real auth
manager, the API server and the browser are exercised by ``tests/browser/test_spend_page.py``.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _spend_seed import DAGS, SeededTables, seed

from airflow_provider_glm.plugins import _svg_chart as svg_chart
from airflow_provider_glm.plugins.spend import URL_PREFIX, GLMSpendPlugin


def test_entry_point_registers_the_plugin() -> None:
    (point,) = [p for p in importlib.metadata.entry_points(group="airflow.plugins") if p.name == "glm_spend"]
    assert point.load() is GLMSpendPlugin
    assert point.dist is not None
    assert point.dist.name == "airflow-provider-glm"


def test_importing_the_plugin_loads_nothing_heavy() -> None:
    """Every Airflow process that loads plugins imports the module; FastAPI and the app wait for the API server."""
    code = (
        "import sys, airflow.plugins_manager; before = set(sys.modules); "
        "import airflow_provider_glm.plugins.spend as s; "
        "new = set(sys.modules) - before; "
        "print(sorted(m for m in new if m.split('.')[0] in ('fastapi', 'starlette', 'jinja2', 'sqlalchemy') "
        "or m.startswith('airflow_provider_glm.plugins.') and m != 'airflow_provider_glm.plugins.spend'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_airflow_lists_the_plugin_with_its_app_and_view(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    airflow = Path(sys.executable).with_name("airflow")
    done = subprocess.run([str(airflow), "plugins", "-o", "json"], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    plugins = json.loads(done.stdout[done.stdout.index("["):])
    (ours,) = [p for p in plugins if p["name"] == "glm_spend"]
    assert ours["fastapi_apps"] == [{"app": "fastapi.applications.FastAPI", "url_prefix": URL_PREFIX,
                                     "name": "GLM spend"}]
    (view,) = ours["external_views"]
    assert view["url_route"] == "glm-spend"
    assert view["href"] == "glm-spend/"
    assert "airflow-provider-glm" in ours["source"]


# --- the app, in-process ---------------------------------------------------------------------------

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from airflow_provider_glm.plugins._app import SpendConfig, create_app

    path = tmp_path / "warehouse.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    seed(engine, SeededTables("glm_usage", "glm_results", "glm_runs"), now=NOW)
    engine.dispose()
    monkeypatch.setenv("AIRFLOW_CONN_GLM_SPEND_TEST", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    app = create_app(SpendConfig(spend_conn_id="glm_spend_test"))
    deps = app.state.auth_dependencies
    app.dependency_overrides[deps["may_read_dags"]] = lambda: None
    app.dependency_overrides[deps["readable_dag_ids"]] = lambda: frozenset(DAGS) - {"glm_secret_costs"}
    with TestClient(app) as test_client:
        yield test_client


def test_every_endpoint_answers_for_the_readable_dags(client: Any) -> None:
    before = dt.datetime.now(dt.UTC).date()
    summary = client.get("/api/summary").json()
    after = dt.datetime.now(dt.UTC).date()  # the period ends after "today", whichever side of midnight it was
    assert {row["dag_id"] for row in summary["by_dag"]} == {"glm_nightly_summary", "glm_enrichment"}
    assert summary["period"]["end"][:10] in {(day + dt.timedelta(days=1)).isoformat() for day in (before, after)}
    for name, key in (("daily", "daily"), ("tasks", "tasks"), ("runs", "runs"), ("budgets", "budgets")):
        answer = client.get(f"/api/{name}", params={"days": 7, "model": "glm-4.5"})
        assert answer.status_code == 200, answer.text
        assert all(row.get("dag_id", "x") != "glm_secret_costs" for row in answer.json()[key])
    page = client.get("/", params={"stack": "dag"})
    assert page.status_code == 200
    assert "glm_secret_costs" not in page.text
    assert '<svg class="glm-chart"' in page.text


@pytest.mark.parametrize(("params", "status"), [
    ({"days": 0}, 422), ({"days": 400}, 422), ({"stack": "task"}, 422), ({"limit": 0}, 422),
    ({"start": "2026-11-20", "end": "2026-11-01"}, 422), ({"start": "2024-01-01", "end": "2026-01-01"}, 422),
    ({"start": "2026-11-01", "end": "2026-11-02"}, 200), ({"end": "9999-12-31"}, 422), ({"end": "0001-01-01"}, 422),
])
def test_bad_periods_are_refused(client: Any, params: dict[str, Any], status: int) -> None:
    assert client.get("/api/summary", params=params).status_code == status


def test_unconfigured_page_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from airflow_provider_glm.plugins._app import SpendConfig, create_app

    app = create_app(SpendConfig(spend_conn_id=""))
    deps = app.state.auth_dependencies
    app.dependency_overrides[deps["may_read_dags"]] = lambda: None
    app.dependency_overrides[deps["readable_dag_ids"]] = lambda: frozenset()
    with TestClient(app) as test_client:
        answer = test_client.get("/api/summary")
        assert answer.status_code == 503
        assert "set [glm] spend_conn_id" in answer.json()["detail"]
        page = test_client.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 503
        assert "set [glm] spend_conn_id" in page.text


def test_page_escapes_names_from_the_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from airflow_provider_glm.plugins._app import SpendConfig, create_app
    from airflow_provider_glm.sinks.sql._tables import usage_table_def

    path = tmp_path / "warehouse.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    ledger = usage_table_def(sa.MetaData(), None, "glm_usage")
    ledger.metadata.create_all(engine)
    seed(engine, SeededTables("glm_usage_unused", "glm_results", "glm_runs"), now=NOW)
    evil = "<script>alert(1)</script>"
    with engine.begin() as conn:
        conn.execute(sa.insert(ledger), [{
            "response_id": "r1", "dag_id": "glm_enrichment", "task_id": "t", "run_id": "run+1", "map_index": -1,
            "try_number": 1, "model": evil, "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2,
            "cached_tokens": 0, "reasoning_tokens": 0, "cost": 0.5, "currency": "USD", "created_at": NOW}])
    engine.dispose()
    monkeypatch.setenv("AIRFLOW_CONN_GLM_SPEND_TEST", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    app = create_app(SpendConfig(spend_conn_id="glm_spend_test"))
    deps = app.state.auth_dependencies
    app.dependency_overrides[deps["may_read_dags"]] = lambda: None
    app.dependency_overrides[deps["readable_dag_ids"]] = lambda: frozenset({"glm_enrichment"})
    with TestClient(app) as test_client:
        page = test_client.get("/").text
    assert evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'href="../dags/glm_enrichment/runs/run%2B1"' in page


def test_missing_tables_answer_503_without_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason is in the server's log under the error id (``test_spend_limits.py``), not in the answer."""
    from fastapi.testclient import TestClient

    from airflow_provider_glm.plugins._app import SpendConfig, create_app

    monkeypatch.setenv("AIRFLOW_CONN_GLM_SPEND_TEST",
                       json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "empty.db")}))
    app = create_app(SpendConfig(spend_conn_id="glm_spend_test", usage_table="no_such_ledger"))
    deps = app.state.auth_dependencies
    app.dependency_overrides[deps["may_read_dags"]] = lambda: None
    app.dependency_overrides[deps["readable_dag_ids"]] = lambda: frozenset({"glm_enrichment"})
    with TestClient(app) as test_client:
        answer = test_client.get("/api/summary")
    assert answer.status_code == 503
    assert "no_such_ledger" not in answer.json()["detail"]
    assert "error id" in answer.json()["detail"]


# --- the chart -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "ceiling"), [
    (0, 1.0), (-3, 1.0), (0.0042, 0.005), (0.01, 0.01), (1.2, 2.0), (2.2, 2.5), (3, 5.0), (7.5, 10.0), (120, 200.0),
])
def test_nice_ceiling(value: float, ceiling: float) -> None:
    assert svg_chart.nice_ceiling(value) == pytest.approx(ceiling)


def test_stacked_bars_scale_and_stack() -> None:
    svg = svg_chart.stacked_bars(["2026-11-01", "2026-11-02"], {"a": [1.0, 0.0], "b": [1.0, 2.0]}, unit="USD",
                                 height=248)
    heights = [float(h) for h in re.findall(r'<rect x="[^"]+" y="[^"]+" width="[^"]+" height="([^"]+)"', svg)]
    # plot height 248 - 12 - 48 = 188 for a y axis up to 2: 1.0 -> 94, 2.0 -> 188
    assert heights[:3] == pytest.approx([94.0, 94.0, 188.0])
    assert svg.count("<title>") == 3
    assert "USD" in svg


def test_stacked_bars_escape_names_and_check_lengths() -> None:
    svg = svg_chart.stacked_bars(["2026-11-01"], {"<b>&": [1.0], svg_chart.OTHER: [1.0]})
    assert "<b>" not in svg
    assert "&lt;b&gt;&amp;" in svg
    assert svg_chart.PALETTE[-1] in svg
    with pytest.raises(ValueError, match="has 2 values for 1 days"):
        svg_chart.stacked_bars(["2026-11-01"], {"a": [1.0, 2.0]})
