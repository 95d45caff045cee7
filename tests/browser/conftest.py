"""Fixtures of the browser tests; the harness itself is :mod:`_airflow_server`."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _airflow_server import (
    AIRFLOW,
    CHROMIUM_ARGS,
    DAG_IDS,
    HERE,
    HIDDEN_DAG,
    USERS,
    AirflowHome,
    ApiServer,
    dag_file,
    free_port,
    require_chromium,
    wait_healthy,
)


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> AirflowHome:
    """The session's Airflow home: metadata DB migrated, the test DAGs in it, users and passwords."""
    require_chromium()
    path = tmp_path_factory.mktemp("airflow-home")
    (path / "dags").mkdir()
    for dag_id in DAG_IDS:
        (path / "dags" / f"{dag_id}.py").write_text(dag_file(dag_id))
    passwords = {user: secrets.token_urlsafe(12) for user in USERS}
    (path / "passwords.json").write_text(json.dumps(passwords))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GLM_TEST_", "PYTHONPATH"))}
    env.update(
        AIRFLOW_HOME=str(path),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(path / "dags"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{path / 'airflow.db'}",
        AIRFLOW__CORE__AUTH_MANAGER="glm_test_auth_manager.DagScopedAuthManager",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=",".join(f"{u}:{r}" for u, r in USERS.items()),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(path / "passwords.json"),
        AIRFLOW__CORE__TEST_CONNECTION="Enabled",
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),
        AIRFLOW__API__SECRET_KEY=secrets.token_hex(32),
        GLM_TEST_RESTRICTED_USERS="restricted",
        GLM_TEST_HIDDEN_DAGS=HIDDEN_DAG,
        PYTHONPATH=str(HERE),
    )
    home = AirflowHome(path, env, passwords)
    home.run("db", "migrate")
    home.run("dags", "reserialize")
    return home


@pytest.fixture(scope="module")
def start_api_server(airflow_home: AirflowHome) -> Iterator[Callable[..., ApiServer]]:
    """Start an API server on the session's home with extra environment; all are stopped at the end."""
    started: list[ApiServer] = []

    def start(name: str, **extra_env: str) -> ApiServer:
        port = free_port()
        log = airflow_home.path / f"api-server-{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(AIRFLOW), "api-server", "-H", "127.0.0.1", "-p", str(port), "-w", "1"],
                env={**airflow_home.env, **extra_env}, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=airflow_home.path, start_new_session=True,
            )
        server = ApiServer(f"http://127.0.0.1:{port}", process, log, airflow_home.passwords)
        started.append(server)
        wait_healthy(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium through Playwright (never a downloaded browser).

    Module scope, and so are the API servers: Playwright's sync API keeps an asyncio loop marked as
    running in the main thread while it is open, which breaks every later test that calls
    ``asyncio.run``; and idle API servers would hold CPU and memory for the rest of the suite."""
    path = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
