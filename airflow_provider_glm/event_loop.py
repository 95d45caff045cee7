"""One background event loop per process, so blocking code can use the async client.

:func:`run_blocking` runs a coroutine on a daemon thread's loop and waits for it. The loop is
created on first use and again in a forked child (Airflow forks task processes), so a loop thread
that did not survive a fork is never waited on.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["run_blocking"]

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
