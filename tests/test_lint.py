"""The package stays ruff-clean and mypy-strict-clean (configuration in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_ruff() -> None:
    done = subprocess.run([str(BIN / "ruff"), "check", "airflow_provider_glm", "dags", "scripts", "benchmarks"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:]


def test_mypy_strict() -> None:
    done = subprocess.run([str(BIN / "mypy"), "airflow_provider_glm"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
