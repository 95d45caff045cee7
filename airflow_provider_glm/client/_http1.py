"""A lean HTTP/1.1 client for the one call made per row: one connection and its answer parser.

Through httpx, every request passed a request model, header normalisation, h11's event machine, a
pool that scans every connection and layers of async context managers: most of the client's CPU
per row. :meth:`AsyncGLMClient.send_chat <airflow_provider_glm.client.AsyncGLMClient.send_chat>`
sends on these connections (pooled by :mod:`.http_pool`) instead: the head is joined once, and
the answer is parsed as it arrives (status line, headers, ``Content-Length``, chunked or
read-to-close body, gzip or deflate).

The attempt loop, deadlines, retries, billing books and parsing stay the client's. Failures are
the httpx exceptions the client already maps, with the same meaning for billing:
:class:`httpx.ConnectError` and :class:`httpx.ConnectTimeout` mean the request never left;
anything after it was written (:class:`httpx.ReadTimeout`, :class:`httpx.ReadError`,
:class:`httpx.RemoteProtocolError`) means it may have been billed. Redirects are returned, never
followed; no proxy or CA settings are read from the environment.
"""

from __future__ import annotations

import asyncio
import zlib

import httpx

__all__ = ["KEEPALIVE_EXPIRY", "Answer", "AnswerTooLarge", "Connection"]

MAX_HEAD_BYTES = 64 * 1024
"""A response head (status line and headers) larger than this is a protocol error."""

KEEPALIVE_EXPIRY = 5.0
"""Seconds an idle connection is kept for reuse (servers commonly close theirs after 5-75 s)."""

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _TO_CLOSE, _DONE = range(8)


class Answer:
    """Status and headers of an answer (header names in lower case), what the client's parsing reads."""

    __slots__ = ("headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        self.status_code = status_code
        self.headers = headers


class AnswerTooLarge(Exception):
    """The body passed the caller's byte limit; ``received`` bytes had arrived when reading stopped."""

    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received


class Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one exchange at a time and parses the answer as it arrives."""

    _headers: dict[str, str]
    _body: list[bytes]

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.broken = False  # closed, failed, or sent bytes nobody asked for: never reused
        self.idle_since = self._last_data = 0.0
        self._buffer = bytearray()
        self._done: asyncio.Future[None] | None = None
        self._reset(0.0, 0)
        self._state = _DONE

    def _reset(self, read_timeout: float, limit: int) -> None:
        self._state, self._status, self._headers, self._body = _HEAD, 0, {}, []
        self._received = self._remaining = 0
        self._any_data, self.keep_alive = False, True
        self._limit, self._read_timeout = limit, read_timeout
        self._buffer.clear()

    # --- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._done is None or self._done.done():
            self.broken = True  # bytes outside an exchange: the connection cannot carry another request
            return
        self._any_data = True
        self._last_data = self.loop.time()
        self._buffer += data
        try:
            self._parse()
        except (httpx.HTTPError, AnswerTooLarge) as exc:
            self._finish(exc)

    def eof_received(self) -> bool | None:
        self._closed(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed(exc)

    # --- one exchange --------------------------------------------------------------------------------

    async def exchange(self, request: bytes, read_timeout: float, limit: int) -> tuple[Answer, bytes]:
        assert self.transport is not None
        self._reset(read_timeout, limit)
        self._done = done = self.loop.create_future()
        self.transport.write(request)
        self._last_data = self.loop.time()
        self._timer: asyncio.TimerHandle = self.loop.call_at(self._last_data + read_timeout, self._check_idle)
        try:
            await done
        finally:
            self._timer.cancel()
        content = b"".join(self._body)
        encoding = self._headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate") and content:
            content = _decode(encoding, content)
        return Answer(self._status, self._headers), content

    def _check_idle(self) -> None:
        if self._done is None or self._done.done():
            return
        due = self._last_data + self._read_timeout
        if self.loop.time() >= due:
            self._finish(httpx.ReadTimeout(f"no data for {self._read_timeout:g} s"))
        else:
            self._timer = self.loop.call_at(due, self._check_idle)

    def _finish(self, error: BaseException | None) -> None:
        if error is not None:
            self.broken = True
        done = self._done
        if done is not None and not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    def _closed(self, exc: Exception | None) -> None:
        self.broken = True
        if self._done is None or self._done.done():
            return
        if self._state == _TO_CLOSE:
            self._state = _DONE
            self._finish(None)
        elif exc is not None:
            self._finish(httpx.ReadError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__))
        elif self._state == _HEAD and not self._any_data:
            self._finish(httpx.RemoteProtocolError("Server disconnected without sending a response."))
        else:
            self._finish(httpx.RemoteProtocolError("peer closed connection without sending complete message body"))

    # --- parsing -------------------------------------------------------------------------------------

    def _parse(self) -> None:
        buffer = self._buffer
        while True:
            state = self._state
            if state == _HEAD:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEAD_BYTES:
                        raise httpx.RemoteProtocolError("the answer's head is too large")
                    return
                self._head(bytes(buffer[:end]))
                del buffer[:end + 4]
            elif state == _LENGTH or state == _CHUNK_DATA:
                take = min(self._remaining, len(buffer))
                if take:
                    self._take(bytes(buffer[:take]))
                    del buffer[:take]
                    self._remaining -= take
                if self._remaining:
                    return
                self._state = _DONE if state == _LENGTH else _CHUNK_END
            elif state == _CHUNK_SIZE:
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > 1024:
                        raise httpx.RemoteProtocolError("a chunk size line is too long")
                    return
                size = buffer[:end].split(b";", 1)[0].strip()
                try:
                    self._remaining = int(size, 16)
                except ValueError:
                    raise httpx.RemoteProtocolError("the answer has a malformed chunk size") from None
                del buffer[:end + 2]
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif state == _CHUNK_END:
                if len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    raise httpx.RemoteProtocolError("a chunk does not end with CRLF")
                del buffer[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                del buffer[:end + 2]
                if end == 0:
                    self._state = _DONE
            elif state == _TO_CLOSE:
                if buffer:
                    self._take(bytes(buffer))
                    buffer.clear()
                return
            if self._state == _DONE:
                if buffer:
                    self.broken = True  # more than one answer to one request
                self._finish(None)
                return

    def _head(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise httpx.RemoteProtocolError("the answer does not start with an HTTP/1.x status line")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            name = name.strip().lower()
            if not sep or not name:
                raise httpx.RemoteProtocolError("the answer has a malformed header line")
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if 100 <= status < 200:
            if status == 101:
                raise httpx.RemoteProtocolError("the server switched protocols")
            return  # an interim answer (100 Continue): the real one follows
        self._status, self._headers = status, headers
        tokens = headers.get("connection", "").lower()
        self.keep_alive = parts[0] == "HTTP/1.1" and "close" not in tokens
        if status in (204, 304):
            self._state = _DONE
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = _CHUNK_SIZE
        elif "content-length" in headers:
            lengths = {v.strip() for v in headers["content-length"].split(",")}
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise httpx.RemoteProtocolError("the answer has an invalid Content-Length")
            self._remaining = int(lengths.pop())
            self._state = _LENGTH if self._remaining else _DONE
        else:
            self.keep_alive = False
            self._state = _TO_CLOSE

    def _take(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self._limit:
            raise AnswerTooLarge(self._received)
        self._body.append(data)


def _decode(encoding: str, content: bytes) -> bytes:
    try:
        if encoding == "deflate":
            try:
                return zlib.decompress(content)
            except zlib.error:
                return zlib.decompress(content, -zlib.MAX_WBITS)  # raw deflate, as some servers send it
        return zlib.decompress(content, zlib.MAX_WBITS | 16)
    except zlib.error as exc:
        raise httpx.DecodingError(f"the answer's {encoding} body could not be decoded ({exc})") from None
