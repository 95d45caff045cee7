"""Tests of the GLM test server's files, batches and async chat endpoints over real HTTP on loopback."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_glm.testing import BatchOutcome, Fault, GLMTestServer
from airflow_provider_glm.testing.auth import make_jwt

AUTH = {"Authorization": "Bearer test-key"}
FLOW = ["validating", "in_progress", "finalizing", "completed"]
FINAL = {"completed", "failed", "expired", "cancelled"}
TIMESTAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
              "cancelling_at", "cancelled_at")
ZAI_KEY = "zaiid.zai-secret-0123456789abcdef0123456789"
HTTP = httpx.Client(timeout=10.0)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    HTTP.close()


def tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def line(custom_id: str, text: str, model: str = "glm-4.5", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v4/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], **body}}


def jsonl(items: list[Any]) -> bytes:
    return "".join(json.dumps(i) + "\n" for i in items).encode()


def upload(srv: GLMTestServer, content: bytes, filename: str = "in.jsonl", purpose: str | None = "batch",
           headers: dict[str, str] | None = None) -> httpx.Response:
    data = {"purpose": purpose} if purpose is not None else {}
    return HTTP.post(f"{srv.base_url}/files", headers=AUTH if headers is None else headers, data=data,
                      files={"file": (filename, content, "application/octet-stream")})


def upload_ok(srv: GLMTestServer, items: list[Any]) -> str:
    resp = upload(srv, jsonl(items))
    assert resp.status_code == 200, resp.text
    file_id: str = resp.json()["id"]
    return file_id


def create(srv: GLMTestServer, file_id: str, **fields: Any) -> httpx.Response:
    body = {"input_file_id": file_id, "endpoint": "/v4/chat/completions", "completion_window": "24h",
            **fields}
    return HTTP.post(f"{srv.base_url}/batches", json=body, headers=AUTH)


def get_batch(srv: GLMTestServer, batch_id: str) -> dict[str, Any]:
    resp = HTTP.get(f"{srv.base_url}/batches/{batch_id}", headers=AUTH)
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def wait(srv: GLMTestServer, batch_id: str, until: Any = FINAL, timeout: float = 30.0,
         seen: list[str] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch = get_batch(srv, batch_id)
        if seen is not None and (not seen or seen[-1] != batch["status"]):
            seen.append(batch["status"])
        if until(batch) if callable(until) else batch["status"] in until:
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.01)


def read_jsonl(srv: GLMTestServer, file_id: str) -> list[dict[str, Any]]:
    resp = HTTP.get(f"{srv.base_url}/files/{file_id}/content", headers=AUTH)
    assert resp.status_code == 200, resp.text
    return [json.loads(x) for x in resp.content.decode().splitlines()]


def run_batch(srv: GLMTestServer, items: list[Any], **fields: Any) -> dict[str, Any]:
    resp = create(srv, upload_ok(srv, items), **fields)
    assert resp.status_code == 200, resp.text
    return wait(srv, resp.json()["id"])


def error_of(resp: httpx.Response) -> tuple[int, str, str]:
    err = resp.json()["error"]
    return resp.status_code, err["code"], err["message"]


def test_file_upload_download_delete_roundtrip(glm_server: GLMTestServer) -> None:
    content = jsonl([line("r1", "hello"), line("r2", "world")])
    before = time.time()
    resp = upload(glm_server, content, filename="数据.jsonl")
    assert resp.status_code == 200
    meta = resp.json()
    assert set(meta) == {"id", "object", "bytes", "created_at", "filename", "purpose"}
    assert meta["object"] == "file" and meta["bytes"] == len(content) and meta["purpose"] == "batch"
    assert meta["filename"] == "数据.jsonl" and meta["created_at"] > 1e12
    assert before * 1000 - 1000 <= meta["created_at"] <= time.time() * 1000 + 1000
    file_id = meta["id"]
    assert glm_server.files == {file_id: meta} and glm_server.file_content(file_id) == content
    down = HTTP.get(f"{glm_server.base_url}/files/{file_id}/content", headers=AUTH)
    assert down.status_code == 200 and down.content == content
    assert down.headers["content-type"] == "application/octet-stream"
    assert HTTP.get(f"{glm_server.base_url}/files/{file_id}", headers=AUTH).json() == meta
    listed = HTTP.get(f"{glm_server.base_url}/files", headers=AUTH).json()
    assert listed == {"object": "list", "data": [meta], "has_more": False}
    gone = HTTP.delete(f"{glm_server.base_url}/files/{file_id}", headers=AUTH)
    assert gone.status_code == 200 and gone.json() == {"id": file_id, "object": "file", "deleted": True}
    for resp in (HTTP.get(f"{glm_server.base_url}/files/{file_id}/content", headers=AUTH),
                 HTTP.delete(f"{glm_server.base_url}/files/{file_id}", headers=AUTH)):
        assert error_of(resp)[:2] == (404, "1222") and file_id in error_of(resp)[2]
    assert glm_server.files == {} and glm_server.stats.files_uploaded == 1
    with pytest.raises(KeyError):
        glm_server.file_content(file_id)


GOOD = line("r1", "a")


@pytest.mark.parametrize(("content", "filename", "expected"), [
    (jsonl([GOOD]), "in.json", ".jsonl"),
    (jsonl([GOOD]) + b"{not json\n", "in.jsonl", "line 2: invalid JSON"),
    (jsonl([GOOD, line("r2", "b"), line("r1", "c")]), "in.jsonl", "line 3: duplicate custom_id 'r1'"),
    (jsonl([GOOD, {"url": "/v4/chat/completions", "body": GOOD["body"]}]), "in.jsonl", "line 2: missing"),
    (jsonl([{"custom_id": "x", "url": "/v4/chat/completions"}]), "in.jsonl", "line 1: missing body"),
    (jsonl([GOOD, line("r2", "b", model="glm-4.6")]), "in.jsonl", "line 2: model 'glm-4.6' differs"),
    (jsonl([{**GOOD, "url": "/v4/embeddings"}]), "in.jsonl", "line 1: url must be"),
    (jsonl([GOOD, "just a string"]), "in.jsonl", "line 2: must be a JSON object"),
    (b"\n\n", "in.jsonl", "no request lines"),
    (b"{}\n" * 50_001, "in.jsonl", "50001 lines exceeds the limit of 50000"),
])
def test_upload_validation_errors(glm_server: GLMTestServer, content: bytes, filename: str,
                                  expected: str) -> None:
    status, code, message = error_of(upload(glm_server, content, filename=filename))
    assert (status, code) == (400, "1214") and expected in message, message
    assert glm_server.files == {} and glm_server.stats.files_uploaded == 0


def test_upload_limits_purpose_and_auth(glm_server: GLMTestServer) -> None:
    assert (glm_server.max_file_bytes, glm_server.max_file_lines) == (100 * 1024 * 1024, 50_000)
    content = jsonl([line(f"r{i}", "x" * 50) for i in range(3)])
    glm_server.max_file_bytes = len(content) - 1
    assert "exceeds the limit" in error_of(upload(glm_server, content))[2]
    glm_server.max_file_bytes, glm_server.max_file_lines = len(content), 2
    assert "3 lines exceeds the limit of 2" in error_of(upload(glm_server, content))[2]
    glm_server.max_file_lines = 3
    assert "purpose" in error_of(upload(glm_server, content, purpose="fine-tune"))[2]
    assert "purpose" in error_of(upload(glm_server, content, purpose=None))[2]
    no_file = HTTP.post(f"{glm_server.base_url}/files", headers=AUTH, data={"purpose": "batch"},
                         files={"other": ("in.jsonl", content)})
    assert error_of(no_file)[:2] == (400, "1214")
    assert error_of(upload(glm_server, content, headers={}))[:2] == (401, "1001")
    assert upload(glm_server, content).status_code == 200


def test_batch_happy_path_bills_exactly_the_tally(glm_server: GLMTestServer) -> None:
    system = "You are a careful analyst."
    items = [line("r1", "first question"),
             {**line("r2", "second"), "body": {"model": "glm-4.5", "messages": [
                 {"role": "system", "content": system}, {"role": "user", "content": "second"}]}},
             line("r3", "third", response_format={"type": "json_object"}, thinking={"type": "enabled"})]
    file_id = upload_ok(glm_server, items)
    resp = create(glm_server, file_id, metadata={"dag": "d1"})
    assert resp.status_code == 200
    batch = resp.json()
    assert set(batch) == {"id", "object", "endpoint", "input_file_id", "completion_window", "status",
                          "output_file_id", "error_file_id", "created_at", "in_progress_at", "expires_at",
                          "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
                          "cancelled_at", "request_counts", "metadata", "errors"}
    assert batch["object"] == "batch" and batch["status"] == "validating"
    assert batch["endpoint"] == "/v4/chat/completions" and batch["input_file_id"] == file_id
    assert batch["output_file_id"] == "" and batch["error_file_id"] == "" and batch["errors"] is None
    assert all(batch[k] is None for k in TIMESTAMPS) and batch["metadata"] == {"dag": "d1"}
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert batch["created_at"] > 1e12 and batch["expires_at"] == batch["created_at"] + 86_400_000
    seen: list[str] = []
    done = wait(glm_server, batch["id"], seen=seen)
    assert done["status"] == "completed" and seen == [s for s in FLOW if s in seen]
    assert done["created_at"] <= done["in_progress_at"] <= done["finalizing_at"] <= done["completed_at"]
    assert done["failed_at"] is None and done["cancelled_at"] is None
    assert done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert done["error_file_id"] == "" and done["output_file_id"]
    out = read_jsonl(glm_server, done["output_file_id"])
    assert [o["custom_id"] for o in out] == ["r1", "r2", "r3"]
    assert all(set(o) == {"custom_id", "id", "response"} and o["id"].startswith("batch_req_") for o in out)
    assert all(o["response"]["status_code"] == 200 for o in out)
    bodies = [o["response"]["body"] for o in out]
    assert all(o["response"]["request_id"] == b["request_id"] for o, b in zip(out, bodies, strict=True))
    assert bodies[0]["choices"][0]["message"]["content"] == "Summary: first question"
    assert bodies[0]["usage"]["prompt_tokens"] == tokens("first question") + 3
    assert bodies[1]["usage"]["prompt_tokens"] == tokens(system) + tokens("second") + 3
    assert json.loads(bodies[2]["choices"][0]["message"]["content"]) == {"summary": "third", "chars": 5}
    assert bodies[2]["choices"][0]["message"]["reasoning_content"] == "Thinking about: third"
    stats = glm_server.stats
    assert stats.billed_responses == 3 and stats.batches_created == 1
    assert stats.billed_total_tokens == sum(b["usage"]["total_tokens"] for b in bodies)
    billed = glm_server.billed
    assert [b.response_id for b in billed] == [b["id"] for b in bodies]
    assert {b.source for b in billed} == {"batch"} and billed[0].model == "glm-4.5"
    # the same body through chat: the same answer and usage (the system prompt is now cached)
    chat = HTTP.post(f"{glm_server.base_url}/chat/completions", json=items[1]["body"], headers=AUTH).json()
    assert chat["choices"] == bodies[1]["choices"]
    assert chat["usage"]["prompt_tokens_details"]["cached_tokens"] == tokens(system)
    # auto_delete_input_file defaults to true; results are files with purpose batch_output
    assert file_id not in glm_server.files
    assert glm_server.files[done["output_file_id"]]["purpose"] == "batch_output"
    assert glm_server.batches == [done]


def test_rule_driven_error_lines_and_fault_shapes(glm_server: GLMTestServer) -> None:
    rule = glm_server.add_rule(match="poison", fault=Fault.error(400, "1301", "unsafe content"))
    glm_server.add_rule(match="cut-short", fault=Fault.finish("length"))
    glm_server.add_rule(match="fixed", fault=Fault.content("exact answer"))
    glm_server.script(Fault.error(429, "1302"))  # scripted faults never touch batch lines
    items = [line("ok", "plain"), line("bad", "poison here"), line("short", "cut-short"),
             line("fix", "fixed"), {**line("empty", "x"), "body": {"model": "glm-4.5", "messages": []}}]
    file_id = upload_ok(glm_server, items)
    done = run_batch_from(glm_server, file_id, auto_delete_input_file=False)
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 5, "completed": 3, "failed": 2}
    out = {o["custom_id"]: o for o in read_jsonl(glm_server, done["output_file_id"])}
    errors = read_jsonl(glm_server, done["error_file_id"])
    assert list(out) == ["ok", "short", "fix"] and rule.hits == 1
    assert out["short"]["response"]["body"]["choices"][0]["finish_reason"] == "length"
    fixed = out["fix"]["response"]["body"]
    assert fixed["choices"][0]["message"]["content"] == "exact answer"
    assert fixed["usage"]["completion_tokens"] == tokens("exact answer")
    assert [e["custom_id"] for e in errors] == ["bad", "empty"]
    bad = errors[0]
    assert set(bad) == {"custom_id", "id", "response"} and bad["id"].startswith("batch_req_")
    assert bad["response"]["status_code"] == 400
    assert bad["response"]["body"] == {"error": {"code": "1301", "message": "unsafe content"}}
    assert errors[1]["response"]["body"]["error"]["code"] == "1214"
    assert "messages" in errors[1]["response"]["body"]["error"]["message"]
    assert glm_server.stats.billed_responses == 3
    assert read_jsonl(glm_server, file_id)[1]["custom_id"] == "bad"  # input kept
    chat = HTTP.post(f"{glm_server.base_url}/chat/completions", json=items[0]["body"], headers=AUTH)
    assert chat.status_code == 429


def run_batch_from(srv: GLMTestServer, file_id: str, **fields: Any) -> dict[str, Any]:
    resp = create(srv, file_id, **fields)
    assert resp.status_code == 200, resp.text
    return wait(srv, resp.json()["id"])


def test_failed_and_expired_outcomes(glm_server: GLMTestServer) -> None:
    glm_server.batch_script(BatchOutcome.failed("line 2 is broken", code="1214", line=2),
                            BatchOutcome.expired(after_lines=2))
    items = [line(f"r{i}", f"question {i}") for i in range(5)]
    seen: list[str] = []
    failed_id = create(glm_server, upload_ok(glm_server, items)).json()["id"]
    failed = wait(glm_server, failed_id, seen=seen)
    assert failed["status"] == "failed" and seen[-1] == "failed" and "in_progress" not in seen
    assert failed["errors"] == {"object": "list", "data": [
        {"code": "1214", "message": "line 2 is broken", "param": None, "line": 2}]}
    assert failed["failed_at"] >= failed["created_at"] and failed["in_progress_at"] is None
    assert failed["output_file_id"] == "" and failed["error_file_id"] == ""
    assert failed["request_counts"] == {"total": 5, "completed": 0, "failed": 0}
    assert glm_server.stats.billed_responses == 0

    expired = run_batch(glm_server, items)
    assert expired["status"] == "expired" and expired["expired_at"] >= expired["in_progress_at"]
    assert expired["completed_at"] is None and expired["errors"] is None
    assert expired["request_counts"] == {"total": 5, "completed": 2, "failed": 3}
    out = read_jsonl(glm_server, expired["output_file_id"])
    errors = read_jsonl(glm_server, expired["error_file_id"])
    assert [o["custom_id"] for o in out] == ["r0", "r1"]
    assert [e["custom_id"] for e in errors] == ["r2", "r3", "r4"]
    assert {e["response"]["body"]["error"]["code"] for e in errors} == {"batch_expired"}
    assert glm_server.stats.billed_responses == 2
    assert [b.response_id for b in glm_server.billed] == [o["response"]["body"]["id"] for o in out]
    expire_all = BatchOutcome.expired()
    glm_server.batch_script(expire_all)
    nothing = run_batch(glm_server, items)
    assert nothing["status"] == "expired" and nothing["output_file_id"] == "" and nothing["error_file_id"]


def test_slow_then_cancel_delivers_processed_lines(glm_server: GLMTestServer) -> None:
    glm_server.batch_script(BatchOutcome.slow(steps=600))  # 30 s in progress; 2 lines take 0.6 s
    items = [line(f"r{i}", f"question {i}") for i in range(100)]
    batch_id = create(glm_server, upload_ok(glm_server, items)).json()["id"]
    partial = wait(glm_server, batch_id, until=lambda b: b["request_counts"]["completed"] >= 2)
    assert partial["status"] == "in_progress" and partial["request_counts"]["completed"] < 100
    cancel = HTTP.post(f"{glm_server.base_url}/batches/{batch_id}/cancel", headers=AUTH)
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelling"
    assert cancel.json()["cancelling_at"] is not None and cancel.json()["cancelled_at"] is None
    done = wait(glm_server, batch_id)
    assert done["status"] == "cancelled" and done["cancelled_at"] >= done["cancelling_at"]
    answered = done["request_counts"]["completed"]
    assert 2 <= answered < 100 and done["request_counts"]["failed"] == 100 - answered
    out = read_jsonl(glm_server, done["output_file_id"])
    errors = read_jsonl(glm_server, done["error_file_id"])
    assert [o["custom_id"] for o in out] == [f"r{i}" for i in range(answered)]
    assert {e["response"]["body"]["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert glm_server.stats.billed_responses == answered and glm_server.stats.cancels == 1
    refused = HTTP.post(f"{glm_server.base_url}/batches/{batch_id}/cancel", headers=AUTH)
    assert error_of(refused)[:2] == (400, "1214") and "cancelled" in error_of(refused)[2]
    unknown = HTTP.post(f"{glm_server.base_url}/batches/batch_nope/cancel", headers=AUTH)
    assert error_of(unknown)[:2] == (404, "1222")
    assert error_of(HTTP.get(f"{glm_server.base_url}/batches/batch_nope", headers=AUTH))[0] == 404


def test_cancel_while_validating_is_idempotent(glm_server: GLMTestServer) -> None:
    glm_server.batch_step_seconds = 30.0  # a batch keeps the step it was created with
    batch_id = create(glm_server, upload_ok(glm_server, [GOOD])).json()["id"]
    glm_server.batch_step_seconds = 0.05
    url = f"{glm_server.base_url}/batches/{batch_id}/cancel"
    first, second = HTTP.post(url, headers=AUTH).json(), HTTP.post(url, headers=AUTH).json()
    assert first["status"] == second["status"] == "cancelling" and first == second
    assert first["in_progress_at"] is None and first["request_counts"]["completed"] == 0
    assert glm_server.stats.cancels == 1 and glm_server.stats.billed_responses == 0


def test_cancelled_outcome_and_billing_without_polls(glm_server: GLMTestServer) -> None:
    glm_server.batch_script(BatchOutcome.cancelled(after_lines=1))
    items = [line(f"r{i}", f"question {i}") for i in range(3)]
    seen: list[str] = []
    batch_id = create(glm_server, upload_ok(glm_server, items)).json()["id"]
    done = wait(glm_server, batch_id, seen=seen)
    assert done["status"] == "cancelled"
    assert done["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    assert done["cancelling_at"] is not None and done["finalizing_at"] is None
    assert glm_server.stats.cancels == 0 and glm_server.stats.billed_responses == 1
    # the server advances batches on its own timer: billing happens with nobody polling
    glm_server.reset()
    assert glm_server.batches == [] and glm_server.files == {}
    create(glm_server, upload_ok(glm_server, items))
    deadline = time.monotonic() + 30
    while glm_server.stats.billed_responses < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert glm_server.requests[-1].path.endswith("/batches")


def test_create_validation(glm_server: GLMTestServer) -> None:
    file_id = upload_ok(glm_server, [GOOD])
    cases = [({"endpoint": "/v1/chat/completions"}, "endpoint"),
             ({"completion_window": "48h"}, "completion_window"),
             ({"metadata": {"k": 1}}, "metadata"),
             ({"auto_delete_input_file": "yes"}, "auto_delete_input_file"),
             ({"input_file_id": ""}, "input_file_id")]
    for fields, word in cases:
        status, code, message = error_of(create(glm_server, file_id, **fields))
        assert (status, code) == (400, "1214") and word in message
    assert error_of(create(glm_server, "file-missing"))[:2] == (404, "1222")
    done = run_batch_from(glm_server, file_id)
    assert error_of(create(glm_server, done["output_file_id"]))[:2] == (400, "1214")
    resp = HTTP.post(f"{glm_server.base_url}/batches", headers={}, json={})
    assert error_of(resp)[:2] == (401, "1001")
    assert glm_server.stats.batches_created == 1


def test_list_paging_newest_first(glm_server: GLMTestServer) -> None:
    file_id = upload_ok(glm_server, [GOOD])
    ids = [create(glm_server, file_id, auto_delete_input_file=False).json()["id"] for _ in range(5)]
    url = f"{glm_server.base_url}/batches"

    def page(**params: Any) -> dict[str, Any]:
        resp = HTTP.get(url, params=params, headers=AUTH)
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    first = page(limit=2)
    assert set(first) == {"object", "data", "first_id", "last_id", "has_more"} and first["object"] == "list"
    assert [b["id"] for b in first["data"]] == [ids[4], ids[3]] and first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == (ids[4], ids[3])
    second = page(limit=2, after=first["last_id"])
    assert [b["id"] for b in second["data"]] == [ids[2], ids[1]] and second["has_more"] is True
    last = page(limit=2, after=second["last_id"])
    assert [b["id"] for b in last["data"]] == [ids[0]] and last["has_more"] is False
    empty = page(after=ids[0])
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    assert [b["id"] for b in page()["data"]] == ids[::-1]
    for params in ({"after": "batch_unknown"}, {"limit": 0}, {"limit": 101}, {"limit": "x"}):
        assert error_of(HTTP.get(url, params=params, headers=AUTH))[:2] == (400, "1214")
    assert [b["id"] for b in glm_server.batches] == ids


@pytest.fixture
def quirky_server() -> Iterator[GLMTestServer]:
    with GLMTestServer(timestamps_in_seconds=True, uppercase_models=True) as srv:
        yield srv


def test_seconds_timestamps_and_uppercase_models(quirky_server: GLMTestServer) -> None:
    srv = quirky_server
    meta = upload(srv, jsonl([line("r1", "hi", model="glm-4.5-air")])).json()
    assert abs(meta["created_at"] - time.time()) < 60
    done = run_batch_from(srv, meta["id"])
    assert done["status"] == "completed" and abs(done["completed_at"] - time.time()) < 60
    assert done["expires_at"] == done["created_at"] + 86_400
    (out,) = read_jsonl(srv, done["output_file_id"])
    assert out["response"]["body"]["model"] == "GLM-4.5-AIR" and srv.billed[0].model == "GLM-4.5-AIR"
    chat = HTTP.post(f"{srv.base_url}/chat/completions", headers=AUTH,
                      json={"model": "glm-4.6", "messages": [{"role": "user", "content": "x"}]})
    assert chat.json()["model"] == "GLM-4.6"
    srv.timestamps_in_seconds = False
    again = get_batch(srv, done["id"])
    assert again["created_at"] > 1e12 and again["created_at"] // 1000 == done["created_at"]
    srv.uppercase_models = False
    assert HTTP.post(f"{srv.base_url}/chat/completions", headers=AUTH,
                      json={"model": "glm-4.6", "messages": [{"role": "user", "content": "x"}]}
                      ).json()["model"] == "glm-4.6"


def submit(srv: GLMTestServer, text: str = "hello async", headers: dict[str, str] | None = None,
           **fields: Any) -> httpx.Response:
    body = {"model": "glm-4.5", "messages": [{"role": "user", "content": text}], **fields}
    return HTTP.post(f"{srv.base_url}/async/chat/completions", json=body,
                      headers=AUTH if headers is None else headers)


def poll(srv: GLMTestServer, task_id: str) -> httpx.Response:
    return HTTP.get(f"{srv.base_url}/async-result/{task_id}", headers=AUTH)


def test_async_chat_processing_then_success(glm_server: GLMTestServer) -> None:
    glm_server.async_delay = 3600.0
    resp = submit(glm_server, request_id="req-async-1")
    assert resp.status_code == 200
    task = resp.json()
    assert task == {"id": task["id"], "request_id": "req-async-1", "model": "glm-4.5",
                    "task_status": "PROCESSING"}
    assert poll(glm_server, task["id"]).json() == task and glm_server.stats.billed_responses == 0
    glm_server.extensions["async_chat"].get(task["id"]).delay = 0.0  # finish it now, on the next poll
    deadline = time.monotonic() + 30
    while (done := poll(glm_server, task["id"]).json())["task_status"] == "PROCESSING":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert done["task_status"] == "SUCCESS" and done["id"] == task["id"] and done["model"] == "glm-4.5"
    assert done["request_id"] == "req-async-1" and isinstance(done["created"], int)
    assert done["choices"][0]["message"]["content"] == "Summary: hello async"
    assert done["usage"]["prompt_tokens"] == tokens("hello async") + 3
    assert poll(glm_server, task["id"]).json() == done
    (billed,) = glm_server.billed
    assert billed.response_id == task["id"] and billed.source == "async"
    assert billed.total_tokens == done["usage"]["total_tokens"]
    assert glm_server.stats.async_submitted == 1 and glm_server.async_tasks == [done]


def test_async_chat_fail_and_errors(glm_server: GLMTestServer) -> None:
    glm_server.async_delay = 0.0
    glm_server.add_rule(match="explode", fault=Fault.error(500, "1234", "boom"))
    task = submit(glm_server, "please explode").json()
    assert task["task_status"] == "PROCESSING"
    failed = poll(glm_server, task["id"]).json()
    assert failed == {"id": task["id"], "request_id": task["request_id"], "model": "glm-4.5",
                      "task_status": "FAIL", "error": {"code": "1234", "message": "boom"}}
    assert glm_server.stats.billed_responses == 0
    glm_server.add_rule(match="shaped", fault=Fault.content("shaped answer"))
    shaped = poll(glm_server, submit(glm_server, "shaped").json()["id"]).json()
    assert shaped["choices"][0]["message"]["content"] == "shaped answer"
    assert error_of(poll(glm_server, "nope"))[:2] == (404, "1222")
    assert error_of(submit(glm_server, messages=[]))[:2] == (400, "1214")
    glm_server.script(Fault.error(429, "1302"))
    assert error_of(submit(glm_server))[:2] == (429, "1302")
    assert error_of(submit(glm_server, headers={}))[:2] == (401, "1001")
    assert error_of(poll_without_auth(glm_server, task["id"]))[:2] == (401, "1001")
    assert glm_server.stats.billed_responses == 1 and glm_server.stats.async_submitted == 2


def poll_without_auth(srv: GLMTestServer, task_id: str) -> httpx.Response:
    return HTTP.get(f"{srv.base_url}/async-result/{task_id}")


def test_uppercase_async_and_jwt_auth_on_new_endpoints() -> None:
    key = "keyid.s3cret"
    with GLMTestServer(api_key=key, uppercase_models=True, async_delay=0.0) as srv:
        jwt = {"Authorization": f"Bearer {make_jwt(key)}"}
        task = submit(srv, headers=jwt).json()
        assert task["model"] == "GLM-4.5"
        result = HTTP.get(f"{srv.base_url}/async-result/{task['id']}", headers=jwt).json()
        assert result["task_status"] == "SUCCESS" and result["model"] == "GLM-4.5"
        file_id = upload(srv, jsonl([GOOD]), headers=jwt).json()["id"]
        body = {"input_file_id": file_id, "endpoint": "/v4/chat/completions"}
        assert HTTP.post(f"{srv.base_url}/batches", json=body, headers=jwt).status_code == 200
        expired = {"Authorization": f"Bearer {make_jwt(key, ttl_seconds=-1)}"}
        assert error_of(HTTP.get(f"{srv.base_url}/batches", headers=expired))[:2] == (401, "1003")
        assert error_of(HTTP.get(f"{srv.base_url}/files/{file_id}/content"))[:2] == (401, "1001")


def test_official_zai_sdk_batch_and_async() -> None:
    from zai import ZhipuAiClient

    with GLMTestServer(api_key=ZAI_KEY, async_delay=0.0) as srv:
        client = ZhipuAiClient(api_key=ZAI_KEY, base_url=srv.base_url, max_retries=0)
        uploaded = client.files.create(file=("in.jsonl", jsonl([GOOD, line("r2", "b")])), purpose="batch")
        assert uploaded.id and uploaded.bytes and uploaded.purpose == "batch"
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v4/chat/completions",
                                      completion_window="24h", metadata={"k": "v"})
        assert batch.status == "validating"
        deadline = time.monotonic() + 30
        while (fetched := client.batches.retrieve(batch.id)).status not in FINAL:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert fetched.status == "completed" and fetched.request_counts is not None
        assert fetched.request_counts.completed == 2 and fetched.output_file_id
        content = client.files.content(fetched.output_file_id).content
        assert [json.loads(x)["custom_id"] for x in content.decode().splitlines()] == ["r1", "r2"]
        assert [b.id for b in client.batches.list(limit=5).data] == [batch.id]
        task = client.chat.asyncCompletions.create(
            model="glm-4.5", messages=[{"role": "user", "content": "hi"}])
        assert task.task_status == "PROCESSING"
        result = client.chat.asyncCompletions.retrieve_completion_result(id=task.id)
        assert result.task_status == "SUCCESS"
        assert srv.stats.billed_responses == 3
