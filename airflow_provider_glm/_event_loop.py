"""Event loops for blocking code: the operators' own loop, and one background loop per process.

:func:`run_in_task` is ``asyncio.run`` for an operator's ``execute``: a timeout signal (Airflow's
``execution_timeout`` alarm) ends the run at an ``await`` instead of inside whatever code it lands in.
:func:`run_blocking` runs a coroutine on a daemon thread's loop and waits for it. That loop is
created on first use and again in a forked child (Airflow forks task processes), so a loop thread
that did not survive a fork is never waited on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

__all__ = ["run_blocking", "run_in_task"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="glm-client-loop", daemon=True)
            thread.start()
            _loop, _pid = loop, os.getpid()
        return _loop


def run_in_task(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, with the SIGALRM handler (Airflow's execution-timeout alarm) wrapped.

    Airflow raises its timeout from a signal handler, so unwrapped it surfaces inside whatever runs at
    that instant: a row's task, which dies silently while the others wait on their answers, or a
    loop callback, whose exception the loop only logs. Wrapped, the handler's exception is kept and
    the main task is cancelled, so every ``finally`` runs (workers stop, clients close, written
    records flush) and the exception is raised here.
    """
    original = signal.getsignal(signal.SIGALRM) if threading.current_thread() is threading.main_thread() else None
    if not callable(original):
        return asyncio.run(coro)
    escaped: list[BaseException] = []

    async def main() -> T:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None

        def on_alarm(signum: int, frame: Any) -> None:
            try:
                original(signum, frame)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, at a point of our choosing
                if not escaped:
                    escaped.append(exc)
                    loop.call_soon_threadsafe(task.cancel)

        signal.signal(signal.SIGALRM, on_alarm)
        try:
            return await coro
        except asyncio.CancelledError:
            if escaped:
                raise escaped[0] from None
            raise
        finally:
            signal.signal(signal.SIGALRM, original)

    try:
        result = asyncio.run(main())
    except asyncio.CancelledError:
        if escaped:
            raise escaped[0] from None
        raise
    if escaped:  # the alarm came after the coroutine's last await, before the handler was put back
        raise escaped[0]
    return result


def run_blocking(awaitable: Awaitable[T]) -> T:
    """Run ``awaitable`` on the background loop and return its result (its exception is raised here).

    An interrupt while waiting (``KeyboardInterrupt``, Airflow's timeout signal) cancels the coroutine.
    """
    loop = _background_loop()
    if threading.current_thread().name == "glm-client-loop":
        raise RuntimeError("run_blocking() was called from the GLM client loop itself; await the coroutine instead")
    future = asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable
