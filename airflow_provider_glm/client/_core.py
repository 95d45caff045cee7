"""What every GLM call shares, apart from sending bytes: request building, deadlines, parsing, retry decisions.

:class:`ClientCore` holds the policy of a call (headers, timeouts, the error mapping of
:mod:`airflow_provider_glm.exceptions`, the retry decisions of
:class:`~airflow_provider_glm.client.retry.RetryPolicy`, the proof that an answer is its request's);
:mod:`~airflow_provider_glm.client._attempts` keeps the books of one call's attempts.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError

from airflow_provider_glm import constants
from airflow_provider_glm.client._auth import APIKey, AuthMode, Credentials
from airflow_provider_glm.client._network import NetworkOptions, proxy_for, tls_context
from airflow_provider_glm.client._transport import AiohttpTransport, Progress
from airflow_provider_glm.client._urls import check_base_url, endpoint_of
from airflow_provider_glm.client.models import ChatCompletion, build_chat_request
from airflow_provider_glm.client.retry import RetryPolicy, parse_retry_after
from airflow_provider_glm.exceptions import (
    GLMConnectionError,
    GLMError,
    GLMInvalidResponseError,
    GLMTimeoutError,
    error_from_response,
)

__all__ = ["AttemptObserver", "ClientCore", "http_transport"]

AttemptObserver = Callable[[str, "GLMError | None"], None]
"""Told after every attempt: ``("ok", None)``, or ``(kind, error)`` with kind ``rate_limited``,
``timeout``, ``unreachable`` (the request never left), ``queued`` (it waited for a pool slot and never
left: nothing learnt about the endpoint), ``lost`` (sent, answer lost) or ``error``."""


RECENT_ANSWERS = 65_536
"""Response ids a client remembers: an answer whose id it already accepted is another request's copy."""

class ClientCore:
    """Request building, retry decisions and parsing: the policy of every call, whatever sends it."""

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
        max_billed_retries: int = constants.DEFAULT_MAX_BILLED_RETRIES,
        max_response_bytes: int = constants.DEFAULT_MAX_RESPONSE_BYTES,
        retry_policy: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        allow_insecure_http: bool = False,
        network: NetworkOptions | None = None,
        observer: AttemptObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        key = api_key if isinstance(api_key, APIKey) else APIKey(api_key)
        self.credentials = Credentials(key, auth)
        self.base_url = check_base_url(base_url, allow_insecure_http=allow_insecure_http)
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value}")
        if max_billed_retries < 0:
            raise ValueError(f"max_billed_retries must be >= 0, got {max_billed_retries}")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_response_bytes = max_response_bytes
        self.max_billed_retries = max_billed_retries
        self.retry = retry_policy or RetryPolicy(max_retries=max_retries)
        self.observer = observer
        self.clock = clock
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if urlsplit(self.base_url).hostname in ("api.z.ai",):
            self.headers["Accept-Language"] = "en-US,en"
        self.headers.update(headers or {})
        for header, text in (*self.headers.items(), ("API key", key.reveal())):
            if any(c in header + text for c in "\r\n\0") or not (header + text).isascii():
                raise ValueError(f"the {header} header holds a line break, NUL or non-ASCII character; remove it "
                                 "from the connection")
        self._urls: dict[str, httpx.URL] = {}
        self.network = network or NetworkOptions()
        self.proxy = proxy_for(self.base_url, self.network)
        """The proxy every call goes through (``None``: direct), resolved once from the options and environment."""
        self._answers: OrderedDict[str, None] = OrderedDict()

    def __repr__(self) -> str:
        return f"<GLM client base_url={self.base_url!r} auth={self.credentials.mode!r}>"

    @property
    def endpoint(self) -> str:
        """``host:port`` of the base URL, for messages about reaching it."""
        return endpoint_of(self.base_url)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def chat_body(self, model: str, messages: Any, params: Mapping[str, Any], *, stream: bool) -> dict[str, Any]:
        """Validate and serialize a chat request (raises ``ValueError`` before any I/O)."""
        params = {k: v for k, v in params.items() if k != "stream"}
        return build_chat_request(model, messages, stream=stream or None, **params).to_body()

    def build(self, method: str, path: str, deadline: float, **kwargs: Any) -> httpx.Request:
        """An httpx request with auth and timeouts no longer than the time left, on a URL parsed once per path."""
        left = max(0.001, deadline - self.clock())
        headers = dict(self.headers, Authorization=self.credentials.authorization())
        if "files" in kwargs:
            del headers["Content-Type"]
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.url(path))
        request = httpx.Request(method, url, headers=headers, **kwargs)
        request.extensions["timeout"] = {"connect": min(self.connect_timeout, left),
                                         "read": min(self.read_timeout, left), "write": left, "pool": left}
        return request

    def attempt_deadline(self, deadline: float | None) -> float:
        end = self.clock() + self.timeout
        return end if deadline is None else min(end, deadline)

    def check_progress(self, received: int, deadline: float, request_id: str | None,
                       limit: int | None = None) -> None:
        """Abort a read that passed its deadline or its size cap."""
        limit = self.max_response_bytes if limit is None else limit
        if received > limit:
            raise GLMInvalidResponseError(
                (f"the answer exceeded max_response_bytes={limit} (decoded); aborted, and the call may have been "
                 "billed" if limit == self.max_response_bytes
                 else f"the download exceeded its cap of {limit} bytes (decoded); aborted"),
                status_code=200,
                request_id=request_id,
            )
        if self.clock() > deadline:
            raise self.total_timeout(request_id)

    def total_timeout(self, request_id: str | None, progress: Progress | None = None) -> GLMTimeoutError:
        """The attempt's deadline passed; where the request was then decides whether it may have been billed."""
        stage = progress.stage if progress is not None else None
        if stage == "queued":
            error = GLMTimeoutError(f"no free connection within {self.timeout:g} s (the request was not sent)",
                                    request_id=request_id)
            error.request_sent, error.pool_wait = False, True
        elif progress is not None and not progress.sent:
            error = GLMTimeoutError(f"could not connect to {self.endpoint} within {self.timeout:g} s",
                                    request_id=request_id)
            error.request_sent = False
        else:
            error = GLMTimeoutError(f"no complete answer within {self.timeout:g} s", request_id=request_id)
        return error

    def check_answer(self, answer: Any, sent_request_id: str | None) -> None:
        """Refuse an answer that is not this request's: a ``request_id`` other than the one sent, or a
        response ``id`` this client already accepted (a server or proxy that repeated an earlier answer,
        read on a reused connection as the next request's). The request may have been billed; the caller
        drops the connection and resends within ``max_billed_retries``."""
        fields = answer if isinstance(answer, Mapping) else vars(answer) if hasattr(answer, "__dict__") else {}
        answered = fields.get("request_id")
        if sent_request_id is not None and answered and answered != sent_request_id:
            raise self._not_ours(f"the answer carries request_id {answered!r}, not this request's", sent_request_id)
        response_id = fields.get("id")
        if not isinstance(response_id, str) or not response_id:
            return
        if response_id in self._answers:
            raise self._not_ours(f"the answer repeats response {response_id!r}, already received", sent_request_id)
        self._answers[response_id] = None
        if len(self._answers) > RECENT_ANSWERS:
            self._answers.popitem(last=False)

    @staticmethod
    def _not_ours(what: str, request_id: str | None) -> GLMInvalidResponseError:
        return GLMInvalidResponseError(
            f"{what}: it belongs to another request, so it is refused, the connection is dropped and the request "
            "counts as possibly billed", status_code=200, request_id=request_id, retryable=True)

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
        if status == 407:
            proxy = self.proxy.display if self.proxy is not None else "a proxy"
            error = GLMConnectionError(f"the proxy {proxy} refused the request: it asks for credentials (HTTP 407); "
                                       "set them in the proxy URL", status_code=status, request_id=request_id)
            error.request_sent = False  # answered by the proxy, never forwarded: nothing was billed
            raise error
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
            raise self._not_json(response, request_id) from None

    def parse_completion_bytes(self, response: httpx.Response, content: bytes,
                               request_id: str | None) -> ChatCompletion:
        """A chat answer straight from its bytes (one pass: pydantic parses the JSON)."""
        self.check_status(response, content, request_id)
        try:
            completion = ChatCompletion.model_validate_json(content)
        except ValidationError as exc:
            if any(err["type"] == "json_invalid" for err in exc.errors()):
                raise self._not_json(response, request_id) from None
            raise self._malformed(exc, request_id) from None
        if not completion.choices:
            raise GLMInvalidResponseError("GLM answered 200 without choices", status_code=200, request_id=request_id)
        return completion

    def parse_completion(self, body: Any, request_id: str | None) -> ChatCompletion:
        if not isinstance(body, dict) or not body.get("choices"):
            raise GLMInvalidResponseError("GLM answered 200 without choices", status_code=200, request_id=request_id)
        try:
            return ChatCompletion.model_validate(body)
        except ValidationError as exc:
            raise self._malformed(exc, request_id) from None

    @staticmethod
    def _not_json(response: httpx.Response, request_id: str | None) -> GLMInvalidResponseError:
        kind = response.headers.get("content-type", "unknown content type")
        return GLMInvalidResponseError(
            f"GLM answered HTTP {response.status_code} with a body that is not JSON ({kind})",
            status_code=response.status_code, request_id=request_id,
        )

    @staticmethod
    def _malformed(exc: ValidationError, request_id: str | None) -> GLMInvalidResponseError:
        return GLMInvalidResponseError(
            f"GLM answered 200 with a malformed completion ({exc.error_count()} field error(s))",
            status_code=200, request_id=request_id,
        )

    def transport_error(self, exc: httpx.HTTPError, request_id: str | None) -> GLMError:
        """Map an httpx failure to the error tree (the message never carries headers)."""
        error: GLMError
        if isinstance(exc, httpx.TimeoutException):
            error = GLMTimeoutError(f"GLM call timed out ({type(exc).__name__})", request_id=request_id)
        else:
            error = GLMConnectionError(f"GLM connection failed ({type(exc).__name__}: {exc})", request_id=request_id)
        error.request_sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        error.pool_wait = isinstance(exc, httpx.PoolTimeout)
        return error

    def retry_delay(self, error: GLMError, attempt: int, deadline: float | None) -> float | None:
        """Seconds to wait before retrying, ``None`` to give up; a JWT expiry (1003) re-signs once."""
        if error.code == "1003" and attempt == 1 and self.credentials.invalidate():
            return 0.0
        remaining = None if deadline is None else deadline - self.clock()
        return self.retry.delay(error, attempt, remaining)

    @staticmethod
    def request_id_of(kwargs: Mapping[str, Any]) -> str | None:
        body = kwargs.get("json")
        return body.get("request_id") if isinstance(body, dict) else None


def http_transport(core: ClientCore, max_connections: int,
                   transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncBaseTransport:
    """What carries a client's requests: aiohttp (:mod:`._transport`) with the core's TLS context and proxy
    (resolved from the options and the environment, see :mod:`._network`), or the ``transport`` the caller
    gave (tests use ``httpx.MockTransport``). Requests go to it directly, not through ``httpx.AsyncClient``:
    no redirects are followed, no cookies kept, and no line per request is logged at INFO."""
    if transport is not None:
        return transport
    return AiohttpTransport(max_connections=max_connections, ssl_context=tls_context(core.network), proxy=core.proxy)
