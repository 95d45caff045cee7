"""Issue 9, point 2 (docs): the SQL of docs/operator.md "Possibly billed calls" runs unchanged on
SQLite, PostgreSQL and MariaDB, and its range holds what the server billed."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _spend_common import TARGET, Warehouse, chat_operator, checked_ledger, run_operator, use_connection

from airflow_provider_glm.testing import Fault, GLMTestServer

DOC = Path(__file__).resolve().parents[2] / "docs" / "operator.md"


def doc_queries() -> list[str]:
    """The SQL blocks of the section "Possibly billed calls"."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("### Possibly billed calls", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def test_the_section_has_the_queries() -> None:
    per_day, per_try = doc_queries()
    assert "GROUP BY DATE(created_at), dag_id, model, currency" in per_day
    assert "unknown_tokens_max" in per_day and "unknown_cost_max" in per_day
    assert "try_number" in per_try


def test_spend_including_possibly_billed_sql(glm_server: GLMTestServer, wh: Warehouse, context: dict[str, Any],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    use_connection(monkeypatch, glm_server, max_retries=3)
    glm_server.add_rule(match=TARGET, fault=Fault.drop_after_billing())
    _, error = run_operator(chat_operator(wh, max_failed_rows=1, request_params={"max_tokens": 40}), context)
    assert error is None
    _, usage = checked_ledger(wh, glm_server, unseen=2)
    per_day, per_try = (q.replace("glm_usage", wh.tables["usage_table"]) for q in doc_queries())
    engine = sa.create_engine(wh.url)
    try:
        with engine.connect() as conn:
            (day,) = [dict(r._mapping) for r in conn.execute(sa.text(per_day))]
            (lost,) = [dict(r._mapping) for r in conn.execute(sa.text(per_try))]
    finally:
        engine.dispose()
    known = [u for u in usage if u["billing"] == "known"]
    bound = sum(u["unknown_tokens_max"] for u in usage)
    assert (day["dag_id"], day["model"], day["currency"]) == ("test_dag", "glm-4.5", "USD")
    assert (int(day["known_calls"]), int(day["possibly_billed_attempts"])) == (3, 2)
    assert int(day["known_tokens"]) == sum(u["total_tokens"] for u in known)
    assert int(day["tokens_up_to"]) == int(day["known_tokens"]) + bound
    billed = glm_server.stats.billed_total_tokens
    assert int(day["known_tokens"]) < billed <= int(day["tokens_up_to"]), "the bill lies in the range"
    known_cost = sum(Decimal(str(u["cost"])) for u in known)
    unknown_cost = sum(Decimal(str(u["unknown_cost_max"])) for u in usage if u["unknown_cost_max"] is not None)
    assert Decimal(str(day["known_cost"])) == pytest.approx(known_cost)
    assert Decimal(str(day["cost_up_to"])) == pytest.approx(known_cost + unknown_cost)
    assert unknown_cost > 0
    assert (lost["task_id"], int(lost["possibly_billed_attempts"]), int(lost["tokens_up_to"])) == ("glm", 2, bound)
