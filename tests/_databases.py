"""The databases the SQL tests run on: embedded SQLite always, PostgreSQL and MariaDB when reachable.

On a machine without those servers their tests skip with the reason. CI sets
``GLM_REQUIRE_DATABASES=1``, which turns an unreachable server into a failure instead: there the
servers must be up and the tests must run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_URL = os.environ.get("GLM_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("GLM_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4")

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("mysql", id="mariadb", marks=pytest.mark.mysql),
]
_reachable: dict[str, str | None] = {}


def server_url(backend: str) -> str:
    """The URL of a database server, skipping (or failing in CI) the test when it does not answer."""
    url = PG_URL if backend == "postgresql" else MYSQL_URL
    if backend not in _reachable:
        probe = sa.create_engine(url, connect_args={"connect_timeout": 3}, poolclass=sa.pool.NullPool)
        try:
            with probe.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            _reachable[backend] = None
        except sa.exc.DBAPIError as exc:
            _reachable[backend] = f"{type(exc.orig).__name__}: {exc.orig}".splitlines()[0]
        finally:
            probe.dispose()
    reason = _reachable[backend]
    if reason is not None:
        message = f"{backend} server not reachable at {url}: {reason}"
        if os.environ.get("GLM_REQUIRE_DATABASES") == "1":
            pytest.fail(message + " (GLM_REQUIRE_DATABASES=1: this run must test every database)")
        pytest.skip(message)
    return url


def backend_url(backend: str, tmp_path: Path) -> str:
    """A SQLAlchemy URL for ``backend``: a fresh SQLite file, or the shared server."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    return server_url(backend)
