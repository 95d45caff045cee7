"""A worker that waited for a slot looks again before it sends: a stop that came meanwhile holds.

With the adaptive limit below ``max_concurrency``, workers queue for slots. A budget reached by the
answer that frees the slot must stop the waiting worker's row too, not buy it.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_glm._compat import AirflowFailException
from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.rows._concurrency import AdaptiveLimit


def test_a_budget_reached_while_a_worker_waited_for_its_slot_stops_its_row(
        glm_conn: Any, context: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AdaptiveLimit, "limit", property(lambda self: 1))  # as if 429s had lowered it to 1
    op = GLMChatOperator(task_id="glm", rows=[{"id": i} for i in range(6)], row_key="id",
                         prompt="row {{ row.id }}", max_concurrency=2, max_total_tokens=1)
    with pytest.raises(AirflowFailException, match=r"budget max_total_tokens=1 reached.*5 rows recorded as skipped"):
        op.execute(context)
    assert glm_conn.stats.requests == 1, "the worker that waited for the slot bought its row past the budget"
