"""Fixtures of the whole-answer tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from _databases import backend_url
from _warehouse import Warehouse

from airflow_provider_glm.sinks.sql import SQLSink


@pytest.fixture
def warehouse(backend: str, tmp_path: Path) -> Iterator[Warehouse]:
    """Fresh result, usage and runs tables on ``backend`` (parametrize ``backend`` with ``BACKENDS``);
    dropped afterwards, so the shared PostgreSQL and MariaDB servers stay clean."""
    url = backend_url(backend, tmp_path)
    suffix = uuid.uuid4().hex[:10]
    names = {"results_table": f"ans_res_{suffix}", "usage_table": f"ans_use_{suffix}",
             "runs_table": f"ans_run_{suffix}"}
    sink = SQLSink.from_url(url, **names)
    yield Warehouse(url, names["results_table"], names["usage_table"], names["runs_table"], sink)
    # An operator with output_columns=True adds typed columns: drop by name, whatever the columns are.
    with sink.engine.begin() as conn:
        for name in names.values():
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    sink.dispose()
