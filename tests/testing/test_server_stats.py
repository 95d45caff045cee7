"""The stats endpoints, exact in-flight counts across independent clients, and the command line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from _waits import wait_until

from airflow_provider_glm.testing import GLMTestServer

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Bearer test-key"}
BODY = {"model": "glm-4.5", "messages": [{"role": "user", "content": "hello world"}]}
WAIT_SECONDS = 30.0




def test_stats_and_reset_endpoints(glm_server: GLMTestServer) -> None:
    root = glm_server.root_url
    empty = httpx.get(f"{root}/_stats").json()
    assert empty["requests"] == 0 and empty["billed_responses"] == 0 and empty["status_counts"] == {}
    assert set(empty) == {"requests", "billed_responses", "billed_prompt_tokens", "billed_completion_tokens",
                          "billed_total_tokens", "peak_in_flight", "in_flight", "peak_chat_in_flight",
                          "chat_in_flight", "status_counts", "files_uploaded", "batches_created", "cancels",
                          "async_submitted"}
    glm_server.answer("hello", content="hi")
    answer = httpx.post(f"{glm_server.base_url}/chat/completions", json=BODY, headers=AUTH).json()
    assert httpx.post(f"{glm_server.base_url}/chat/completions", json=BODY).status_code == 401
    stats = httpx.get(f"{root}/_stats").json()
    usage = answer["usage"]
    assert stats == {**empty, "requests": 2, "billed_responses": 1, "billed_prompt_tokens": usage["prompt_tokens"],
                     "billed_completion_tokens": usage["completion_tokens"],
                     "billed_total_tokens": usage["total_tokens"], "peak_in_flight": 1, "peak_chat_in_flight": 1,
                     "status_counts": {"200": 1, "401": 1}}
    assert stats == glm_server.stats.to_dict() and len(glm_server.requests) == 2
    reset = httpx.post(f"{root}/_reset")
    assert reset.status_code == 200 and reset.json() == empty and glm_server.billed == []
    after = httpx.post(f"{glm_server.base_url}/chat/completions", json=BODY, headers=AUTH).json()
    assert after["choices"][0]["message"]["content"] == "hi"
    assert httpx.get(f"{root}/_stats/").json()["requests"] == 1
    assert httpx.get(f"{root}/_reset").status_code == 404
    assert httpx.post(f"{root}/_stats").status_code == 404


def burst(srv: GLMTestServer, n: int) -> list[int]:
    async def run() -> list[int]:
        async with httpx.AsyncClient(headers=AUTH, timeout=WAIT_SECONDS) as client:
            url = f"{srv.base_url}/chat/completions"
            return [r.status_code for r in await asyncio.gather(*(client.post(url, json=BODY) for _ in range(n)))]

    return asyncio.run(run())


def two_clients(srv: GLMTestServer, n: int) -> tuple[list[threading.Thread], list[int]]:
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.extend(burst(srv, n))) for _ in range(2)]
    for thread in threads:
        thread.start()
    return threads, codes


def test_in_flight_counts_every_client_exactly(glm_server: GLMTestServer) -> None:
    glm_server.hold()
    threads, codes = two_clients(glm_server, 3)
    try:
        wait_until(lambda: glm_server.stats.in_flight == 6, "six requests in flight")
        assert glm_server.stats.chat_in_flight == 6 and glm_server.stats.billed_responses == 0
    finally:
        glm_server.release()
    for thread in threads:
        thread.join(WAIT_SECONDS)
    stats = glm_server.stats
    assert sorted(codes) == [200] * 6 and stats.peak_in_flight == 6 and stats.peak_chat_in_flight == 6
    assert stats.in_flight == 0 and stats.chat_in_flight == 0 and stats.billed_responses == 6


def test_concurrency_limit_is_one_account_for_all_clients(glm_server: GLMTestServer) -> None:
    glm_server.concurrency_limit = 4
    glm_server.hold()
    threads, codes = two_clients(glm_server, 3)
    try:
        wait_until(lambda: glm_server.stats.status_counts.get(429) == 2, "two refusals")
        assert glm_server.stats.chat_in_flight == 4
    finally:
        glm_server.release()
    for thread in threads:
        thread.join(WAIT_SECONDS)
    stats = glm_server.stats
    assert sorted(codes) == [200] * 4 + [429] * 2
    assert stats.peak_chat_in_flight == 4 and stats.billed_responses == 4 and stats.status_counts == {200: 4, 429: 2}
    refusals = [r for r in glm_server.requests if r.status == 429]
    assert len(refusals) == 2 and not any(r.billed for r in refusals)


def start_cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "airflow_provider_glm.testing", "--port", "0", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def test_cli_answers_file_echo_key_and_stats(tmp_path: Path) -> None:
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(json.dumps(e) for e in [
        {"match": "invoice", "json": {"total": 42}},
        {"match": "weather", "tool_call": {"name": "lookup", "arguments": {"city": "Beijing"}}, "times": 1},
    ]) + "\n", encoding="utf-8")
    extra = tmp_path / "more.json"
    extra.write_text(json.dumps([{"match": "news", "content_filter": [{"role": "assistant", "level": 1}]}]))
    proc = start_cli("--answers", str(answers), "--answers", str(extra), "--echo-key", cwd=tmp_path)
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().strip()
        root = base.removesuffix("/api/paas/v4")

        def ask(text: str, key: str = "test-key") -> httpx.Response:
            return httpx.post(f"{base}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": "m", "messages": [{"role": "user", "content": text}]})

        assert httpx.get(f"{root}/_stats").json()["requests"] == 0
        assert json.loads(ask("the invoice")
                          .json()["choices"][0]["message"]["content"]) == {"total": 42}
        assert ask("weather?").json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup"
        assert ask("weather?").json()["choices"][0]["message"]["content"] == "Summary: weather?"
        assert ask("news").json()["content_filter"] == [{"role": "assistant", "level": 1}]
        assert "Bearer sk-x" in ask("x", key="sk-x").json()["error"]["message"]
        stats = httpx.get(f"{root}/_stats").json()
        assert stats["requests"] == 5 and stats["billed_responses"] == 4
        assert stats["status_counts"] == {"200": 4, "401": 1}
        assert httpx.post(f"{root}/_reset").json()["requests"] == 0
        assert json.loads(ask("invoice").json()["choices"][0]["message"]["content"]) == {"total": 42}
        assert httpx.get(f"{root}/_stats").json()["billed_responses"] == 1
    finally:
        proc.terminate()
        assert proc.wait(timeout=WAIT_SECONDS) == 0


@pytest.mark.parametrize(("content", "message"), [
    ('{"match": "x"}', "an answer needs"),
    ('[{"match": "x", "content": "a", "colour": 1}]', "unknown key(s) ['colour']"),
    ('{"match": "x", "content": "a"}\n{oops\n', "line 2: not JSON"),
    ('[{"match": 3, "content": "a"}]', "entry 0: match must be a string"),
])
def test_cli_refuses_a_bad_answers_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "answers.json"
    path.write_text(content, encoding="utf-8")
    proc = start_cli("--answers", str(path), cwd=tmp_path)
    _, err = proc.communicate(timeout=WAIT_SECONDS)
    assert proc.returncode == 2 and message in err, err
