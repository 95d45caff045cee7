"""The online row engine: many rows through async clients at bounded concurrency.

:class:`RowRunner` dispatches rendered rows to GLM with at most ``max_concurrency`` in flight and
hands every outcome to a :class:`~airflow_provider_glm.recording.RunRecorder`. It stops
dispatching at a budget, a deadline or an account-wide error, and logs progress at a steady pace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.exceptions import GLMError

if TYPE_CHECKING:
    from airflow_provider_glm.client import AsyncGLMClient
    from airflow_provider_glm.models import ChatCompletion
    from airflow_provider_glm.recording import RunRecorder, RunTotals
    from airflow_provider_glm.rendering import Row

__all__ = ["RowRunner", "RunLimits"]


@dataclass(frozen=True)
class RunLimits:
    """Bounds on one run.

    :param max_concurrency: requests in flight at once (async API: tasks submitted and not yet done).
    :param api: ``online`` or ``async``.
    :param async_poll_interval: seconds between polls of an async task.
    :param max_total_tokens: stop dispatching once the scope's ledger reaches this many tokens.
    :param max_cost: stop dispatching once the scope's ledger reaches this cost.
    :param deadline: ``time.monotonic()`` instant after which nothing new starts.
    :param progress_interval: seconds between progress lines.
    """

    max_concurrency: int = 8
    api: str = "online"
    """``online`` (chat completions) or ``async`` (submit, then poll the async result)."""
    async_poll_interval: float = 2.0
    max_total_tokens: int | None = None
    max_cost: Decimal | None = None
    deadline: float | None = None
    progress_interval: float = 5.0


class RowRunner:
    """Runs rows to completion. One instance per task try.

    :param clients: async clients, one per group of workers (owned by the caller). httpx's
        connection pool scans every connection per request, so several small pools beat one large one.
    :param model: model name sent with every row.
    :param request_params: other request options, validated before the run.
    :param template: renders a row's messages.
    :param recorder: records outcomes and writes them.
    :param limits: concurrency, budget, deadline, pacing.
    """

    def __init__(self, *, clients: Sequence[AsyncGLMClient], model: str, request_params: dict[str, Any],
                 template: Any, recorder: RunRecorder, limits: RunLimits,
                 log: Any = None) -> None:
        self.clients = clients
        self.model = model
        self.params = request_params
        self.template = template
        self.recorder = recorder
        self.limits = limits
        self.log = log or logging.getLogger(__name__)
        self._started = time.monotonic()

    async def run(self, rows: Sequence[Row]) -> RunTotals:
        """Send every row not already ``ok`` in the sink; return the totals once all is written."""
        todo = set(await self.recorder.resume([row.key for row in rows]))
        queue = iter([row for row in rows if row.key in todo])
        progress = asyncio.create_task(self._progress())
        count = max(1, self.limits.max_concurrency)
        try:
            workers = [
                asyncio.create_task(self._worker(queue, self.clients[i * len(self.clients) // count]))
                for i in range(count)
            ]
            await asyncio.gather(*workers)
        finally:
            progress.cancel()
            await self.recorder.flush(force=True)
        if self.recorder.truncated and not self.recorder.fail_on_truncation:
            self.log.warning("%d answers were cut short (finish_reason length or model_context_window_exceeded).",
                             self.recorder.truncated)
        self._log_progress(final=True)
        return self.recorder.totals

    def _stop(self) -> tuple[str, str] | None:
        """``(kind, reason)`` when no new row may start, else ``None``."""
        recorder, limits, totals = self.recorder, self.limits, self.recorder.totals
        if recorder.fatal is not None:
            return "fatal", f"not sent: {type(recorder.fatal).__name__}: {recorder.fatal}"
        if recorder.write_error is not None:
            # The sink gave up: an answer now could not be recorded, and a rerun would buy it again.
            return "sink", f"not sent: results could not be written ({type(recorder.write_error).__name__})"
        if limits.deadline is not None and time.monotonic() >= limits.deadline:
            return "deadline", "not sent: the task's execution_timeout was reached"
        spent_tokens = totals.spent_before_tokens + totals.total_tokens
        if limits.max_total_tokens is not None and spent_tokens >= limits.max_total_tokens:
            limit = limits.max_total_tokens
            return "budget", f"not sent: budget max_total_tokens={limit} reached ({spent_tokens} spent)"
        if limits.max_cost is not None:
            spent_cost = (totals.spent_before_cost or Decimal(0)) + (totals.cost or Decimal(0))
            if spent_cost >= limits.max_cost:
                return "budget", f"not sent: budget max_cost={limits.max_cost} reached ({spent_cost:.6f} spent)"
        return None

    async def _worker(self, queue: Any, client: AsyncGLMClient) -> None:
        totals = self.recorder.totals
        for row in queue:
            stop = self._stop()
            if stop is not None:
                if totals.stop_kind is None:
                    totals.stop_kind, totals.stop_reason = stop
                await self.recorder.skipped(row.key, stop[1])
                continue
            messages = self.template.render(row)
            try:
                if self.limits.api == "async":
                    completion = await self._ask_async(client, messages)
                else:
                    completion = await client.chat_completion(
                        self.model, messages, deadline=self.limits.deadline, **self.params
                    )
            except GLMError as exc:
                await self.recorder.error(row.key, exc)
                continue
            except UnicodeEncodeError as exc:
                # A lone surrogate in the row's text cannot be sent as UTF-8 JSON: fail this row only.
                await self.recorder.failed(
                    row.key, f"the row's text is not valid Unicode and cannot be sent ({exc.reason} at "
                             f"position {exc.start} of the request body); nothing was sent or billed")
                continue
            await self.recorder.completion(row.key, completion)

    async def _ask_async(self, client: AsyncGLMClient, messages: list[dict[str, Any]]) -> ChatCompletion:
        """Submit through the async API and poll until the task succeeds or fails."""
        from airflow_provider_glm.batch_api import AsyncBatchAPI, AsyncTask, get_async_result, submit_async_chat
        from airflow_provider_glm.models import build_chat_request

        api = AsyncBatchAPI(client)
        deadline = self.limits.deadline
        body = build_chat_request(self.model, messages, **self.params).to_body()
        task: AsyncTask = await api(submit_async_chat(body), deadline=deadline)
        while task.task_status == "PROCESSING":
            await asyncio.sleep(self.limits.async_poll_interval)
            task = await api(get_async_result(task.id), deadline=deadline)
        if task.task_status != "SUCCESS":
            raise task.failure()
        return task.completion()

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(self.limits.progress_interval)
            self._log_progress()

    def _log_progress(self, *, final: bool = False) -> None:
        t = self.recorder.totals
        elapsed = max(1e-6, time.monotonic() - self._started)
        rate = t.done / elapsed
        todo = t.rows - t.resumed - t.done
        eta = f"{todo / rate:.0f} s" if rate > 0 and todo > 0 else "-"
        cost = f"{t.cost:.6f} {t.currency}" if t.cost is not None else "unknown"
        self.log.info(
            "%s rows %d/%d (ok %d, failed %d, filtered %d, skipped %d, resumed %d); tokens %d; cost %s; "
            "%.1f rows/s; ETA %s",
            "Done:" if final else "Progress:", t.done + t.resumed, t.rows, t.ok, t.failed, t.filtered,
            t.skipped, t.resumed, t.total_tokens, cost, rate, eta,
        )
