"""Fixtures of the nightly warehouse tests: fresh source and sink tables on each backend, dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from _databases import backend_url
from _nightly import Nightly


@pytest.fixture
def nightly(backend: str, tmp_path: Path) -> Iterator[Nightly]:
    """Unique tables on ``backend`` (parametrize ``backend`` with ``BACKENDS``); the shared PostgreSQL and
    MariaDB servers keep nothing once the test ends."""
    url = backend_url(backend, tmp_path)
    suffix = uuid.uuid4().hex[:10]
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    tables = Nightly(backend, url, f"src_{suffix}", f"res_{suffix}", f"use_{suffix}", f"run_{suffix}",
                     f"lat_{suffix}", engine)
    yield tables
    with engine.begin() as conn:
        for name in (tables.source, tables.results_table, tables.usage_table, tables.runs_table, tables.latest_table):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    engine.dispose()


@pytest.fixture(scope="session")
def airflow_metadata_db() -> None:
    """The metadata database of the session's private AIRFLOW_HOME (``airflow dags test`` needs one)."""
    import subprocess
    import sys

    airflow = str(Path(sys.executable).with_name("airflow"))
    done = subprocess.run([airflow, "db", "migrate"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
