"""When to try a failed GLM call again, and how long to wait first.

One :class:`RetryPolicy` decides for the sync and async clients alike. The decision rests on the
error (its class and business code, from :mod:`airflow_provider_glm.client._error_codes`), the attempt
number and the time left before the caller's deadline; the clients only sleep and resend.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_provider_glm.constants import DEFAULT_MAX_RETRIES

if TYPE_CHECKING:
    from airflow_provider_glm.exceptions import GLMError

__all__ = ["RetryPolicy", "parse_retry_after"]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, honouring ``Retry-After``, never past a deadline.

    :param max_retries: retries after the first attempt (so ``max_retries + 1`` attempts at most).
    :param backoff_base: the first backoff ceiling in seconds; it doubles per attempt.
    :param backoff_cap: the largest backoff ceiling in seconds.
    :param retry_after_cap: the longest ``Retry-After`` honoured; longer asks are cut to this.
    :param rng: random source for the jitter (inject a seeded one in tests).
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    retry_after_cap: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    def attempts_allowed(self, error: GLMError) -> int:
        """How many attempts in total the error's rule allows under this policy."""
        limit = self.max_retries + 1
        return limit if error.max_attempts is None else min(limit, error.max_attempts)

    def delay(self, error: GLMError, attempt: int, remaining: float | None = None) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` when the call must fail now.

        :param error: what the attempt that just ended raised.
        :param attempt: the number of that attempt, counting from 1.
        :param remaining: seconds left before the caller's deadline (``None``: no deadline). A wait
            that would end at or past the deadline is not taken.
        """
        if not error.retryable or attempt >= self.attempts_allowed(error):
            return None
        if error.retry_after is not None:
            asked = min(error.retry_after, self.retry_after_cap)
            wait = asked + self.rng.uniform(0.0, min(1.0, 0.1 * asked))
        else:
            wait = self.rng.uniform(0.0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))
        if remaining is not None and wait >= remaining:
            return None
        return wait
