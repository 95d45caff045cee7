"""Keep-alive connections of :mod:`.http1` to one origin, at most so many at once.

Idle connections are reused last-in first-out; one past :data:`~.http1.KEEPALIVE_EXPIRY`, closed by
the server or holding stray bytes is dropped. When every place is taken, callers wait in order, and
a waiter cancelled just as a connection was handed to it gives the connection back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx

from airflow_provider_glm.client import _http1 as http1
from airflow_provider_glm.client._http1 import Answer, Connection

__all__ = ["HTTP1Pool"]

_OWN_HEADERS = frozenset({"authorization", "host", "content-length", "transfer-encoding", "connection"})

log = logging.getLogger(__name__)
"""At DEBUG, one line per request, as httpx logs its own: method, URL and status, or the failure's type."""


class HTTP1Pool:
    """Keep-alive connections to one origin, at most ``max_connections`` of them.

    :param base_url: ``http(s)://host[:port]/prefix``; requests go to ``prefix/path``.
    :param ssl_context: for ``https``.
    :param max_connections: connections open at once; further exchanges wait for one.
    :param headers: sent with every request; the pool writes ``Host``, ``Authorization``, ``Content-Length``
        and ``Connection`` framing itself, so given ones of those names are left out.
    """

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, max_connections: int,
                 headers: Mapping[str, str]) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self._tls = ssl_context if parts.scheme == "https" else None
        self._host = parts.hostname or ""
        default = 443 if self._tls else 80
        self._port = parts.port or default
        host = f"[{self._host}]" if ":" in self._host else self._host
        authority = host if self._port == default else f"{host}:{self._port}"
        self._prefix = parts.path.rstrip("/")
        extra = {k: v for k, v in headers.items() if k.lower() not in _OWN_HEADERS}
        self._head_end = "".join(f"{k}: {v}\r\n" for k, v in {"Host": authority, **extra}.items())
        self._max = max(1, max_connections)
        self._idle: list[Connection] = []
        self._open = 0
        self._waiters: list[asyncio.Future[Connection | None]] = []
        self._closed = False

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    async def post(self, path: str, body: bytes, *, authorization: str, connect_timeout: float,
                   read_timeout: float, limit: int) -> tuple[Answer, bytes]:
        """POST ``body`` to ``path`` and return the answer's status, headers and (decoded) body.

        :raises httpx.HTTPError: the request could not be sent or the answer not read.
        :raises AnswerTooLarge: the body passed ``limit`` bytes (the connection is dropped).
        """
        request = (f"POST {self._prefix}/{path} HTTP/1.1\r\n{self._head_end}Authorization: {authorization}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body
        connection = None
        reusable = False
        try:
            connection = await self._acquire(connect_timeout)
            answer, content = await connection.exchange(request, read_timeout, limit)
            reusable = connection.keep_alive and not connection.broken
        except BaseException as exc:
            if log.isEnabledFor(logging.DEBUG):
                log.debug('HTTP Request: POST %s failed: %s', self.url(path), type(exc).__name__)
            raise
        finally:
            if connection is not None:
                self._release(connection, reusable)
        if log.isEnabledFor(logging.DEBUG):
            log.debug('HTTP Request: POST %s "HTTP/1.1 %d"', self.url(path), answer.status_code)
        return answer, content

    async def aclose(self) -> None:
        self._closed = True
        for connection in self._idle:
            if connection.transport is not None:
                connection.transport.close()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- the pool ------------------------------------------------------------------------------------

    async def _acquire(self, connect_timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise httpx.ConnectError("the client is closed")
            while self._idle:
                connection = self._idle.pop()
                if self._usable(connection, loop.time()):
                    return connection
                self._drop(connection)
            if self._open < self._max:
                self._open += 1
                try:
                    return await self._connect(loop, connect_timeout)
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
            waiter: asyncio.Future[Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():  # handed over just as the wait was cancelled
                    late = waiter.result()
                    if late is not None:
                        self._release(late, True)
                    else:
                        self._wake()
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
            if handed is not None:
                return handed

    def _release(self, connection: Connection, reusable: bool) -> None:
        if not reusable or self._closed:
            self._drop(connection)
            self._wake()
            return
        connection.idle_since = connection.loop.time()
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    def _wake(self) -> None:
        """A connection closed: let one waiter try to open a new one."""
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def _drop(self, connection: Connection) -> None:
        self._open -= 1
        connection.broken = True
        if connection.transport is not None:
            connection.transport.close()

    @staticmethod
    def _usable(connection: Connection, now: float) -> bool:
        transport = connection.transport
        return (not connection.broken and transport is not None and not transport.is_closing()
                and now - connection.idle_since < http1.KEEPALIVE_EXPIRY)

    async def _connect(self, loop: asyncio.AbstractEventLoop, timeout: float) -> Connection:
        try:
            async with asyncio.timeout(timeout):
                transport, connection = await loop.create_connection(
                    lambda: Connection(loop), self._host, self._port, ssl=self._tls,
                    server_hostname=self._host if self._tls else None)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {self._host}:{self._port} within {timeout:g} s") from None
        except OSError as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection
