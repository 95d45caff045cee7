"""The Airflow plugin that mounts the GLM spend page on the API server and adds it to the navigation.

Airflow loads this class through the ``airflow.plugins`` entry point in every process that loads
plugins (API server, scheduler, workers), so the module imports nothing heavy: FastAPI,
SQLAlchemy and the page's code are imported only when the API server reads ``fastapi_apps``.
"""

from __future__ import annotations

import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.plugins_manager import AirflowPlugin
elif "airflow.sdk.plugins_manager" in sys.modules and "airflow.plugins_manager" not in sys.modules:
    # A task process loads plugins through the Task SDK; the core module would cost it an import.
    from airflow.sdk.plugins_manager import AirflowPlugin
else:
    from airflow.plugins_manager import AirflowPlugin

__all__ = ["URL_PREFIX", "GLMSpendPlugin"]

URL_PREFIX = "/glm-spend"
"""Where the API server mounts the page and its JSON endpoints."""


class GLMSpendPlugin(AirflowPlugin):
    """GLM spend: tokens and cost from the usage ledger, per day, DAG, task, model and run."""

    name = "glm_spend"
    external_views = [  # noqa: RUF012 - Airflow reads (and may prune) this list on the class
        {
            "name": "GLM spend",
            "href": f"{URL_PREFIX.lstrip('/')}/",
            "url_route": "glm-spend",
            "destination": "nav",
            "category": "browse",
            "icon": f"{URL_PREFIX.lstrip('/')}/static/icon.svg",
        }
    ]

    @cached_property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The page's FastAPI app, built on first read (only the API server reads it)."""
        from airflow_provider_glm.plugins._app import create_app  # lazy: every Airflow process loads this plugin

        return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "GLM spend"}]
