"""A loopback server that answers with exactly the bytes a test writes: hostile and broken servers on a real socket.

The server reads each request (head up to the blank line, then ``Content-Length`` body bytes: only
well-formed requests come from the client under test) and hands it to the test's script, which
writes whatever bytes it likes: duplicate answers, bad framing, bombs, nothing at all.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

Script = Callable[[int, dict[str, Any], asyncio.StreamWriter], Awaitable[None]]
"""(request number on this server, the request's JSON body, writer) -> writes the answer (or not)."""


class Scripted:
    """``async with Scripted(script) as server:``; ``server.base_url`` is the GLM base URL to use."""

    def __init__(self, script: Script, *, ssl_context: Any = None) -> None:
        self.script = script
        self.ssl_context = ssl_context
        self.requests: list[dict[str, Any]] = []
        self.targets: list[str] = []
        """The request target of each request (``/api/paas/v4/chat/completions``), as sent."""
        self.connections = 0
        self.server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self._writers):
            writer.close()  # each handler's next read ends, so it returns
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=10)
            for task in pending:
                task.cancel()  # a script still waiting on the test's event: it returns on cancel
            await asyncio.gather(*pending, return_exceptions=True)

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/api/paas/v4"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                self.targets.append(head.split(b" ", 2)[1].decode("ascii", "replace"))
                body = await reader.readexactly(length)
                self.requests.append(json.loads(body) if body else {})
                await self.script(len(self.requests), self.requests[-1], writer)
                if writer.is_closing():
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # the handler ends quietly: asyncio would log a cancelled or failed handler as an error
        finally:
            self._writers.discard(writer)
            writer.close()


def completion(request: dict[str, Any], *, content: str = "ok", response_id: str | None = None) -> bytes:
    """A chat completion answering ``request`` (echoing its request_id, as GLM does), as JSON bytes."""
    return json.dumps({
        "id": response_id or uuid.uuid4().hex, "request_id": request.get("request_id"), "created": 1,
        "model": request.get("model", "glm-4.5"),
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }).encode()


def answer(body: bytes, *, status: str = "200 OK", headers: str = "") -> bytes:
    """A whole HTTP/1.1 answer with a ``Content-Length`` (``headers`` are extra lines, each ending CRLF)."""
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
            .encode() + body)


def chunked(body: bytes) -> bytes:
    """``body`` as one chunk and the last chunk."""
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


async def write(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


def run(coro: Awaitable[Any]) -> Any:
    """Run a test's coroutine; a hang fails the test after two minutes instead of stalling the suite."""

    async def bounded() -> Any:
        async with asyncio.timeout(120):
            return await coro

    return asyncio.run(bounded())
