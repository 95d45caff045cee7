"""The one retry policy of database work, shared by the writer, the sink's reads and the migration.

A transaction that failed for a reason that can pass (the database unreachable, a broken connection,
a deadlock or serialization failure) is retried whole, with exponential waits, until a timeout; any
other error (a wrong schema, bad data) is raised at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
import tenacity
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

__all__ = ["database_retry", "is_transient"]

_MYSQL_TRANSIENT = frozenset({1205, 1213})
_PG_TRANSIENT = frozenset({"40001", "40P01"})


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the whole transaction can help: the database is unreachable, the connection
    broke, or a deadlock or serialization failure (not a wrong schema or bad data)."""
    if isinstance(exc, (OperationalError, InterfaceError, OSError, sa.exc.TimeoutError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        if getattr(orig, "pgcode", None) in _PG_TRANSIENT:
            return True
        args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
        return bool(args) and isinstance(args[0], int) and args[0] in _MYSQL_TRANSIENT
    return False


def database_retry(timeout: float, *, what: str, log: Any, sleep: Callable[[float], Any] | None = None,
                   retry_on: Callable[[BaseException], bool] = is_transient, asynchronous: bool = True,
                   note: str = "") -> Any:
    """The one retry policy of database work: exponential waits (1 s doubling to 30 s) until ``timeout``.

    :param timeout: seconds after which no new attempt starts; the last error is raised.
    :param what: what is being done, for the log lines.
    :param sleep: the wait (inject in tests).
    :param retry_on: which errors are worth another attempt (default: :func:`is_transient`).
    :param asynchronous: a ``tenacity.AsyncRetrying`` (``async for``) instead of a ``tenacity.Retrying``.
    :param note: said with every retry (e.g. that the records are kept).
    """
    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        log.warning("%s failed (%s)%s; retrying in %.0f s.", what.capitalize(), type(error).__name__, note, wait)

    def give_up(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.error("Giving up %s after %.0f s: %s", what, state.seconds_since_start or 0.0, error)
        raise error if error is not None else RuntimeError(what)

    options: dict[str, Any] = {
        "stop": tenacity.stop_before_delay(timeout),
        "wait": tenacity.wait_exponential(multiplier=1, min=1, max=30),
        "retry": tenacity.retry_if_exception(retry_on),
        "before_sleep": before_sleep,
        "retry_error_callback": give_up,
        "reraise": True,
    }
    if sleep is not None:
        options["sleep"] = sleep
    return tenacity.AsyncRetrying(**options) if asynchronous else tenacity.Retrying(**options)
