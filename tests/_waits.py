"""Waiting for a state in tests: poll a condition with a generous limit, never sleep a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

WAIT_SECONDS = 60.0
"""The limit of every wait: generous, so a busy 2-core machine only makes a test slower, not red."""


def wait_until(condition: Callable[[], Any], what: str, seconds: float = WAIT_SECONDS) -> Any:
    """Poll ``condition`` until it returns a truthy value (which is returned); fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {seconds:g} s waiting for {what}"
        time.sleep(0.01)
