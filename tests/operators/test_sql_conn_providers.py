"""A ``sql_conn_id`` whose connection type has no Airflow provider installed is refused before any call, saying which
extra of this package installs it (the development environment has no MySQL provider)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.testing import GLMTestServer


@pytest.mark.parametrize(("conn_type", "fix"), [("mysql", r"pip install 'airflow-provider-glm\[mysql\]'"),
                                                ("exasol", "install apache-airflow-providers-exasol")])
def test_a_connection_type_without_its_provider_names_the_fix(glm_conn: GLMTestServer, context: dict[str, Any],
                                                              monkeypatch: pytest.MonkeyPatch, conn_type: str,
                                                              fix: str) -> None:
    if conn_type == "mysql":
        try:
            import airflow.providers.mysql  # noqa: F401
            pytest.skip("apache-airflow-providers-mysql is installed here: its hook exists")
        except ImportError:
            pass
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": conn_type, "host": "127.0.0.1"}))
    op = GLMChatOperator(task_id="sql_conn", rows=[{"id": 1, "text": "a"}], row_key="id", prompt="{{ row.text }}",
                         sql_conn_id="warehouse")
    with pytest.raises(ValueError, match=f"connection 'warehouse' is of type '{conn_type}', whose Airflow provider "
                                         f"is not installed .*{fix}"):
        op.execute(context)
    assert glm_conn.requests == []
