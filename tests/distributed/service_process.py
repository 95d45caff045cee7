"""One long-running process of a test cluster: its own process group, a log file, a stop by PID.

:class:`Service` starts a command in a new session (so in a process group of its own), sends its
stdout and stderr to a file, and stops it by PID; :meth:`Service.kill_group` then ends whatever the
process left behind in its group (forked task runners, log servers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Service"]


@dataclass
class Service:
    """One long-running Airflow process, in its own process group, logging to a file.

    :param name: short name (``scheduler``, ``worker-glm-worker-a``...).
    :param argv: the command.
    :param env: its whole environment.
    :param log_path: where its stdout and stderr go.
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def exit_code(self) -> int | None:
        """None while running."""
        return None if self.popen is None else self.popen.poll()

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the process (not its group) if it still runs."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def wait(self, until: float) -> bool:
        """Wait for the process to exit until the monotonic time ``until``; whether it did."""
        if self.popen is None:
            return True
        try:
            self.popen.wait(timeout=max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill_group(self, grace: float = 10.0) -> None:
        """Stop whatever is left in the process group (children the main process did not end)."""
        if self.popen is None:
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, signum)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(self.pid):
                time.sleep(0.2)
            if not _group_alive(self.pid):
                return

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    """Whether a process other than a zombie is left in the process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
