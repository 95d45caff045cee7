"""``GLMBatchTrigger``: waits for GLM batches in the triggerer, holding no worker slot.

It serializes only batch ids, the connection id and the poll interval (never the key), polls with
the async client through the same retry policy as every other call, and yields exactly one event:
``{"status": "done", "batches": [...]}`` once every batch is terminal, or ``{"status": "error",
"message": ...}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

__all__ = ["GLMBatchTrigger"]


class GLMBatchTrigger(BaseTrigger):
    """Poll batches until all of them are completed, failed, expired or cancelled.

    :param batch_ids: the batches to wait for.
    :param glm_conn_id: the ``glm`` connection (its key is read in the triggerer, never serialized).
    :param poll_interval: seconds between polls.
    """

    def __init__(self, batch_ids: Sequence[str], glm_conn_id: str = "glm_default", poll_interval: float = 60.0) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.batch_ids = list(batch_ids)
        self.glm_conn_id = glm_conn_id
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"batch_ids": self.batch_ids, "glm_conn_id": self.glm_conn_id, "poll_interval": self.poll_interval},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_glm.batch_api import AsyncBatchAPI, retrieve_batch
        from airflow_provider_glm.hooks.glm import GLMHook

        try:
            hook = GLMHook(self.glm_conn_id)
            await hook.aget_settings()
            async with hook.get_async_client() as client:
                api = AsyncBatchAPI(client)
                while True:
                    batches = [await api(retrieve_batch(batch_id)) for batch_id in self.batch_ids]
                    if all(batch.terminal for batch in batches):
                        payload = {"status": "done", "batches": [b.model_dump(mode="json") for b in batches]}
                        yield TriggerEvent(payload)  # type: ignore[no-untyped-call]
                        return
                    done = sum(b.request_counts.completed + b.request_counts.failed for b in batches)
                    total = sum(b.request_counts.total for b in batches)
                    self.log.info("Batches %s: %s; %d of %d requests done.", self.batch_ids,
                                  [b.status for b in batches], done, total)
                    await asyncio.sleep(self.poll_interval)
        except Exception as exc:  # the trigger's last guard: the task must get an event, not a dead trigger
            yield TriggerEvent(  # type: ignore[no-untyped-call]
                {"status": "error", "message": f"{type(exc).__name__}: {exc}"}
            )
