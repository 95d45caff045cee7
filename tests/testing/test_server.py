"""Tests of the GLM test server (airflow_provider_glm.testing) over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_glm.testing import Fault, GLMTestServer

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Bearer test-key"}
ZAI_KEY = "zaiid.zai-secret-0123456789abcdef0123456789"


def tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def chat(srv: GLMTestServer, body: Any = None, *, headers: dict[str, str] | None = None,
         timeout: float = 5.0, **fields: Any) -> httpx.Response:
    payload = body if body is not None else {
        "model": "glm-4.5", "messages": [{"role": "user", "content": "hello world"}], **fields,
    }
    return httpx.post(f"{srv.base_url}/chat/completions", json=payload,
                      headers=AUTH if headers is None else headers, timeout=timeout)


def sse_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line]


def sse_data(text: str) -> list[Any]:
    out: list[Any] = []
    for line in sse_lines(text):
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(key_id: str, secret: str, exp_ms: int, sign_type: str = "SIGN") -> str:
    now = int(time.time() * 1000)
    head = b64url(json.dumps({"alg": "HS256", "sign_type": sign_type}).encode())
    body = b64url(json.dumps({"api_key": key_id, "exp": exp_ms, "timestamp": now}).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def raw_exchange(srv: GLMTestServer, request: bytes, *, read_timeout: float = 3.0) -> bytes:
    with socket.create_connection((srv.host, srv.port), timeout=read_timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def raw_post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


BODY = json.dumps({"model": "glm-4.5", "messages": [{"role": "user", "content": "hello world"}]}).encode()


def test_normal_answer_shape_usage_and_cache(glm_server: GLMTestServer) -> None:
    system, user = "You are terse and exact.", "Summarise the quarterly report please"
    body = {"model": "glm-4.5", "request_id": "req-123456",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
    first = chat(glm_server, body)
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("application/json")
    data = first.json()
    assert set(data) == {"id", "request_id", "created", "model", "choices", "usage"}
    assert data["request_id"] == "req-123456" and data["model"] == "glm-4.5"
    assert isinstance(data["created"], int) and len(data["id"]) == 32
    choice = data["choices"][0]
    assert choice == {"index": 0, "finish_reason": "stop",
                      "message": {"role": "assistant", "content": f"Summary: {user}"}}
    usage = data["usage"]
    prompt = tokens(system) + tokens(user) + 3
    completion = tokens(f"Summary: {user}")
    assert usage == {"prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": prompt + completion,
                     "prompt_tokens_details": {"cached_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 0}}
    second = chat(glm_server, {**body, "request_id": None}).json()
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == tokens(system)
    assert second["request_id"] and second["request_id"] != data["request_id"] and second["id"] != data["id"]
    stats = glm_server.stats
    assert stats.requests == 2 and stats.billed_responses == 2 and stats.status_counts == {200: 2}
    assert stats.billed_total_tokens == 2 * (prompt + completion)
    billed = glm_server.billed
    assert [b.response_id for b in billed] == [data["id"], second["id"]]
    assert billed[1].cached_tokens == tokens(system) and billed[0].request_id == "req-123456"
    rec = glm_server.requests[0]
    assert rec.method == "POST" and rec.path == "/api/paas/v4/chat/completions"
    assert rec.headers["authorization"] == "Bearer test-key" and rec.body == body
    assert rec.status == 200 and rec.billed and rec.response_id == data["id"]
    assert rec.ended_at is not None and rec.ended_at >= rec.started_at
    glm_server.reset()
    assert glm_server.requests == [] and glm_server.billed == [] and glm_server.stats.requests == 0
    assert chat(glm_server, body).json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_parts_json_mode_thinking_max_tokens_and_coding_base(glm_server: GLMTestServer) -> None:
    parts = [{"type": "text", "text": "alpha"}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "beta"}]
    text = "alpha\nbeta"
    msg = [{"role": "user", "content": parts}]
    json_mode = {"type": "json_object"}
    data = chat(glm_server, {"model": "m", "messages": msg, "response_format": json_mode}).json()
    assert json.loads(data["choices"][0]["message"]["content"]) == {"summary": text, "chars": len(text)}
    data = chat(glm_server, {"model": "m", "messages": msg, "thinking": {"type": "enabled"}}).json()
    message, usage = data["choices"][0]["message"], data["usage"]
    assert message["reasoning_content"] == f"Thinking about: {text}"
    assert usage["completion_tokens_details"]["reasoning_tokens"] == tokens(f"Thinking about: {text}")
    assert usage["completion_tokens"] == tokens(f"Summary: {text}") + tokens(f"Thinking about: {text}")
    data = chat(glm_server, {"model": "m", "messages": msg, "max_tokens": 2}).json()
    assert data["choices"][0]["message"]["content"] == f"Summary: {text}"[:8]
    assert data["choices"][0]["finish_reason"] == "length" and data["usage"]["completion_tokens"] == 2
    coding = httpx.post(f"{glm_server.coding_base_url}/chat/completions",
                        json={"model": "m", "messages": msg}, headers=AUTH)
    assert coding.status_code == 200


def test_tool_call_answer(glm_server: GLMTestServer) -> None:
    tools = [{"type": "web_search", "web_search": {"enable": True}},
             {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    user = "Please call tool for the weather in Beijing today and tomorrow"
    messages = [{"role": "user", "content": user}]
    data = chat(glm_server, {"model": "m", "tools": tools, "messages": messages}).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function" and call["index"] == 0
    assert call["function"]["name"] == "lookup"
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {"query": user[:40]}
    assert data["usage"]["completion_tokens"] == tokens(call["function"]["arguments"])
    plain = chat(glm_server, {"model": "m", "tools": tools, "messages": [{"role": "user", "content": "hi"}]})
    assert plain.json()["choices"][0]["message"]["content"] == "Summary: hi"


def test_validation_and_unknown_path(glm_server: GLMTestServer) -> None:
    url = f"{glm_server.base_url}/chat/completions"
    bad = httpx.post(url, content=b"{not json", headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "1214"
    no_model = chat(glm_server, {"messages": [{"role": "user", "content": "x"}]})
    assert no_model.status_code == 400 and "model" in no_model.json()["error"]["message"]
    for messages in (None, []):
        resp = chat(glm_server, {"model": "m", "messages": messages})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "1214"
        assert "messages" in resp.json()["error"]["message"]
    missing = httpx.post(f"{glm_server.base_url}/nope", json={}, headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "1222"
    assert set(missing.json()) == {"error"} and missing.json()["error"]["message"]
    assert httpx.get(url, headers=AUTH).status_code == 404
    assert glm_server.stats.billed_responses == 0


def test_auth_plain_key(glm_server: GLMTestServer) -> None:
    missing = chat(glm_server, headers={})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "1001"
    wrong = chat(glm_server, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "1000"
    assert chat(glm_server, headers={"Authorization": "Bearer test-key"}).status_code == 200
    assert glm_server.stats.status_counts == {401: 2, 200: 1} and glm_server.stats.billed_responses == 1


@pytest.fixture
def jwt_server() -> Any:
    with GLMTestServer(api_key="keyid.s3cret") as srv:
        yield srv


def test_auth_jwt(jwt_server: GLMTestServer) -> None:
    glm_server = jwt_server
    future = int(time.time() * 1000) + 60_000

    def code(token: str) -> Any:
        resp = chat(glm_server, headers={"Authorization": f"Bearer {token}"})
        return 200 if resp.status_code == 200 else (resp.status_code, resp.json()["error"]["code"])

    assert code("keyid.s3cret") == 200
    assert code(make_jwt("keyid", "s3cret", future)) == 200
    assert code(make_jwt("keyid", "wrong", future)) == (401, "1002")
    assert code(make_jwt("keyid", "s3cret", future, sign_type="NONE")) == (401, "1002")
    assert code(make_jwt("keyid", "s3cret", int(time.time() * 1000) - 1000)) == (401, "1003")
    assert code(make_jwt("keyid", "s3cret", int(time.time()) + 600)) == (401, "1003")
    assert code(make_jwt("other", "s3cret", future)) == (401, "1000")
    assert code("keyid.other") == (401, "1000")


def test_script_fifo_and_rules(glm_server: GLMTestServer) -> None:
    glm_server.script(Fault.error(429, "1302"), Fault.error(500, 1234, "boom"))
    rule = glm_server.add_rule(match="row-42", fault=Fault.error(400, "1301"))
    once = glm_server.add_rule(match="row-7", fault=Fault.finish("sensitive"), times=1)
    first, second, third = chat(glm_server), chat(glm_server), chat(glm_server)
    assert (first.status_code, first.json()) == (429, {"error": {"code": "1302", "message": first.json()
                                                                 ["error"]["message"]}})
    assert (second.status_code, second.json()) == (500, {"error": {"code": 1234, "message": "boom"}})
    assert third.status_code == 200

    def row(n: int) -> httpx.Response:
        return chat(glm_server, {"model": "m", "messages": [{"role": "user", "content": f"row-{n}"}]})

    assert [row(42).status_code, row(1).status_code, row(42).status_code] == [400, 200, 400]
    assert row(42).json()["error"]["code"] == "1301" and rule.hits == 3
    glm_server.script(Fault.content("scripted first"))
    assert row(42).json()["choices"][0]["message"]["content"] == "scripted first"
    assert row(7).json()["choices"][0]["finish_reason"] == "sensitive"
    assert row(7).json()["choices"][0]["finish_reason"] == "stop" and once.remaining == 0
    stats = glm_server.stats
    assert stats.billed_responses == 5 and stats.status_counts == {429: 1, 500: 1, 200: 5, 400: 3}
    assert [r.fault for r in glm_server.requests][:3] == ["error", "error", None]


def test_error_variants_delay_redirect_and_bodies(glm_server: GLMTestServer) -> None:
    glm_server.script(Fault.error(429, 1302, "slow down", retry_after=3, top_level=True),
                      Fault.delay(0.2), Fault.redirect("http://elsewhere.invalid/x", status=302),
                      Fault.malformed_json(), Fault.html_200(),
                      Fault.missing("usage"), Fault.missing("choices"),
                      Fault.finish("length"), Fault.content("exactly this"), Fault.huge(200_000))
    top = chat(glm_server)
    assert top.status_code == 429 and top.headers["retry-after"] == "3"
    assert top.json()["code"] == 1302 and top.json()["msg"] == "slow down" and "error" not in top.json()
    started = time.monotonic()
    assert chat(glm_server).status_code == 200 and time.monotonic() - started >= 0.2
    redirect = chat(glm_server)
    assert redirect.status_code == 302 and redirect.headers["location"] == "http://elsewhere.invalid/x"
    malformed = chat(glm_server)
    assert malformed.status_code == 200 and malformed.headers["content-type"].startswith("application/json")
    assert malformed.text == '{"id": "x", "choices": ['
    with pytest.raises(json.JSONDecodeError):
        malformed.json()
    html = chat(glm_server)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert html.text.startswith("<html>") and html.text.endswith("</html>")
    no_usage, no_choices = chat(glm_server).json(), chat(glm_server).json()
    assert "usage" not in no_usage and "choices" in no_usage
    assert "choices" not in no_choices and "usage" in no_choices
    assert chat(glm_server).json()["choices"][0]["finish_reason"] == "length"
    exact = chat(glm_server).json()
    assert exact["choices"][0]["message"]["content"] == "exactly this"
    assert exact["usage"]["completion_tokens"] == tokens("exactly this")
    huge = chat(glm_server)
    assert 195_000 <= len(huge.content) <= 205_000 and huge.json()["usage"]["completion_tokens"] > 40_000
    stats = glm_server.stats
    assert stats.billed_responses == 6 and stats.requests == 10


def test_drop_after_billing(glm_server: GLMTestServer) -> None:
    glm_server.script(Fault.drop_after_billing())
    with pytest.raises(httpx.TransportError):
        chat(glm_server)
    assert glm_server.stats.billed_responses == 1
    (rec,) = glm_server.requests
    assert rec.billed and rec.status is None and rec.response_id == glm_server.billed[0].response_id
    assert chat(glm_server).status_code == 200


def test_reset_mid_body(glm_server: GLMTestServer) -> None:
    glm_server.script(Fault.reset_mid_body())
    with pytest.raises(httpx.TransportError):
        chat(glm_server)
    glm_server.script(Fault.reset_mid_body())
    raw = raw_exchange(glm_server, raw_post("/api/paas/v4/chat/completions", BODY))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.startswith(b"content-length")))
    assert head.startswith(b"HTTP/1.1 200") and len(body) == length // 2
    assert glm_server.stats.billed_responses == 2


def test_hang(glm_server: GLMTestServer) -> None:
    glm_server.script(Fault.hang(3600), Fault.hang(0.2))
    with pytest.raises(httpx.ReadTimeout):
        chat(glm_server, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        chat(glm_server, timeout=60)
    assert time.monotonic() - started >= 0.2
    assert glm_server.stats.billed_responses == 0 and glm_server.requests[1].status is None


def test_trickle(glm_server: GLMTestServer) -> None:
    glm_server.script(Fault.trickle(0.03, chunk=100))
    started = time.monotonic()
    with httpx.stream("POST", f"{glm_server.base_url}/chat/completions", headers=AUTH, timeout=30,
                      json={"model": "m", "messages": [{"role": "user", "content": "hello world"}]}) as resp:
        assert resp.status_code == 200
        pieces = list(resp.iter_raw())
    total = time.monotonic() - started
    body = b"".join(pieces)
    assert json.loads(body)["choices"][0]["message"]["content"] == "Summary: hello world"
    assert total >= 0.03 * math.ceil(len(body) / 100) and len(pieces) >= 3
    assert glm_server.stats.billed_responses == 1


def stream_body(srv: GLMTestServer, **fields: Any) -> httpx.Response:
    body = {"model": "glm-4.5", "stream": True,
            "messages": [{"role": "user", "content": "stream me a summary"}], **fields}
    return chat(srv, body)


def test_streaming_normal_and_tool_call(glm_server: GLMTestServer) -> None:
    resp = stream_body(glm_server, thinking={"type": "enabled"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["transfer-encoding"] == "chunked"
    assert ": keep-alive" in sse_lines(resp.text)
    events = sse_data(resp.text)
    assert events[-1] == "[DONE]" and events[0]["choices"][0]["delta"] == {"role": "assistant"}
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert all(set(c) >= {"id", "created", "model", "choices"} for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    content = "".join(d.get("content", "") for d in deltas)
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    assert content == "Summary: stream me a summary" and reasoning == "Thinking about: stream me a summary"
    first_content = next(i for i, d in enumerate(deltas) if "content" in d)
    assert all(i < first_content for i, d in enumerate(deltas) if "reasoning_content" in d)
    assert all(len(d.get("content", "")) <= 8 for d in deltas)
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop" and "usage" in last
    assert all("usage" not in c and "finish_reason" not in c["choices"][0] for c in chunks[:-1])
    assert last["usage"]["completion_tokens_details"]["reasoning_tokens"] == tokens(reasoning)

    tools = [{"type": "function", "function": {"name": "lookup"}}]
    user = "call tool: find the report"
    resp = stream_body(glm_server, tools=tools, messages=[{"role": "user", "content": user}])
    events = sse_data(resp.text)
    frags = [tc for e in events[:-1] for tc in e["choices"][0]["delta"].get("tool_calls", [])]
    assert len(frags) >= 2 and {f["index"] for f in frags} == {0}
    assert frags[0]["id"].startswith("call_") and frags[0]["type"] == "function"
    assert frags[0]["function"]["name"] == "lookup"
    assert json.loads("".join(f["function"]["arguments"] for f in frags)) == {"query": user}
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls" and events[-1] == "[DONE]"
    assert glm_server.stats.billed_responses == 2


def test_truncated_stream_and_stream_error(glm_server: GLMTestServer) -> None:
    glm_server.script(Fault.truncated_stream(), Fault.stream_error(code="1234", message="network down"),
                      Fault.missing("usage"))
    truncated = stream_body(glm_server)
    events = sse_data(truncated.text)
    assert truncated.status_code == 200 and events and "[DONE]" not in events
    assert all("usage" not in e for e in events)
    failed = stream_body(glm_server)
    events = sse_data(failed.text)
    assert failed.status_code == 200 and events[-1] == {"error": {"code": "1234", "message": "network down"}}
    assert "choices" in events[0] and "[DONE]" not in events
    no_usage = sse_data(stream_body(glm_server).text)
    assert no_usage[-1] == "[DONE]" and "usage" not in no_usage[-2]
    assert glm_server.stats.billed_responses == 2
    assert [r.billed for r in glm_server.requests] == [True, False, True]


def test_keep_alive_and_connection_close(glm_server: GLMTestServer) -> None:
    two = raw_post("/api/paas/v4/chat/completions", BODY) + raw_post("/api/paas/v4/chat/completions", BODY,
                                                                     "Connection: close\r\n")
    raw = raw_exchange(glm_server, two)
    assert raw.count(b"HTTP/1.1 200 OK") == 2 and b"Connection: close" in raw
    with httpx.Client(headers=AUTH) as client:
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        for _ in range(3):
            client.post(f"{glm_server.base_url}/chat/completions", json=body).raise_for_status()
    assert glm_server.stats.requests == 5


def test_peak_in_flight_and_concurrency_limit(glm_server: GLMTestServer) -> None:
    async def burst(n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(headers=AUTH, timeout=30) as client:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            url = f"{glm_server.base_url}/chat/completions"
            return list(await asyncio.gather(*(client.post(url, json=body) for _ in range(n))))

    def held_burst(n: int, until: Any) -> list[httpx.Response]:
        results: list[httpx.Response] = []
        glm_server.hold()
        thread = threading.Thread(target=lambda: results.extend(asyncio.run(burst(n))))
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not until(glm_server.stats):
                assert time.monotonic() < deadline, glm_server.stats
                time.sleep(0.01)
        finally:
            glm_server.release()
        thread.join(30)
        return results

    responses = held_burst(10, lambda stats: stats.in_flight == 10)
    assert all(r.status_code == 200 for r in responses)
    assert glm_server.stats.peak_in_flight == 10 and glm_server.stats.in_flight == 0

    glm_server.reset()
    glm_server.concurrency_limit = 3
    responses = held_burst(8, lambda stats: stats.status_counts.get(429) == 5)
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 3 + [429] * 5
    assert all(r.json()["error"]["code"] == "1302" for r in responses if r.status_code == 429)
    assert glm_server.stats.billed_responses == 3 and glm_server.stats.peak_chat_in_flight == 3


def test_random_rate_limit_is_seeded(glm_server: GLMTestServer) -> None:
    glm_server.rate_limit_fraction = 0.5

    def run() -> list[int]:
        glm_server.seed = 7
        with httpx.Client(headers=AUTH) as client:
            url = f"{glm_server.base_url}/chat/completions"
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            return [client.post(url, json=body).status_code for _ in range(16)]

    first = run()
    assert set(first) == {200, 429} and run() == first
    assert glm_server.stats.billed_responses == 2 * first.count(200)


def test_stop_closes_hanging_connections() -> None:
    srv = GLMTestServer().start()
    srv.script(Fault.hang(3600))
    errors: list[BaseException] = []

    def client() -> None:
        try:
            chat(srv, timeout=3600)
        except httpx.TransportError as exc:
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 30
    while srv.stats.in_flight == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    srv.stop()
    thread.join(30)
    assert not thread.is_alive() and len(errors) == 1


def test_cli_prints_base_url_and_serves(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "airflow_provider_glm.testing", "--port", "0", "--api-key", "cli-key"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:") and base.endswith("/api/paas/v4")
        resp = httpx.post(f"{base}/chat/completions", headers={"Authorization": "Bearer cli-key"},
                          json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert resp.json()["choices"][0]["message"]["content"] == "Summary: hi"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


class _ConnectionAudit:
    """Records every socket connect/getaddrinfo in this process while active."""

    installed = False
    active = False
    seen: list[tuple[str, Any]] = []

    @classmethod
    def hook(cls, event: str, args: tuple[Any, ...]) -> None:
        if cls.active and event in ("socket.connect", "socket.getaddrinfo"):
            cls.seen.append((event, args[1] if event == "socket.connect" else args[:2]))

    @classmethod
    def start(cls) -> None:
        if not cls.installed:
            sys.addaudithook(cls.hook)
            cls.installed = True
        cls.seen = []
        cls.active = True


def test_official_zai_sdk_against_server() -> None:
    with GLMTestServer(api_key=ZAI_KEY) as glm_server:
        _check_zai_sdk(glm_server)


def _check_zai_sdk(glm_server: GLMTestServer) -> None:
    _ConnectionAudit.start()
    try:
        from zai import ZhipuAiClient
        from zai.core import APIReachLimitError

        client = ZhipuAiClient(api_key=ZAI_KEY, base_url=glm_server.base_url, max_retries=0)
        messages = [{"role": "user", "content": "hello from the sdk"}]
        done = client.chat.completions.create(model="glm-4.5", messages=messages)
        assert done.choices[0].message.content == "Summary: hello from the sdk"
        assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
        assert done.usage.prompt_tokens_details is not None

        pieces = list(client.chat.completions.create(model="glm-4.5", messages=messages, stream=True))
        text = "".join(p.choices[0].delta.content or "" for p in pieces if p.choices)
        assert text == "Summary: hello from the sdk" and pieces[-1].choices[0].finish_reason == "stop"

        tools = [{"type": "function", "function": {"name": "lookup", "description": "d",
                                                    "parameters": {"type": "object", "properties": {}}}}]
        called = client.chat.completions.create(
            model="glm-4.5", tools=tools, messages=[{"role": "user", "content": "call tool please"}])
        call = called.choices[0].message.tool_calls[0]
        assert call.function.name == "lookup"
        assert json.loads(call.function.arguments) == {"query": "call tool please"}

        jwt_client = ZhipuAiClient(api_key=ZAI_KEY, base_url=glm_server.base_url,
                                   disable_token_cache=False, max_retries=0)
        assert jwt_client.chat.completions.create(model="glm-4.5", messages=messages).choices
        glm_server.script(Fault.error(429, "1302"))
        with pytest.raises(APIReachLimitError):
            client.chat.completions.create(model="glm-4.5", messages=messages)
    finally:
        _ConnectionAudit.active = False
    sent = [r.headers["authorization"] for r in glm_server.requests]
    assert sent[0] == f"Bearer {ZAI_KEY}" and sent[3].count(".") == 2
    assert glm_server.stats.billed_responses == 4
    targets = {args for event, args in _ConnectionAudit.seen if event == "socket.connect"}
    assert targets == {(glm_server.host, glm_server.port)}, _ConnectionAudit.seen
