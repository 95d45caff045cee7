"""``GLMBatchTrigger``: waits for GLM batches in the triggerer, holding no worker slot.

It serializes only batch ids, the connection id, the poll interval, the end time and whether to
cancel (never the key), polls with the async client through the same retry policy as every other
call, and yields exactly one event: ``{"status": "done", "batches": [...]}`` once every batch is
terminal; ``{"status": "timeout", ...}`` at ``end_time`` (after cancelling the batches when asked);
or ``{"status": "error", "message": ..., "fatal": bool}``. A user who kills the deferred task
(mark failed, clear, mark success) cancels the batches through :meth:`GLMBatchTrigger.on_kill`
(Airflow 3.3 and later).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_glm.client._calls import cancel_batch, retrieve_batch
from airflow_provider_glm.exceptions import GLMError
from airflow_provider_glm.hooks.glm import GLMHook
from airflow_provider_glm.rows._outcomes import FATAL_ERRORS

if TYPE_CHECKING:
    from airflow_provider_glm.client._calls import Batch
    from airflow_provider_glm.client._client import AsyncGLMClient

__all__ = ["BatchesTimedOut", "GLMBatchTrigger", "wait_for_batches"]


class BatchesTimedOut(Exception):
    """``end_time`` passed before every batch was terminal."""


async def wait_for_batches(client: AsyncGLMClient, batch_ids: Sequence[str], poll_interval: float,
                           end_time: float | None, cancel: bool,
                           result: list[Batch] | None = None) -> AsyncIterator[str]:
    """Poll until every batch is terminal, yielding a progress line per poll; the one wait loop of the
    trigger and of the operator polling in its task.

    :param end_time: wall-clock time (epoch seconds) to give up at: the batches are cancelled (``cancel``)
        and :class:`BatchesTimedOut` is raised.
    :param result: receives the last state of every batch.
    """
    while True:
        batches = [await client.call(retrieve_batch(batch_id)) for batch_id in batch_ids]
        if result is not None:
            result[:] = batches
        if all(batch.terminal for batch in batches):
            return
        done = sum(b.request_counts.completed + b.request_counts.failed for b in batches)
        total = sum(b.request_counts.total for b in batches)
        yield f"Batches {list(batch_ids)}: {[b.status for b in batches]}; {done} of {total} requests done."
        wait = poll_interval
        if end_time is not None:
            left = end_time - time.time()
            if left <= 0:
                if cancel:
                    for batch in batches:
                        if not batch.terminal:
                            await client.call(cancel_batch(batch.id))
                raise BatchesTimedOut(f"the batches were not done by the task's execution_timeout"
                                      f"{' and were cancelled' if cancel else ''}")
            wait = min(wait, left)
        await asyncio.sleep(wait)


class GLMBatchTrigger(BaseTrigger):
    """Poll batches until all of them are completed, failed, expired or cancelled.

    :param batch_ids: the batches to wait for.
    :param glm_conn_id: the ``glm`` connection (its key is read in the triggerer, never serialized).
    :param poll_interval: seconds between polls.
    :param end_time: wall-clock time (epoch seconds) to stop waiting at, from the task's ``execution_timeout``.
    :param cancel_on_kill: cancel the batches at ``end_time`` and when a user kills the task.
    """

    def __init__(self, batch_ids: Sequence[str], glm_conn_id: str = "glm_default", poll_interval: float = 60.0,
                 end_time: float | None = None, cancel_on_kill: bool = True) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.batch_ids = list(batch_ids)
        self.glm_conn_id = glm_conn_id
        self.poll_interval = poll_interval
        self.end_time = end_time
        self.cancel_on_kill = cancel_on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"batch_ids": self.batch_ids, "glm_conn_id": self.glm_conn_id, "poll_interval": self.poll_interval,
             "end_time": self.end_time, "cancel_on_kill": self.cancel_on_kill},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        batches: list[Batch] = []
        try:
            hook = GLMHook(self.glm_conn_id)
            await hook.aget_settings()
            async with hook.get_async_client() as client:
                async for message in wait_for_batches(client, self.batch_ids, self.poll_interval, self.end_time,
                                                      self.cancel_on_kill, batches):
                    self.log.info(message)
            payload: dict[str, Any] = {"status": "done", "batches": [b.model_dump(mode="json") for b in batches]}
        except BatchesTimedOut as exc:
            payload = {"status": "timeout", "message": str(exc),
                       "batches": [b.model_dump(mode="json") for b in batches]}
        except Exception as exc:  # the trigger's last guard: the task must get an event, not a dead trigger
            payload = {"status": "error", "message": f"{type(exc).__name__}: {exc}",
                       "fatal": isinstance(exc, FATAL_ERRORS)}
        yield TriggerEvent(payload)  # type: ignore[no-untyped-call]

    async def on_kill(self) -> None:
        """A user killed the deferred task: cancel its batches (best effort; Airflow 3.3 calls this)."""
        if not self.cancel_on_kill:
            return
        hook = GLMHook(self.glm_conn_id)
        await hook.aget_settings()
        async with hook.get_async_client(max_retries=1) as client:
            for batch_id in self.batch_ids:
                try:
                    await client.call(cancel_batch(batch_id))
                    self.log.info("Cancelled GLM batch %s (the task was killed).", batch_id)
                except GLMError as exc:
                    self.log.warning("Could not cancel GLM batch %s: %s", batch_id, exc)
