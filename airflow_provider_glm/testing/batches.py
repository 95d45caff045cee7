"""``{base}/batches``: create, retrieve, cancel and list batch jobs over uploaded ``.jsonl`` files.

Status flow, driven by time in steps of ``server.batch_step_seconds`` (default 0.05 s; each batch keeps
the value it was created with)::

    validating (1 step) -> in_progress (1 + slow steps) -> finalizing (1 step) -> completed

A batch advances whenever it is read (``GET``, list, cancel, ``srv.batches``) and on a timer on the
server loop, so it finishes, and bills, even if nobody polls. During ``in_progress`` the input lines
are answered progressively in order (``request_counts`` grows); by its end all are answered. Each line
is answered like ``POST chat/completions``: the same deterministic completion and usage, billed in
the server tally (``BilledResponse.source == "batch"``, ``response_id`` the completion ``id``).
Rules (``srv.add_rule``) and scripted answers (``srv.answer``) are matched against the line's raw text
and its messages' text: ``Fault.error``/``Fault.stream_error`` put the line in the error file with the
fault's status and code; ``Fault.answer``, ``Fault.finish``, ``Fault.content``, ``Fault.huge`` and
``Fault.missing`` shape the answer; other faults are ignored. Scripted faults
(``srv.script``) never apply to batch lines. A line whose body fails chat validation is an error line
with code 1214.

Output line: ``{"custom_id", "id": "batch_req_...", "response": {"status_code": 200, "request_id",
"body": {completion}}}``. Error line: ``{"custom_id", "id", "response": {"status_code": <4xx/5xx>,
"request_id", "body": {"error": {"code", "message"}}}}``. Result files are created when the batch
reaches a final status, with purpose ``"batch_output"``; ``output_file_id`` / ``error_file_id`` stay
``""`` when that file would be empty. ``request_counts.completed`` counts 200 lines, ``failed`` every
error line (including lines left unanswered by expiry or cancellation), so a final batch has
``completed + failed == total`` (except ``failed`` batches: 0 and 0).

Scripted outcomes (``srv.batch_script(...)``, FIFO, one per created batch; unscripted batches complete):

* :meth:`BatchOutcome.completed` / :meth:`BatchOutcome.slow`: the normal flow, ``in_progress`` lasting
  ``1 + steps`` steps.
* :meth:`BatchOutcome.failed`: ``validating`` -> ``failed`` with ``errors = {"object": "list", "data":
  [{"code", "message", "param": None, "line"}]}``; no result files, nothing billed.
* :meth:`BatchOutcome.expired`: only the first ``after_lines`` lines are answered (and billed), then
  ``expired``; the rest are error lines with code ``"batch_expired"``.
* :meth:`BatchOutcome.cancelled`: as if cancelled after ``after_lines`` lines: ``cancelling`` (1 step)
  then ``cancelled``; the rest are error lines with code ``"batch_cancelled"``.

``POST batches/{id}/cancel`` (from ``validating``, ``in_progress`` or ``finalizing``; counted in
``stats.cancels``) stops answering lines, goes ``cancelling`` for one step, then ``cancelled``; lines
already answered are delivered (and were billed), the rest are ``batch_cancelled`` error lines. Cancelling
a ``cancelling`` batch answers it unchanged; cancelling a final batch is 400/1214.

``auto_delete_input_file`` (default true, as in the SDKs) deletes the input file when the batch reaches
any final status. Timestamps are milliseconds, or seconds with ``timestamps_in_seconds``; the
``*_at`` fields are null until set. ``GET batches?after=&limit=`` lists newest first (limit 1-100,
default 20; an unknown ``after`` is 400/1214). Unknown batch: 404, code ``"1222"``.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.testing.batch_model import CANCELLABLE, Batch, BatchOutcome
from airflow_provider_glm.testing.completions import generate_completion
from airflow_provider_glm.testing.faults import default_message
from airflow_provider_glm.testing.files import (
    BATCH_URL,
    OUTPUT_PURPOSE,
    BatchLine,
    file_store,
    parse_limit,
    query_params,
    send_not_found,
)
from airflow_provider_glm.testing.generation import prompt_text, validate_chat_body

if TYPE_CHECKING:
    from airflow_provider_glm.testing.routing import RequestContext
    from airflow_provider_glm.testing.server import GLMTestServer

__all__ = ["Batch", "BatchOutcome", "BatchStore", "answer_line", "register"]

EXPIRED_CODE = "batch_expired"
CANCELLED_CODE = "batch_cancelled"


class BatchStore:
    """The server's batches (``server.extensions["batches"]``), safe across threads.

    :param server: the server.
    """

    def __init__(self, server: GLMTestServer) -> None:
        self.server = server
        self.lock = threading.RLock()
        self.batches: dict[str, Batch] = {}
        self.outcomes: deque[BatchOutcome] = deque()
        self.paused = False

    def script(self, outcomes: Iterable[BatchOutcome]) -> None:
        """Queue outcomes for the next batches created.

        :param outcomes: outcomes in order.
        """
        with self.lock:
            self.outcomes.extend(outcomes)

    def create(self, input_file_id: str, lines: list[BatchLine], metadata: Any, auto_delete: bool,
               completion_window: str) -> Batch:
        """Create a batch in ``validating`` with the next scripted outcome.

        :param input_file_id: input file id.
        :param lines: its request lines.
        :param metadata: metadata as sent.
        :param auto_delete: delete the input file at the end.
        :param completion_window: as sent.
        """
        with self.lock:
            outcome = self.outcomes.popleft() if self.outcomes else BatchOutcome.completed()
            batch = Batch(id=f"batch_{uuid.uuid4().int % 10**19:019d}", input_file_id=input_file_id,
                          lines=list(lines), outcome=outcome, step=max(0.0, self.server.batch_step_seconds),
                          metadata=metadata, auto_delete=auto_delete, completion_window=completion_window)
            self.batches[batch.id] = batch
        self.server.state.count("batches_created")
        return batch

    def get(self, batch_id: str) -> Batch | None:
        """Return a batch brought up to date, or None."""
        with self.lock:
            batch = self.batches.get(batch_id)
            if batch is not None:
                self.advance(batch)
            return batch

    def advance(self, batch: Batch, now: float | None = None) -> None:
        """Move a batch through every status change due by ``now``.

        :param batch: the batch.
        :param now: ``time.monotonic()`` value; the current one when None.
        """
        now = time.monotonic() if now is None else now
        with self.lock:
            if self.paused:
                return
            step, outcome = batch.step, batch.outcome
            while not batch.final:
                if batch.status == "validating":
                    end = batch.phase_start + step
                    if now < end:
                        return
                    if outcome.kind == "failed":
                        batch.errors = {"object": "list", "data": [{
                            "code": outcome.code, "message": outcome.message, "param": None,
                            "line": outcome.line}]}
                        self._finish(batch, "failed", end)
                    else:
                        self._enter(batch, "in_progress", end)
                elif batch.status == "in_progress":
                    duration = (1 + outcome.steps) * step
                    end = batch.phase_start + duration
                    total = len(batch.lines)
                    limit = total if outcome.kind == "completed" else min(total, outcome.after_lines)
                    if now < end:
                        due = math.floor(total * (now - batch.phase_start) / duration)
                        self._process(batch, min(limit, due))
                        return
                    self._process(batch, limit)
                    if outcome.kind == "expired":
                        self._finish(batch, "expired", end)
                    elif outcome.kind == "cancelled":
                        self._enter(batch, "cancelling", end)
                    else:
                        self._enter(batch, "finalizing", end)
                else:  # finalizing, cancelling
                    end = batch.phase_start + step
                    if now < end:
                        return
                    self._finish(batch, "completed" if batch.status == "finalizing" else "cancelled", end)

    def pause(self) -> None:
        """Freeze every batch where it is (a test then sees ``in_progress`` for as long as it needs)."""
        with self.lock:
            for batch in self.batches.values():
                self.advance(batch)
            self.paused = True

    def resume(self) -> None:
        """Let batches move on; each one's current phase starts again now."""
        now = time.monotonic()
        with self.lock:
            self.paused = False
            for batch in self.batches.values():
                if not batch.final:
                    batch.phase_start = now

    def cancel(self, batch: Batch) -> bool:
        """Start cancelling a batch now; False when its status does not allow it."""
        with self.lock:
            self.advance(batch)
            if batch.status == "cancelling":
                return True
            if batch.status not in CANCELLABLE:
                return False
            self._enter(batch, "cancelling", time.monotonic())
        self.server.state.count("cancels")
        return True

    def snapshot(self) -> list[dict[str, Any]]:
        """Every batch brought up to date and rendered, oldest first."""
        with self.lock:
            for batch in self.batches.values():
                self.advance(batch)
            return [b.to_dict(self.server) for b in self.batches.values()]

    def clear(self) -> None:
        """Forget batches and scripted outcomes."""
        with self.lock:
            self.batches.clear()
            self.outcomes.clear()
            self.paused = False

    def tick(self, batch_id: str) -> None:
        """Advance one batch on the server loop and re-arm the timer until it is final."""
        with self.lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return
            self.advance(batch)
            if batch.final:
                return
            delay = batch.step
        asyncio.get_running_loop().call_later(max(delay, 0.001), self.tick, batch_id)

    def _enter(self, batch: Batch, status: str, at: float) -> None:
        batch.status = status
        batch.phase_start = at
        batch.stamps[status] = at

    def _process(self, batch: Batch, upto: int) -> None:
        while batch.processed < upto:
            line = batch.lines[batch.processed]
            batch.processed += 1
            ok, item = answer_line(self.server, line)
            if ok:
                batch.outputs.append(item)
                batch.completed += 1
            else:
                batch.error_lines.append(item)
                batch.failed += 1

    def _finish(self, batch: Batch, status: str, at: float) -> None:
        self._enter(batch, status, at)
        if status != "failed":
            code = EXPIRED_CODE if status == "expired" else CANCELLED_CODE
            message = ("This request could not be executed before the completion window expired."
                       if status == "expired" else "This request was not executed: the batch was cancelled.")
            for line in batch.lines[batch.processed:]:
                batch.error_lines.append(_error_line(line, 400, code, message))
                batch.failed += 1
            batch.processed = len(batch.lines)
            files = file_store(self.server)
            if batch.outputs:
                batch.output_file_id = files.add(f"{batch.id}_output.jsonl", OUTPUT_PURPOSE,
                                                 _jsonl(batch.outputs)).id
            if batch.error_lines:
                batch.error_file_id = files.add(f"{batch.id}_error.jsonl", OUTPUT_PURPOSE,
                                                _jsonl(batch.error_lines)).id
        if batch.auto_delete:
            file_store(self.server).delete(batch.input_file_id)


def _jsonl(items: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items).encode()


def _error_line(line: BatchLine, status: int, code: str | int, message: str) -> dict[str, Any]:
    return {"custom_id": line.custom_id, "id": f"batch_req_{uuid.uuid4().hex[:24]}",
            "response": {"status_code": status, "request_id": uuid.uuid4().hex,
                         "body": {"error": {"code": code, "message": message}}}}


def answer_line(server: GLMTestServer, line: BatchLine) -> tuple[bool, dict[str, Any]]:
    """Answer one input line; bill it when it succeeds.

    :param server: the server.
    :param line: the input line.
    :return: whether it succeeded, and its output or error line.
    """
    fault = server.state.take_rule(line.raw, prompt_text(line.body))
    if fault is not None and fault.kind in ("error", "stream_error"):
        code = fault.code if fault.code is not None else ("500" if fault.kind == "error" else "1234")
        message = fault.message if fault.message is not None else default_message(code)
        return False, _error_line(line, fault.status or 500, code, message)
    problem = validate_chat_body(line.body)
    if problem is None:
        try:
            json.dumps(line.body, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            problem = "the request contains text that is not valid Unicode (a lone surrogate)"
    if problem is not None:
        return False, _error_line(line, 400, "1214", problem)
    usable = fault if fault is not None and fault.generates else None
    completion = generate_completion(server, line.body, usable)
    server.state.bill(None, completion, source="batch")
    omit = fault.field if fault is not None and fault.kind == "missing" else None
    return True, {"custom_id": line.custom_id, "id": f"batch_req_{uuid.uuid4().hex[:24]}",
                  "response": {"status_code": 200, "request_id": completion.request_id,
                               "body": completion.to_dict(omit=omit)}}


def register(server: GLMTestServer) -> None:
    """Add the batch endpoints and the batch store to a server (and the files endpoints if missing).

    :param server: the server.
    """
    file_store(server)
    store = BatchStore(server)
    server.extensions["batches"] = store
    server.on_reset(store.clear)
    server.route("POST", "batches", create_batch)
    server.route("GET", "batches", list_batches)
    server.route("GET", "batches/{batch_id}", retrieve_batch)
    server.route("POST", "batches/{batch_id}/cancel", cancel_batch)


def _store(ctx: RequestContext) -> BatchStore:
    store: BatchStore = ctx.server.extensions["batches"]
    return store


def _check_create(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    if not isinstance(body.get("input_file_id"), str) or not body["input_file_id"]:
        return "Missing or invalid required parameter: input_file_id"
    if body.get("endpoint") != BATCH_URL:
        return f"Invalid parameter: endpoint must be {BATCH_URL!r}, got {body.get('endpoint')!r}"
    window = body.get("completion_window")
    if window is not None and window != "24h":
        return f"Invalid parameter: completion_window must be '24h', got {window!r}"
    metadata = body.get("metadata")
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        return "Invalid parameter: metadata must be an object of strings"
    auto_delete = body.get("auto_delete_input_file")
    if auto_delete is not None and not isinstance(auto_delete, bool):
        return "Invalid parameter: auto_delete_input_file must be a boolean"
    return None


async def create_batch(ctx: RequestContext) -> None:
    """``POST batches``.

    :param ctx: the request context.
    """
    body = ctx.json
    problem = _check_create(body)
    if problem is not None:
        await ctx.send_error(400, "1214", problem)
        return
    stored = file_store(ctx.server).get(body["input_file_id"])
    if stored is None:
        await send_not_found(ctx, "File", body["input_file_id"])
        return
    if stored.purpose != "batch":
        await ctx.send_error(400, "1214", f"Invalid parameter: file {stored.id} has purpose "
                                          f"{stored.purpose!r}, not 'batch'")
        return
    auto_delete = body.get("auto_delete_input_file")
    store = _store(ctx)
    batch = store.create(stored.id, stored.lines, body.get("metadata"),
                         True if auto_delete is None else auto_delete, body.get("completion_window") or "24h")
    asyncio.get_running_loop().call_later(max(batch.step, 0.001), store.tick, batch.id)
    with store.lock:
        payload = batch.to_dict(ctx.server)
    await ctx.send_json(200, payload)


async def retrieve_batch(ctx: RequestContext) -> None:
    """``GET batches/{batch_id}``.

    :param ctx: the request context.
    """
    store = _store(ctx)
    with store.lock:
        batch = store.get(ctx.params["batch_id"])
        payload = batch.to_dict(ctx.server) if batch is not None else None
    if payload is None:
        await send_not_found(ctx, "Batch", ctx.params["batch_id"])
        return
    await ctx.send_json(200, payload)


async def cancel_batch(ctx: RequestContext) -> None:
    """``POST batches/{batch_id}/cancel``.

    :param ctx: the request context.
    """
    store = _store(ctx)
    with store.lock:
        batch = store.get(ctx.params["batch_id"])
        if batch is None:
            payload = None
        elif not store.cancel(batch):
            payload = {"refused": batch.status}
        else:
            payload = batch.to_dict(ctx.server)
    if payload is None:
        await send_not_found(ctx, "Batch", ctx.params["batch_id"])
    elif "refused" in payload:
        await ctx.send_error(400, "1214", f"Batch {ctx.params['batch_id']} cannot be cancelled: "
                                          f"its status is {payload['refused']}")
    else:
        await ctx.send_json(200, payload)


async def list_batches(ctx: RequestContext) -> None:
    """``GET batches?after=&limit=``: newest first.

    :param ctx: the request context.
    """
    params = query_params(ctx)
    limit = parse_limit(params)
    if limit is None:
        await ctx.send_error(400, "1214", "Invalid parameter: limit must be an integer 1-100")
        return
    store = _store(ctx)
    with store.lock:
        ordered = list(reversed(store.batches.values()))
        ids = [b.id for b in ordered]
        after = params.get("after")
        if after and after not in ids:
            unknown = after
            page: list[Batch] = []
            more = False
        else:
            unknown = None
            rest = ordered[ids.index(after) + 1:] if after else ordered
            page, more = rest[:limit], len(rest) > limit
        for batch in page:
            store.advance(batch)
        data = [b.to_dict(ctx.server) for b in page]
    if unknown is not None:
        await ctx.send_error(400, "1214", f"Invalid parameter: unknown after id {unknown!r}")
        return
    await ctx.send_json(200, {"object": "list", "data": data,
                              "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None, "has_more": more})
