"""The base URL as it goes on the wire: IDNA hosts, percent-encoded paths, and what is refused before any call."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from _scripted import Scripted, answer, completion, run, write

from airflow_provider_glm.client import AsyncGLMClient
from airflow_provider_glm.client._urls import check_base_url
from airflow_provider_glm.hooks.glm import GLMHook


@pytest.mark.parametrize(("given", "sent"), [
    ("https://bücher.example/api/paas/v4", "https://xn--bcher-kva.example/api/paas/v4"),
    ("https://智谱.example:8443/api/paas/v4/", "https://xn--5kvn35f.example:8443/api/paas/v4"),
    ("https://gw.example/team a/api", "https://gw.example/team%20a/api"),
    ("https://gw.example/already%20encoded/api", "https://gw.example/already%20encoded/api"),
    ("http://[::1]:8080/api/paas/v4", "http://[::1]:8080/api/paas/v4"),
])
def test_hosts_and_paths_go_out_in_ascii(given: str, sent: str) -> None:
    assert check_base_url(given) == sent


@pytest.mark.parametrize(("given", "reason"), [
    ("https://user:secret@gw.example/api", "must not hold credentials"),
    ("https://gw.example/api?key=1", "must not have a query"),
    ("https://a\u200db.example/api", "not a valid internationalized domain name"),
    ("ftp://gw.example/api", "must be an http"),
])
def test_bad_base_urls_are_refused(given: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        check_base_url(given)
    assert "secret" not in str(refused.value)


def test_a_bad_base_url_names_the_connection_field(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "glm", "password": "sk-url-test", "host": "https://a\u200db.example/api/paas/v4"}
    monkeypatch.setenv("AIRFLOW_CONN_GLM_URLS", json.dumps(conn))
    with pytest.raises(ValueError, match=r"connection 'glm_urls', field 'Base URL' \(host\):"):
        GLMHook("glm_urls").settings  # noqa: B018 - reading it checks it


def test_a_path_with_a_space_reaches_the_server_encoded() -> None:
    async def script(n: int, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        await write(writer, answer(completion(request)))

    async def main() -> list[str]:
        async with Scripted(script) as server:
            base_url = server.base_url.replace("/api/paas/v4", "/team a/api/paas/v4")
            async with AsyncGLMClient("sk-url-test", base_url=base_url, max_retries=0) as glm:
                await glm.send_chat(json.dumps({"model": "glm-4.5", "messages": [{"role": "user",
                                                                                  "content": "hi"}]}).encode())
            return server.targets

    assert run(main()) == ["/team%20a/api/paas/v4/chat/completions"]
