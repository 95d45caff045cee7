"""Apache Airflow provider for Zhipu GLM models.

Importing this package is cheap: it imports nothing but the standard library and the defaults in
:mod:`airflow_provider_glm.constants`, so Airflow's provider discovery and DAG parsing pay nothing for it.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_glm import constants

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
        "config": {"glm": _spend_page_config()},
        "connection-types": [
            {
                "connection-type": "glm",
                "hook-class-name": "airflow_provider_glm.hooks.glm.GLMHook",
                "hook-name": "GLM (Zhipu AI)",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"password": "API Key", "host": "Base URL (empty: BigModel)"},
                    "placeholders": {
                        "host": f"empty = {constants.DEFAULT_BASE_URL}; Z.ai: {constants.ZAI_BASE_URL}",
                        "password": "your GLM API key (id.secret keys can also use Auth mode jwt)",
                    },
                },
                "conn-fields": _conn_fields(),
            }
        ],
    }


def _spend_page_config() -> dict[str, Any]:
    """The ``[glm]`` section of ``airflow.cfg``: where the spend page (docs/dashboard.md) reads."""

    def option(description: str, default: str, example: str) -> dict[str, Any]:
        return {"description": description, "version_added": "0.1.0", "type": "string", "example": example,
                "default": default}

    return {
        "description": "The GLM spend page in the Airflow UI (plugin glm_spend).",
        "options": {
            "spend_conn_id": option("Airflow connection of the database that holds the usage ledger, results "
                                    "and runs tables. The page stays off until it is set.", "", "warehouse_db"),
            "usage_table": option("The usage ledger table, table or schema.table.", "glm_usage", "glm.glm_usage"),
            "results_table": option("The results table.", "glm_results", "glm.glm_results"),
            "runs_table": option("The runs table (one row per task try).", "glm_runs", "glm.glm_runs"),
        },
    }


_MODEL_SECTION = "Model and auth"
_LIMITS_SECTION = "Timeouts and limits"
_NETWORK_SECTION = "Network: proxy and TLS"


def _conn_fields() -> dict[str, dict[str, Any]]:
    """The extras the form shows, with the bounds the hook enforces expressed as JSON Schema.

    Every field is nullable: an empty field (``null`` in the extra JSON) means the default.
    """

    def number(label: str, section: str, bound: dict[str, Any], kind: str, description: str) -> dict[str, Any]:
        return {"label": label, "schema": {"type": [kind, "null"], **bound, "section": section},
                "description": description}

    def text(label: str, description: str) -> dict[str, Any]:
        return {"label": label, "schema": {"type": ["string", "null"], "section": _NETWORK_SECTION},
                "description": description}

    return {
        "model": {
            "label": "Default model",
            "schema": {"type": ["string", "null"], "section": _MODEL_SECTION},
            "description": (
                f"Model used when a task names none. Empty: {constants.DEFAULT_MODEL}. A GLM Coding Plan key "
                "needs the coding Base URL, .../api/coding/paas/v4."
            ),
        },
        "auth": {
            "label": "Auth mode",
            "schema": {
                "type": ["string", "null"],
                "enum": ["bearer", "jwt"],
                "default": "bearer",
                "values_display": {"bearer": "bearer: send the key", "jwt": "jwt: sign a token from an id.secret key"},
                "section": _MODEL_SECTION,
            },
            "description": "bearer sends the API key as it is; jwt signs a short-lived token from an id.secret key.",
        },
        "timeout": number("Timeout (s)", _LIMITS_SECTION, {"exclusiveMinimum": 0}, "number",
                          f"Total seconds for one attempt, > 0. Empty: {constants.DEFAULT_TIMEOUT:g}."),
        "connect_timeout": number("Connect timeout (s)", _LIMITS_SECTION, {"exclusiveMinimum": 0}, "number",
                                  f"Seconds to open a connection, > 0. Empty: {constants.DEFAULT_CONNECT_TIMEOUT:g}."),
        "read_timeout": number("Read timeout (s)", _LIMITS_SECTION, {"exclusiveMinimum": 0}, "number",
                               f"Seconds to wait for the next byte, > 0. Empty: {constants.DEFAULT_READ_TIMEOUT:g}."),
        "max_retries": number("Max retries", _LIMITS_SECTION, {"minimum": 0}, "integer",
                              f"Retries of a retryable failure, a whole number >= 0. Empty: "
                              f"{constants.DEFAULT_MAX_RETRIES}."),
        "max_connections": number("Max connections", _LIMITS_SECTION, {"minimum": 1}, "integer",
                                  f"Connection pool size, a whole number >= 1. Empty: "
                                  f"{constants.DEFAULT_MAX_CONNECTIONS}."),
        "max_response_bytes": number("Max response bytes", _LIMITS_SECTION, {"minimum": 1}, "integer",
                                     "Answers larger than this are aborted, a whole number >= 1. Empty: "
                                     f"{constants.DEFAULT_MAX_RESPONSE_BYTES} (32 MiB)."),
        "max_billed_retries": number("Max resends of possibly billed requests", _LIMITS_SECTION, {"minimum": 0},
                                     "integer",
                                     "How often a request lost after it was sent (so maybe billed) is sent again, "
                                     f"a whole number >= 0. Empty: {constants.DEFAULT_MAX_BILLED_RETRIES}."),
        "allow_insecure_http": {
            "label": "Allow plain http",
            "schema": {"type": ["boolean", "null"], "section": _MODEL_SECTION},
            "description": "Accept an http:// Base URL that is not loopback (a trusted in-cluster gateway). "
                           "Empty: false, such a URL is refused because the key would travel unencrypted.",
        },
        "proxy": text("Proxy URL", "http(s)://[user:password@]host:port of an HTTP proxy; wins over the environment. "
                      "Empty: HTTPS_PROXY / HTTP_PROXY / ALL_PROXY (and NO_PROXY) when Trust environment is on."),
        "trust_env": {
            "label": "Trust environment",
            "schema": {"type": ["boolean", "null"], "section": _NETWORK_SECTION},
            "description": "Read HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY, SSL_CERT_FILE and SSL_CERT_DIR from "
                           "the worker's environment. Empty: true.",
        },
        "ca_bundle": text("CA bundle", "Path of a PEM file of certificate authorities to trust instead of the "
                          "default ones (a corporate TLS-inspecting proxy). Empty: the default trust store."),
        "client_cert": text("Client certificate", "Path of a PEM client certificate (with its key, unless Client "
                            "key is set), for gateways that require one. Empty: none."),
        "client_key": text("Client key", "Path of the client certificate's PEM key. Empty: the key is in the "
                           "client certificate file."),
    }

