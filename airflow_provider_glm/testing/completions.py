"""``POST {base}/chat/completions``: normal answers, SSE streaming and every :class:`Fault`.

Order of checks for one request: authentication (done by the server), admission (concurrency
limit, random rate limiting: 429/1302 at once, not billed), the hold (``GLMTestServer.hold``), the
scripted or rule fault, latency, then either the fault's non-completion answer or body validation
(400/1214) and a generated, billed completion delivered as the fault says. The completion is
generated and billed before the first byte of the answer is written, so a client that gave up
during the latency (or a ``delay`` fault) is billed all the same, as by the real API. With the
server's ``uppercase_models`` the answered (and billed) ``model`` is upper-cased.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.testing._http import LAST_CHUNK, encode_chunk
from airflow_provider_glm.testing.completion_body import Completion, sse_event
from airflow_provider_glm.testing.faults import GARBLING_FAULTS, STREAM_FAULTS, Fault, default_message, error_body
from airflow_provider_glm.testing.generation import generate, pad_to_size, validate_chat_body

if TYPE_CHECKING:
    from airflow_provider_glm.testing.routing import RequestContext
    from airflow_provider_glm.testing.server import GLMTestServer

JSON_TYPE = "application/json; charset=UTF-8"
HTML_TYPE = "text/html; charset=UTF-8"
SSE_TYPE = "text/event-stream; charset=UTF-8"
MALFORMED_BODY = b'{"id": "x", "choices": ['
HTML_BODY = b"<html><head><title>Gateway</title></head><body><h1>Please log in</h1></body></html>"


def register(server: GLMTestServer) -> None:
    """Add the chat completions endpoint to a server.

    :param server: the server.
    """
    server.route("POST", "chat/completions", chat_completions)


async def chat_completions(ctx: RequestContext) -> None:
    """Answer one chat completion request.

    :param ctx: the request context.
    """
    if not await ctx.admit():
        return
    await ctx.server.wait_until_released()
    fault = ctx.take_fault()
    body = ctx.json
    stream = isinstance(body, dict) and body.get("stream") is True
    if fault is not None and fault.kind == "hang":
        await ctx.hang(fault.seconds)
        return
    await ctx.sleep_latency(fault.seconds if fault is not None and fault.kind == "delay" else 0.0)
    if fault is not None and not fault.generates:
        await _answer_without_completion(ctx, fault)
        return
    if not ctx.body_is_json:
        await ctx.send_error(400, "1214", "Invalid parameter: request body is not valid JSON")
        return
    problem = validate_chat_body(body)
    if problem is not None:
        await ctx.send_error(400, "1214", problem)
        return
    completion = _generate(ctx, body, fault)
    ctx.bill(completion)
    kind = fault.kind if fault is not None else None
    if kind == "drop_after_billing":
        ctx.close_connection = True
        return
    if fault is not None and kind in GARBLING_FAULTS:
        await garble(ctx, fault, json.dumps(completion.to_dict(), ensure_ascii=False).encode())
        return
    if stream or kind in STREAM_FAULTS:
        await _deliver_stream(ctx, completion, fault)
    else:
        omit = fault.field if fault is not None and kind == "missing" else None
        payload = json.dumps(completion.to_dict(omit=omit), ensure_ascii=False).encode()
        await deliver(ctx, 200, JSON_TYPE, payload, fault)


def _generate(ctx: RequestContext, body: dict[str, object], fault: Fault | None) -> Completion:
    return generate_completion(ctx.server, body, fault)


def generate_completion(server: GLMTestServer, body: dict[str, Any],
                        fault: Fault | None = None) -> Completion:
    """Generate (but do not bill) the completion the chat endpoint would answer for ``body``.

    Shared by the batch and async endpoints so all three answer and count identically. Applies the
    ``answer``, ``content``, ``finish`` and ``huge`` faults, and the server's ``uppercase_models`` flag.

    :param server: the server (its state holds the seen system prompts and tool-call counter).
    :param body: a chat body that passed :func:`validate_chat_body`.
    :param fault: the fault applying to it, if any.
    """
    kind = fault.kind if fault is not None else None
    state = server.state
    call_id = state.next_call_id()
    with state.lock:
        completion = generate(
            body,
            seen_system_texts=state.seen_system_texts,
            call_id=call_id,
            content=fault.text if fault is not None and kind == "content" else None,
            finish_reason=fault.reason if fault is not None and kind == "finish" else None,
            respect_max_tokens=kind != "huge",
            scripted=fault.scripted if fault is not None and kind == "answer" else None,
        )
    if fault is not None and kind == "huge":
        completion = pad_to_size(completion, fault.nbytes)
    reported = server.reported_model(completion.model)
    if reported != completion.model:
        completion = replace(completion, model=reported)
    return completion


async def answer_without_completion(ctx: RequestContext, fault: Fault) -> None:
    """Answer a non-generating fault (error, malformed JSON, HTML, echoed key, redirect, stream error).

    :param ctx: the request context.
    :param fault: a fault whose ``generates`` is false, other than ``hang``.
    """
    await _answer_without_completion(ctx, fault)


async def garble(ctx: RequestContext, fault: Fault, payload: bytes | None = None) -> None:
    """Answer 200 with an HTML page (``html_200``) or cut-off JSON (``malformed_json``).

    :param ctx: the request context.
    :param fault: an ``html_200`` or ``malformed_json`` fault.
    :param payload: the JSON answer the gateway garbled; its first half is sent. A fixed cut-off
        body when None.
    """
    if fault.kind == "html_200":
        await ctx.send(200, HTML_BODY, HTML_TYPE)
    else:
        await ctx.send(200, MALFORMED_BODY if payload is None else payload[: len(payload) // 2], JSON_TYPE)


def echoed_key_message(ctx: RequestContext) -> str:
    """The message of a gateway that echoes the key: ``invalid request from key <Authorization>``.

    :param ctx: the request context.
    """
    return f"invalid request from key {ctx.request.headers.get('authorization', '')}"


async def _answer_without_completion(ctx: RequestContext, fault: Fault) -> None:
    kind = fault.kind
    if kind == "error":
        await ctx.send_error(fault.status or 500, fault.code if fault.code is not None else "500",
                             fault.message, top_level=fault.top_level, retry_after=fault.retry_after)
    elif kind in GARBLING_FAULTS:
        await garble(ctx, fault)
    elif kind == "echo_key":
        message = echoed_key_message(ctx)
        status = fault.status or 401
        if fault.html:
            page = f"<html><head><title>{status}</title></head><body><h1>{status}</h1><p>{message}</p></body></html>"
            await ctx.send(status, page.encode(), HTML_TYPE)
        else:
            await ctx.send_json(status, error_body(fault.code if fault.code is not None else "1000", message))
    elif kind == "redirect":
        await ctx.send(fault.status or 307, b"", None, {"Location": fault.location or "/"})
    elif kind == "stream_error":
        code = fault.code if fault.code is not None else "1234"
        message = fault.message if fault.message is not None else default_message(code)
        first = {"id": uuid.uuid4().hex, "created": int(time.time()), "model": _model(ctx),
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Partial"}}]}
        events = [sse_event(first), sse_event({"error": {"code": code, "message": message}})]
        await _deliver_events(ctx, events, None)
    else:
        raise ValueError(f"fault {kind!r} generates a completion")


def _model(ctx: RequestContext) -> str:
    body = ctx.json
    model = body.get("model") if isinstance(body, dict) else None
    return ctx.server.reported_model(model) if isinstance(model, str) else "unknown"


async def _deliver_stream(ctx: RequestContext, completion: Completion, fault: Fault | None) -> None:
    kind = fault.kind if fault is not None else None
    if kind == "truncated_stream":
        deltas = completion.delta_events()
        await _deliver_events(ctx, deltas[: max(1, len(deltas) // 2)], fault)
        return
    omit = fault.field if fault is not None and kind == "missing" else None
    await _deliver_events(ctx, completion.sse_events(omit=omit), fault)


async def _deliver_events(ctx: RequestContext, events: list[bytes], fault: Fault | None) -> None:
    headers = ctx.headers(SSE_TYPE, chunked=True, extra={"Cache-Control": "no-cache"})
    kind = fault.kind if fault is not None else None
    if kind in ("trickle", "reset_mid_body"):
        framed = b"".join(encode_chunk(e) for e in events) + LAST_CHUNK
        await _deliver_raw(ctx, 200, headers, framed, fault)
        return
    ctx.write_head(200, headers)
    for event in events:
        await ctx.write(encode_chunk(event))
    await ctx.write(LAST_CHUNK)


async def deliver(ctx: RequestContext, status: int, content_type: str, body: bytes,
                  fault: Fault | None) -> None:
    """Send a complete body, as a ``trickle`` or ``reset_mid_body`` fault says when one is given.

    :param ctx: the request context.
    :param status: HTTP status.
    :param content_type: ``Content-Type`` value.
    :param body: the body bytes.
    :param fault: the fault shaping the delivery, if any.
    """
    headers = ctx.headers(content_type, length=len(body))
    await _deliver_raw(ctx, status, headers, body, fault)


async def _deliver_raw(ctx: RequestContext, status: int, headers: list[tuple[str, str]], body: bytes,
                       fault: Fault | None) -> None:
    kind = fault.kind if fault is not None else None
    if kind == "trickle" and fault is not None:
        ctx.write_head(status, headers)
        await ctx.trickle(body, fault.interval, fault.chunk)
    elif kind == "reset_mid_body":
        ctx.close_connection = True
        ctx.write_head(status, headers)
        await ctx.write(body[: len(body) // 2])
    else:
        ctx.write_head(status, headers)
        await ctx.write(body)
