"""A worker that dies ends the run at once, with every other call still in flight.

Before, a row task that raised (a bug, or Airflow's timeout signal landing inside it) died silently:
the producer stayed blocked on the full queue and the other workers waited on their answers. Here the
server holds every answer, so the run can end only through the dead worker.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from airflow_provider_glm.operators.chat import GLMChatOperator
from airflow_provider_glm.rows._runner import RowRunner


class Boom(RuntimeError):
    pass


def test_a_dead_worker_ends_the_run_while_the_others_wait(glm_conn: Any, context: dict[str, Any],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    original = RowRunner._ask

    async def ask(self: RowRunner, client: Any, request: Any) -> Any:
        if request.key == "7":
            raise Boom("worker died")
        return await original(self, client, request)

    monkeypatch.setattr(RowRunner, "_ask", ask)
    glm_conn.hold()
    watchdog = threading.Timer(240, glm_conn.release)  # a regression fails the test instead of hanging it
    watchdog.start()
    try:
        op = GLMChatOperator(task_id="glm", rows=[{"id": i} for i in range(200)], row_key="id",
                             prompt="row {{ row.id }}", max_concurrency=8, max_failed_rows=200)
        with pytest.raises(Boom, match="worker died"):
            op.execute(context)
        assert watchdog.is_alive(), "the run ended only because the watchdog released the answers"
    finally:
        watchdog.cancel()
        glm_conn.release()
    assert glm_conn.stats.requests < 200, "rows after the failure were not sent"
