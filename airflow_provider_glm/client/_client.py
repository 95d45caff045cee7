"""HTTP clients for the GLM API: :class:`AsyncGLMClient`, and :class:`GLMClient` for blocking code.

:class:`AsyncGLMClient` is the one implementation: every call, sync or async, chat or file or
batch, goes through its attempt loop, so all share one deadline, retry, billing and parsing policy
(:class:`~airflow_provider_glm.client._core.ClientCore`). :class:`GLMClient` runs an
:class:`AsyncGLMClient` on a private event loop thread and waits for the result. Requests are
httpx requests carried by aiohttp (:mod:`~airflow_provider_glm.client._transport`).

Every attempt has a total deadline (``timeout``), headers included; answers above
``max_response_bytes`` (decoded) are aborted while reading, and redirects are never followed, so the
key goes to the configured host only. Each attempt of a chat request carries a fresh ``request_id``,
and an answer that is not that request's (another ``request_id``, or a response id already received)
is refused.

Example::

    with GLMClient(api_key="...", base_url=ZAI_BASE_URL) as client:
        answer = client.chat_completion("glm-4.5", [{"role": "user", "content": "Hi"}])
        print(answer.content, answer.usage.total_tokens)
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from airflow_provider_glm import constants
from airflow_provider_glm._event_loop import run_blocking
from airflow_provider_glm.client._attempts import AttemptGate, Attempts, CallInfo
from airflow_provider_glm.client._auth import APIKey
from airflow_provider_glm.client._core import ClientCore, http_transport
from airflow_provider_glm.client._streaming import DONE, SSEDecoder
from airflow_provider_glm.client._transport import Progress, arrives_decoded, discard, progress_of
from airflow_provider_glm.client.models import ChatCompletion, ChatCompletionChunk, encode_body
from airflow_provider_glm.exceptions import GLMBudgetExceededError, GLMError, GLMInvalidResponseError

if TYPE_CHECKING:
    from airflow_provider_glm.client._calls import Call

__all__ = ["AsyncGLMClient", "CallInfo", "GLMClient", "new_request_id"]

T = TypeVar("T")
log = logging.getLogger(__name__)


def new_request_id() -> str:
    """A fresh ``request_id`` for one attempt (GLM takes 6 to 64 characters and refuses a repeat, 1231)."""
    return f"glm-{uuid.uuid4().hex}"


def _stamped(body: bytes, request_id: str) -> bytes:
    """``body`` (a JSON object without ``request_id``) with ``request_id`` as its first member."""
    return b'{"request_id":' + json.dumps(request_id).encode() + b"," + body.lstrip()[1:]


@dataclass
class _Attempt:
    """What the attempt loop knows of the attempt in flight: how far its request got, under which id."""

    progress: Progress | None = None
    request_id: str | None = None


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
    :param max_response_bytes: an answer larger than this, decoded, is aborted while reading.
    :param allow_insecure_http: accept ``http://`` to a host other than loopback.
    :param network: proxy and TLS settings (:class:`~airflow_provider_glm.client._network.NetworkOptions`).
    :param observer: told the outcome of every attempt (adaptive concurrency listens here).
    :param transport: an httpx transport instead of aiohttp (tests use ``httpx.MockTransport``).
    :param sleep: waits between attempts (inject in tests; a coroutine function or a plain function).
    """

    def __init__(self, api_key: str | APIKey, *, max_connections: int = constants.DEFAULT_MAX_CONNECTIONS,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep, **options: Any) -> None:
        self._core = ClientCore(api_key, **options)
        self._sleep = sleep
        self._transport = http_transport(self._core, max_connections, transport)
        self._closed = False

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

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` ran (its connections are closed)."""
        return self._closed

    async def aclose(self) -> None:
        self._closed = True
        await self._transport.aclose()

    async def request(self, method: str, path: str, *, deadline: float | None = None, raw: bool = False,
                      **kwargs: Any) -> Any:
        """Send with retries and return the parsed JSON body (or the bytes with ``raw=True``).

        :param deadline: a ``time.monotonic()`` instant no attempt or wait may pass.
        :param raw: return the body's bytes instead of parsing JSON (file downloads).
        :param kwargs: ``json``, ``content``, ``files``, ``data`` or ``params`` for httpx.
        """
        return (await self._request(method, path, deadline, kwargs, raw))[0]

    async def _request(self, method: str, path: str, deadline: float | None, kwargs: dict[str, Any],
                       raw: bool = False, billable: bool = False, resend_lost: bool = True,
                       stamp: bool = False) -> tuple[Any, CallInfo]:
        core = self._core

        def parse(response: httpx.Response, content: bytes, request_id: str | None) -> Any:
            return core.parse_body(response, content, request_id, raw)

        attempts = Attempts(core, deadline, billable=billable, resend_lost=resend_lost)
        return await self._send(method, path, attempts, kwargs, parse, raw=raw, stamp=stamp)

    async def call(self, call: Call[T], *, deadline: float | None = None) -> T:
        """Send one described operation (files, batches, async chat) and parse its answer."""
        return (await self.call_with_info(call, deadline=deadline))[0]

    async def call_with_info(self, call: Call[T], *, deadline: float | None = None) -> tuple[T, CallInfo]:
        """:meth:`call`, with how the call went (attempts, possibly billed ones)."""
        body, info = await self._request(call.method, call.path, deadline, dict(call.kwargs), call.raw,
                                         call.billable, call.resend_lost, stamp=call.billable)
        return call.parse(body), info

    async def chat_completion(self, model: str, messages: Any, *, deadline: float | None = None,
                              **params: Any) -> ChatCompletion:
        """Create a chat completion; see :func:`~airflow_provider_glm.client.models.build_chat_request`."""
        body = self._core.chat_body(model, messages, params, stream=False)
        return await self.send_chat(encode_body(body), request_id=body.get("request_id"), deadline=deadline)

    async def send_chat(self, body: bytes, *, request_id: str | None = None, deadline: float | None = None,
                        gate: AttemptGate | None = None) -> ChatCompletion:
        """Send an already validated chat request body (JSON bytes) and parse the answer.

        The row operators build and validate each row's body once, before any call; this sends it
        as is, with a fresh ``request_id`` per attempt (unless the body names its own, ``request_id``).
        The answer's :attr:`~airflow_provider_glm.client.models.ChatCompletion.call_info` says how
        many attempts it took and how many of them may have been billed.

        :param gate: asked before every attempt (first sends, retries and resends alike) and told how
            each ended; it refuses an attempt with
            :class:`~airflow_provider_glm.exceptions.GLMBudgetExceededError`.
        """
        core = self._core

        def parse(response: httpx.Response, content: bytes, sent_request_id: str | None) -> ChatCompletion:
            return core.parse_completion_bytes(response, content, sent_request_id)

        attempts = Attempts(core, deadline, billable=True)
        completion, info = await self._send("POST", "chat/completions", attempts, {"content": body}, parse,
                                            request_id=request_id, stamp=True, gate=gate)
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
            request = self._core.build("POST", "chat/completions", attempt_deadline, json=body)
            try:
                async with asyncio.timeout(max(0.0, attempt_deadline - self._core.clock())):
                    response = await self._exchange(request)
                if response.status_code == 200:
                    break
                try:
                    content = await self._read(response, attempt_deadline, request_id)
                finally:
                    await response.aclose()
                self._core.check_status(response, content, request_id)
                raise GLMInvalidResponseError(f"unexpected HTTP {response.status_code} for a stream")
            except TimeoutError:
                error: GLMError = self._core.total_timeout(request_id, progress_of(request))
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

    async def _exchange(self, request: httpx.Request) -> httpx.Response:
        """Hand one request to the transport; one DEBUG line says where it went and how (never headers)."""
        try:
            response = await self._transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            log.debug("GLM %s %s failed: %s", request.method, request.url, type(exc).__name__)
            raise
        log.debug("GLM %s %s -> HTTP %d", request.method, request.url, response.status_code)
        return response

    async def _read(self, response: httpx.Response, deadline: float, request_id: str | None,
                    limit: int | None = None) -> bytes:
        chunks: list[bytes] = []
        received = 0
        # aiohttp's answers arrive decoded; another transport's (tests') go through httpx's decoders
        reader = response.aiter_raw() if arrives_decoded(response) else response.aiter_bytes()
        async for data in reader:
            received += len(data)
            self._core.check_progress(received, deadline, request_id, limit)
            chunks.append(data)
        return b"".join(chunks)

    async def _send(self, method: str, path: str, attempts: Attempts, kwargs: dict[str, Any],
                    parse: Callable[[httpx.Response, bytes, str | None], T], *, request_id: str | None = None,
                    raw: bool = False, stamp: bool = False, gate: AttemptGate | None = None) -> tuple[T, CallInfo]:
        """One call through the attempt loop: build, send, read (capped), parse, and prove the answer.

        :param stamp: give each attempt a fresh ``request_id`` (unless ``request_id`` is given: it is in the
            body already) and refuse an answer that is not that request's.
        """
        core = self._core
        if request_id is None:
            request_id = core.request_id_of(kwargs)
        fresh = stamp and request_id is None and isinstance(kwargs.get("content"), bytes)

        async def exchange(attempt_deadline: float, attempt: _Attempt) -> T:
            args = kwargs
            attempt.request_id = request_id
            if fresh:
                attempt.request_id = new_request_id()
                args = {**kwargs, "content": _stamped(kwargs["content"], attempt.request_id)}
            request = core.build(method, path, attempt_deadline, **args)
            attempt.progress = progress_of(request)
            response = await self._exchange(request)
            try:
                content = await self._read(response, attempt_deadline, attempt.request_id, core.download_limit(raw))
                result = parse(response, content, attempt.request_id)
                if stamp:
                    core.check_answer(result, attempt.request_id)
            except (GLMInvalidResponseError, httpx.HTTPError):
                discard(response)  # an answer not read whole, or not trusted, leaves no bytes to misread
                raise
            finally:
                await response.aclose()
            return result

        return await self._attempts(attempts, exchange, gate)

    async def _attempts(self, attempts: Attempts, exchange: Callable[[float, _Attempt], Awaitable[T]],
                        gate: AttemptGate | None = None) -> tuple[T, CallInfo]:
        """The attempt loop every call shares: admit, send and read under the total deadline, parse, retry."""
        error: GLMError
        while True:
            if gate is not None:
                try:
                    await gate.admit(attempts.count + 1)
                except GLMBudgetExceededError as refused:
                    refused.call_info = attempts.info()  # the attempts before may have been billed
                    raise
            attempt_deadline = attempts.begin()
            attempt = _Attempt()
            try:
                async with asyncio.timeout(max(0.0, attempt_deadline - self._core.clock())):
                    result = await exchange(attempt_deadline, attempt)
            except TimeoutError:
                error = self._core.total_timeout(attempt.request_id, attempt.progress)
            except httpx.HTTPError as exc:
                error = self._core.transport_error(exc, attempt.request_id)
            except GLMError as exc:
                error = exc
            else:
                if gate is not None:
                    await gate.settle(result, None)
                return result, attempts.succeeded()
            if gate is not None:
                await gate.settle(None, error)
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
