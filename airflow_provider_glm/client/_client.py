"""HTTP clients for the GLM API over httpx: :class:`AsyncGLMClient`, and :class:`GLMClient` for blocking code.

:class:`AsyncGLMClient` is the one implementation: every call, sync or async, chat or file or
batch, goes through its attempt loop, so all share one deadline, retry, billing and parsing policy
(:class:`~airflow_provider_glm.client._core.ClientCore`). :class:`GLMClient` runs an
:class:`AsyncGLMClient` on a private event loop thread and waits for the result.

Every attempt has a total deadline (``timeout``), headers included; answers above
``max_response_bytes`` are aborted while reading, and redirects are never followed, so the key
goes to the configured host only.

Example::

    with GLMClient(api_key="...", base_url=ZAI_BASE_URL) as client:
        answer = client.chat_completion("glm-4.5", [{"role": "user", "content": "Hi"}])
        print(answer.content, answer.usage.total_tokens)
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from airflow_provider_glm import constants
from airflow_provider_glm._event_loop import run_blocking
from airflow_provider_glm.client._auth import APIKey
from airflow_provider_glm.client._core import Attempts, CallInfo, ClientCore, http_options, tls_context
from airflow_provider_glm.client._http1 import AnswerTooLarge
from airflow_provider_glm.client._http_pool import HTTP1Pool
from airflow_provider_glm.client._streaming import DONE, SSEDecoder
from airflow_provider_glm.client.models import ChatCompletion, ChatCompletionChunk, encode_body
from airflow_provider_glm.exceptions import GLMError, GLMInvalidResponseError

if TYPE_CHECKING:
    from airflow_provider_glm.client._calls import Call

__all__ = ["AsyncGLMClient", "CallInfo", "GLMClient"]

T = TypeVar("T")


class AsyncGLMClient:
    """Asynchronous GLM client, for many rows at once inside one task or a trigger.

    :param api_key: the API key (kept out of every repr, log and error).
    :param base_url: API root, default BigModel; Z.ai and coding-plan bases work the same.
    :param auth: ``bearer`` (default) or ``jwt`` for ``id.secret`` keys.
    :param timeout: total seconds for one attempt, first byte sent to last byte read.
    :param connect_timeout: seconds to connect.
    :param read_timeout: seconds to wait for the next byte.
    :param max_retries: retries of a retryable failure (see ``docs/errors.md``).
    :param max_billed_retries: resends of a request that was lost after it was sent (default 1).
    :param max_connections: connection pool size.
    :param max_response_bytes: an answer larger than this is aborted while reading.
    :param allow_insecure_http: accept ``http://`` to a host other than loopback.
    :param observer: told the outcome of every attempt (adaptive concurrency listens here).
    :param transport: an httpx transport (tests use ``httpx.MockTransport``).
    :param sleep: waits between attempts (inject in tests; a coroutine function or a plain function).
    """

    def __init__(self, api_key: str | APIKey, *, max_connections: int = constants.DEFAULT_MAX_CONNECTIONS,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep, **options: Any) -> None:
        self._core = ClientCore(api_key, **options)
        self._sleep = sleep
        self._http = httpx.AsyncClient(**http_options(max_connections, transport))
        # chat calls, one per row, go over the lean pool; a transport given by the caller (tests) takes all
        self._pool: HTTP1Pool | None = None
        if transport is None:
            self._pool = HTTP1Pool(self._core.base_url, tls_context(), max_connections, self._core.headers)

    def __repr__(self) -> str:
        return repr(self._core)

    @property
    def core(self) -> ClientCore:
        """The call policy (base URL, timeouts, retries) this client applies."""
        return self._core

    async def __aenter__(self) -> AsyncGLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        await self._http.aclose()

    async def request(self, method: str, path: str, *, deadline: float | None = None, raw: bool = False,
                      **kwargs: Any) -> Any:
        """Send with retries and return the parsed JSON body (or the bytes with ``raw=True``).

        :param deadline: a ``time.monotonic()`` instant no attempt or wait may pass.
        :param raw: return the body's bytes instead of parsing JSON (file downloads).
        :param kwargs: ``json``, ``content``, ``files``, ``data`` or ``params`` for httpx.
        """
        return (await self._request(method, path, deadline, kwargs, raw))[0]

    async def _request(self, method: str, path: str, deadline: float | None, kwargs: dict[str, Any],
                       raw: bool = False, billable: bool = False, resend_lost: bool = True) -> tuple[Any, CallInfo]:
        request_id = self._core.request_id_of(kwargs)

        def parse(response: httpx.Response, content: bytes) -> Any:
            return self._core.parse_body(response, content, request_id, raw)

        attempts = Attempts(self._core, deadline, billable=billable, resend_lost=resend_lost)
        return await self._send(method, path, attempts, kwargs, parse, request_id, raw)

    async def call(self, call: Call[T], *, deadline: float | None = None) -> T:
        """Send one described operation (files, batches, async chat) and parse its answer."""
        return (await self.call_with_info(call, deadline=deadline))[0]

    async def call_with_info(self, call: Call[T], *, deadline: float | None = None) -> tuple[T, CallInfo]:
        """:meth:`call`, with how the call went (attempts, possibly billed ones)."""
        body, info = await self._request(call.method, call.path, deadline, dict(call.kwargs), call.raw,
                                         call.billable, call.resend_lost)
        return call.parse(body), info

    async def chat_completion(self, model: str, messages: Any, *, deadline: float | None = None,
                              **params: Any) -> ChatCompletion:
        """Create a chat completion; see :func:`~airflow_provider_glm.client.models.build_chat_request`."""
        body = self._core.chat_body(model, messages, params, stream=False)
        return await self.send_chat(encode_body(body), request_id=body.get("request_id"), deadline=deadline)

    async def send_chat(self, body: bytes, *, request_id: str | None = None,
                        deadline: float | None = None) -> ChatCompletion:
        """Send an already validated chat request body (JSON bytes) and parse the answer.

        The row operators build and validate each row's body once, before any call; this sends it
        as is. The answer's :attr:`~airflow_provider_glm.client.models.ChatCompletion.call_info` says how
        many attempts it took and how many of them may have been billed.
        """
        core, pool = self._core, self._pool

        def parse(response: Any, content: bytes) -> ChatCompletion:
            return core.parse_completion_bytes(response, content, request_id)

        attempts = Attempts(core, deadline, billable=True)
        if pool is None:
            completion, info = await self._send("POST", "chat/completions", attempts, {"content": body}, parse,
                                                request_id)
        else:
            async def exchange(attempt_deadline: float) -> tuple[Any, bytes]:
                left = max(0.001, attempt_deadline - core.clock())
                try:
                    return await pool.post("chat/completions", body, authorization=core.credentials.authorization(),
                                           connect_timeout=min(core.connect_timeout, left),
                                           read_timeout=min(core.read_timeout, left), limit=core.max_response_bytes)
                except AnswerTooLarge as exc:
                    core.check_progress(exc.received, attempt_deadline, request_id)
                    raise GLMInvalidResponseError("the answer was too large", request_id=request_id) from None

            completion, info = await self._attempts(attempts, exchange, parse, request_id)
        completion._call_info = info
        return completion

    async def stream_chat_completion(self, model: str, messages: Any, *, deadline: float | None = None,
                                     **params: Any) -> AsyncIterator[ChatCompletionChunk]:
        """Stream a chat completion as typed chunks; retries happen only before the first byte."""
        body = self._core.chat_body(model, messages, params, stream=True)
        request_id = body.get("request_id")
        attempts = Attempts(self._core, deadline, billable=True)
        while True:
            attempt_deadline = attempts.begin()
            request = self._core.build(self._http, "POST", "chat/completions", attempt_deadline, json=body)
            try:
                async with asyncio.timeout(max(0.0, attempt_deadline - self._core.clock())):
                    response = await self._http.send(request, stream=True)
                if response.status_code == 200:
                    break
                try:
                    content = await self._read(response, attempt_deadline, request_id)
                finally:
                    await response.aclose()
                self._core.check_status(response, content, request_id)
                raise GLMInvalidResponseError(f"unexpected HTTP {response.status_code} for a stream")
            except TimeoutError:
                error: GLMError = self._core.total_timeout(request_id)
            except httpx.HTTPError as exc:
                error = self._core.transport_error(exc, request_id)
            except GLMError as exc:
                error = exc
            await self._wait(attempts.failed(error))
        attempts.succeeded()
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

    async def _send(self, method: str, path: str, attempts: Attempts, kwargs: dict[str, Any],
                    parse: Callable[[httpx.Response, bytes], T], request_id: str | None,
                    raw: bool = False) -> tuple[T, CallInfo]:
        """A call through httpx (files, batches, async chat, any transport a test gives)."""

        async def exchange(attempt_deadline: float) -> tuple[httpx.Response, bytes]:
            request = self._core.build(self._http, method, path, attempt_deadline, **kwargs)
            response = await self._http.send(request, stream=True)
            try:
                content = await self._read(response, attempt_deadline, request_id, self._core.download_limit(raw))
            finally:
                await response.aclose()
            return response, content

        return await self._attempts(attempts, exchange, parse, request_id)

    async def _attempts(self, attempts: Attempts, exchange: Callable[[float], Awaitable[tuple[Any, bytes]]],
                        parse: Callable[[Any, bytes], T], request_id: str | None) -> tuple[T, CallInfo]:
        """The attempt loop every call shares: send and read under the total deadline, parse, retry."""
        error: GLMError
        while True:
            attempt_deadline = attempts.begin()
            try:
                async with asyncio.timeout(max(0.0, attempt_deadline - self._core.clock())):
                    response, content = await exchange(attempt_deadline)
                return parse(response, content), attempts.succeeded()
            except TimeoutError:
                error = self._core.total_timeout(request_id)
            except httpx.HTTPError as exc:
                error = self._core.transport_error(exc, request_id)
            except GLMError as exc:
                error = exc
            await self._wait(attempts.failed(error))

    async def _wait(self, seconds: float) -> None:
        waited = self._sleep(seconds)
        if inspect.isawaitable(waited):
            await waited


class GLMClient:
    """Blocking GLM client: an :class:`AsyncGLMClient` run on a private event loop thread.

    Takes the parameters of :class:`AsyncGLMClient`; ``close()`` (or ``with``) releases its connections.
    """

    def __init__(self, api_key: str | APIKey, **options: Any) -> None:
        self._client = AsyncGLMClient(api_key, **options)

    def __repr__(self) -> str:
        return repr(self._client)

    @property
    def core(self) -> ClientCore:
        return self._client.core

    def __enter__(self) -> GLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        run_blocking(self._client.aclose())

    def request(self, method: str, path: str, *, deadline: float | None = None, raw: bool = False,
                **kwargs: Any) -> Any:
        """See :meth:`AsyncGLMClient.request`."""
        return self._run(self._client.request(method, path, deadline=deadline, raw=raw, **kwargs))

    def call(self, call: Call[T], *, deadline: float | None = None) -> T:
        """See :meth:`AsyncGLMClient.call`."""
        return self._run(self._client.call(call, deadline=deadline))

    def chat_completion(self, model: str, messages: Any, *, deadline: float | None = None,
                        **params: Any) -> ChatCompletion:
        """See :meth:`AsyncGLMClient.chat_completion`."""
        return self._run(self._client.chat_completion(model, messages, deadline=deadline, **params))

    def stream_chat_completion(self, model: str, messages: Any, *, deadline: float | None = None,
                               **params: Any) -> Iterator[ChatCompletionChunk]:
        """See :meth:`AsyncGLMClient.stream_chat_completion`; chunks arrive as the server sends them."""
        stream = self._client.stream_chat_completion(model, messages, deadline=deadline, **params)
        assert isinstance(stream, AsyncGenerator)
        try:
            while True:
                try:
                    yield self._run(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(stream.aclose())

    @staticmethod
    def _run(awaitable: Awaitable[T]) -> T:
        return run_blocking(awaitable)
