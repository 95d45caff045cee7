"""One connection of the GLM test server: read requests, route them, record them, answer them.

Requests on one keep-alive connection are served in order. Each tracked request is registered in
the server state when its head and body have been read and released when its answer is written
(or the connection fails), so ``in_flight`` and ``peak_in_flight`` count every connection and client
together. Routes registered with ``tracked=False`` (``/_stats``, ``/_reset``) stay out of the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.testing._http import HTTPProtocolError, HTTPRequest, read_request, render_head
from airflow_provider_glm.testing.auth import check_authorization
from airflow_provider_glm.testing.records import RecordedRequest
from airflow_provider_glm.testing.routing import RequestContext, Route

if TYPE_CHECKING:
    from airflow_provider_glm.testing.server import GLMTestServer

log = logging.getLogger(__name__)


class Gate:
    """An open/closed gate that handlers on the server loop wait on, set from any thread."""

    def __init__(self) -> None:
        self._open = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Create the event on the server loop, in the state last set.

        :param loop: the running server loop.
        """
        self._loop, self._event = loop, asyncio.Event()
        if self._open:
            self._event.set()

    def set(self, is_open: bool) -> None:
        """Open or close the gate; returns once the loop has applied it.

        :param is_open: open (True) or closed.
        """
        self._open = is_open
        loop, event = self._loop, self._event
        if loop is None or event is None or loop.is_closed():
            return
        done = threading.Event()

        def apply() -> None:
            if is_open:
                event.set()
            else:
                event.clear()
            done.set()

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(apply)
            done.wait(timeout=30)

    async def wait(self) -> None:
        """Return at once when open, else when opened."""
        if self._event is not None:
            await self._event.wait()


async def serve_connection(server: GLMTestServer, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
    """Serve requests on one connection until it closes or asks to close.

    :param server: the server.
    :param reader: the connection's reader.
    :param writer: the connection's writer.
    """
    try:
        while True:
            try:
                request = await read_request(reader, writer)
            except HTTPProtocolError as exc:
                body = json.dumps({"error": {"code": "1200", "message": exc.message}}).encode()
                writer.write(render_head(exc.status, [("Content-Type", "application/json"),
                                                      ("Content-Length", str(len(body))),
                                                      ("Connection", "close")]) + body)
                await writer.drain()
                return
            if request is None:
                return
            if await _serve_request(server, request, writer):
                return
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _serve_request(server: GLMTestServer, request: HTTPRequest, writer: asyncio.StreamWriter) -> bool:
    found = server.router.match(request.method, request.path)
    route = found[0] if found is not None else None
    tracked = route is None or route.tracked
    ctx = _open(server, request, writer, tracked)
    try:
        await _dispatch(ctx, route, found[1] if found is not None else {})
    except (ConnectionError, asyncio.IncompleteReadError):
        ctx.close_connection = True
    except Exception:
        log.exception("GLMTestServer handler failed for %s %s", request.method, request.path)
        if not ctx.head_sent:
            await ctx.send_error(500, "500", "Internal error in GLMTestServer")
        ctx.close_connection = True
    finally:
        if tracked:
            server.state.finish(ctx.record, ctx.admitted)
    return ctx.close_connection


def _open(server: GLMTestServer, request: HTTPRequest, writer: asyncio.StreamWriter,
          tracked: bool) -> RequestContext:
    body: Any = None
    if request.body:
        with contextlib.suppress(ValueError):
            body = json.loads(request.body)
    record = RecordedRequest(method=request.method, path=request.path, headers=dict(request.headers),
                             body=body, raw_body=request.body, started_at=time.monotonic())
    if tracked:
        server.state.begin(record)
    return RequestContext(server, request, record, writer, tracked=tracked)


async def _dispatch(ctx: RequestContext, route: Route | None, params: dict[str, str]) -> None:
    if route is None:
        await ctx.send_error(404, "1222", f"The API you requested does not exist: "
                                          f"{ctx.request.method} {ctx.request.path}")
        return
    ctx.params = params
    if route.auth:
        failure = check_authorization(ctx.request.headers.get("authorization"), ctx.server.api_key)
        if failure is not None:
            await ctx.send_error(failure.status, failure.code, failure.message)
            return
    await route.handler(ctx)
