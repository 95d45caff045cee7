"""The GLM business-code table: which error class each code raises and whether it is retried.

This table is the policy. :mod:`airflow_provider_glm.exceptions` builds errors from it, the retry
policy reads ``retryable`` and ``max_attempts`` from it, and ``docs/errors.md`` and the tests are
generated from / checked against it. The business code decides first; the HTTP status only when the
body carries no code (see :data:`RETRYABLE_STATUS`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CODE_TABLE", "RETRYABLE_STATUS", "CodeRule", "rule_for_code", "rule_for_status"]


@dataclass(frozen=True)
class CodeRule:
    """How one range of business codes is handled.

    :param codes: the codes this rule covers (inclusive ranges).
    :param error: name of the :class:`~airflow_provider_glm.exceptions.GLMError` subclass raised.
    :param retryable: whether a retry can succeed.
    :param meaning: what the code means, for docs and error messages.
    :param max_attempts: cap on attempts for this rule (``None``: the client's ``max_retries`` + 1).
    """

    codes: tuple[tuple[int, int], ...]
    error: str
    retryable: bool
    meaning: str
    max_attempts: int | None = None

    def covers(self, code: int) -> bool:
        """Whether ``code`` falls in one of this rule's ranges."""
        return any(lo <= code <= hi for lo, hi in self.codes)


CODE_TABLE: tuple[CodeRule, ...] = (
    CodeRule(((500, 500), (1234, 1234)), "GLMServerError", True, "internal or network error"),
    CodeRule(((1302, 1302),), "GLMRateLimitError", True, "concurrency too high"),
    CodeRule(((1303, 1303),), "GLMRateLimitError", True, "request frequency too high"),
    CodeRule(((1305, 1305),), "GLMRateLimitError", True, "platform rate limit"),
    CodeRule(((1312, 1312),), "GLMRateLimitError", True, "model overloaded"),
    CodeRule(
        ((1120, 1120), (1230, 1230)), "GLMServerError", True, "temporary account or call error", max_attempts=2
    ),
    CodeRule(((1000, 1004),), "GLMAuthenticationError", False, "authentication failed or token expired"),
    CodeRule(((1110, 1112), (1121, 1121)), "GLMPermissionError", False, "account inactive, missing or locked"),
    CodeRule(((1113, 1113),), "GLMInsufficientBalanceError", False,
             "insufficient balance (or a coding-plan key used on the general base URL, or the reverse)"),
    CodeRule(((1200, 1200), (1210, 1215)), "GLMBadRequestError", False, "bad call or bad parameters"),
    CodeRule(((1220, 1222),), "GLMPermissionError", False, "no permission, API offline or no such API"),
    CodeRule(((1231, 1231),), "GLMBadRequestError", False, "duplicate request_id"),
    CodeRule(((1261, 1261),), "GLMBadRequestError", False, "prompt too long"),
    CodeRule(((1300, 1301),), "GLMContentFilterError", False, "blocked by content policy"),
    CodeRule(((1304, 1304),), "GLMQuotaExceededError", False, "daily quota reached"),
    CodeRule(
        ((1308, 1311), (1313, 1313)),
        "GLMQuotaExceededError",
        False,
        "plan usage limit, plan expired, model not in plan or fair-use throttle",
    ),
)

RETRYABLE_STATUS: frozenset[int] = frozenset({408, 409, 429, 500, 502, 503, 504})
"""HTTP statuses retried when the body has no business code (plus every other 5xx)."""

_STATUS_ERRORS: dict[int, str] = {
    400: "GLMBadRequestError",
    401: "GLMAuthenticationError",
    403: "GLMPermissionError",
    404: "GLMBadRequestError",
    408: "GLMTimeoutError",
    409: "GLMServerError",
    413: "GLMBadRequestError",
    422: "GLMBadRequestError",
    429: "GLMRateLimitError",
}


def rule_for_code(code: int) -> CodeRule | None:
    """The rule covering a business code, or ``None`` for a code the table does not know."""
    for rule in CODE_TABLE:
        if rule.covers(code):
            return rule
    return None


def rule_for_status(status: int) -> tuple[str, bool]:
    """Error class name and retryability for an HTTP status without a known business code."""
    if status >= 500:
        return "GLMServerError", True
    return _STATUS_ERRORS.get(status, "GLMBadRequestError"), status in RETRYABLE_STATUS
