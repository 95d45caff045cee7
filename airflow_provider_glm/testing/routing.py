"""Request routing and the per-request context handed to endpoint handlers.

An endpoint module exposes ``register(server)`` and calls ``server.route(method, pattern, handler)``
with a pattern relative to the API base (``"chat/completions"``, ``"files/{file_id}/content"``).
Handlers are ``async def handler(ctx: RequestContext) -> None`` and answer through ``ctx``. A
``root=True`` route's pattern is a whole path (``"/_stats"``) outside the API prefixes; an untracked
route (``tracked=False``) is left out of the records and counters.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.testing._http import HTTPRequest, render_head
from airflow_provider_glm.testing.faults import default_message, error_body
from airflow_provider_glm.testing.generation import prompt_text
from airflow_provider_glm.testing.records import RecordedRequest

if TYPE_CHECKING:
    from airflow_provider_glm.testing.faults import Fault
    from airflow_provider_glm.testing.generation import Completion
    from airflow_provider_glm.testing.server import GLMTestServer

Handler = Callable[["RequestContext"], Awaitable[None]]

API_PREFIXES = ("/api/paas/v4", "/api/coding/paas/v4")
MAX_HANG_SECONDS = 3600.0


@dataclass(frozen=True)
class Route:
    """One endpoint.

    :param method: HTTP method.
    :param pattern: path relative to the API base; ``{name}`` segments capture.
    :param handler: coroutine function answering the request.
    :param auth: whether the Authorization header is checked first.
    :param tracked: whether requests are recorded and counted in the stats.
    """

    method: str
    pattern: str
    handler: Handler
    auth: bool = True
    tracked: bool = True

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """Match path segments against the pattern.

        :param segments: the relative path split on ``/``.
        :return: the captured parameters, or None.
        """
        parts = self.pattern.strip("/").split("/")
        if len(parts) != len(segments):
            return None
        params: dict[str, str] = {}
        for part, segment in zip(parts, segments, strict=True):
            if part.startswith("{") and part.endswith("}"):
                if not segment:
                    return None
                params[part[1:-1]] = segment
            elif part != segment:
                return None
        return params


class Router:
    """Routes requests under each API prefix to handlers.

    :param prefixes: base paths under which every route is served.
    """

    def __init__(self, prefixes: tuple[str, ...] = API_PREFIXES) -> None:
        self.prefixes = prefixes
        self.routes: list[Route] = []
        self.root_routes: list[Route] = []

    def add(self, method: str, pattern: str, handler: Handler, *, auth: bool = True, root: bool = False,
            tracked: bool = True) -> None:
        """Register an endpoint.

        :param method: HTTP method.
        :param pattern: path relative to the API base, ``{name}`` segments capture.
        :param handler: coroutine function answering the request.
        :param auth: check the Authorization header before calling the handler.
        :param root: ``pattern`` is a whole path, served outside the API prefixes.
        :param tracked: record and count its requests.
        """
        route = Route(method.upper(), pattern, handler, auth, tracked)
        (self.root_routes if root else self.routes).append(route)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """Find the route for a request.

        :param method: HTTP method.
        :param path: request path without query string.
        :return: the route and its captured parameters, or None.
        """
        whole = path.strip("/").split("/")
        for route in self.root_routes:
            if route.method == method:
                params = route.match(whole)
                if params is not None:
                    return route, params
        for prefix in self.prefixes:
            if path.startswith(prefix + "/"):
                segments = path[len(prefix) + 1:].strip("/").split("/")
                for route in self.routes:
                    if route.method == method:
                        params = route.match(segments)
                        if params is not None:
                            return route, params
        return None


class RequestContext:
    """Everything a handler needs to answer one request.

    :param server: the server.
    :param request: the parsed request.
    :param record: the request's record.
    :param writer: the connection's writer.
    :param tracked: whether the request counts in the server's records and stats.
    """

    def __init__(self, server: GLMTestServer, request: HTTPRequest, record: RecordedRequest,
                 writer: asyncio.StreamWriter, tracked: bool = True) -> None:
        self.server = server
        self.tracked = tracked
        self.request = request
        self.record = record
        self.writer = writer
        self.params: dict[str, str] = {}
        self.close_connection = not request.keep_alive
        self.head_sent = False
        self.admitted = False

    @property
    def json(self) -> Any:
        """The body parsed as JSON (None when absent or not JSON)."""
        return self.record.body

    @property
    def body_is_json(self) -> bool:
        """Whether the body parsed as JSON."""
        return self.record.body is not None

    @property
    def raw_text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.request.body.decode("utf-8", "replace")

    def headers(self, content_type: str | None, *, length: int | None = None, chunked: bool = False,
                extra: dict[str, str] | None = None) -> list[tuple[str, str]]:
        """Build response headers.

        :param content_type: ``Content-Type`` value, or None to omit it.
        :param length: ``Content-Length`` value.
        :param chunked: use ``Transfer-Encoding: chunked``.
        :param extra: more headers.
        """
        headers = [("Server", "glm-test-server")]
        if content_type:
            headers.append(("Content-Type", content_type))
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        elif length is not None:
            headers.append(("Content-Length", str(length)))
        headers.extend((extra or {}).items())
        headers.append(("Connection", "close" if self.close_connection else "keep-alive"))
        return headers

    def write_head(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Write the status line and headers, and record the status.

        :param status: HTTP status.
        :param headers: from :meth:`headers`.
        """
        self.writer.write(render_head(status, headers))
        self.head_sent = True
        if self.tracked:
            self.server.state.set_status(self.record, status)

    async def write(self, data: bytes) -> None:
        """Write bytes and wait for the socket buffer to drain.

        :param data: bytes to send.
        """
        if data:
            self.writer.write(data)
        await self.writer.drain()

    async def send(self, status: int, body: bytes, content_type: str | None,
                   extra: dict[str, str] | None = None) -> None:
        """Send a complete response with a ``Content-Length`` body.

        :param status: HTTP status.
        :param body: body bytes.
        :param content_type: ``Content-Type`` value.
        :param extra: more headers.
        """
        self.write_head(status, self.headers(content_type, length=len(body), extra=extra))
        await self.write(body)

    async def send_json(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        """Send a JSON response.

        :param status: HTTP status.
        :param payload: JSON-ready object.
        :param extra: more headers.
        """
        body = json.dumps(payload, ensure_ascii=False).encode()
        await self.send(status, body, "application/json; charset=UTF-8", extra)

    async def send_error(self, status: int, code: str | int, message: str | None = None, *,
                         top_level: bool = False, retry_after: float | None = None) -> None:
        """Send a GLM error body; with the server's ``echo_key`` the message ends with
        ``(invalid request from key <Authorization header>)``.

        :param status: HTTP status.
        :param code: business code.
        :param message: message; the stock one when None.
        :param top_level: use the legacy top-level shape.
        :param retry_after: add a ``Retry-After`` header (seconds).
        """
        extra = None
        if retry_after is not None:
            extra = {"Retry-After": f"{retry_after:g}"}
        authorization = self.request.headers.get("authorization")
        if self.server.echo_key and authorization:
            text = message if message is not None else default_message(code)
            message = f"{text} (invalid request from key {authorization})"
        await self.send_json(status, error_body(code, message, top_level=top_level), extra)

    async def trickle(self, body: bytes, interval: float, chunk: int) -> None:
        """Flush what is written so far (the head), then send ``chunk`` body bytes every ``interval`` s.

        :param body: body bytes (already chunk-framed for chunked answers).
        :param interval: seconds between pieces.
        :param chunk: bytes per piece.
        """
        await self.write(b"")
        for start in range(0, len(body), chunk):
            await asyncio.sleep(interval)
            await self.write(body[start:start + chunk])

    async def hang(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (bounded), then close the connection.

        :param seconds: silence length.
        """
        self.close_connection = True
        await asyncio.sleep(max(0.0, min(seconds, MAX_HANG_SECONDS)))

    async def sleep_latency(self, extra: float = 0.0) -> None:
        """Wait the server latency (plus jitter) and ``extra`` seconds.

        :param extra: additional seconds.
        """
        delay = self.server.latency + extra
        jitter = self.server.latency_jitter
        if jitter > 0:
            delay += self.server.state.random() * jitter
        if delay > 0:
            await asyncio.sleep(delay)

    async def admit(self) -> bool:
        """Apply the concurrency limit and random rate limiting; answer 429/1302 when refused.

        :return: whether the request may proceed.
        """
        state = self.server.state
        fraction = self.server.rate_limit_fraction
        if fraction > 0 and state.random() < fraction:
            await self.send_error(429, "1302", "Rate limit reached for requests")
            return False
        if not state.try_admit(self.server.concurrency_limit):
            await self.send_error(429, "1302")
            return False
        self.admitted = True
        return True

    def take_fault(self) -> Fault | None:
        """Pop the fault that applies to this request, if any, and note it in the record."""
        state = self.server.state
        fault = state.take_fault(self.raw_text, prompt_text(self.json) if state.rules else "")
        if fault is not None:
            self.record.fault = fault.kind
        return fault

    def bill(self, completion: Completion) -> None:
        """Record a generated completion as billed to this request.

        :param completion: the completion.
        """
        self.server.state.bill(self.record, completion)
