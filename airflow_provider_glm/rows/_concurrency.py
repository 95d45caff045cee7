"""How many rows a task keeps in flight, and when it stops trying an endpoint that cannot be reached.

:class:`AdaptiveLimit` is additive-increase / multiplicative-decrease, in the spirit of TCP
congestion control and the AWS SDKs' adaptive retry mode: a rate-limit answer (1302, 1303, 1305,
1312) or a timeout cuts the number of rows in flight (at most once per round of requests), and every
round of successes adds one back, up to ``max_concurrency``. Tasks that share an API key thus settle
below the account's limit without talking to each other.

:class:`CircuitBreaker` opens after several consecutive attempts that never reached the endpoint
(refused, DNS, connect timeout) with no answer in between; the run then stops sending rows.

Both listen to the client's attempt observer (see
:data:`~airflow_provider_glm.client._core.AttemptObserver`) and run on the task's event loop.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_glm.exceptions import GLMError

__all__ = ["AdaptiveLimit", "CircuitBreaker", "UNREACHABLE_THRESHOLD"]

DECREASE_FACTOR = 0.5
CONGESTION = frozenset({"rate_limited", "timeout"})
UNREACHABLE_THRESHOLD = 8
"""Consecutive attempts that could not reach the endpoint before the breaker opens."""


class AdaptiveLimit:
    """A semaphore whose size follows the endpoint's answers (AIMD between 1 and ``maximum``).

    :param maximum: the most rows in flight (``max_concurrency``).
    :param adaptive: ``False`` keeps the limit at ``maximum``.
    """

    def __init__(self, maximum: int, *, adaptive: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        if maximum < 1:
            raise ValueError(f"maximum must be >= 1, got {maximum}")
        self.maximum = maximum
        self.adaptive = adaptive
        self._limit = float(maximum)
        self._in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._clock = clock
        self._since_decrease = maximum  # attempts ended since the last cut; a new cut needs a full round
        self.decreases = 0
        self.changes: list[tuple[float, int, int, str]] = []
        """``(time, old, new, reason)`` of every change, for the log."""

    @property
    def limit(self) -> int:
        """Rows allowed in flight now."""
        return max(1, int(self._limit))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def acquire(self) -> None:
        """Wait for a free slot."""
        while self._in_flight >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._in_flight += 1

    def release(self) -> None:
        """Give a slot back."""
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        free = self.limit - self._in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def observe(self, kind: str, error: GLMError | None = None) -> None:
        """Adapt to one attempt's outcome (``ok``, ``rate_limited``, ``timeout``, ...)."""
        if not self.adaptive:
            return
        self._since_decrease += 1
        old = self.limit
        if kind in CONGESTION:
            if self._since_decrease < old:
                return  # the same congestion event: one cut per round of requests
            self._limit = max(1.0, math.floor(self._limit * DECREASE_FACTOR))
            self._since_decrease = 0
            self.decreases += 1
            reason = f"{kind.replace('_', ' ')}" + (f" (code {error.code})" if error is not None and error.code else "")
        elif kind == "ok" and self._limit < self.maximum:
            self._limit = min(float(self.maximum), self._limit + 1.0 / self.limit)
            reason = "answers arrive"
        else:
            return
        if self.limit != old:
            self.changes.append((self._clock(), old, self.limit, reason))
            self._wake()


class CircuitBreaker:
    """Opens after :data:`UNREACHABLE_THRESHOLD` consecutive attempts that never reached the endpoint;
    any answer resets the count, and a success closes it again.

    :param endpoint: ``host:port``, named in the reason.
    :param threshold: consecutive unreachable attempts that open it.
    """

    def __init__(self, endpoint: str, threshold: int = UNREACHABLE_THRESHOLD) -> None:
        self.endpoint = endpoint
        self.threshold = threshold
        self._consecutive = 0
        self._last: GLMError | None = None
        self.open_reason: str | None = None

    def observe(self, kind: str, error: GLMError | None = None) -> None:
        if kind == "queued":
            return  # the client's own pool was busy: nothing was learnt about the endpoint
        if kind == "unreachable":
            self._consecutive += 1
            self._last = error
            if self._consecutive >= self.threshold and self.open_reason is None:
                self.open_reason = (
                    f"not sent: GLM at {self.endpoint} could not be reached ({self._consecutive} attempts in a row "
                    f"failed to connect; last: {error.message if error is not None else 'unknown'})"
                )
        else:
            self._consecutive = 0  # the endpoint answered: the count starts again
            if kind == "ok":
                self.open_reason = None  # and a success closes it (a run already stopped stays stopped)
