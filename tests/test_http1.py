"""The lean HTTP/1.1 client of chat calls (http1.py, http_pool.py), against a scripted server on loopback.

Each test's server reads whole requests and answers with bytes the test wrote, so framing
(length, chunked, read-to-close, gzip), keep-alive, interim answers and every failure the client
maps to "not sent" or "may have been billed" are checked on a real socket.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from _tls import localhost_certificate, needs_openssl

from airflow_provider_glm.client import _http1 as http1
from airflow_provider_glm.client._core import ClientCore, tls_context
from airflow_provider_glm.client._http1 import MAX_HEAD_BYTES, AnswerTooLarge
from airflow_provider_glm.client._http_pool import HTTP1Pool

Script = Callable[[int, bytes, asyncio.StreamWriter], Awaitable[None]]
"""(request number on this server, request bytes, writer) -> writes the answer (or not)."""


class Scripted:
    """A loopback server that reads each request (head + Content-Length body) and runs the script."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/api/paas/v4"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                await self.script(len(self.requests), request, writer)
                if writer.is_closing():
                    return
        finally:
            writer.close()


def pool_for(server: Scripted, max_connections: int = 4) -> HTTP1Pool:
    return HTTP1Pool(server.base_url, tls_context(), max_connections, {"Content-Type": "application/json"})


async def post(pool: HTTP1Pool, body: bytes = b'{"a":1}', *, read_timeout: float = 30.0,
               limit: int = 1 << 20) -> tuple[Any, bytes]:
    return await pool.post("chat/completions", body, authorization="Bearer k", connect_timeout=5.0,
                           read_timeout=read_timeout, limit=limit)


def answer(body: bytes, *, status: str = "200 OK", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(120):  # a hang fails the test instead of the suite
            return await coro

    return asyncio.run(bounded())


def fixed(data: bytes) -> Script:
    async def script(n: int, request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()

    return script


def connections_for_two_posts(raw: bytes) -> int:
    """Two requests in turn to a server answering ``raw``: how many connections they took."""

    async def main() -> int:
        async with Scripted(fixed(raw)) as server:
            pool = pool_for(server)
            await post(pool)
            await post(pool)
            await pool.aclose()
            return server.connections

    return int(run(main()))


# --- what is sent ---------------------------------------------------------------------------------------


def test_request_head_and_body() -> None:
    async def main() -> bytes:
        async with Scripted(fixed(answer(b"{}"))) as server:
            pool = pool_for(server)
            await post(pool, b'{"model":"glm"}')
            await pool.aclose()
            return server.requests[0]

    request = run(main())
    head, body = request.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /api/paas/v4/chat/completions HTTP/1.1"
    assert lines[1].startswith("Host: 127.0.0.1:")
    assert set(lines[2:]) == {"Content-Type: application/json", "Authorization: Bearer k", "Content-Length: 15"}
    assert body == b'{"model":"glm"}'


def test_host_header_omits_the_default_port_and_given_framing_headers_are_dropped() -> None:
    pool = HTTP1Pool("https://open.bigmodel.cn/api/paas/v4", tls_context(), 1,
                     {"authorization": "Bearer other", "Content-Length": "9", "X-Tenant": "a"})
    assert pool._head_end == "Host: open.bigmodel.cn\r\nX-Tenant: a\r\n", "the pool writes its own framing headers"
    assert pool.url("chat/completions") == "https://open.bigmodel.cn/api/paas/v4/chat/completions"


@pytest.mark.parametrize("key, headers", [("sk-ab\ncd", {}), ("sk-abcd", {"X-Tenant": "a\r\nInjected: 1"})])
def test_line_breaks_in_key_or_headers_refused_when_the_client_is_built(key: str, headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="line break") as caught:
        ClientCore(key, base_url="https://open.bigmodel.cn/api/paas/v4", headers=headers)
    assert "sk-ab" not in str(caught.value)


# --- framing of the answer ------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    (answer(b'{"ok":true}'), b'{"ok":true}'),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"ok\r\n7;ext=1\r\n\":true}\r\n0\r\nX-T: 1\r\n\r\n",
     b'{"ok":true}'),
    (b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"{}"), b"{}"),
    (answer(gzip.compress(b'{"z":1}'), extra="Content-Encoding: gzip\r\n"), b'{"z":1}'),
    (answer(zlib.compress(b'{"d":1}'), extra="Content-Encoding: deflate\r\n"), b'{"d":1}'),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n{}", b"{}"),
], ids=["length", "chunked", "interim-100", "gzip", "deflate", "204", "repeated-length"])
def test_answer_framings(raw: bytes, expected: bytes) -> None:
    async def main() -> tuple[Any, bytes, int]:
        async with Scripted(fixed(raw)) as server:
            pool = pool_for(server)
            first = await post(pool)
            await post(pool)  # the same connection carries the next request
            await pool.aclose()
            return first[0], first[1], server.connections

    got, content, connections = run(main())
    assert content == expected
    assert got.status_code in (200, 204)
    assert connections == 1


def test_answer_split_into_single_bytes() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"

    async def script(n: int, request: bytes, writer: asyncio.StreamWriter) -> None:
        for i in range(len(raw)):
            writer.write(raw[i:i + 1])
            await writer.drain()

    async def main() -> bytes:
        async with Scripted(script) as server:
            pool = pool_for(server)
            try:
                return (await post(pool))[1]
            finally:
                await pool.aclose()

    assert run(main()) == b"hello"


def test_headers_lower_case_and_joined() -> None:
    raw = answer(b"{}", status="429 Too Many Requests", extra="Retry-After: 3\r\nX-A: 1\r\nx-a: 2\r\n")

    async def main() -> Any:
        async with Scripted(fixed(raw)) as server:
            pool = pool_for(server)
            try:
                return (await post(pool))[0]
            finally:
                await pool.aclose()

    got = run(main())
    assert got.status_code == 429
    assert got.headers["retry-after"] == "3"
    assert got.headers["x-a"] == "1, 2"


def test_read_to_close_body_and_connection_close() -> None:
    async def to_close(n: int, request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n{\"eof\":" + str(n).encode() + b"}")
        await writer.drain()
        writer.close()

    async def close_header(n: int, request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(b"{}", extra="Connection: close\r\n"))
        await writer.drain()
        writer.close()

    async def main(script: Script) -> tuple[list[bytes], int]:
        async with Scripted(script) as server:
            pool = pool_for(server)
            bodies = [(await post(pool))[1] for _ in range(3)]
            await pool.aclose()
            return bodies, server.connections

    bodies, connections = run(main(to_close))
    assert bodies == [b'{"eof":1}', b'{"eof":2}', b'{"eof":3}']
    assert connections == 3
    assert run(main(close_header)) == ([b"{}"] * 3, 3)


# --- failures, and whether the request left ---------------------------------------------------------------


def test_refused_connection_is_connect_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

        async def main() -> None:
            pool = HTTP1Pool(f"http://127.0.0.1:{port}/v4", tls_context(), 2, {})
            await post(pool)

        with pytest.raises(httpx.ConnectError):
            run(main())


@pytest.mark.parametrize(("raw", "error", "message"), [
    (b"", httpx.RemoteProtocolError, "without sending a response"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", httpx.RemoteProtocolError, "complete message body"),
    (b"<html>nope</html>\r\n\r\n", httpx.RemoteProtocolError, "status line"),
    (b"HTTP/1.1 200 OK\r\nBad header\r\n\r\n", httpx.RemoteProtocolError, "malformed header"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", httpx.RemoteProtocolError, "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", httpx.RemoteProtocolError, "chunk size"),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc", httpx.DecodingError, "gzip"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_HEAD_BYTES + 10), httpx.RemoteProtocolError, "too large"),
], ids=["closed-at-once", "short-body", "not-http", "bad-header", "bad-length", "bad-chunk", "bad-gzip", "huge-head"])
def test_broken_answers_are_errors_after_sending(raw: bytes, error: type[Exception], message: str) -> None:
    async def script(n: int, request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with Scripted(script) as server:
            pool = pool_for(server)
            try:
                await post(pool)
            finally:
                await pool.aclose()

    with pytest.raises(error, match=message) as caught:
        run(main())
    assert not isinstance(caught.value, (httpx.ConnectError, httpx.ConnectTimeout)), "the request had left"


def test_read_timeout_between_bytes() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def silent(n: int, request: bytes, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{")
            await gate.wait()  # never set: the rest never comes

        async with Scripted(silent) as server:
            pool = pool_for(server)
            try:
                await post(pool, read_timeout=0.2)
            finally:
                gate.set()
                await pool.aclose()

    with pytest.raises(httpx.ReadTimeout):
        run(main())


def test_answer_over_the_limit_stops_reading() -> None:
    body = b"x" * 5000

    async def main() -> tuple[int, int]:
        async with Scripted(fixed(answer(body))) as server:
            pool = pool_for(server)
            with pytest.raises(AnswerTooLarge) as caught:
                await post(pool, limit=1000)
            _, content = await post(pool, limit=10_000)  # the cut connection is not reused
            await pool.aclose()
            assert content == body
            return caught.value.received, server.connections

    received, connections = run(main())
    assert received > 1000
    assert connections == 2


def test_extra_bytes_after_an_answer_retire_the_connection() -> None:
    assert connections_for_two_posts(answer(b"{}") + b"HTTP/1.1 200 OK\r\n") == 2
    assert connections_for_two_posts(answer(b"{}")) == 1, "a clean answer keeps its connection"


def test_idle_connection_closed_by_server_is_not_reused() -> None:
    async def main() -> int:
        closed = asyncio.Event()

        async def once(n: int, request: bytes, writer: asyncio.StreamWriter) -> None:
            writer.write(answer(b"{}"))  # keep-alive promised, then the server closes while idle
            await writer.drain()
            writer.close()
            closed.set()

        async with Scripted(once) as server:
            pool = pool_for(server)
            await post(pool)
            await closed.wait()
            for _ in range(200):  # let the loop deliver the end of the connection
                if not pool._idle or pool._idle[0].broken:
                    break
                await asyncio.sleep(0.01)
            await post(pool)
            await pool.aclose()
            return server.connections

    assert run(main()) == 2


# --- the pool -----------------------------------------------------------------------------------------


def test_pool_never_opens_more_than_its_limit() -> None:
    async def main() -> tuple[int, int, int]:
        in_flight = peak = 0
        gate = asyncio.Event()

        async def slow(n: int, request: bytes, writer: asyncio.StreamWriter) -> None:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            if peak >= 3:
                gate.set()
            await gate.wait()
            in_flight -= 1
            writer.write(answer(b"{}"))
            await writer.drain()

        async with Scripted(slow) as server:
            pool = pool_for(server, max_connections=3)
            results = await asyncio.gather(*(post(pool) for _ in range(12)))
            await pool.aclose()
            return len(results), peak, server.connections

    count, peak, connections = run(main())
    assert count == 12
    assert peak == 3
    assert connections == 3


def test_cancelled_waiters_and_exchanges_free_their_places() -> None:
    async def main() -> tuple[int, int]:
        hold = asyncio.Event()

        async def script(n: int, request: bytes, writer: asyncio.StreamWriter) -> None:
            if b'"hold"' in request:
                await hold.wait()
            writer.write(answer(b"{}"))
            await writer.drain()

        async with Scripted(script) as server:
            pool = pool_for(server, max_connections=1)
            held = asyncio.create_task(post(pool, b'"hold"'))
            waiting = asyncio.create_task(post(pool))
            for _ in range(500):
                if pool._waiters:
                    break
                await asyncio.sleep(0.01)
            waiting.cancel()
            held.cancel()
            await asyncio.gather(held, waiting, return_exceptions=True)
            hold.set()
            await post(pool)  # the one place is free again
            opened = pool._open
            await pool.aclose()
            return opened, len(pool._waiters)

    assert run(main()) == (1, 0)


def test_closed_pool_refuses_before_sending() -> None:
    async def main() -> None:
        pool = HTTP1Pool("http://127.0.0.1:9/v4", tls_context(), 1, {})
        await pool.aclose()
        await post(pool)

    with pytest.raises(httpx.ConnectError, match="closed"):
        run(main())


def test_idle_connection_past_keepalive_expiry_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "KEEPALIVE_EXPIRY", 0.0)
    assert connections_for_two_posts(answer(b"{}")) == 2


@needs_openssl
def test_tls_with_server_name_and_refused_certificate(tmp_path: Path) -> None:
    key, cert = localhost_certificate(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(answer(b'{"tls":true}'))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            writer.close()

    async def main() -> list[bytes]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        async with server:
            trusted = HTTP1Pool(f"https://localhost:{port}/v4", ssl.create_default_context(cafile=str(cert)), 2, {})
            bodies = [(await post(trusted))[1] for _ in range(3)]
            await trusted.aclose()
            untrusted = HTTP1Pool(f"https://localhost:{port}/v4", ssl.create_default_context(), 1, {})
            with pytest.raises(httpx.ConnectError):  # a certificate no CA vouches for: refused before sending
                await post(untrusted)
            await untrusted.aclose()
            return bodies

    assert run(main()) == [b'{"tls":true}'] * 3
