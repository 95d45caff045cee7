"""The client as shipped against hostile and broken servers: bombs, bad framing, repeated answers, busy pools.

Each server is a byte-scripted loopback server (``_scripted.py``). What must hold: an answer that is
not well framed is refused as possibly billed (never hangs, never leaks an exception of its own);
memory stays near the cap whatever a compressed answer inflates to; an answer that is not its
request's is refused and the row is sent again; waiting for a pool slot is never booked as billed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import tracemalloc
import zlib
from typing import Any

import pytest
from _scripted import Scripted, answer, chunked, completion, run, write

from airflow_provider_glm.client import AsyncGLMClient
from airflow_provider_glm.client._attempts import attempt_kind
from airflow_provider_glm.exceptions import GLMConnectionError, GLMInvalidResponseError, GLMTimeoutError

BODY = json.dumps({"model": "glm-4.5", "messages": [{"role": "user", "content": "hi"}]}).encode()
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


def client(server: Scripted, **options: Any) -> AsyncGLMClient:
    """One connection, generous timeouts (a hang fails by its error type, not by a clock), no retries."""
    settings: dict[str, Any] = {"max_retries": 0, "max_billed_retries": 0, "timeout": 60, "read_timeout": 30,
                                "max_connections": 1}
    settings.update(options)
    return AsyncGLMClient("sk-hostile-key", base_url=server.base_url, **settings)


def fixed(build: Any) -> Any:
    """A script writing ``build(request)`` for every request."""

    async def script(n: int, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        await write(writer, build(request))

    return script


async def one(build: Any, **options: Any) -> Any:
    """Send one chat request to a server answering ``build(request)``; the answer or the error."""
    async with Scripted(fixed(build)) as server, client(server, **options) as glm:
        try:
            return await glm.send_chat(BODY)
        except (GLMConnectionError, GLMInvalidResponseError, GLMTimeoutError) as exc:
            return exc


# --- decompression bombs --------------------------------------------------------------------------------


def _bomb(encoding: str, mebibytes: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    block = b"\0" * (1 << 20)
    return b"".join(compressor.compress(block) for _ in range(mebibytes)) + compressor.flush()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compression_bomb_stops_at_the_decoded_cap(encoding: str) -> None:
    bomb = _bomb(encoding, 256)  # 256 MiB of zeros in about 250 KB
    assert len(bomb) < 1 << 20

    def build(request: dict[str, Any]) -> bytes:
        return (HEAD + f"Content-Encoding: {encoding}\r\nContent-Length: {len(bomb)}\r\n\r\n".encode() + bomb)

    tracemalloc.start()
    try:
        error = run(one(build, max_response_bytes=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(error, GLMInvalidResponseError), error
    assert "max_response_bytes=1048576" in str(error) and error.may_have_been_billed
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MiB held while refusing a 1 MiB-capped answer"


# --- framing ----------------------------------------------------------------------------------------------


def _with_head(head: bytes, body: bytes) -> Any:
    return lambda request: HEAD + head + b"\r\n" + body


BAD_FRAMING = {
    "TE and CL together": _with_head(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", chunked(b'{"a":1}')),
    "chunk size -1": _with_head(b"Transfer-Encoding: chunked\r\n", b"-1\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"),
    "chunk size 0x10": _with_head(b"Transfer-Encoding: chunked\r\n", b"0x10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"),
    "chunk size 1_0": _with_head(b"Transfer-Encoding: chunked\r\n", b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"),
    "Content-Length a Unicode digit": _with_head("Content-Length: ²\r\n".encode(), b"{}"),
    "a 200 KB header line in one read": _with_head(b"X-Big: " + b"a" * 200_000 + b"\r\nContent-Length: 2\r\n", b"{}"),
    "5,000 header lines": _with_head(b"".join(b"X-%d: a\r\n" % i for i in range(5000)) + b"Content-Length: 2\r\n",
                                     b"{}"),
    "100,000 trailer lines": _with_head(b"Transfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n" + b"".join(
        b"X-T%d: %s\r\n" % (i, b"b" * 100) for i in range(100_000)) + b"\r\n"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMING))
def test_bad_framing_is_refused_at_once_as_possibly_billed(case: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    error = run(one(BAD_FRAMING[case]))
    assert isinstance(error, GLMConnectionError), error
    assert not isinstance(error, GLMTimeoutError), "refused by waiting for the read timeout, not by the parser"
    assert error.may_have_been_billed and error.request_sent
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == [], "an error escaped the client"


def test_a_transfer_encoding_that_only_contains_chunked_is_not_chunked() -> None:
    async def script(n: int, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        await write(writer, HEAD + b"Transfer-Encoding: xchunkedx\r\n\r\n" + chunked(completion(request)))
        writer.close()  # not chunked: the body runs to the close, chunk framing and all

    async def main() -> Any:
        async with Scripted(script) as server, client(server) as glm:
            try:
                return await glm.send_chat(BODY)
            except GLMInvalidResponseError as exc:
                return exc

    error = run(main())
    assert isinstance(error, GLMInvalidResponseError), error
    assert "not JSON" in str(error) and error.may_have_been_billed


def test_bare_line_feeds_are_answered_without_waiting_for_the_read_timeout() -> None:
    def build(request: dict[str, Any]) -> bytes:
        body = completion(request)
        return f"HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: {len(body)}\n\n".encode() + body

    answer_ = run(one(build))
    assert not isinstance(answer_, Exception), answer_
    assert answer_.content == "ok"


def test_a_flood_of_interim_answers_then_the_answer() -> None:
    answer_ = run(one(lambda request: b"HTTP/1.1 100 Continue\r\n\r\n" * 1000 + answer(completion(request))))
    assert not isinstance(answer_, Exception), answer_
    assert answer_.content == "ok"


def test_a_body_read_to_the_close_is_answered_and_its_connection_not_reused() -> None:
    async def script(n: int, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        await write(writer, HEAD + b"Connection: close\r\n\r\n" + completion(request, content=f"answer {n}"))
        writer.close()

    async def main() -> tuple[list[str | None], int]:
        async with Scripted(script) as server, client(server) as glm:
            contents = [(await glm.send_chat(BODY)).content for _ in range(2)]
            return contents, server.connections

    contents, connections = run(main())
    assert contents == ["answer 1", "answer 2"]
    assert connections == 2


# --- answers that are not their request's -----------------------------------------------------------------


def test_a_repeated_answer_before_the_next_one_is_refused_and_the_row_sent_again() -> None:
    """The server writes a copy of answer 1 in front of answer 2, on the kept-alive connection: without a
    check, request 2 would take answer 1 as its own (and a ledger keyed by response id would drop one)."""
    previous: dict[str, bytes] = {}

    async def script(n: int, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        if n == 2:
            await write(writer, previous["answer"])
        previous["answer"] = answer(completion(request, content=f"answer {n}"))
        await write(writer, previous["answer"])

    async def main() -> tuple[Any, Any, Scripted]:
        async with Scripted(script) as server, client(server, max_retries=2, max_billed_retries=1) as glm:
            return await glm.send_chat(BODY), await glm.send_chat(BODY), server

    first, second, server = run(main())
    assert first.content == "answer 1"
    assert second.id != first.id and second.content == "answer 3"
    assert second.request_id == server.requests[-1]["request_id"]
    assert (second.call_info.attempts, second.call_info.unknown_billing_attempts) == (2, 1)
    assert server.connections == 2, "the connection that carried the copy was dropped"
    ids = [request["request_id"] for request in server.requests]
    assert len(set(ids)) == 3, "every attempt carries a fresh request_id"


def test_a_copy_arriving_on_an_idle_connection_is_not_the_next_answer() -> None:
    async def script(n: int, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        data = answer(completion(request, content=f"answer {n}"))
        await write(writer, data)
        if n == 1:
            await write(writer, data)

    async def main() -> tuple[Any, Any]:
        async with Scripted(script) as server, client(server, max_retries=2, max_billed_retries=1) as glm:
            return await glm.send_chat(BODY), await glm.send_chat(BODY)

    first, second = run(main())
    assert (first.content, second.content) == ("answer 1", "answer 2")
    assert second.id != first.id


def test_an_answer_repeating_a_response_id_is_refused() -> None:
    """A server (or cache) that answers with the right request_id but an id it already gave."""
    first_id = "resp-0001"

    async def script(n: int, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        response_id = first_id if n <= 2 else f"resp-{n:04d}"
        await write(writer, answer(completion(request, content=f"answer {n}", response_id=response_id)))

    async def main() -> tuple[Any, Any]:
        async with Scripted(script) as server, client(server, max_retries=2, max_billed_retries=1) as glm:
            return await glm.send_chat(BODY), await glm.send_chat(BODY)

    first, second = run(main())
    assert (first.id, second.id) == (first_id, "resp-0003")
    assert second.call_info.unknown_billing_attempts == 1


def test_a_late_answer_never_reaches_the_next_request() -> None:
    """Request 1 times out on the client; its answer arrives after request 2 was sent (on another
    connection, since the timed-out one was dropped): request 2 gets its own answer."""
    late: dict[str, Any] = {}
    second_arrived = asyncio.Event()

    async def script(n: int, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        if n == 1:
            late["writer"], late["data"] = writer, answer(completion(request, content="late answer 1"))
            return  # answered only once request 2 has arrived
        second_arrived.set()
        late_writer = late["writer"]
        if not late_writer.is_closing():
            late_writer.write(late["data"])
        await write(writer, answer(completion(request, content=f"answer {n}")))

    async def main() -> tuple[Any, Any]:
        async with Scripted(script) as server, client(server, read_timeout=1.0, max_connections=1) as glm:
            try:
                await glm.send_chat(BODY)
                raise AssertionError("request 1 was answered")
            except GLMTimeoutError as exc:
                timeout = exc
            second = await glm.send_chat(BODY)
            assert second_arrived.is_set()
            return timeout, second

    timeout, second = run(main())
    assert timeout.may_have_been_billed
    assert second.content == "answer 2"


# --- the client's own pool ----------------------------------------------------------------------------------


def test_waiting_for_a_pool_slot_is_never_booked_as_billed() -> None:
    """One connection, held by a slow answer: a second call whose deadline passes while it waits for the
    slot was never sent, so it may not count as possibly billed (nor as an unreachable endpoint)."""
    release = asyncio.Event()
    got_first = asyncio.Event()

    async def script(n: int, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        if n == 1:
            got_first.set()
            await release.wait()
        await write(writer, answer(completion(request, content=f"answer {n}")))

    async def main() -> tuple[Any, Any, int]:
        async with Scripted(script) as server, client(server, max_connections=1) as glm:
            first = asyncio.create_task(glm.send_chat(BODY))
            await got_first.wait()
            try:
                await glm.send_chat(BODY, deadline=time.monotonic() + 1.0)
                raise AssertionError("the second call got a connection")
            except GLMTimeoutError as exc:
                queued = exc
            release.set()
            return queued, await first, len(server.requests)

    queued, first, requests = run(main())
    assert first.content == "answer 1"
    assert requests == 1, "the second request never left"
    assert not queued.request_sent and not queued.may_have_been_billed
    assert attempt_kind(queued) == "queued"
    assert queued.call_info.unknown_billing_attempts == 0


# --- reaching the host ----------------------------------------------------------------------------------------


def test_happy_eyeballs_reaches_the_second_address_while_the_first_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's first address swallows connection attempts (a listener whose backlog is full, like a
    black-holed route); its second answers. The attempt has 120 s in all and the connect timeout is
    600 s: tried one after the other, the first address would use up the attempt (GLMTimeoutError)."""
    real_getaddrinfo = socket.getaddrinfo

    async def main() -> Any:
        async with Scripted(fixed(lambda request: answer(completion(request, content="via the second")))) as server:
            port = int(server.base_url.split(":")[2].split("/")[0])
            silent = socket.socket()
            silent.bind(("127.0.0.2", port))
            silent.listen(0)
            filler = socket.create_connection(("127.0.0.2", port))  # fills the backlog: the next SYN is dropped

            def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
                if host == "glm.eyeballs.test":
                    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
                            for address in ("127.0.0.2", "127.0.0.1")]
                return real_getaddrinfo(host, *args, **kwargs)

            monkeypatch.setattr(socket, "getaddrinfo", resolve)
            base_url = server.base_url.replace("127.0.0.1", "glm.eyeballs.test")
            try:
                async with AsyncGLMClient("sk-eyeballs", base_url=base_url, allow_insecure_http=True,
                                          connect_timeout=600, timeout=120, max_retries=0) as glm:
                    return await glm.send_chat(BODY)
            finally:
                filler.close()
                silent.close()

    assert run(main()).content == "via the second"
