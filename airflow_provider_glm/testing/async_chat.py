"""Async chat: ``POST {base}/async/chat/completions`` and ``GET {base}/async-result/{id}``.

* Submit: the chat body (``stream`` is ignored) is checked like a chat request (400/1214 when invalid;
  admission applies: 429/1302 over the concurrency limit or by random rate limiting). A scripted fault
  (``srv.script``) applies to the submit answer when it does not generate (``error``, ``hang``,
  ``malformed_json``, ``html_200``, ``echo_key``, ``redirect``, ``stream_error``: no task is created)
  or delays it (``delay``). ``drop_after_billing``, ``reset_mid_body``, ``trickle`` and the billed
  ``html_200`` / ``malformed_json`` create the task (which finishes and bills as usual) and then
  lose, cut, trickle or garble the submit answer: the client cannot know the task id. Other
  generating scripted faults (``answer``, ``content``, ``finish``, ``missing``, ``huge``...) shape the
  later result. Answer: ``{id, request_id, model, task_status: "PROCESSING"}`` (``request_id`` from
  the body, or generated).
* Poll: ``{id, request_id, model, task_status: "PROCESSING"}`` until ``server.async_delay`` seconds (as
  set at submit time) have passed, then ``task_status: "SUCCESS"`` with the completion fields
  (``created``, ``choices``, ``usage``; ``id`` is the task id). The completion is generated and billed
  once, when the task turns ``SUCCESS`` (on a poll or on a timer, whichever comes first), with
  ``BilledResponse.source == "async"`` and ``response_id`` the task id.
* A rule (``srv.add_rule``) whose match is in the submitted body and whose fault is ``error`` or
  ``stream_error`` makes the task end ``task_status: "FAIL"`` with ``error: {code, message}``; not billed.
  Other rule faults shape the result like scripted generating faults.
* Unknown id: 404, code ``"1222"``.

``model`` is upper-cased in every answer with the server's ``uppercase_models``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.testing.completions import (
    JSON_TYPE,
    answer_without_completion,
    deliver,
    garble,
    generate_completion,
)
from airflow_provider_glm.testing.faults import GARBLING_FAULTS, default_message
from airflow_provider_glm.testing.files import send_not_found
from airflow_provider_glm.testing.generation import prompt_text, validate_chat_body

if TYPE_CHECKING:
    from airflow_provider_glm.testing.faults import Fault
    from airflow_provider_glm.testing.routing import RequestContext
    from airflow_provider_glm.testing.server import GLMTestServer

FAILING_KINDS = frozenset({"error", "stream_error"})
SUBMIT_DELIVERY_KINDS = frozenset({"drop_after_billing", "reset_mid_body", "trickle", *GARBLING_FAULTS})


@dataclass
class AsyncTask:
    """One async chat task.

    :param id: task id (also the completion id).
    :param request_id: request id.
    :param body: the chat body.
    :param fault: the fault shaping its result, if any.
    :param delay: seconds it stays PROCESSING.
    """

    id: str
    request_id: str
    body: dict[str, Any]
    fault: Fault | None
    delay: float
    submitted: float = field(default_factory=time.monotonic)
    status: str = "PROCESSING"
    result: dict[str, Any] | None = None

    def head(self, server: GLMTestServer) -> dict[str, Any]:
        """The fields every answer carries."""
        return {"id": self.id, "request_id": self.request_id,
                "model": server.reported_model(str(self.body["model"])), "task_status": self.status}


class AsyncStore:
    """The server's async tasks (``server.extensions["async_chat"]``), safe across threads.

    :param server: the server.
    """

    def __init__(self, server: GLMTestServer) -> None:
        self.server = server
        self.lock = threading.RLock()
        self.tasks: dict[str, AsyncTask] = {}

    def add(self, task: AsyncTask) -> None:
        """Store a new task."""
        with self.lock:
            self.tasks[task.id] = task
        self.server.state.count("async_submitted")

    def advance(self, task: AsyncTask, now: float | None = None) -> None:
        """Finish a task whose delay has passed: SUCCESS (generated and billed) or FAIL.

        :param task: the task.
        :param now: ``time.monotonic()`` value; the current one when None.
        """
        now = time.monotonic() if now is None else now
        with self.lock:
            if task.status != "PROCESSING" or now < task.submitted + task.delay:
                return
            fault = task.fault
            if fault is not None and fault.kind in FAILING_KINDS:
                code = fault.code if fault.code is not None else "1234"
                message = fault.message if fault.message is not None else default_message(code)
                task.status = "FAIL"
                task.result = {**task.head(self.server), "error": {"code": code, "message": message}}
                return
            completion = generate_completion(self.server, task.body, fault)
            completion = replace(completion, response_id=task.id, request_id=task.request_id)
            self.server.state.bill(None, completion, source="async")
            task.status = "SUCCESS"
            omit = fault.field if fault is not None and fault.kind == "missing" else None
            body = completion.to_dict(omit=omit)
            task.result = {"id": task.id, "request_id": task.request_id, "model": completion.model,
                           "task_status": "SUCCESS",
                           **{k: v for k, v in body.items() if k not in ("id", "request_id", "model")}}

    def render(self, task: AsyncTask) -> dict[str, Any]:
        """The task as ``GET async-result/{id}`` answers it now."""
        with self.lock:
            self.advance(task)
            if task.result is not None:
                return dict(task.result)
            return task.head(self.server)

    def get(self, task_id: str) -> AsyncTask | None:
        """Return a task, or None."""
        with self.lock:
            return self.tasks.get(task_id)

    def tick(self, task_id: str) -> None:
        """Finish a task on the server loop when its delay is over."""
        task = self.get(task_id)
        if task is not None:
            self.advance(task, max(time.monotonic(), task.submitted + task.delay))

    def snapshot(self) -> list[dict[str, Any]]:
        """Every task as answered now, oldest first."""
        with self.lock:
            return [self.render(t) for t in self.tasks.values()]

    def clear(self) -> None:
        """Forget every task."""
        with self.lock:
            self.tasks.clear()


def register(server: GLMTestServer) -> None:
    """Add the async chat endpoints to a server.

    :param server: the server.
    """
    store = AsyncStore(server)
    server.extensions["async_chat"] = store
    server.on_reset(store.clear)
    server.route("POST", "async/chat/completions", submit)
    server.route("GET", "async-result/{task_id}", result)


async def submit(ctx: RequestContext) -> None:
    """``POST async/chat/completions``.

    :param ctx: the request context.
    """
    if not await ctx.admit():
        return
    state = ctx.server.state
    fault = state.take_scripted()
    delivery = None
    if fault is not None and fault.kind in SUBMIT_DELIVERY_KINDS and fault.generates:
        ctx.record.fault = fault.kind
        delivery, fault = fault, None
    if fault is not None:
        ctx.record.fault = fault.kind
        if fault.kind == "hang":
            await ctx.hang(fault.seconds)
            return
        if fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
            fault = None
        elif not fault.generates:
            await answer_without_completion(ctx, fault)
            return
    if not ctx.body_is_json:
        await ctx.send_error(400, "1214", "Invalid parameter: request body is not valid JSON")
        return
    body = ctx.json
    problem = validate_chat_body(body)
    if problem is not None:
        await ctx.send_error(400, "1214", problem)
        return
    if fault is None:
        fault = state.take_rule(ctx.raw_text, prompt_text(body))
        if fault is not None:
            ctx.record.fault = fault.kind
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        request_id = uuid.uuid4().hex
    task = AsyncTask(id=uuid.uuid4().hex, request_id=request_id,
                     body={k: v for k, v in body.items() if k != "stream"}, fault=fault,
                     delay=max(0.0, ctx.server.async_delay))
    store: AsyncStore = ctx.server.extensions["async_chat"]
    store.add(task)
    asyncio.get_running_loop().call_later(task.delay, store.tick, task.id)
    payload = json.dumps(task.head(ctx.server), ensure_ascii=False).encode()
    if delivery is None:
        await ctx.send(200, payload, JSON_TYPE)
    elif delivery.kind == "drop_after_billing":
        ctx.close_connection = True
    elif delivery.kind in GARBLING_FAULTS:
        await garble(ctx, delivery, payload)
    else:
        await deliver(ctx, 200, JSON_TYPE, payload, delivery)


async def result(ctx: RequestContext) -> None:
    """``GET async-result/{task_id}``.

    :param ctx: the request context.
    """
    store: AsyncStore = ctx.server.extensions["async_chat"]
    task = store.get(ctx.params["task_id"])
    if task is None:
        await send_not_found(ctx, "Task", ctx.params["task_id"])
        return
    await ctx.send_json(200, store.render(task))
