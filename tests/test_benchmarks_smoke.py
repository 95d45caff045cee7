"""``python -m benchmarks --quick`` runs end to end and writes a complete report (no timing checks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEADINGS = (
    "## 1. Row throughput",
    "## 2. Client overhead",
    "## 3. DAG parse cost",
    "## 4. Memory",
    "## 5. Sink write rate",
    "## 6. Celery scaling",
    "## 7. Spend page",
)


@pytest.mark.timeout(240)
def test_quick_benchmarks_write_every_section(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert out.exists(), done.stderr[-3000:]
    report = out.read_text(encoding="utf-8")
    for heading in HEADINGS:
        assert heading in report, f"missing {heading!r}"
    machine = next((line for line in report.splitlines() if line.startswith("**Machine:**")), "")
    assert "cores" in machine, "missing machine line"
    assert "Python" in machine
    assert "skipped in --quick mode" in report, "section 1(d) must say it was skipped in quick mode"
    assert (tmp_path / "benchmarks-throughput.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert done.returncode == 0, done.stderr[-3000:]
