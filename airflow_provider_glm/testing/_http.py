"""A minimal HTTP/1.1 server-side parser and response writer on asyncio streams.

Just enough HTTP for the GLM test server: request line, headers, ``Content-Length`` or chunked
request bodies, keep-alive and ``Connection: close``. Keeping it hand-written puts every byte the
server sends (or fails to send) under the test's control.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from http import HTTPStatus

MAX_HEAD_BYTES = 64 * 1024


class HTTPProtocolError(Exception):
    """The client sent something that is not acceptable HTTP/1.1.

    :param status: HTTP status to answer with.
    :param message: human-readable reason.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class HTTPRequest:
    """One parsed HTTP request.

    :param method: upper-case method.
    :param target: request target as sent (path and query).
    :param path: target without the query string.
    :param query: query string without ``?`` ("" if none).
    :param version: ``"HTTP/1.1"`` or ``"HTTP/1.0"``.
    :param headers: header names in lower case; repeated headers joined with ``", "``.
    :param body: raw body bytes.
    """

    method: str
    target: str
    path: str
    query: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        """Whether the client allows the connection to stay open after this request."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


def reason_phrase(status: int) -> str:
    """Return the standard reason phrase for a status.

    :param status: HTTP status code.
    """
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def render_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """Serialise a status line and headers, ending with the blank line.

    :param status: HTTP status code.
    :param headers: header name/value pairs, in order.
    """
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_chunk(data: bytes) -> bytes:
    """Frame bytes as one HTTP/1.1 chunk (empty input gives nothing, not the terminator).

    :param data: payload.
    """
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size_text = size_line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise HTTPProtocolError(400, "bad chunk size") from exc
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise HTTPProtocolError(400, "bad chunk terminator")


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> HTTPRequest | None:
    """Read one request from a connection.

    :param reader: the connection's reader.
    :param writer: the connection's writer, used only to answer ``Expect: 100-continue``.
    :return: the request, or None when the client closed the connection between requests.
    :raises HTTPProtocolError: on malformed input.
    """
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise HTTPProtocolError(400, "incomplete request head") from exc
    except asyncio.LimitOverrunError as exc:
        raise HTTPProtocolError(431, "request head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HTTPProtocolError(400, "bad request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPProtocolError(400, "bad header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    path, _, query = target.partition("?")
    request = HTTPRequest(method=method.upper(), target=target, path=path, query=query,
                          version=version, headers=headers)
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            request.body = await _read_chunked(reader)
        elif "content-length" in headers:
            text = headers["content-length"]
            if not text.isdigit():
                raise HTTPProtocolError(400, "bad Content-Length")
            request.body = await reader.readexactly(int(text))
    except asyncio.IncompleteReadError as exc:
        raise HTTPProtocolError(400, "incomplete request body") from exc
    return request
