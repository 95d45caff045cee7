"""Apache Airflow provider for Zhipu GLM models.

Importing this package is cheap: it imports nothing but the standard library, so Airflow's
provider discovery and DAG parsing pay nothing for it.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "get_provider_info"]


def get_provider_info() -> dict[str, Any]:
    """What Airflow's provider manager reads through the ``apache_airflow_provider`` entry point."""
    return {
        "package-name": "airflow-provider-glm",
        "name": "GLM (Zhipu AI)",
        "description": (
            "Zhipu GLM models in Airflow: chat, async and batch operators over rows, a SQL results table "
            "and usage ledger."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "GLM",
                "external-doc-url": "https://docs.bigmodel.cn/",
                "tags": ["ai"],
            }
        ],
        "hooks": [{"integration-name": "GLM", "python-modules": ["airflow_provider_glm.hooks.glm"]}],
        "operators": [
            {
                "integration-name": "GLM",
                "python-modules": ["airflow_provider_glm.operators.chat", "airflow_provider_glm.operators.batch"],
            }
        ],
        "triggers": [{"integration-name": "GLM", "python-modules": ["airflow_provider_glm.triggers.batch"]}],
        "task-decorators": [{"name": "glm", "class-name": "airflow_provider_glm.decorators.glm.glm_task"}],
        "connection-types": [
            {
                "connection-type": "glm",
                "hook-class-name": "airflow_provider_glm.hooks.glm.GLMHook",
                "hook-name": "GLM (Zhipu AI)",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"password": "API Key", "host": "Base URL"},
                    "placeholders": {
                        "host": "https://open.bigmodel.cn/api/paas/v4",
                        "password": "your GLM API key",
                    },
                },
                "conn-fields": {
                    "model": {
                        "label": "Default model",
                        "schema": {"type": ["string", "null"]},
                        "description": "Model used when a task names none (default glm-4.5).",
                    },
                    "timeout": {
                        "label": "Timeout (s)",
                        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
                        "description": "Total seconds for one attempt, first byte to last.",
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "schema": {"type": ["integer", "null"], "minimum": 0},
                        "description": "Retries of retryable failures (default 3).",
                    },
                    "connect_timeout": {
                        "label": "Connect timeout (s)",
                        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
                        "description": "Seconds to open a connection (default 10).",
                    },
                    "read_timeout": {
                        "label": "Read timeout (s)",
                        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
                        "description": "Seconds to wait for the next byte (default 300).",
                    },
                    "max_connections": {
                        "label": "Max connections",
                        "schema": {"type": ["integer", "null"], "minimum": 1},
                        "description": "Connection pool size (default 64).",
                    },
                    "max_response_bytes": {
                        "label": "Max response bytes",
                        "schema": {"type": ["integer", "null"], "minimum": 1},
                        "description": "Answers larger than this are aborted (default 32 MiB).",
                    },
                    "max_billed_retries": {
                        "label": "Max resends of possibly billed requests",
                        "schema": {"type": ["integer", "null"], "minimum": 0},
                        "description": "How often a request lost after it was sent (and so maybe billed) is "
                                       "sent again (default 1).",
                    },
                    "allow_insecure_http": {
                        "label": "Allow plain http",
                        "schema": {"type": ["boolean", "null"]},
                        "description": "Accept an http:// base URL off loopback (a trusted in-cluster gateway).",
                    },
                    "auth": {
                        "label": "Auth mode",
                        "schema": {"type": ["string", "null"], "enum": ["bearer", "jwt", None]},
                        "description": "bearer sends the key; jwt signs a token from an id.secret key.",
                    },
                },
            }
        ],
    }
