"""Faults the spend-truth work relies on, each billed (or not) exactly as a real server would.

No test waits a fixed time or checks elapsed time: ``srv.hold()`` keeps answers back until the
client is gone, and waits poll the server's state with generous limits.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest
from _waits import wait_until

from airflow_provider_glm.testing import Fault, GLMTestServer

AUTH = {"Authorization": "Bearer test-key"}
BODY = {"model": "glm-4.5", "messages": [{"role": "user", "content": "hello world"}]}
WAIT_SECONDS = 30.0




def chat(srv: GLMTestServer, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
         timeout: float = WAIT_SECONDS) -> httpx.Response:
    return httpx.post(f"{srv.base_url}/chat/completions", json=body or BODY,
                      headers=AUTH if headers is None else headers, timeout=timeout)


def raw_request(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (b"POST /api/paas/v4/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_delayed_answer_is_billed_after_the_client_timed_out(glm_server: GLMTestServer, stream: bool) -> None:
    glm_server.hold()
    glm_server.script(Fault.delay(0.05))
    try:
        with pytest.raises(httpx.ReadTimeout):
            chat(glm_server, {**BODY, "stream": stream}, timeout=0.2)
        assert glm_server.stats.billed_responses == 0
    finally:
        glm_server.release()
    wait_until(lambda: glm_server.stats.in_flight == 0, "the late answer")
    (record,) = glm_server.requests
    assert record.fault == "delay" and record.billed and record.status == 200
    (billed,) = glm_server.billed
    assert billed.response_id == record.response_id and billed.total_tokens > 0


def test_latency_answer_is_billed_after_the_client_closed_the_socket(glm_server: GLMTestServer) -> None:
    glm_server.latency = 0.05
    glm_server.hold()
    try:
        with socket.create_connection((glm_server.host, glm_server.port), timeout=WAIT_SECONDS) as sock:
            sock.sendall(raw_request(BODY))
            wait_until(lambda: glm_server.stats.chat_in_flight == 1, "the request to be admitted")
        assert glm_server.stats.billed_responses == 0
    finally:
        glm_server.release()
    wait_until(lambda: glm_server.stats.in_flight == 0, "the late answer")
    stats = glm_server.stats
    assert stats.billed_responses == 1 and stats.requests == 1 and glm_server.requests[0].billed


@pytest.mark.parametrize("stream", [False, True])
def test_billed_html_and_malformed_answers(glm_server: GLMTestServer, stream: bool) -> None:
    glm_server.script(Fault.html_200(billed=True), Fault.malformed_json(billed=True),
                      Fault.html_200(), Fault.malformed_json())
    body = {**BODY, "stream": stream}
    html = chat(glm_server, body)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert html.text.startswith("<html>")
    cut = chat(glm_server, body)
    assert cut.status_code == 200 and cut.headers["content-type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        cut.json()
    first, second = glm_server.billed
    assert cut.text.startswith(f'{{"id": "{second.response_id}"')
    assert chat(glm_server, body).text.startswith("<html>") and chat(glm_server, body).text == '{"id": "x", "choices": ['
    assert [r.billed for r in glm_server.requests] == [True, True, False, False]
    assert [r.fault for r in glm_server.requests] == ["html_200", "malformed_json", "html_200", "malformed_json"]
    assert glm_server.stats.billed_total_tokens == first.total_tokens + second.total_tokens


def test_echo_key_fault_json_and_html(glm_server: GLMTestServer) -> None:
    glm_server.script(Fault.echo_key(), Fault.echo_key(status=403, code="1220", html=True))
    secret = {"Authorization": "Bearer test-key"}
    echoed = chat(glm_server, headers=secret)
    assert echoed.status_code == 401
    assert echoed.json() == {"error": {"code": "1000", "message": "invalid request from key Bearer test-key"}}
    page = chat(glm_server, headers=secret)
    assert page.status_code == 403 and page.headers["content-type"].startswith("text/html")
    assert "invalid request from key Bearer test-key" in page.text
    assert glm_server.stats.billed_responses == 0 and chat(glm_server).status_code == 200


def test_echo_key_server_option_on_every_error_answer() -> None:
    with GLMTestServer(echo_key=True, concurrency_limit=0) as srv:
        wrong = chat(srv, headers={"Authorization": "Bearer sk-wrong-0123"})
        assert wrong.status_code == 401 and wrong.json()["error"]["message"].endswith(
            "(invalid request from key Bearer sk-wrong-0123)")
        limited = chat(srv)
        assert limited.status_code == 429 and "Bearer test-key" in limited.json()["error"]["message"]
        missing = httpx.get(f"{srv.base_url}/nope", headers=AUTH)
        assert missing.status_code == 404 and "Bearer test-key" in missing.json()["error"]["message"]
        no_header = chat(srv, headers={})
        assert no_header.status_code == 401 and "from key" not in no_header.json()["error"]["message"]
        srv.concurrency_limit = None
        srv.script(Fault.error(500, "1234", "boom"))
        assert chat(srv).json()["error"]["message"] == "boom (invalid request from key Bearer test-key)"
        bad = chat(srv, {"model": "m", "messages": []})
        assert bad.status_code == 400 and "Bearer test-key" in bad.json()["error"]["message"]
        assert chat(srv).status_code == 200


ASYNC_BODY = {"model": "glm-4.5", "messages": [{"role": "user", "content": "hello async"}]}


@pytest.mark.parametrize(("fault", "created"), [
    (Fault.drop_after_billing(), True), (Fault.reset_mid_body(), True), (Fault.html_200(billed=True), True),
    (Fault.malformed_json(billed=True), True), (Fault.html_200(), False), (Fault.echo_key(), False),
])
def test_async_submit_answer_lost_after_the_task_exists(glm_server: GLMTestServer, fault: Fault,
                                                        created: bool) -> None:
    glm_server.async_delay = 0.0
    glm_server.script(fault)
    try:
        resp = httpx.post(f"{glm_server.base_url}/async/chat/completions", json=ASYNC_BODY, headers=AUTH,
                          timeout=WAIT_SECONDS)
        assert resp.status_code != 200 or "task_status" not in resp.text
    except httpx.TransportError:
        assert fault.kind in ("drop_after_billing", "reset_mid_body")
    if created:
        tasks = wait_until(lambda: [t for t in glm_server.async_tasks if t["task_status"] == "SUCCESS"],
                           "the task to finish")
        (billed,) = glm_server.billed
        assert billed.source == "async" and billed.response_id == tasks[0]["id"]
    else:
        assert glm_server.async_tasks == [] and glm_server.stats.async_submitted == 0
    assert glm_server.requests[0].fault == fault.kind
