"""A test-only auth manager: Airflow's simple auth manager with per-DAG read limits.

The simple auth manager grants a role to all DAGs alike, so it cannot show that the spend page
filters per DAG. This one denies the users named in ``GLM_TEST_RESTRICTED_USERS`` every DAG named
in ``GLM_TEST_HIDDEN_DAGS`` (comma-separated), through ``is_authorized_dag``: the method both
``requires_access_dag`` and ``get_authorized_dag_ids`` end in. The API server under test loads it
with ``[core] auth_manager = glm_test_auth_manager.DagScopedAuthManager``.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager


def _names(variable: str) -> set[str]:
    return {name.strip() for name in os.environ.get(variable, "").split(",") if name.strip()}


class DagScopedAuthManager(SimpleAuthManager):
    """Simple auth manager whose restricted users may not read the hidden DAGs."""

    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        if (details is not None and details.id in _names("GLM_TEST_HIDDEN_DAGS")
                and user.get_name() in _names("GLM_TEST_RESTRICTED_USERS")):
            return False
        return bool(super().is_authorized_dag(method=method, user=user, access_entity=access_entity,
                                              details=details))
