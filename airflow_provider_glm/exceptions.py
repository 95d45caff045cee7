"""The GLM error tree: one class per failure, each carrying what a user needs to act, never the key.

Every failure of a GLM call raises a :class:`GLMError` subclass with ``status_code`` (HTTP status,
``None`` when no response came), ``code`` (the business code as a string, ``None`` when absent),
``message`` and ``request_id``. Which class a code maps to, and whether it is retried, lives in
:mod:`airflow_provider_glm.client._error_codes`.
"""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_glm.client._auth import redact
from airflow_provider_glm.client._error_codes import rule_for_code, rule_for_status

__all__ = [
    "GLMAuthenticationError",
    "GLMBadRequestError",
    "GLMBudgetExceededError",
    "GLMConnectionError",
    "GLMEndpointUnreachableError",
    "GLMContentFilterError",
    "GLMError",
    "GLMInsufficientBalanceError",
    "GLMInvalidOutputError",
    "GLMInvalidResponseError",
    "GLMPermissionError",
    "GLMQuotaExceededError",
    "GLMRateLimitError",
    "GLMRowsFailedError",
    "GLMServerError",
    "GLMTimeoutError",
    "error_from_response",
]


_GATEWAY_MAYBE_BILLED = frozenset({500, 502, 504})
"""Statuses without a GLM business code (a gateway's own page) after which the model may have run."""


class GLMError(Exception):
    """Base of every GLM failure.

    :param message: what went wrong, as the API or the client said it.
    :param status_code: the HTTP status, or ``None`` when no response arrived.
    :param code: the GLM business code (a string of digits), or ``None``.
    :param request_id: the request id of the failed call, when known.
    :param retryable: whether the retry policy may try again.
    :param retry_after: seconds the server asked to wait (``Retry-After``), when given.
    """

    default_retryable = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        self.retryable = self.default_retryable if retryable is None else retryable
        self.retry_after = retry_after
        self.max_attempts: int | None = None
        self.request_sent = True
        """``False`` when the request never left (connection refused): nothing can have been billed."""
        self.pool_wait = False
        """``True`` when the attempt ended waiting for a free connection of the client's own pool (not sent)."""
        self.call_info: Any = None
        """How the failed call went (:class:`~airflow_provider_glm.client._attempts.CallInfo`), set by the client:
        its attempts, and how many of them may have been billed."""

    @property
    def may_have_been_billed(self) -> bool:
        """Whether this failed attempt may still have been billed: the request was sent and no GLM error
        answer came back (a timeout, a dropped connection, an unreadable, oversized or non-GLM answer)."""
        if isinstance(self, (GLMConnectionError, GLMTimeoutError)):
            return self.request_sent and self.status_code is None
        if isinstance(self, GLMInvalidResponseError):
            return self.status_code is not None and 200 <= self.status_code < 300
        return isinstance(self, GLMServerError) and self.code is None and self.status_code in _GATEWAY_MAYBE_BILLED

    def __str__(self) -> str:
        parts = [f"HTTP {self.status_code}" if self.status_code is not None else None]
        parts.append(f"code {self.code}" if self.code is not None else None)
        parts.append(f"request_id {self.request_id}" if self.request_id else None)
        detail = ", ".join(p for p in parts if p)
        return f"{self.message} ({detail})" if detail else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status_code={self.status_code}, code={self.code!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {
            "status_code": self.status_code,
            "code": self.code,
            "request_id": self.request_id,
            "retryable": self.retryable,
            "retry_after": self.retry_after,
        }
        return (_rebuild_error, (type(self), self.message, kwargs, self.max_attempts))


def _rebuild_error(cls: type[GLMError], message: str, kwargs: dict[str, Any],
                   max_attempts: int | None = None) -> GLMError:
    error = cls(message, **kwargs)
    error.max_attempts = max_attempts
    return error


class GLMAuthenticationError(GLMError):
    """The API key or JWT was refused (codes 1000-1004, HTTP 401)."""


class GLMPermissionError(GLMError):
    """The account may not make this call: inactive, locked, no permission (1110-1112, 1121, 1220-1222)."""


class GLMBadRequestError(GLMError):
    """The request itself is wrong: parameters, unknown model, duplicate request_id, prompt too long."""


class GLMContentFilterError(GLMError):
    """The content policy blocked the input or output (1300, 1301, or finish_reason ``sensitive``)."""


class GLMInsufficientBalanceError(GLMError):
    """The account has no balance left (1113, sent as HTTP 429 but never worth retrying)."""


class GLMQuotaExceededError(GLMError):
    """A daily quota or plan limit was reached (1304, 1308-1311, 1313); retrying now cannot help."""


class GLMRateLimitError(GLMError):
    """Concurrency or request rate above the account's limit (1302, 1303, 1305, 1312, HTTP 429)."""

    default_retryable = True


class GLMServerError(GLMError):
    """The service failed internally (500, 1234, other 5xx)."""

    default_retryable = True


class GLMTimeoutError(GLMError):
    """No complete answer within the connect, read or total deadline."""

    default_retryable = True


class GLMConnectionError(GLMError):
    """The connection could not be opened or broke before a complete answer arrived."""

    default_retryable = True


class GLMInvalidResponseError(GLMError):
    """The answer was not a GLM response: HTML, malformed JSON, missing fields, or too large."""


class GLMEndpointUnreachableError(GLMConnectionError):
    """Several calls in a row could not reach the endpoint at all: the run stopped sending rows."""


_CLASSES: dict[str, type[GLMError]] = {
    cls.__name__: cls
    for cls in (
        GLMAuthenticationError,
        GLMPermissionError,
        GLMBadRequestError,
        GLMContentFilterError,
        GLMInsufficientBalanceError,
        GLMQuotaExceededError,
        GLMRateLimitError,
        GLMServerError,
        GLMTimeoutError,
        GLMConnectionError,
        GLMInvalidResponseError,
    )
}


def _error_fields(body: Any) -> tuple[str | None, str | None, str | None]:
    """Business code, message and request id from ``{"error": {...}}`` or a top-level ``{code, message}``."""
    if not isinstance(body, dict):
        return None, None, None
    error = body.get("error")
    inner: dict[str, Any] = error if isinstance(error, dict) else body
    code = inner.get("code")
    message = inner.get("message") or inner.get("msg")
    request_id = body.get("request_id") or inner.get("request_id")
    code_text = str(code).strip() or None if code is not None else None
    return (
        code_text,
        str(message) if message is not None else None,
        str(request_id) if request_id else None,
    )


def error_from_body(
    status_code: int | None,
    body: Any,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> GLMError:
    """Build the error for a parsed error body: the business code decides, then the HTTP status."""
    code, message, body_request_id = _error_fields(body)
    rule = rule_for_code(int(code)) if code is not None and code.isdigit() else None
    if rule is not None:
        name, retryable, max_attempts = rule.error, rule.retryable, rule.max_attempts
        message = message or rule.meaning
    else:
        name, retryable = rule_for_status(status_code) if status_code is not None else ("GLMServerError", True)
        max_attempts = None
        message = message or f"GLM answered HTTP {status_code}"
    error = _CLASSES[name](
        message,
        status_code=status_code,
        code=code,
        request_id=request_id or body_request_id,
        retryable=retryable,
        retry_after=retry_after,
    )
    error.max_attempts = max_attempts
    return error


def error_from_response(
    status_code: int, content: bytes, *, request_id: str | None = None, retry_after: float | None = None
) -> GLMError:
    """Build the error for a non-2xx answer from its raw body (JSON or not)."""
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    return error_from_body(status_code, body, request_id=request_id, retry_after=retry_after)


class GLMInvalidOutputError(GLMError):
    """The model answered, but its content did not parse as JSON or failed ``output_schema``."""


class GLMRowsFailedError(Exception):
    """More rows failed than ``max_failed_rows`` allows; every other row was written first."""


class GLMBudgetExceededError(Exception):
    """A budget was reached (``max_total_tokens``, ``max_cost``, or the connection's budget): the attempt or
    the rows it names were not sent and were recorded as skipped."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.call_info: Any = None
        """When a call's attempt was refused: how its earlier attempts went (they may have been billed)."""
