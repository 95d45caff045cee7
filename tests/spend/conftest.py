"""Fixtures of the spend-truth tests: a warehouse on each database (SQLite, PostgreSQL, MariaDB)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _databases import BACKENDS
from _spend_common import Warehouse, make_warehouse


@pytest.fixture(params=BACKENDS)
def wh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    """This test's tables on each database in turn."""
    yield from make_warehouse(request.param, tmp_path)


@pytest.fixture
def sqlite_wh(tmp_path: Path) -> Iterator[Warehouse]:
    """This test's tables on SQLite only (where no SQL of its own is at stake)."""
    yield from make_warehouse("sqlite", tmp_path)
