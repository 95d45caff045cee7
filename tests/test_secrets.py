"""The API key never leaks: not in logs (httpx/httpcore and the chat pool at DEBUG), reprs, errors, pickles or requests.

Each test uses a fresh canary key; in JWT mode the secret half of an ``id.secret`` key is the canary.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import socket
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from _streams import assemble

from airflow_provider_glm.client import AsyncGLMClient, GLMClient
from airflow_provider_glm.client._auth import APIKey, Credentials
from airflow_provider_glm.exceptions import (
    GLMAuthenticationError,
    GLMConnectionError,
    GLMError,
    GLMInvalidResponseError,
    GLMServerError,
    GLMTimeoutError,
)
from airflow_provider_glm.hooks.glm import GLMHook
from airflow_provider_glm.testing import Fault, GLMTestServer

MESSAGES = [{"role": "user", "content": "hello"}]


@dataclass(frozen=True)
class Secret:
    key: str
    auth: str
    canaries: tuple[str, ...]


def make_secret(auth: str) -> Secret:
    if auth == "bearer":
        key = f"sk-canary-{uuid.uuid4().hex}"
        return Secret(key, "bearer", (key,))
    secret = f"canary-secret-{uuid.uuid4().hex}"
    return Secret(f"canaryid.{secret}", "jwt", (secret,))


@pytest.fixture(params=["bearer", "jwt"])
def secret(request: pytest.FixtureRequest) -> Secret:
    return make_secret(request.param)


@pytest.fixture
def srv(secret: Secret) -> Iterator[GLMTestServer]:
    with GLMTestServer(api_key=secret.key) as server:
        yield server


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")
    caplog.set_level(logging.DEBUG, logger="httpcore")
    return caplog


def assert_clean(text: str, secret: Secret) -> None:
    for canary in secret.canaries:
        assert canary not in text


def assert_logs_clean(logs: pytest.LogCaptureFixture, secret: Secret) -> None:
    assert logs.records, "nothing was logged: the check would prove nothing"
    # the request was logged (one DEBUG line per request: method, URL and status or failure type)
    assert any(r.name == "airflow_provider_glm.client._client" for r in logs.records)
    for record in logs.records:
        assert_clean(record.getMessage(), secret)
        assert_clean(repr(record.args), secret)
    assert_clean(logs.text, secret)


def error_texts(error: BaseException) -> str:
    return "\n".join([str(error), repr(error), repr(error.args), repr(vars(error)),
                      "".join(traceback.format_exception(error))])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- logs and requests ------------------------------------------------------------------------------


def test_successful_calls_log_nothing_secret(srv: GLMTestServer, secret: Secret,
                                             logs: pytest.LogCaptureFixture) -> None:
    with GLMClient(secret.key, base_url=srv.base_url, auth=secret.auth) as client:
        client.chat_completion("glm-4.5", MESSAGES)
        assemble(client.stream_chat_completion("glm-4.5", MESSAGES))

    async def run() -> None:
        async with AsyncGLMClient(secret.key, base_url=srv.base_url, auth=secret.auth) as client:
            await client.chat_completion("glm-4.5", MESSAGES)

    asyncio.run(run())
    assert [r.status for r in srv.requests] == [200, 200, 200]
    assert_logs_clean(logs, secret)
    for request in srv.requests:
        assert_clean(request.raw_body.decode(), secret)
        if secret.auth == "jwt":
            assert_clean(json.dumps(request.headers), secret)


@pytest.mark.parametrize("failure", ["401", "500", "timeout", "refused", "redirect", "stream-error"])
def test_failures_leak_nothing(srv: GLMTestServer, secret: Secret, logs: pytest.LogCaptureFixture,
                               failure: str) -> None:
    base_url = srv.base_url
    key = secret.key
    options: dict[str, Any] = {"max_retries": 0}
    expected: type[GLMError]
    if failure == "401":
        srv.api_key = make_secret(secret.auth).key
        expected = GLMAuthenticationError
    elif failure == "500":
        srv.script(Fault.error(500, "500"))
        expected = GLMServerError
    elif failure == "timeout":
        srv.script(Fault.hang(10))
        options["read_timeout"] = 0.2
        expected = GLMTimeoutError
    elif failure == "refused":
        base_url = f"http://127.0.0.1:{closed_port()}/api/paas/v4"
        expected = GLMConnectionError
    elif failure == "redirect":
        srv.script(Fault.redirect(f"http://127.0.0.1:{closed_port()}/steal?key=none"))
        expected = GLMInvalidResponseError
    else:
        srv.script(Fault.stream_error("1234"))
        expected = GLMServerError
    with GLMClient(key, base_url=base_url, auth=secret.auth, sleep=lambda s: None, **options) as client, \
            pytest.raises(expected) as info:
        if failure == "stream-error":
            assemble(client.stream_chat_completion("glm-4.5", MESSAGES))
        else:
            client.chat_completion("glm-4.5", MESSAGES)
    assert_clean(error_texts(info.value), secret)
    assert_clean(repr(pickle.dumps(info.value)), secret)
    if failure != "refused":
        assert_logs_clean(logs, secret)
    else:
        assert_clean(logs.text, secret)


def test_async_failures_leak_nothing(srv: GLMTestServer, secret: Secret,
                                     logs: pytest.LogCaptureFixture) -> None:
    srv.script(Fault.error(500, "1234"), Fault.hang(10))

    async def no_sleep(seconds: float) -> None:
        return None

    async def run(read_timeout: float) -> None:
        async with AsyncGLMClient(secret.key, base_url=srv.base_url, auth=secret.auth, max_retries=0,
                                  read_timeout=read_timeout, sleep=no_sleep) as client:
            await client.chat_completion("glm-4.5", MESSAGES)

    for cls in (GLMServerError, GLMTimeoutError):
        with pytest.raises(cls) as info:
            asyncio.run(run(0.2))
        assert_clean(error_texts(info.value), secret)
    assert_logs_clean(logs, secret)


# --- reprs and pickles -------------------------------------------------------------------------------


def test_reprs_hide_the_key(secret: Secret, srv: GLMTestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_GLM_SECRETS", json.dumps(
        {"conn_type": "glm", "password": secret.key, "host": srv.base_url, "extra": {"auth": secret.auth}}))
    api_key = APIKey(secret.key)
    credentials = Credentials(api_key, secret.auth)  # type: ignore[arg-type]
    credentials.authorization()
    client = GLMClient(secret.key, base_url=srv.base_url, auth=secret.auth)
    async_client = AsyncGLMClient(api_key, base_url=srv.base_url, auth=secret.auth)
    hook = GLMHook("glm_secrets")
    before = [repr(hook), str(hook)]
    settings = hook.settings
    hook.chat_completion(MESSAGES)
    objects: list[Any] = [api_key, credentials, client, async_client, hook, settings, client.core,
                          hook.client, hook.client.core, settings.api_key]
    texts = before + [f(o) for o in objects for f in (repr, str)]
    texts += [f"{api_key}", f"{api_key!r}", str(settings)]
    for text in texts:
        assert_clean(text, secret)
    assert repr(api_key) == "APIKey('***')"
    assert api_key.reveal() == secret.key
    client.close()
    asyncio.run(async_client.aclose())


def test_api_key_does_not_pickle(secret: Secret) -> None:
    api_key = APIKey(secret.key)
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(api_key)
    with pytest.raises(TypeError):
        pickle.dumps(Credentials(api_key, secret.auth))  # type: ignore[arg-type]


# --- the hook -----------------------------------------------------------------------------------------


def test_hook_failures_leak_nothing(secret: Secret, srv: GLMTestServer, logs: pytest.LogCaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def conn(password: str, **extra: Any) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_GLM_SECRETS", json.dumps(
            {"conn_type": "glm", "password": password, "host": srv.base_url,
             "extra": {"auth": secret.auth, **extra}}))

    wrong = make_secret(secret.auth)
    conn(wrong.key)
    ok, message = GLMHook("glm_secrets").test_connection()
    assert not ok
    assert_clean(message, wrong)

    conn(secret.key)
    ok, message = GLMHook("glm_secrets").test_connection()
    assert ok
    assert_clean(message, secret)

    conn(secret.key, api_key=secret.key)
    with pytest.raises(ValueError, match="api_key") as info:
        GLMHook("glm_secrets").chat_completion(MESSAGES)
    assert_clean(error_texts(info.value), secret)
    assert_clean(logs.text, secret)
    assert_clean(logs.text, wrong)
