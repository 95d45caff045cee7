"""The network layer under httpx: asyncio sockets for httpcore, without anyio's per-call bookkeeping.

httpx speaks HTTP through httpcore, and httpcore reaches the network through a backend. Its default
backend goes through anyio, which on asyncio costs a cancel scope per read and write and a
``getpeername`` system call per look at a pooled connection; with dozens of rows in flight that was
most of the client's CPU per row. :class:`AsyncioBackend` is the same contract (connect, TLS, read,
write, close, "is this idle connection still usable?") on a plain :class:`asyncio.Protocol`, and
:func:`async_transport` builds the httpx transport on it. HTTP itself (h11), pooling, keep-alive and
every error mapping stay httpcore's and httpx's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

__all__ = ["AsyncioBackend", "async_transport"]

_READ_BUFFER_LIMIT = 256 * 1024
"""Bytes buffered from the socket before reading pauses (the client consumes them in max_bytes reads)."""


class _StreamProtocol(asyncio.Protocol):
    """Buffers what the socket receives; one reader waits at a time (httpcore reads sequentially)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._paused_writing = False
        self._paused_reading = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _READ_BUFFER_LIMIT and self.transport is not None and not self._paused_reading:
            self._paused_reading = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = self.error or exc
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(exc or ConnectionResetError("connection lost"))

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, max_bytes: int) -> bytes:
        while not self.buffer and not self.eof:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if not self.buffer:
            if self.error is not None:
                raise self.error
            return b""
        data = bytes(self.buffer[:max_bytes])
        del self.buffer[:max_bytes]
        if self._paused_reading and len(self.buffer) <= _READ_BUFFER_LIMIT // 2 and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
        return data

    async def drain(self) -> None:
        if self.error is not None:
            raise self.error
        if self._paused_writing:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One TCP (or TLS) connection, as httpcore reads and writes it."""

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._pending: list[bytes] = []

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _mapped({TimeoutError: httpcore.ReadTimeout, OSError: httpcore.ReadError}):
            self._flush()
            if self._protocol.buffer or timeout is None:
                return await self._protocol.read(max_bytes)
            async with asyncio.timeout(timeout):
                return await self._protocol.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Queue ``buffer``; it goes out with the next read (or at the loop's next turn), so a request's
        head and body leave in one system call."""
        if not buffer:
            return
        with _mapped({TimeoutError: httpcore.WriteTimeout, OSError: httpcore.WriteError}):
            if self._protocol.error is not None or self._transport.is_closing():
                raise self._protocol.error or ConnectionResetError("the connection is closed")
            if not self._pending:
                asyncio.get_running_loop().call_soon(self._flush)
            self._pending.append(buffer)
            if self._protocol._paused_writing:
                self._flush()
                async with asyncio.timeout(timeout):
                    await self._protocol.drain()

    def _flush(self) -> None:
        if self._pending and not self._transport.is_closing():
            self._transport.write(b"".join(self._pending))
        self._pending.clear()

    async def aclose(self) -> None:
        self._pending.clear()
        self._transport.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        with _mapped({TimeoutError: httpcore.ConnectTimeout, OSError: httpcore.ConnectError}):
            try:
                async with asyncio.timeout(timeout):
                    transport = await loop.start_tls(self._transport, self._protocol, ssl_context,
                                                     server_hostname=server_hostname)
            except BaseException:
                self._transport.close()
                raise
        if transport is None:
            raise httpcore.ConnectError("TLS could not be started on the connection")
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # an idle pooled connection with data or an end waiting cannot carry a new request
            return bool(self._protocol.buffer) or self._protocol.eof or self._transport.is_closing()
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on asyncio transports and protocols."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        with _mapped({TimeoutError: httpcore.ConnectTimeout, OSError: httpcore.ConnectError}):
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _StreamProtocol, host, port, local_addr=(local_address, 0) if local_address else None)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for option in socket_options or ():
                    sock.setsockopt(*option)
        return AsyncioStream(transport, protocol)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        with _mapped({TimeoutError: httpcore.ConnectTimeout, OSError: httpcore.ConnectError}):
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_unix_connection(_StreamProtocol, path)
        return AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@contextlib.contextmanager
def _mapped(errors: dict[type[BaseException], type[Exception]]) -> Any:
    try:
        yield
    except tuple(errors) as exc:
        for source, target in errors.items():
            if isinstance(exc, source):
                raise target(str(exc) or type(exc).__name__) from exc
        raise


def async_transport(max_connections: int, ssl_context: ssl.SSLContext,
                    transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncBaseTransport:
    """The httpx transport every async client uses: httpcore's pool on :class:`AsyncioBackend`.

    :param transport: a transport given by the caller (tests' ``httpx.MockTransport``), used as it is.
    """
    if transport is not None:
        return transport
    pooled = httpx.AsyncHTTPTransport(verify=ssl_context, limits=httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections), trust_env=False)
    pooled._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context, max_connections=max_connections, max_keepalive_connections=max_connections,
        keepalive_expiry=5.0, network_backend=AsyncioBackend(),
    )
    return pooled
