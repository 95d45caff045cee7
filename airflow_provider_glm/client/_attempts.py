"""The books of one call's attempts: how many, how many may have been billed, when to try again, who is told.

:class:`Attempts` is what every call's attempt loop keeps (``AsyncGLMClient``): it counts attempts,
books those that may have been billed, asks the retry policy for the wait, caps resends of requests
lost after they were sent (``max_billed_retries``) and tells the caller's observer what each attempt
said about the endpoint. :class:`AttemptGate` is the hook budgets use before and after each attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from airflow_provider_glm.client._core import AttemptObserver, ClientCore
from airflow_provider_glm.exceptions import GLMError, GLMRateLimitError, GLMTimeoutError

__all__ = ["AttemptGate", "AttemptObserver", "Attempts", "CallInfo", "attempt_kind"]

class AttemptGate(Protocol):
    """Asked before every attempt of a billable call and told how each ended: where budgets hold.

    :meth:`admit` raises :class:`~airflow_provider_glm.exceptions.GLMBudgetExceededError` to refuse the
    attempt (it is not sent; the error carries the call's :class:`CallInfo` so far). :meth:`settle` must
    not raise: the attempt happened whatever the gate's books say.
    """

    async def admit(self, attempt: int) -> None:
        """Reserve what attempt number ``attempt`` (1 for the first) may cost, or refuse it."""

    async def settle(self, answer: Any, error: GLMError | None) -> None:
        """The attempt ended with ``answer`` (it succeeded) or ``error`` (``error.may_have_been_billed`` says
        whether what it reserved stays counted as possibly billed)."""


@dataclass(frozen=True)
class CallInfo:
    """How a call went, for the usage ledger (on answers and on errors alike).

    :param attempts: attempts in total, the last one included.
    :param unknown_billing_attempts: failed attempts that broke after the request was sent, so the
        server may have billed them (a dropped connection, a read timeout, an unreadable answer).
    :param latency_ms: milliseconds from the first attempt to the end of the last.
    """

    attempts: int
    unknown_billing_attempts: int
    latency_ms: int


def attempt_kind(error: GLMError) -> str:
    """What an attempt's failure says about the endpoint (see :data:`AttemptObserver`)."""
    if isinstance(error, GLMRateLimitError):
        return "rate_limited"
    if error.pool_wait:
        return "queued"
    if not error.request_sent:
        return "unreachable"
    if isinstance(error, GLMTimeoutError):
        return "timeout"
    return "lost" if error.may_have_been_billed else "error"


class Attempts:
    """The books of one call's attempts, kept the same way for every call."""

    def __init__(self, core: ClientCore, deadline: float | None, *, billable: bool = False,
                 resend_lost: bool = True) -> None:
        self.core = core
        self.deadline = deadline
        self.billable = billable
        self.resend_limit = core.max_billed_retries if resend_lost else 0
        self.started = core.clock()
        self.attempt_started = self.started
        self.count = 0
        self.unknown_billing = 0

    def begin(self) -> float:
        """Start an attempt; return its deadline."""
        self.count += 1
        self.attempt_started = self.core.clock()
        return self.core.attempt_deadline(self.deadline)

    def succeeded(self) -> CallInfo:
        if self.core.observer is not None:
            self.core.observer("ok", None)
        return self.info()

    def failed(self, error: GLMError) -> float:
        """Book a failed attempt; return the wait before the next one, or raise ``error`` with its :class:`CallInfo`.

        A request that may have been billed is retried at most ``max_billed_retries`` times, and only
        after waiting as long as the lost attempt ran, so a server still working on it is not sent a
        second copy at once.
        """
        billed = self.billable and error.may_have_been_billed
        self.unknown_billing += billed
        if self.core.observer is not None:
            self.core.observer(attempt_kind(error), error)
        if billed and error.retryable and self.unknown_billing > self.resend_limit:
            delay = None
        else:
            delay = self.core.retry_delay(error, self.count, self.deadline)
            if delay is not None and billed:
                delay = max(delay, min(self.core.clock() - self.attempt_started, self.core.retry.retry_after_cap))
                if self.deadline is not None and self.core.clock() + delay >= self.deadline:
                    delay = None
        if delay is None:
            if billed and error.retryable:  # out of resends or of max_retries: either way, say what it may cost
                error.message = _lost_again(error, self.unknown_billing, self.core.timeout)
                error.args = (error.message,)
            error.call_info = self.info()
            raise error
        return delay

    def info(self) -> CallInfo:
        return CallInfo(self.count, self.unknown_billing, int((self.core.clock() - self.started) * 1000))


def _lost_again(error: GLMError, lost: int, timeout: float) -> str:
    times = "once" if lost == 1 else f"{lost} times"
    return (f"{error.message}; the request was lost {times} after it was sent and may have been billed each "
            f"time, so it is not sent again (raise the connection's timeout, now {timeout:g} s, if answers take "
            "longer; the extra max_billed_retries sets how often a lost request is resent)")
