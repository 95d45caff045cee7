"""``run_in_task``: Airflow's execution-timeout alarm ends an operator's event loop at an ``await``.

The alarm's handler raises from wherever the main thread is when the signal lands. Here the signal is
raised synchronously (``signal.raise_signal``) from inside a loop callback and inside another task,
the two places where plain ``asyncio.run`` loses it, so the tests are deterministic.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_glm._event_loop import run_in_task


class Alarm(Exception):
    """Stands in for ``AirflowTaskTimeout``, an ``Exception`` raised by a signal handler."""


@pytest.fixture
def alarm_handler() -> Iterator[None]:
    def handle(signum: int, frame: Any) -> None:
        raise Alarm("Timeout, PID: 1")

    previous = signal.signal(signal.SIGALRM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGALRM, previous)


def _main(where: str, cleaned: list[str]) -> Any:
    async def main() -> str:
        forever = asyncio.Event()
        if where == "callback":
            asyncio.get_running_loop().call_soon(signal.raise_signal, signal.SIGALRM)
        else:
            async def worker() -> None:
                signal.raise_signal(signal.SIGALRM)

            asyncio.get_running_loop().create_task(worker())
        try:
            await asyncio.wait_for(forever.wait(), timeout=30)  # only reached when the alarm is lost
            return "lost"
        finally:
            cleaned.append("finally ran")

    return main()


@pytest.mark.parametrize("where", ["callback", "task"])
def test_the_alarm_is_raised_from_run_in_task_after_cleanup(alarm_handler: None, where: str) -> None:
    cleaned: list[str] = []
    with pytest.raises(Alarm, match="Timeout"):
        run_in_task(_main(where, cleaned))
    assert cleaned == ["finally ran"]
    assert signal.getsignal(signal.SIGALRM).__name__ == "handle", "the original handler is put back"


def test_plain_asyncio_run_loses_an_alarm_raised_in_a_callback(alarm_handler: None,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Why ``run_in_task`` exists: the loop logs the handler's exception and goes on."""
    async def main() -> str:
        asyncio.get_running_loop().call_soon(signal.raise_signal, signal.SIGALRM)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return "went on"

    assert asyncio.run(main()) == "went on"
    assert "Alarm" in caplog.text


def test_without_a_python_alarm_handler_it_is_asyncio_run() -> None:
    previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    try:
        async def main() -> int:
            return 7

        assert run_in_task(main()) == 7
        assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGALRM, previous)
