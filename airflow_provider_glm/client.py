"""HTTP clients for the GLM API over httpx: :class:`GLMClient` (sync) and :class:`AsyncGLMClient`.

Both share :class:`~airflow_provider_glm.client_core.ClientCore`, which builds requests, decides retries (through
:class:`~airflow_provider_glm.retry.RetryPolicy`) and parses answers; the two classes differ only
in how they send bytes and sleep. Every attempt has a total deadline (``timeout``): the async client
enforces it on the whole attempt; the sync one on the body, so a server trickling its headers can
hold a sync call up to ``read_timeout`` per read. Answers above ``max_response_bytes`` are aborted while reading,
and redirects are never followed, so the key goes to the configured host only.

Example::

    with GLMClient(api_key="...", base_url=ZAI_BASE_URL) as client:
        answer = client.chat_completion("glm-4.5", [{"role": "user", "content": "Hi"}])
        print(answer.content, answer.usage.total_tokens)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from airflow_provider_glm import constants
from airflow_provider_glm.auth import APIKey
from airflow_provider_glm.client_core import Attempts, CallInfo, ClientCore, http_options
from airflow_provider_glm.exceptions import GLMError, GLMInvalidResponseError, GLMTimeoutError
from airflow_provider_glm.models import ChatCompletion, ChatCompletionChunk
from airflow_provider_glm.streaming import DONE, SSEDecoder, StreamAssembler

__all__ = ["AsyncGLMClient", "CallInfo", "GLMClient"]


class GLMClient:
    """Synchronous GLM client. Parameters are those of :class:`AsyncGLMClient`."""

    def __init__(self, api_key: str | APIKey, *, max_connections: int = constants.DEFAULT_MAX_CONNECTIONS,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep, **options: Any) -> None:
        self._core = ClientCore(api_key, **options)
        self._sleep = sleep
        self._http = httpx.Client(transport=transport, **http_options(max_connections))

    def __repr__(self) -> str:
        return repr(self._core)

    def __enter__(self) -> GLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, deadline: float | None = None, raw: bool = False,
                **kwargs: Any) -> Any:
        """Send with retries and return the parsed JSON body (or the bytes with ``raw=True``).

        :param deadline: a ``time.monotonic()`` instant no attempt or wait may pass.
        :param raw: return the body's bytes instead of parsing JSON (file downloads).
        :param kwargs: ``json``, ``files``, ``data`` or ``params`` for httpx.
        """
        return self._request(method, path, deadline, kwargs, raw)[0]

    def chat_completion(self, model: str, messages: Any, *, deadline: float | None = None,
                        **params: Any) -> ChatCompletion:
        """Create a chat completion; see :func:`~airflow_provider_glm.models.build_chat_request`."""
        body = self._core.chat_body(model, messages, params, stream=False)
        payload, info = self._request("POST", "chat/completions", deadline, {"json": body})
        completion = self._core.parse_completion(payload, body.get("request_id"))
        completion._call_info = info
        return completion

    def stream_chat_completion(self, model: str, messages: Any, *, deadline: float | None = None,
                               **params: Any) -> Iterator[ChatCompletionChunk]:
        """Stream a chat completion as typed chunks; retries happen only before the first byte."""
        body = self._core.chat_body(model, messages, params, stream=True)
        request_id = body.get("request_id")
        response, attempt_deadline = self._open_stream(body, deadline)
        decoder = SSEDecoder(request_id)
        try:
            received = 0
            for data in response.iter_bytes():
                received += len(data)
                self._core.check_progress(received, attempt_deadline, request_id)
                for item in decoder.feed(data):
                    if item is not DONE:
                        yield item
            for item in decoder.close():
                if item is not DONE:
                    yield item
        except httpx.HTTPError as exc:
            raise self._core.transport_error(exc, request_id) from None
        finally:
            response.close()

    def chat_completion_streamed(self, model: str, messages: Any, **params: Any) -> ChatCompletion:
        """Stream a completion and return it assembled into one answer."""
        assembler = StreamAssembler()
        for chunk in self.stream_chat_completion(model, messages, **params):
            assembler.add(chunk)
        return assembler.completion(params.get("request_id"))

    def _open_stream(self, body: dict[str, Any], deadline: float | None) -> tuple[httpx.Response, float]:
        attempts = Attempts(self._core, deadline)
        while True:
            attempts.count += 1
            attempt_deadline = self._core.attempt_deadline(deadline)
            request = self._core.build(self._http, "POST", "chat/completions", attempt_deadline, json=body)
            try:
                response = self._http.send(request, stream=True)
                if response.status_code == 200:
                    return response, attempt_deadline
                try:
                    content = self._read(response, attempt_deadline, body.get("request_id"))
                finally:
                    response.close()
                self._core.check_status(response, content, body.get("request_id"))
                raise GLMInvalidResponseError(f"unexpected HTTP {response.status_code} for a stream")
            except httpx.HTTPError as exc:
                error = self._core.transport_error(exc, body.get("request_id"))
            except GLMError as exc:
                error = exc
            self._sleep(attempts.failed(error))

    def _read(self, response: httpx.Response, deadline: float, request_id: str | None,
              limit: int | None = None) -> bytes:
        chunks: list[bytes] = []
        received = 0
        for data in response.iter_bytes():
            received += len(data)
            self._core.check_progress(received, deadline, request_id, limit)
            chunks.append(data)
        return b"".join(chunks)

    def _request(self, method: str, path: str, deadline: float | None,
                 kwargs: dict[str, Any], raw: bool = False) -> tuple[Any, CallInfo]:
        attempts = Attempts(self._core, deadline)
        request_id = self._core.request_id_of(kwargs)
        while True:
            attempts.count += 1
            attempt_deadline = self._core.attempt_deadline(deadline)
            try:
                request = self._core.build(self._http, method, path, attempt_deadline, **kwargs)
                response = self._http.send(request, stream=True)
                try:
                    content = self._read(response, attempt_deadline, request_id, self._core.download_limit(raw))
                finally:
                    response.close()
                return self._core.parse_body(response, content, request_id, raw), attempts.info()
            except httpx.HTTPError as exc:
                error = self._core.transport_error(exc, request_id)
            except GLMError as exc:
                error = exc
            self._sleep(attempts.failed(error))


class AsyncGLMClient:
    """Asynchronous GLM client, for many rows at once inside one task or a trigger.

    :param api_key: the API key (kept out of every repr, log and error).
    :param base_url: API root, default BigModel; Z.ai and coding-plan bases work the same.
    :param auth: ``bearer`` (default) or ``jwt`` for ``id.secret`` keys.
    :param timeout: total seconds for one attempt, first byte sent to last byte read.
    :param connect_timeout: seconds to connect.
    :param read_timeout: seconds to wait for the next byte.
    :param max_retries: retries of a retryable failure (see ``docs/errors.md``).
    :param max_connections: connection pool size.
    :param max_response_bytes: an answer larger than this is aborted while reading.
    :param transport: an httpx transport (tests use ``httpx.MockTransport``).
    :param sleep: the coroutine used to wait between attempts (inject in tests).
    """

    def __init__(self, api_key: str | APIKey, *, max_connections: int = constants.DEFAULT_MAX_CONNECTIONS,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep, **options: Any) -> None:
        self._core = ClientCore(api_key, **options)
        self._sleep = sleep
        self._http = httpx.AsyncClient(transport=transport, **http_options(max_connections))

    def __repr__(self) -> str:
        return repr(self._core)

    async def __aenter__(self) -> AsyncGLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, *, deadline: float | None = None, raw: bool = False,
                      **kwargs: Any) -> Any:
        """Send with retries and return the parsed JSON body or bytes (see :meth:`GLMClient.request`)."""
        return (await self._request(method, path, deadline, kwargs, raw))[0]

    async def chat_completion(self, model: str, messages: Any, *, deadline: float | None = None,
                              **params: Any) -> ChatCompletion:
        """Create a chat completion; see :func:`~airflow_provider_glm.models.build_chat_request`."""
        body = self._core.chat_body(model, messages, params, stream=False)
        payload, info = await self._request("POST", "chat/completions", deadline, {"json": body})
        completion = self._core.parse_completion(payload, body.get("request_id"))
        completion._call_info = info
        return completion

    async def stream_chat_completion(self, model: str, messages: Any, *, deadline: float | None = None,
                                     **params: Any) -> AsyncIterator[ChatCompletionChunk]:
        """Stream a chat completion as typed chunks; retries happen only before the first byte."""
        body = self._core.chat_body(model, messages, params, stream=True)
        request_id = body.get("request_id")
        attempts = Attempts(self._core, deadline)
        while True:
            attempts.count += 1
            attempt_deadline = self._core.attempt_deadline(deadline)
            request = self._core.build(self._http, "POST", "chat/completions", attempt_deadline, json=body)
            try:
                response = await self._http.send(request, stream=True)
                if response.status_code == 200:
                    break
                try:
                    content = await self._read(response, attempt_deadline, request_id)
                finally:
                    await response.aclose()
                self._core.check_status(response, content, request_id)
                raise GLMInvalidResponseError(f"unexpected HTTP {response.status_code} for a stream")
            except httpx.HTTPError as exc:
                error = self._core.transport_error(exc, request_id)
            except GLMError as exc:
                error = exc
            await self._sleep(attempts.failed(error))
        decoder = SSEDecoder(request_id)
        try:
            received = 0
            async for data in response.aiter_bytes():
                received += len(data)
                self._core.check_progress(received, attempt_deadline, request_id)
                for item in decoder.feed(data):
                    if item is not DONE:
                        yield item
            for item in decoder.close():
                if item is not DONE:
                    yield item
        except httpx.HTTPError as exc:
            raise self._core.transport_error(exc, request_id) from None
        finally:
            await response.aclose()

    async def _read(self, response: httpx.Response, deadline: float, request_id: str | None,
                    limit: int | None = None) -> bytes:
        chunks: list[bytes] = []
        received = 0
        async for data in response.aiter_bytes():
            received += len(data)
            self._core.check_progress(received, deadline, request_id, limit)
            chunks.append(data)
        return b"".join(chunks)

    async def _request(self, method: str, path: str, deadline: float | None,
                       kwargs: dict[str, Any], raw: bool = False) -> tuple[Any, CallInfo]:
        attempts = Attempts(self._core, deadline)
        request_id = self._core.request_id_of(kwargs)
        error: GLMError
        while True:
            attempts.count += 1
            attempt_deadline = self._core.attempt_deadline(deadline)
            try:
                request = self._core.build(self._http, method, path, attempt_deadline, **kwargs)
                async with asyncio.timeout(max(0.0, attempt_deadline - self._core.clock())):
                    response = await self._http.send(request, stream=True)
                    try:
                        content = await self._read(response, attempt_deadline, request_id,
                                                   self._core.download_limit(raw))
                    finally:
                        await response.aclose()
                return self._core.parse_body(response, content, request_id, raw), attempts.info()
            except TimeoutError:
                error = GLMTimeoutError(f"no complete answer within {self._core.timeout:g} s",
                                        request_id=request_id)
            except httpx.HTTPError as exc:
                error = self._core.transport_error(exc, request_id)
            except GLMError as exc:
                error = exc
            await self._sleep(attempts.failed(error))
