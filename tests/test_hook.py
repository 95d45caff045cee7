"""``GLMHook``: a ``glm`` connection from the environment turned into working clients."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from airflow.sdk import Connection

from airflow_provider_glm.client.retry import RetryPolicy
from airflow_provider_glm.constants import DEFAULT_BASE_URL, DEFAULT_MODEL
from airflow_provider_glm.exceptions import GLMServerError
from airflow_provider_glm.hooks._connection import ConnectionSettings, base_url_of
from airflow_provider_glm.hooks.glm import GLMHook
from airflow_provider_glm.testing import Fault, GLMTestServer

CONN_ID = "glm_test"
PAIR_KEY = "hookid.hook-secret-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "hello hook"}]

SetConn = Callable[..., None]


@pytest.fixture
def set_conn(glm_server: GLMTestServer, monkeypatch: pytest.MonkeyPatch) -> SetConn:
    """Write ``AIRFLOW_CONN_GLM_TEST`` (JSON form) pointing at the local server."""

    def write(extra: dict[str, Any] | None = None, **fields: Any) -> None:
        conn = {"conn_type": "glm", "password": glm_server.api_key, "host": glm_server.base_url,
                "extra": {"model": "glm-4.6"} if extra is None else extra, **fields}
        monkeypatch.setenv("AIRFLOW_CONN_GLM_TEST", json.dumps(conn))

    write()
    return write


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    """A request body as built, without the request_id the client stamps on each attempt."""
    assert str(body.get("request_id", "")).startswith("glm-")
    return {k: v for k, v in body.items() if k != "request_id"}


def hook(**client_options: Any) -> GLMHook:
    sleeps: list[float] = client_options.pop("sleeps", [])
    return GLMHook(CONN_ID, client_options={"sleep": sleeps.append, **client_options})


def test_hook_attributes() -> None:
    assert (GLMHook.conn_type, GLMHook.conn_name_attr, GLMHook.default_conn_name) == (
        "glm", "glm_conn_id", "glm_default")
    assert GLMHook.hook_name
    assert GLMHook().glm_conn_id == "glm_default"


def test_init_touches_nothing(glm_server: GLMTestServer) -> None:
    GLMHook("no_such_connection")
    assert glm_server.stats.requests == 0


def test_chat_completion_uses_model_from_extra(set_conn: SetConn, glm_server: GLMTestServer) -> None:
    answer = hook().chat_completion(MESSAGES)
    assert answer.content == "Summary: hello hook"
    assert answer.model == "glm-4.6"
    assert without_request_id(glm_server.requests[0].body) == {"model": "glm-4.6", "messages": MESSAGES}


def test_explicit_model_and_params_win(set_conn: SetConn, glm_server: GLMTestServer) -> None:
    hook().chat_completion(MESSAGES, model="glm-4.5-air", temperature=0.3)
    assert glm_server.requests[0].body["model"] == "glm-4.5-air"
    assert glm_server.requests[0].body["temperature"] == 0.3


def test_default_model_without_extra(set_conn: SetConn, glm_server: GLMTestServer) -> None:
    set_conn(extra={})
    hook().chat_completion(MESSAGES)
    assert glm_server.requests[0].body["model"] == DEFAULT_MODEL


def test_stream_chat_completion(set_conn: SetConn, glm_server: GLMTestServer) -> None:
    chunks = list(hook().stream_chat_completion(MESSAGES))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Summary: hello hook"
    assert chunks[-1].usage is not None
    assert glm_server.requests[0].body["stream"] is True
    assert glm_server.requests[0].body["model"] == "glm-4.6"


def test_achat_completion(set_conn: SetConn, glm_server: GLMTestServer) -> None:
    answer = asyncio.run(hook().achat_completion(MESSAGES, max_tokens=50))
    assert answer.content == "Summary: hello hook"
    assert without_request_id(glm_server.requests[0].body) == {"model": "glm-4.6", "messages": MESSAGES, "max_tokens": 50}


def test_client_built_once_and_get_conn(set_conn: SetConn) -> None:
    h = hook()
    assert h.client is h.get_conn()
    assert h.client is h.client


@pytest.mark.glm_server(api_key=PAIR_KEY)
def test_extras_parsed(set_conn: SetConn, glm_server: GLMTestServer) -> None:
    set_conn(extra={"model": "glm-4.5-flash", "timeout": "12.5", "connect_timeout": 3, "read_timeout": "4",
                    "max_retries": "0", "auth": "JWT", "max_connections": 5, "headers": {"X-Team": 7},
                    "prices": {"glm-4.5-flash": {"input": 0, "output": 0}}})
    h = hook()
    settings = h.settings
    assert (settings.model, settings.auth, settings.base_url) == ("glm-4.5-flash", "jwt", glm_server.base_url)
    assert settings.client_options == {"timeout": 12.5, "connect_timeout": 3.0, "read_timeout": 4.0,
                                       "max_retries": 0, "max_connections": 5, "headers": {"X-Team": "7"}}
    assert settings.prices == {"glm-4.5-flash": {"input": 0, "output": 0}}
    core = h.client.core
    assert (core.timeout, core.connect_timeout, core.read_timeout) == (12.5, 3.0, 4.0)
    assert core.retry.max_retries == 0
    assert core.credentials.mode == "jwt"
    h.chat_completion(MESSAGES)
    sent = glm_server.requests[0].headers
    assert sent["x-team"] == "7"
    assert sent["authorization"].count(".") == 2
    assert glm_server.requests[0].status == 200


def test_max_retries_extra_is_used(set_conn: SetConn, glm_server: GLMTestServer) -> None:
    set_conn(extra={"max_retries": 1})
    glm_server.script(*[Fault.error(500, "1234")] * 3)
    sleeps: list[float] = []
    with pytest.raises(GLMServerError, match="code 1234"):
        hook(sleeps=sleeps).chat_completion(MESSAGES)
    assert glm_server.stats.requests == 2
    assert len(sleeps) == 1


def test_client_options_override_extras(set_conn: SetConn, glm_server: GLMTestServer) -> None:
    set_conn(extra={"max_retries": 0})
    glm_server.script(Fault.error(429, "1302"), Fault.error(429, "1302"))
    answer = hook(retry_policy=RetryPolicy(max_retries=2, rng=random.Random(0))).chat_completion(MESSAGES)
    assert answer.call_info.attempts == 3


def test_async_client_overrides(set_conn: SetConn) -> None:
    client = hook().get_async_client(timeout=7.0)
    assert client.core.timeout == 7.0
    asyncio.run(client.aclose())


# --- invalid connections --------------------------------------------------------------------------

SECRET_VALUE = "sk-hook-secret-value-77"


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"auth": "oauth"}, "extra 'auth' must be 'bearer' or 'jwt'"),
        ({"timeout": -1}, "extra 'timeout' must be positive"),
        ({"timeout": 0}, "extra 'timeout' must be positive"),
        ({"read_timeout": "soon"}, "extra 'read_timeout' must be a finite number"),
        ({"timeout": "nan"}, "extra 'timeout' must be a finite number"),
        ({"timeout": "inf"}, "extra 'timeout' must be a finite number"),
        ({"max_retries": 2.7}, "extra 'max_retries' must be a whole number"),
        ({"max_response_bytes": 0}, "extra 'max_response_bytes' must be positive"),
        ({"headers": {"Authorization": "Bearer x"}}, "may not set \\['Authorization'\\]"),
        ({"connect_timeout": -0.5}, "extra 'connect_timeout' must be positive"),
        ({"max_retries": -1}, "extra 'max_retries' must be positive"),
        ({"max_retries": "two"}, "extra 'max_retries' must be a whole number"),
        ({"max_connections": 0}, "extra 'max_connections' must be positive"),
        ({"tempreature": 0.5}, r"unknown extra field\(s\) \['tempreature'\]"),
        ({"headers": "X-A: 1"}, "extra 'headers' must be an object"),
        ({"prices": [1, 2]}, "extra 'prices' must be an object"),
        ({"api_key": SECRET_VALUE}, r"password field, not in extra \['api_key'\]"),
        ({"API_KEY": SECRET_VALUE}, r"password field, not in extra \['API_KEY'\]"),
        ({"token": SECRET_VALUE, "model": "glm-4.5"}, r"password field, not in extra \['token'\]"),
    ],
)
def test_invalid_extras(set_conn: SetConn, glm_server: GLMTestServer, extra: dict[str, Any],
                        match: str) -> None:
    set_conn(extra=extra, password=SECRET_VALUE)
    h = hook()
    with pytest.raises(ValueError, match=f"connection 'glm_test'.*{match}") as info:
        h.chat_completion(MESSAGES)
    assert SECRET_VALUE not in str(info.value)
    assert SECRET_VALUE not in repr(info.value)
    assert glm_server.stats.requests == 0


def test_missing_password(set_conn: SetConn, glm_server: GLMTestServer) -> None:
    set_conn(password="")
    with pytest.raises(ValueError, match="has no API key: set its password field"):
        hook().chat_completion(MESSAGES)
    assert glm_server.stats.requests == 0


def test_jwt_with_plain_key(set_conn: SetConn, glm_server: GLMTestServer) -> None:
    set_conn(extra={"auth": "jwt"}, password=SECRET_VALUE)
    with pytest.raises(ValueError, match="id.secret") as info:
        hook().chat_completion(MESSAGES)
    assert SECRET_VALUE not in str(info.value)
    assert glm_server.stats.requests == 0


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        ({"host": "http://127.0.0.1:8080/api/paas/v4/"}, "http://127.0.0.1:8080/api/paas/v4"),
        ({"host": "https://api.z.ai/api/coding/paas/v4"}, "https://api.z.ai/api/coding/paas/v4"),
        ({"host": "open.bigmodel.cn/api/paas/v4"}, "https://open.bigmodel.cn/api/paas/v4"),
        ({"host": "glm.internal"}, "https://glm.internal/api/paas/v4"),
        ({"host": " glm.internal ", "port": 8443, "schema": "/api/paas/v4/"},
         "https://glm.internal:8443/api/paas/v4"),
        ({"host": ""}, DEFAULT_BASE_URL),
        ({}, DEFAULT_BASE_URL),
    ],
    ids=["full-url", "full-url-https", "bare-with-path", "bare", "bare-port-schema", "empty", "none"],
)
def test_host_forms(fields: dict[str, Any], url: str) -> None:
    conn = Connection(conn_id="c", conn_type="glm", password="k", **fields)
    assert base_url_of(conn) == url
    assert ConnectionSettings.from_connection(conn).base_url == url


# --- test_connection -------------------------------------------------------------------------------


def test_test_connection_ok(set_conn: SetConn, glm_server: GLMTestServer) -> None:
    ok, message = hook().test_connection()
    billed = glm_server.billed[0]
    assert ok, message
    assert f"spent {billed.total_tokens} tokens" in message
    assert glm_server.base_url in message and "glm-4.6" in message
    assert glm_server.stats.requests == 1
    ping = [{"role": "user", "content": "ping"}]
    assert without_request_id(glm_server.requests[0].body) == {"model": "glm-4.6", "messages": ping, "max_tokens": 1}
    assert billed.completion_tokens == 1


def test_test_connection_bad_key(set_conn: SetConn, glm_server: GLMTestServer) -> None:
    set_conn(password=SECRET_VALUE)
    ok, message = hook().test_connection()
    assert not ok
    assert message.startswith("GLMAuthenticationError: ")
    assert "HTTP 401" in message
    assert SECRET_VALUE not in message
    assert glm_server.stats.requests == 1


def test_test_connection_makes_one_call_even_when_retryable(set_conn: SetConn,
                                                            glm_server: GLMTestServer) -> None:
    set_conn(extra={"max_retries": 5})
    glm_server.script(Fault.error(503, "1305"), Fault.error(503, "1305"))
    ok, message = hook(retry_policy=RetryPolicy(max_retries=5)).test_connection()
    assert not ok
    assert "GLMRateLimitError" in message
    assert glm_server.stats.requests == 1


def test_test_connection_missing_connection(glm_server: GLMTestServer) -> None:
    ok, message = GLMHook("no_such_glm_connection").test_connection()
    assert not ok
    assert "no_such_glm_connection" in message
    assert glm_server.stats.requests == 0
