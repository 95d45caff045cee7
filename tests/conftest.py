"""Test session setup: a private AIRFLOW_HOME, the example DAGs folder, and shared fixtures.

The environment is set at import time, before anything imports Airflow, so no test reads or writes
the user's ``~/airflow``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
_HOME = tempfile.mkdtemp(prefix="glm-airflow-home-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ.pop("AIRFLOW_CONN_GLM_DEFAULT", None)


class FakeTaskInstance:
    """The little of a task instance the operator uses when a test calls ``execute`` directly."""

    def __init__(self, dag_id: str = "test_dag", task_id: str = "glm", run_id: str = "run-1",
                 map_index: int = -1, try_number: int = 1) -> None:
        self.dag_id = dag_id
        self.task_id = task_id
        self.run_id = run_id
        self.map_index = map_index
        self.try_number = try_number
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        json.dumps(value)
        self.xcom[key] = value


@pytest.fixture
def glm_conn(glm_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``glm_default`` pointing at the local GLM server; returns the server."""
    conn = {"conn_type": "glm", "password": glm_server.api_key, "host": glm_server.base_url,
            "extra": {"model": "glm-4.5", "max_retries": 3}}
    monkeypatch.setenv("AIRFLOW_CONN_GLM_DEFAULT", json.dumps(conn))
    return glm_server


@pytest.fixture
def ti() -> FakeTaskInstance:
    return FakeTaskInstance()


@pytest.fixture
def context(ti: FakeTaskInstance) -> Iterator[dict[str, Any]]:
    yield {"ti": ti, "ds": "2026-11-26", "params": {}}
