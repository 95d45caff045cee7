"""HTTP clients for the GLM API over httpx: :class:`GLMClient` (sync) and :class:`AsyncGLMClient`.

Both share :class:`_ClientCore`, which builds requests, decides retries (through
:class:`~airflow_provider_glm.retry.RetryPolicy`) and parses answers; the two classes differ only
in how they send bytes and sleep. Every attempt has a total deadline (``timeout``) that a
trickling server cannot stretch, answers above ``max_response_bytes`` are aborted while reading,
and redirects are never followed, so the key goes to the configured host only.

Example::

    with GLMClient(api_key="...", base_url=ZAI_BASE_URL) as client:
        answer = client.chat_completion("glm-4.5", [{"role": "user", "content": "Hi"}])
        print(answer.content, answer.usage.total_tokens)
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError

from airflow_provider_glm import constants
from airflow_provider_glm.auth import APIKey, AuthMode, Credentials
from airflow_provider_glm.exceptions import (
    GLMConnectionError,
    GLMError,
    GLMInvalidResponseError,
    GLMTimeoutError,
    error_from_response,
)
from airflow_provider_glm.models import ChatCompletion, ChatCompletionChunk, build_chat_request
from airflow_provider_glm.retry import RetryPolicy, parse_retry_after
from airflow_provider_glm.streaming import DONE, SSEDecoder, StreamAssembler

__all__ = ["AsyncGLMClient", "CallInfo", "GLMClient"]


@dataclass(frozen=True)
class CallInfo:
    """How a successful call went: attempts made and time spent, for the usage ledger.

    :param attempts: attempts in total, the successful one included.
    :param unknown_billing_attempts: failed attempts that broke after the request was sent, so the
        server may have billed them (a dropped connection, a read timeout).
    :param latency_ms: milliseconds from the first attempt to the parsed answer.
    """

    attempts: int
    unknown_billing_attempts: int
    latency_ms: int


class _ClientCore:
    """Request building, retry decisions and parsing, shared by the sync and async clients."""

    def __init__(
        self,
        api_key: str | APIKey,
        *,
        base_url: str = constants.DEFAULT_BASE_URL,
        auth: AuthMode = "bearer",
        timeout: float = constants.DEFAULT_TIMEOUT,
        connect_timeout: float = constants.DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = constants.DEFAULT_READ_TIMEOUT,
        max_retries: int = constants.DEFAULT_MAX_RETRIES,
        max_response_bytes: int = constants.DEFAULT_MAX_RESPONSE_BYTES,
        retry_policy: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        key = api_key if isinstance(api_key, APIKey) else APIKey(api_key)
        self.credentials = Credentials(key, auth)
        self.base_url = base_url.rstrip("/")
        if urlsplit(self.base_url).scheme not in ("http", "https"):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value}")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_response_bytes = max_response_bytes
        self.retry = retry_policy or RetryPolicy(max_retries=max_retries)
        self.clock = clock
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if urlsplit(self.base_url).hostname in ("api.z.ai",):
            self.headers["Accept-Language"] = "en-US,en"
        self.headers.update(headers or {})

    def __repr__(self) -> str:
        return f"<GLM client base_url={self.base_url!r} auth={self.credentials.mode!r}>"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def chat_body(self, model: str, messages: Any, params: Mapping[str, Any], *, stream: bool) -> dict[str, Any]:
        """Validate and serialize a chat request (raises ``ValueError`` before any I/O)."""
        params = {k: v for k, v in params.items() if k != "stream"}
        return build_chat_request(model, messages, stream=stream or None, **params).to_body()

    def build(self, client: httpx.Client | httpx.AsyncClient, method: str, path: str, deadline: float,
              **kwargs: Any) -> httpx.Request:
        """An httpx request with auth and timeouts no longer than the time left."""
        left = max(0.001, deadline - self.clock())
        timeout = httpx.Timeout(
            connect=min(self.connect_timeout, left), read=min(self.read_timeout, left), write=left, pool=left
        )
        headers = dict(self.headers, Authorization=self.credentials.authorization())
        if "files" in kwargs:
            del headers["Content-Type"]
        return client.build_request(method, self.url(path), headers=headers, timeout=timeout, **kwargs)

    def attempt_deadline(self, deadline: float | None) -> float:
        end = self.clock() + self.timeout
        return end if deadline is None else min(end, deadline)

    def check_progress(self, received: int, deadline: float, request_id: str | None,
                       limit: int | None = None) -> None:
        """Abort a read that passed its deadline or its size cap."""
        limit = self.max_response_bytes if limit is None else limit
        if received > limit:
            raise GLMInvalidResponseError(
                (f"the answer exceeded max_response_bytes={limit}; aborted" if limit == self.max_response_bytes
                 else f"the download exceeded its cap of {limit} bytes; aborted"),
                request_id=request_id,
            )
        if self.clock() > deadline:
            raise GLMTimeoutError(f"no complete answer within {self.timeout:g} s", request_id=request_id)

    def download_limit(self, raw: bool) -> int | None:
        """File downloads (raw bodies) may be larger than answers: batch output files reach 100s of MB."""
        return max(self.max_response_bytes, constants.MAX_DOWNLOAD_BYTES) if raw else None

    def check_status(self, response: httpx.Response, content: bytes, request_id: str | None) -> None:
        """Raise the matching ``GLMError`` for a redirect or a non-2xx answer."""
        status = response.status_code
        if 300 <= status < 400:
            target = urlsplit(response.headers.get("location", "")).hostname or "an unknown host"
            raise GLMInvalidResponseError(
                f"GLM answered a redirect to {target}; redirects are not followed so the key stays with "
                f"{urlsplit(self.base_url).hostname}",
                status_code=status,
                request_id=request_id,
            )
        if status >= 400:
            raise error_from_response(
                status, content, request_id=request_id,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )

    def parse_body(self, response: httpx.Response, content: bytes, request_id: str | None, raw: bool) -> Any:
        """The answer's bytes (``raw``) or parsed JSON, after raising for an error status."""
        self.check_status(response, content, request_id)
        if raw:
            return content
        try:
            return json.loads(content)
        except ValueError:
            kind = response.headers.get("content-type", "unknown content type")
            raise GLMInvalidResponseError(
                f"GLM answered HTTP {response.status_code} with a body that is not JSON ({kind})",
                status_code=response.status_code,
                request_id=request_id,
            ) from None

    def parse_completion(self, body: Any, request_id: str | None) -> ChatCompletion:
        if not isinstance(body, dict) or not body.get("choices"):
            raise GLMInvalidResponseError(
                "GLM answered 200 without choices", status_code=200, request_id=request_id
            )
        try:
            return ChatCompletion.model_validate(body)
        except ValidationError as exc:
            raise GLMInvalidResponseError(
                f"GLM answered 200 with a malformed completion ({exc.error_count()} field error(s))",
                status_code=200,
                request_id=request_id,
            ) from None

    def transport_error(self, exc: httpx.HTTPError, request_id: str | None) -> GLMError:
        """Map an httpx failure to the error tree (the message never carries headers)."""
        error: GLMError
        if isinstance(exc, httpx.TimeoutException):
            error = GLMTimeoutError(f"GLM call timed out ({type(exc).__name__})", request_id=request_id)
        else:
            error = GLMConnectionError(f"GLM connection failed ({type(exc).__name__}: {exc})", request_id=request_id)
        error.request_sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        return error

    def retry_delay(self, error: GLMError, attempt: int, deadline: float | None) -> float | None:
        """Seconds to wait before retrying, ``None`` to give up; a JWT expiry (1003) re-signs once."""
        if error.code == "1003" and attempt == 1 and self.credentials.invalidate():
            return 0.0
        remaining = None if deadline is None else deadline - self.clock()
        return self.retry.delay(error, attempt, remaining)

    @staticmethod
    def maybe_billed(error: GLMError) -> bool:
        """Whether a failed attempt may still have been billed: it broke after the request went out."""
        if isinstance(error, (GLMConnectionError, GLMTimeoutError)):
            return error.status_code is None and error.request_sent
        return isinstance(error, GLMInvalidResponseError) and error.status_code == 200

    @staticmethod
    def request_id_of(kwargs: Mapping[str, Any]) -> str | None:
        body = kwargs.get("json")
        return body.get("request_id") if isinstance(body, dict) else None


class _Attempts:
    """Bookkeeping for one call's attempts, the same in both clients."""

    def __init__(self, core: _ClientCore, deadline: float | None) -> None:
        self.core = core
        self.deadline = deadline
        self.started = core.clock()
        self.count = 0
        self.unknown_billing = 0

    def failed(self, error: GLMError) -> float:
        """Record a failed attempt; return the wait before the next one or re-raise ``error``."""
        self.unknown_billing += self.core.maybe_billed(error)
        delay = self.core.retry_delay(error, self.count, self.deadline)
        if delay is None:
            raise error
        return delay

    def info(self) -> CallInfo:
        return CallInfo(self.count, self.unknown_billing, int((self.core.clock() - self.started) * 1000))


def _http_options(max_connections: int) -> dict[str, Any]:
    """Options every httpx client gets: pool size, no redirects, no proxy or CA settings from the
    environment, and one shared TLS context (loading the CA bundle costs ~50 ms per client)."""
    return {
        "limits": httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        "follow_redirects": False,
        "trust_env": False,
        "verify": _tls_context(),
    }


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


class GLMClient:
    """Synchronous GLM client. Parameters are those of :class:`AsyncGLMClient`."""

    def __init__(self, api_key: str | APIKey, *, max_connections: int = constants.DEFAULT_MAX_CONNECTIONS,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep, **options: Any) -> None:
        self._core = _ClientCore(api_key, **options)
        self._sleep = sleep
        self._http = httpx.Client(transport=transport, **_http_options(max_connections))

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
        attempts = _Attempts(self._core, deadline)
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
        attempts = _Attempts(self._core, deadline)
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
        self._core = _ClientCore(api_key, **options)
        self._sleep = sleep
        self._http = httpx.AsyncClient(transport=transport, **_http_options(max_connections))

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
        attempts = _Attempts(self._core, deadline)
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
        attempts = _Attempts(self._core, deadline)
        request_id = self._core.request_id_of(kwargs)
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
