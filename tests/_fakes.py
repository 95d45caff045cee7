"""Stand-ins for the little of Airflow's task instance and state store the operators use when a test
calls ``execute`` directly. A module of its own (not conftest) so test files import it unambiguously."""

from __future__ import annotations

import json
from typing import Any


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


class FakeTaskStateStore(dict):  # type: ignore[type-arg]
    """Airflow 3.3's task state store as a dict: what survives between tries of one task instance."""

    def set(self, key: str, value: Any) -> None:
        json.dumps(value)
        self[key] = value
