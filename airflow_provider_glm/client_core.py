"""What the sync and async GLM clients share: request building, deadlines, parsing, retry decisions.

:class:`ClientCore` holds everything about a call except sending bytes and sleeping, so
:class:`~airflow_provider_glm.client.GLMClient` and
:class:`~airflow_provider_glm.client.AsyncGLMClient` apply one policy: the same headers and
timeouts, the same error mapping (:mod:`airflow_provider_glm.exceptions`) and the same retry
decisions (:class:`~airflow_provider_glm.retry.RetryPolicy`).
"""

from __future__ import annotations

import functools
import json
import ssl
import time
from collections.abc import Callable, Mapping
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
from airflow_provider_glm.models import ChatCompletion, build_chat_request
from airflow_provider_glm.retry import RetryPolicy, parse_retry_after

__all__ = ["Attempts", "CallInfo", "ClientCore", "http_options"]


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


class ClientCore:
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


class Attempts:
    """Bookkeeping for one call's attempts, the same in both clients."""

    def __init__(self, core: ClientCore, deadline: float | None) -> None:
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


def http_options(max_connections: int) -> dict[str, Any]:
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
