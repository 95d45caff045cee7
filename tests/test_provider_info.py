"""Provider metadata: valid for Airflow's schema, discoverable, and every name in it importable."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import airflow_provider_glm
from airflow_provider_glm import get_provider_info
from airflow_provider_glm.hooks._connection import _KNOWN_EXTRAS
from airflow_provider_glm.hooks.glm import GLMHook

INFO = get_provider_info()


def airflow_schema() -> dict[str, Any]:
    return json.loads((importlib.resources.files("airflow") / "provider_info.schema.json").read_text())


def test_validates_against_airflow_schema() -> None:
    schema = airflow_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(INFO, schema)


def test_schema_rejects_a_broken_copy() -> None:
    broken = {k: v for k, v in INFO.items() if k != "description"}
    with pytest.raises(jsonschema.ValidationError, match="'description' is a required property"):
        jsonschema.validate(broken, airflow_schema())


def test_identity() -> None:
    assert INFO["package-name"] == "airflow-provider-glm"
    assert INFO["versions"][0] == airflow_provider_glm.__version__ == importlib.metadata.version(
        "airflow-provider-glm")


def test_entry_point_points_here() -> None:
    points = importlib.metadata.entry_points(group="apache_airflow_provider")
    ours = [p for p in points if p.value == "airflow_provider_glm:get_provider_info"]
    assert len(ours) == 1
    assert ours[0].load()() == INFO


def module_paths() -> list[str]:
    paths = [m for section in ("hooks", "operators") for entry in INFO.get(section, [])
             for m in entry["python-modules"]]
    paths += [c["hook-class-name"].rsplit(".", 1)[0] for c in INFO["connection-types"]]
    paths += [d["class-name"].rsplit(".", 1)[0] for d in INFO.get("task-decorators", [])]
    return sorted(set(paths))


@pytest.mark.parametrize("module", module_paths())
def test_named_modules_import(module: str) -> None:
    importlib.import_module(module)


def resolve(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_connection_type_names_the_hook() -> None:
    (conn,) = INFO["connection-types"]
    cls = resolve(conn["hook-class-name"])
    assert cls is GLMHook
    assert conn["connection-type"] == cls.conn_type == "glm"
    assert conn["hook-name"] == cls.hook_name


def test_task_decorators_resolve() -> None:
    for decorator in INFO["task-decorators"]:
        assert callable(resolve(decorator["class-name"]))


def test_integrations_referenced_exist() -> None:
    names = {i["integration-name"] for i in INFO["integrations"]}
    for section in ("hooks", "operators"):
        assert {e["integration-name"] for e in INFO[section]} <= names


def test_conn_fields_are_extras_the_hook_knows() -> None:
    (conn,) = INFO["connection-types"]
    assert set(conn["conn-fields"]) <= _KNOWN_EXTRAS
    for field in conn["conn-fields"].values():
        jsonschema.Draft7Validator.check_schema(field["schema"])


def test_airflow_providers_list(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    airflow = Path(sys.executable).with_name("airflow")
    result = subprocess.run([str(airflow), "providers", "list", "-o", "json"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    providers = json.loads(result.stdout[result.stdout.index("["):])
    ours = [p for p in providers if p["package_name"] == "airflow-provider-glm"]
    assert ours == [{"package_name": "airflow-provider-glm", "description": INFO["description"].rstrip("."),
                     "version": airflow_provider_glm.__version__}]
    assert "airflow_provider_glm" not in result.stderr


def test_importing_the_package_is_cheap() -> None:
    code = ("import sys, airflow_provider_glm; airflow_provider_glm.get_provider_info(); "
            "print(sorted(m for m in ('httpx', 'pydantic', 'airflow', 'sqlalchemy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            check=True)
    assert result.stdout.strip() == "[]"


# --- the connection form's fields (issue 15) ---------------------------------------------------------

(GLM_TYPE,) = INFO["connection-types"]
FIELDS = GLM_TYPE["conn-fields"]
NUMBERS = [name for name, field in FIELDS.items() if {"number", "integer"} & set(field["schema"]["type"])]


def _accepted_by_hook(name: str, value: Any) -> bool:
    from airflow.models.connection import Connection

    from airflow_provider_glm.hooks._connection import ConnectionSettings

    conn = Connection(conn_id="glm_form", conn_type="glm", password="test-key-123456", extra={name: value})
    try:
        ConnectionSettings.from_connection(conn)
    except ValueError:
        return False
    return True


def test_auth_offers_bearer_and_jwt_only_preselecting_bearer() -> None:
    schema = FIELDS["auth"]["schema"]
    assert schema["enum"] == ["bearer", "jwt"]
    assert schema["default"] == "bearer"
    assert set(schema["values_display"]) == set(schema["enum"])
    assert all(_accepted_by_hook("auth", choice) for choice in schema["enum"])


@pytest.mark.parametrize("name", NUMBERS)
@pytest.mark.parametrize("value", [-1, 0, 0.5, 1, 2.0, 2.5, 3, 600])
def test_number_bounds_say_what_the_hook_enforces(name: str, value: float) -> None:
    """A value the field's JSON Schema allows is one the hook accepts, and the other way round."""
    schema = {k: v for k, v in FIELDS[name]["schema"].items() if k not in ("section", "values_display")}
    allowed = jsonschema.Draft7Validator(schema).is_valid(value)
    assert allowed == _accepted_by_hook(name, value), (name, value, allowed)


def test_every_field_is_nullable_and_the_default_extra_json_is_harmless() -> None:
    """The form's initial extra JSON (each field's default, else null) must parse to the defaults."""
    from airflow.models.connection import Connection

    from airflow_provider_glm import constants
    from airflow_provider_glm.hooks._connection import ConnectionSettings

    assert all("null" in field["schema"]["type"] for field in FIELDS.values())
    initial = {name: field["schema"].get("default") for name, field in FIELDS.items()}
    assert initial["auth"] == "bearer"
    assert [v for k, v in initial.items() if k != "auth"] == [None] * (len(FIELDS) - 1)
    for extra in (initial, dict.fromkeys(FIELDS)):
        conn = Connection(conn_id="glm_form", conn_type="glm", password="test-key-123456", extra=extra)
        settings = ConnectionSettings.from_connection(conn)
        assert (settings.auth, settings.model, settings.client_options) == ("bearer", constants.DEFAULT_MODEL, {})
        assert settings.base_url == constants.DEFAULT_BASE_URL


def test_every_field_has_a_label_a_section_and_a_description_with_its_default() -> None:
    from airflow_provider_glm import constants

    defaults = {"model": constants.DEFAULT_MODEL, "timeout": "600", "connect_timeout": "10",
                "read_timeout": "300", "max_retries": str(constants.DEFAULT_MAX_RETRIES),
                "max_connections": str(constants.DEFAULT_MAX_CONNECTIONS),
                "max_response_bytes": str(constants.DEFAULT_MAX_RESPONSE_BYTES)}
    for name, field in FIELDS.items():
        assert field["label"], name
        assert field["schema"]["section"], name
        if name in defaults:
            assert f"Empty: {defaults[name]}" in field["description"], name
    assert FIELDS["model"]["schema"]["section"] == FIELDS["auth"]["schema"]["section"] == "Model and auth"


def test_standard_fields_carry_the_base_url_and_key_help() -> None:
    from airflow_provider_glm import constants

    behaviour = GLM_TYPE["ui-field-behaviour"]
    assert behaviour["hidden-fields"] == ["schema", "port", "login"]
    assert behaviour["relabeling"] == {"password": "API Key", "host": "Base URL (empty: BigModel)"}
    assert constants.DEFAULT_BASE_URL in behaviour["placeholders"]["host"]
    assert constants.ZAI_BASE_URL in behaviour["placeholders"]["host"]
    assert "/api/coding/paas/v4" in FIELDS["model"]["description"]
    assert "jwt" in behaviour["placeholders"]["password"]


def test_project_urls_point_at_the_repository() -> None:
    urls = dict(entry.split(", ", 1) for entry in importlib.metadata.metadata("airflow-provider-glm")
                .get_all("Project-URL"))
    repo = "https://github.com/airflow-provider-glm/airflow-provider-glm"
    assert urls == {"Documentation": f"{repo}/tree/main/docs", "Source": repo, "Changelog": f"{repo}/releases"}
