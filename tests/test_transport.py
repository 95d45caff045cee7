"""The asyncio network backend under httpx: TLS, keep-alive, large and chunked answers, a peer that closes."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from _tls import localhost_certificate, needs_openssl

from airflow_provider_glm.client._transport import async_transport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + (await reader.readexactly(length) if length else b"")


def answer(body: bytes, *, close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body


async def serve(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_context)
    return server, server.sockets[0].getsockname()[1]


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=120))  # type: ignore[arg-type]


def test_keep_alive_reuses_one_connection_and_big_answers_arrive_whole() -> None:
    connections: list[int] = []
    big = b"x" * 3_000_000

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                request = await read_request(reader)
                writer.write(answer(big if b"/big" in request.split(b"\r\n")[0] else b"ok"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def scenario() -> None:
        server, port = await serve(handler)
        async with server, httpx.AsyncClient(transport=async_transport(1, ssl.create_default_context())) as client:
            for _ in range(5):
                assert (await client.post(f"http://127.0.0.1:{port}/small", content=b"{}")).content == b"ok"
            response = await client.get(f"http://127.0.0.1:{port}/big")
            assert response.content == big
        assert len(connections) == 1, "every request went over the one kept-alive connection"

    run(scenario())


def test_chunked_answer_and_a_peer_that_closes_after_answering() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while b"/chunked" in await read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            await writer.drain()
        writer.write(answer(b"bye", close=True))
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server, port = await serve(handler)
        async with server, httpx.AsyncClient(transport=async_transport(1, ssl.create_default_context())) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/chunked")).content == b"abcde"
            for _ in range(3):  # each answer closes its connection: the next request opens a new one
                assert (await client.get(f"http://127.0.0.1:{port}/close")).content == b"bye"

    run(scenario())


def test_a_dropped_connection_and_a_refused_one_raise_httpx_errors() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.transport.abort()

    async def scenario() -> None:
        server, port = await serve(handler)
        async with server, httpx.AsyncClient(transport=async_transport(1, ssl.create_default_context())) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"http://127.0.0.1:{port}/")
        # the server is closed now: nothing listens on the port
        async with httpx.AsyncClient(transport=async_transport(1, ssl.create_default_context())) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/")

    run(scenario())


def test_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(60)  # the answer never comes within the client's read timeout

    async def scenario() -> None:
        server, port = await serve(handler)
        async with server, httpx.AsyncClient(transport=async_transport(1, ssl.create_default_context())) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"http://127.0.0.1:{port}/", timeout=httpx.Timeout(5.0, read=0.2))

    run(scenario())


@needs_openssl
def test_tls_with_server_name(tmp_path: Path) -> None:
    key, cert = localhost_certificate(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_request(reader)
                writer.write(answer(b"secure"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            writer.close()

    async def scenario() -> None:
        server, port = await serve(handler, server_context)
        async with server:
            async with httpx.AsyncClient(transport=async_transport(2, client_context)) as client:
                for _ in range(3):
                    assert (await client.get(f"https://localhost:{port}/")).content == b"secure"
            async with httpx.AsyncClient(transport=async_transport(1, ssl.create_default_context())) as client:
                with pytest.raises(httpx.ConnectError):  # a certificate no CA vouches for is refused
                    await client.get(f"https://localhost:{port}/")

    run(scenario())
