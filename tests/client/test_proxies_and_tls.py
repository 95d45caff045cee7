"""Reaching GLM through a real proxy (Debian's tinyproxy, started by the test) and over TLS with chosen trust.

The proxy tests run the operator's rows through tinyproxy on loopback, set either by the connection's
``proxy`` extra or by ``HTTP_PROXY``, and check that the proxy saw every request: the test server
records tinyproxy's ``Via`` header on each, and tinyproxy's own log counts them. Without tinyproxy
they skip with the reason; CI installs it (``.ci/run``) and sets ``GLM_REQUIRE_PROXY=1`` so a missing
proxy fails instead. The TLS tests serve a self-signed certificate for ``localhost`` from loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _scripted import Scripted, answer, completion, run, write
from _tls import localhost_certificate, needs_openssl
from _waits import wait_until

from airflow_provider_glm._compat import AirflowFailException
from airflow_provider_glm.client import AsyncGLMClient
from airflow_provider_glm.client._network import NetworkOptions
from airflow_provider_glm.exceptions import GLMConnectionError, GLMError
from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.testing import GLMTestServer

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
BODY = json.dumps({"model": "glm-4.5", "messages": [{"role": "user", "content": "hi"}]}).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TinyProxy:
    """tinyproxy on a free loopback port, logging every request to a file of the test's own."""

    def __init__(self, directory: Path, *, basic_auth: tuple[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = directory / "tinyproxy.log"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 60", f'LogFile "{self.log}"', "LogLevel Info",
                 "MaxClients 64", "Allow 127.0.0.1"]
        if basic_auth is not None:
            lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
        config = directory / "tinyproxy.conf"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.process = subprocess.Popen([TINYPROXY, "-d", "-c", str(config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_until(self._accepts, f"tinyproxy to listen on 127.0.0.1:{self.port}")

    def _accepts(self) -> bool:
        assert self.process.poll() is None, f"tinyproxy exited: {self.log.read_text() if self.log.exists() else ''}"
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, method: str = "POST") -> int:
        """Requests tinyproxy logged (``Request (file descriptor N): POST http://... HTTP/1.1``)."""
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return sum(1 for line in text.splitlines() if "Request (file descriptor" in line and f": {method} " in line)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)


def _need_tinyproxy() -> None:
    if not os.path.exists(TINYPROXY):
        message = "tinyproxy not found (Debian package 'tinyproxy'; .ci/run installs it)"
        if os.environ.get("GLM_REQUIRE_PROXY") == "1":
            pytest.fail(message + " (GLM_REQUIRE_PROXY=1: the proxy tests must run)")
        pytest.skip(message)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[TinyProxy]:
    _need_tinyproxy()
    started = TinyProxy(tmp_path)
    yield started
    started.stop()


def _connection(monkeypatch: pytest.MonkeyPatch, server: GLMTestServer, **extra: Any) -> None:
    conn = {"conn_type": "glm", "password": server.api_key, "host": server.base_url,
            "extra": {"model": "glm-4.5", "max_retries": 1, **extra}}
    monkeypatch.setenv("AIRFLOW_CONN_GLM_DEFAULT", json.dumps(conn))


def _rows(context: dict[str, Any], count: int = 6) -> list[Any]:
    op = GLMChatOperator(task_id="through_proxy", rows=[{"id": i, "text": f"row {i}"} for i in range(count)],
                         row_key="id", prompt="Summarize: {{ row.text }}", max_concurrency=3)
    result: list[Any] = op.execute(context)
    return result


def _via_proxy(server: GLMTestServer) -> list[bool]:
    return ["tinyproxy" in request.headers.get("via", "") for request in server.requests]


def test_rows_go_through_the_proxy_extra(glm_server: GLMTestServer, proxy: TinyProxy, context: dict[str, Any],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _connection(monkeypatch, glm_server, proxy=proxy.url)
    values = _rows(context)
    assert len(values) == 6 and None not in values
    assert _via_proxy(glm_server) == [True] * 6, "every request reached the server through tinyproxy"
    wait_until(lambda: proxy.requests() == 6, "tinyproxy to log the 6 requests")


def test_rows_go_through_the_environments_proxy(glm_server: GLMTestServer, proxy: TinyProxy,
                                                context: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    _connection(monkeypatch, glm_server)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    values = _rows(context, count=4)
    assert None not in values
    assert _via_proxy(glm_server) == [True] * 4
    wait_until(lambda: proxy.requests() == 4, "tinyproxy to log the 4 requests")


def test_no_proxy_and_trust_env_false_go_direct(glm_server: GLMTestServer, proxy: TinyProxy,
                                                context: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    _connection(monkeypatch, glm_server)
    _rows(context, count=2)
    monkeypatch.delenv("NO_PROXY")
    _connection(monkeypatch, glm_server, trust_env=False)
    _rows(context, count=2)
    assert _via_proxy(glm_server) == [False] * 4
    assert proxy.requests() == 0


def test_proxy_credentials_are_sent_and_never_shown(glm_server: GLMTestServer, tmp_path: Path,
                                                    context: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    _need_tinyproxy()
    secret = "pr0xy-s3cret-pass"
    guarded = TinyProxy(tmp_path, basic_auth=("glmuser", secret))
    try:
        url = f"http://glmuser:{secret}@127.0.0.1:{guarded.port}"
        _connection(monkeypatch, glm_server, proxy=url)
        assert None not in _rows(context, count=2)
        assert _via_proxy(glm_server) == [True, True]
        # a wrong password: the proxy refuses the request (tinyproxy answers 401 to wrong credentials), and
        # nothing says the password
        _connection(monkeypatch, glm_server, proxy=url.replace(secret, "wrong-password-x"), max_retries=0)
        op = GLMChatOperator(task_id="bad_proxy", prompt="hi")
        with pytest.raises(AirflowFailException) as refused:
            op.execute(context)
    finally:
        guarded.stop()
    assert isinstance(refused.value.__cause__, GLMError) and refused.value.__cause__.status_code == 401
    texts = [str(refused.value), repr(refused.value), caplog.text, repr(op.hook.settings)]
    leaks = [text for text in texts if secret in text or "wrong-password-x" in text]
    assert leaks == []


def test_a_proxy_asking_for_credentials_is_named_and_nothing_billed(glm_server: GLMTestServer, tmp_path: Path,
                                                                     context: dict[str, Any],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _need_tinyproxy()
    guarded = TinyProxy(tmp_path, basic_auth=("glmuser", "some-password"))
    try:
        _connection(monkeypatch, glm_server, proxy=guarded.url, max_retries=0)
        with pytest.raises(GLMConnectionError, match=r"refused the request: it asks for credentials \(HTTP 407\)") \
                as refused:
            GLMChatOperator(task_id="no_credentials", prompt="hi").execute(context)
    finally:
        guarded.stop()
    assert f"127.0.0.1:{guarded.port} (from the connection's proxy extra)" in str(refused.value)
    assert not refused.value.may_have_been_billed
    assert glm_server.requests == []


def test_a_socks_proxy_is_refused_naming_the_extra(glm_server: GLMTestServer, context: dict[str, Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _connection(monkeypatch, glm_server, proxy="socks5://user:pw-secret-123@127.0.0.1:1080")
    with pytest.raises(ValueError, match="proxy extra must be an http:// or https:// URL") as refused:
        GLMChatOperator(task_id="socks", prompt="hi").execute(context)
    assert "pw-secret-123" not in str(refused.value)
    assert glm_server.requests == []


# --- TLS -------------------------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    key, cert = localhost_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return cert, context


async def _ask_tls(server_context: ssl.SSLContext, host: str, network: NetworkOptions,
                   proxy: TinyProxy | None = None) -> Any:
    async def script(n: int, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        await write(writer, answer(completion(request, content="over tls")))

    async with Scripted(script, ssl_context=server_context) as server:
        base_url = server.base_url.replace("http://127.0.0.1", f"https://{host}")
        if proxy is not None:
            network = NetworkOptions(proxy=proxy.url, ca_bundle=network.ca_bundle)
        async with AsyncGLMClient("sk-tls-key", base_url=base_url, network=network, max_retries=0,
                                  timeout=60) as glm:
            try:
                return await glm.send_chat(BODY)
            except GLMConnectionError as exc:
                return exc


@needs_openssl
def test_a_self_signed_certificate_is_refused(tls_server: tuple[Path, ssl.SSLContext]) -> None:
    _, server_context = tls_server
    refused = run(_ask_tls(server_context, "localhost", NetworkOptions(trust_env=False)))
    assert isinstance(refused, GLMConnectionError), refused
    assert "certificate" in str(refused).lower()
    assert not refused.request_sent and not refused.may_have_been_billed


@needs_openssl
def test_the_ca_bundle_extra_trusts_a_private_ca(tls_server: tuple[Path, ssl.SSLContext]) -> None:
    cert, server_context = tls_server
    answered = run(_ask_tls(server_context, "localhost", NetworkOptions(ca_bundle=str(cert))))
    assert not isinstance(answered, Exception), answered
    assert answered.content == "over tls"


@needs_openssl
def test_a_certificate_for_another_host_is_refused(tls_server: tuple[Path, ssl.SSLContext]) -> None:
    cert, server_context = tls_server  # made for localhost, asked as 127.0.0.1
    refused = run(_ask_tls(server_context, "127.0.0.1", NetworkOptions(ca_bundle=str(cert))))
    assert isinstance(refused, GLMConnectionError), refused
    assert not refused.request_sent


@needs_openssl
def test_https_through_the_proxy_tunnels_with_connect(tls_server: tuple[Path, ssl.SSLContext],
                                                      proxy: TinyProxy) -> None:
    cert, server_context = tls_server
    answered = run(_ask_tls(server_context, "localhost", NetworkOptions(ca_bundle=str(cert)), proxy=proxy))
    assert not isinstance(answered, Exception), answered
    assert answered.content == "over tls"
    wait_until(lambda: proxy.requests("CONNECT") == 1, "tinyproxy to log the CONNECT tunnel")
