"""The browser tests' harness: a real ``airflow api-server`` and headless Chromium.

The fixtures are in this directory's ``conftest.py``; the helpers the tests import are here.

One Airflow home per session (its own metadata database, three DAGs, three users) is migrated
once; each test starts the API servers it needs on free loopback ports, waits for their health
endpoint, and stops them (process group and all) when the session ends. Chromium is Debian's
``/usr/bin/chromium``, driven by Playwright; the tests never download a browser. Without it they
skip, unless ``GLM_REQUIRE_BROWSER=1`` (CI), where a missing browser fails them.

Nothing here sleeps to wait: servers are polled for health and pages for selectors, with generous
limits, because the machine is small and shared.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests" / "plugins"))  # the seeded ledger, shared with the SQL tests

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
AIRFLOW = Path(sys.executable).with_name("airflow")
DAG_IDS = ("glm_nightly_summary", "glm_enrichment", "glm_secret_costs")
HIDDEN_DAG = "glm_secret_costs"
USERS = {"admin": "admin", "viewer": "viewer", "restricted": "viewer"}
"""User name -> simple auth manager role; ``restricted`` may not read :data:`HIDDEN_DAG`."""
SERVER_START_LIMIT = 420.0
UI_TIMEOUT_MS = 90_000


def require_chromium() -> str:
    """The browser's path; skip (or fail under ``GLM_REQUIRE_BROWSER=1``) when it is missing."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    message = f"Chromium not found at {CHROMIUM} (Debian package 'chromium'; .ci/run installs it)"
    if os.environ.get("GLM_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " (GLM_REQUIRE_BROWSER=1: the browser tests must run)")
    pytest.skip(message)


@dataclass
class AirflowHome:
    """An AIRFLOW_HOME with a migrated metadata database, the test DAGs serialized, and users."""

    path: Path
    env: dict[str, str]
    passwords: dict[str, str]

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(AIRFLOW), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.path, check=False)
        assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done


@dataclass
class ApiServer:
    """A running ``airflow api-server``; :meth:`stop` ends its whole process group."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    passwords: dict[str, str] = field(repr=False)

    def token(self, user: str) -> str:
        """A JWT for ``user`` from the simple auth manager's login endpoint."""
        answer = httpx.post(f"{self.url}/auth/token", json={"username": user, "password": self.passwords[user]},
                            timeout=60)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["access_token"])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(60)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dag_file(dag_id: str) -> str:
    return (
        "from airflow.providers.standard.operators.empty import EmptyOperator\n"
        "from airflow.sdk import DAG\n\n"
        f"with DAG(dag_id={dag_id!r}, schedule=None):\n"
        "    EmptyOperator(task_id='noop')\n"
    )


def wait_healthy(server: ApiServer) -> None:
    """Poll the health endpoint until it answers 200; fail with the log if the server dies or never does."""
    deadline = time.monotonic() + SERVER_START_LIMIT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"api-server exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/api/v2/monitor/health", timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)  # polling interval while the server boots, not a wait for a result
    pytest.fail(f"api-server not healthy after {SERVER_START_LIMIT:.0f} s:\n{server.log_tail()}")


def open_as(browser: Any, server: ApiServer, user: str | None, **context_options: Any) -> Any:
    """A new browser page, logged in as ``user`` (the UI's ``_token`` cookie) or anonymous."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, **context_options)
    context.set_default_timeout(UI_TIMEOUT_MS)
    if user is not None:
        context.add_cookies([{"name": "_token", "value": server.token(user), "url": server.url}])
    return context.new_page()
