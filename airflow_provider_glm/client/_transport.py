"""httpx's interface over aiohttp's connection pool and C parser: the one HTTP stack of every GLM call.

The client builds :class:`httpx.Request` objects and reads :class:`httpx.Response` streams (tests
swap in ``httpx.MockTransport``); :class:`AiohttpTransport` carries them over an
:class:`aiohttp.ClientSession`. aiohttp does the protocol work: its llhttp parser (fuzzed, with a CVE
feed), keep-alive pooling, Happy Eyeballs, proxies (``CONNECT`` for ``https://``) and streaming,
bounded decompression of gzip, deflate, brotli and zstd. Nothing here parses HTTP.

What this module adds is the mapping of failures onto the two facts the ledger needs. Every request
carries a :class:`Progress` that moves through ``queued`` (waiting for one of the transport's
``max_connections`` slots), ``connecting`` (aiohttp's connector finding or opening a connection, a
proxy tunnel and TLS included) and ``sent`` (the connector handed over a connection: the head is
written next). A failure before ``sent`` is raised as an httpx error that means "never sent"
(``PoolTimeout``, ``ConnectTimeout``, ``ConnectError``): nothing can have been billed. A failure after
it means "may have been billed" (``ReadTimeout``, ``ReadError``, ``RemoteProtocolError``), whatever
aiohttp called it. The stage is told by the connector (:class:`_Connector`), through a context variable
of the request's task: aiohttp's tracing hooks would cost a coroutine per event and request.

Answers arrive decoded: the ``Content-Encoding`` header is removed from the httpx response, so httpx
does not decode twice, and the client counts decoded bytes against its cap while aiohttp's flow
control keeps what is inflated ahead of the reader small.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from multidict import CIMultiDict

from airflow_provider_glm.client._network import ProxyChoice

__all__ = ["AiohttpTransport", "Progress", "arrives_decoded", "discard", "progress_of"]

_PROGRESS_KEY = "glm_progress"
_DROPPED_REQUEST_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_DECODED = frozenset({"gzip", "deflate", "br", "zstd", "x-gzip"})
MAX_HEADERS = 128
"""Header (and trailer) lines aiohttp accepts in one answer."""
MAX_FIELD_SIZE = 8190
"""Bytes in one header line (aiohttp's default): with :data:`MAX_HEADERS`, an answer's head is ~1 MiB at most."""
KEEPALIVE_SECONDS = 15.0
"""An idle pooled connection is closed after this, before servers commonly drop theirs (aiohttp's default)."""


@dataclass
class Progress:
    """How far one request got; ``stage`` is ``None`` for transports that do not say (tests' mock transports)."""

    stage: str | None = None

    @property
    def sent(self) -> bool:
        """Whether the request may have reached the server (unknown counts as sent)."""
        return self.stage not in ("pending", "queued", "connecting")


def progress_of(request: httpx.Request) -> Progress:
    """The request's :class:`Progress`, attached on first use."""
    progress = request.extensions.get(_PROGRESS_KEY)
    if not isinstance(progress, Progress):
        progress = request.extensions[_PROGRESS_KEY] = Progress()
    return progress


_CURRENT: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("glm_request_progress", default=None)
"""The progress of the request the current task is sending (read by :class:`_Connector`)."""


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, telling the request in flight when it has its connection (the head goes out next)."""

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        progress = _CURRENT.get()
        if progress is not None:
            progress.stage = "connecting"
        connection = await super().connect(req, traces, timeout)
        if progress is not None:
            progress.stage = "sent"
        return connection


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport on one aiohttp session (created in the event loop of its first request).

    :param max_connections: the most connections open at once (requests beyond wait for a slot).
    :param ssl_context: the TLS context (trust, client certificate).
    :param proxy: where to send through, or ``None``.
    """

    def __init__(self, *, max_connections: int, ssl_context: Any, proxy: ProxyChoice | None = None) -> None:
        self._max_connections = max_connections
        self._ssl = ssl_context
        self._proxy = proxy
        self._proxy_auth = (aiohttp.BasicAuth(proxy.login, proxy.password or "")
                            if proxy is not None and proxy.login is not None else None)
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None

    def _open(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            # the slots bound the connections (a request holds one until its answer is released): the wait
            # for one is ours to see, so aiohttp's own limit is off
            self._slots = asyncio.Semaphore(self._max_connections)
            connector = _Connector(limit=0, ssl=self._ssl, keepalive_timeout=KEEPALIVE_SECONDS)
            session = self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=True,
                cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, max_headers=MAX_HEADERS,
                max_field_size=MAX_FIELD_SIZE, max_line_size=MAX_FIELD_SIZE,
            )
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        progress = progress_of(request)
        session = self._open()
        slots = self._slots
        assert slots is not None
        progress.stage = "queued"
        await slots.acquire()
        try:
            response = await self._request(session, request, progress)
        except BaseException:
            slots.release()
            raise
        return httpx.Response(response.status, headers=_answer_headers(response),
                              stream=_Body(response, progress, request, slots.release), request=request,
                              extensions={"reason_phrase": (response.reason or "").encode(),
                                          "http_version": b"HTTP/1.1"})

    async def _request(self, session: aiohttp.ClientSession, request: httpx.Request,
                       progress: Progress) -> aiohttp.ClientResponse:
        timeouts = request.extensions.get("timeout", {})
        headers = CIMultiDict((k, v) for k, v in request.headers.multi_items()
                              if k.lower() not in _DROPPED_REQUEST_HEADERS)
        body = await request.aread()
        progress.stage = "pending"
        token = _CURRENT.set(progress)
        try:
            return await session.request(
                request.method, str(request.url), data=body or None, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=timeouts.get("connect"),
                                              sock_read=timeouts.get("read")),
                proxy=self._proxy.url if self._proxy is not None else None, proxy_auth=self._proxy_auth,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _mapped(exc, progress, request, self._proxy) from None
        finally:
            _CURRENT.reset(token)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _answer_headers(response: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    """The answer's headers for httpx; without ``Content-Encoding`` (and the encoded length) when aiohttp
    decoded the body, so that httpx does not decode it again."""
    decoded = response.headers.get("Content-Encoding", "").strip().lower() in _DECODED
    return [(k, v) for k, v in response.raw_headers
            if not (decoded and k.lower() in (b"content-encoding", b"content-length"))]


class _Body(httpx.AsyncByteStream):
    """An answer's body as aiohttp decodes it; closing it returns the connection to the pool, or drops it
    when :func:`discard` was called (an answer that cannot be trusted leaves nothing behind to misread),
    and frees the request's slot."""

    def __init__(self, response: aiohttp.ClientResponse, progress: Progress, request: httpx.Request,
                 free: Any) -> None:
        self._response = response
        self._progress = progress
        self._request = request
        self._free = free
        self.discarded = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except asyncio.CancelledError:
            self.discarded = True
            raise
        except Exception as exc:
            self.discarded = True
            raise _mapped(exc, self._progress, self._request) from None

    async def aclose(self) -> None:
        free, self._free = self._free, None
        if free is None:
            return
        if self.discarded:
            self._response.close()
        else:
            self._response.release()
        free()


def arrives_decoded(response: httpx.Response) -> bool:
    """Whether ``response`` came from this transport, whose bodies aiohttp has decoded already."""
    return isinstance(response.stream, _Body)


def discard(response: httpx.Response) -> None:
    """Drop ``response``'s connection instead of reusing it, when it is closed (no-op for other transports)."""
    stream = response.stream
    if isinstance(stream, _Body):
        stream.discarded = True


def _mapped(exc: Exception, progress: Progress, request: httpx.Request,
            proxy: ProxyChoice | None = None) -> httpx.TransportError:
    """The httpx error for an aiohttp failure: "never sent" before the head was written, "may have been
    billed" after. Messages name the failure's type and aiohttp's text (and the proxy, without its
    credentials), never headers."""
    text = f"{type(exc).__name__}: {exc}"
    if not progress.sent:
        if proxy is not None:
            text += f"; through the proxy {proxy.display}"
        if progress.stage == "queued":
            return httpx.PoolTimeout(text, request=request)
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return httpx.ConnectTimeout(text, request=request)
        return httpx.ConnectError(text, request=request)
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return httpx.ReadTimeout(text, request=request)
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError)):
        return httpx.RemoteProtocolError(text, request=request)
    return httpx.ReadError(text, request=request)
