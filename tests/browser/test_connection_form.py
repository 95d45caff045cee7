"""Issue 15 in a real browser: Admin -> Connections -> Add, type GLM, as a new user would fill it.

What Airflow 3.3.2's form does with the field schema is asserted as found (and documented in
docs/connections.md): it preselects the schema default, lists only the enum's choices, clamps a
number below ``minimum`` up to it when the field loses focus, drops letters, and ignores
``exclusiveMinimum`` and ``type: integer`` (the hook refuses those values when the connection is
used or tested, with a message that names the field and the fix).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from _airflow_server import ApiServer, open_as

from airflow_provider_glm import constants

pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def server(start_api_server: Any) -> ApiServer:
    return start_api_server("connection-form")


def _open_add_form(page: Any, server: ApiServer, conn_id: str) -> Any:
    page.goto(f"{server.url}/")
    page.get_by_role("button", name="Admin").click()
    page.get_by_role("menuitem", name="Connections").click()
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Connection ID").fill(conn_id)
    dialog.get_by_role("combobox").fill("GLM")
    page.get_by_role("option", name="GLM (Zhipu AI)").click()
    return dialog


def _stored(server: ApiServer, conn_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/api/v2/connections/{conn_id}",
                       headers={"Authorization": f"Bearer {server.token('admin')}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_help_texts_and_auth_choices(browser: Any, server: ApiServer) -> None:
    page = open_as(browser, server, "admin")
    dialog = _open_add_form(page, server, "glm_form_help")

    base_url = dialog.get_by_label("Base URL (empty: BigModel)")
    placeholder = base_url.get_attribute("placeholder")
    assert constants.DEFAULT_BASE_URL in placeholder
    assert constants.ZAI_BASE_URL in placeholder
    assert "jwt" in dialog.get_by_label("API Key").get_attribute("placeholder")

    dialog.get_by_role("button", name="Model and auth").click()
    model_help = dialog.get_by_text("Model used when a task names none.")
    assert constants.DEFAULT_MODEL in model_help.inner_text()
    assert "/api/coding/paas/v4" in model_help.inner_text()
    assert dialog.get_by_text("bearer: send the key", exact=True).is_visible()  # preselected
    dialog.locator("#element_auth").click()
    options = [o.inner_text() for o in page.get_by_role("option").all()]
    assert options == ["bearer: send the key", "jwt: sign a token from an id.secret key"]
    assert not any("null" in option for option in options)
    page.get_by_role("option", name="bearer: send the key").click()

    dialog.get_by_role("button", name="Timeouts and limits").click()
    for text in ("Total seconds for one attempt, > 0. Empty: 600.", "a whole number >= 0. Empty: 3."):
        assert dialog.get_by_text(text, exact=False).is_visible()
    page.context.close()


def test_untouched_form_saves_harmless_extras(browser: Any, server: ApiServer) -> None:
    from airflow.models.connection import Connection

    from airflow_provider_glm.hooks._connection import ConnectionSettings

    page = open_as(browser, server, "admin")
    dialog = _open_add_form(page, server, "glm_form_defaults")
    dialog.get_by_label("API Key").fill("test-key-from-the-form")
    dialog.get_by_role("button", name="Save").click()
    page.get_by_role("dialog").wait_for(state="hidden")
    stored = _stored(server, "glm_form_defaults")
    extra = json.loads(stored["extra"])
    assert extra["auth"] == "bearer"
    assert {k: v for k, v in extra.items() if k != "auth"} == dict.fromkeys(set(extra) - {"auth"})
    settings = ConnectionSettings.from_connection(
        Connection(conn_id="glm_form_defaults", conn_type="glm", password="test-key-from-the-form", extra=extra))
    assert (settings.auth, settings.model, settings.client_options) == ("bearer", constants.DEFAULT_MODEL, {})
    page.context.close()


def test_bounds_in_the_form_and_at_the_hook(browser: Any, server: ApiServer) -> None:
    page = open_as(browser, server, "admin")
    dialog = _open_add_form(page, server, "glm_form_bounds")
    dialog.get_by_label("API Key").fill("test-key-from-the-form")
    dialog.get_by_role("button", name="Timeouts and limits").click()
    shown = {}
    for name, typed in (("max_retries", "-1"), ("max_connections", "0"), ("max_response_bytes", "abc"),
                        ("timeout", "0")):
        field = dialog.locator(f"input[name=element_{name}]")
        field.fill(typed)
        field.blur()
        shown[name] = field.input_value()
    # minimum is enforced by clamping on blur; letters are dropped; exclusiveMinimum is not honoured.
    assert shown == {"max_retries": "0", "max_connections": "1", "max_response_bytes": "", "timeout": "0"}
    dialog.get_by_role("button", name="Save").click()
    page.get_by_role("dialog").wait_for(state="hidden")
    extra = json.loads(_stored(server, "glm_form_bounds")["extra"])
    assert (extra["max_retries"], extra["max_connections"], extra["max_response_bytes"], extra["timeout"]) == (
        0, 1, None, 0)
    page.context.close()

    # Testing the saved values through the API runs the hook on a copy with a random connection id:
    # the message must say which field and how to fix it without that id.
    answer = httpx.post(f"{server.url}/api/v2/connections/test",
                        headers={"Authorization": f"Bearer {server.token('admin')}"},
                        json={"connection_id": "glm_form_bounds_check", "conn_type": "glm",
                              "password": "test-key-from-the-form", "extra": json.dumps(extra)}, timeout=120)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["status"] is False
    assert "extra 'timeout' must be positive, got 0" in result["message"]
    assert "set the 'Timeout (s)' field (extra 'timeout') to a number of seconds above 0" in result["message"]
    assert "test-key-from-the-form" not in result["message"]
