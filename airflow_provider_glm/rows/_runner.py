"""The row engine: prepared requests through async clients at an adaptive concurrency.

:class:`RowRunner` reads chunks of prepared requests, settles what needs no call (rows already
``ok`` in this run, rows an earlier run answered identically), and sends the rest with at most
:class:`~airflow_provider_glm.rows._concurrency.AdaptiveLimit` rows in flight. Every outcome goes to the
:class:`~airflow_provider_glm.rows._state.RunState` and the
:class:`~airflow_provider_glm.rows._writer.RecordWriter`. It stops sending at an account error, a
database that gave up, the deadline, a budget, an unreachable endpoint or a bad input row, and logs
progress at a steady pace.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.client._calls import get_async_result, submit_async_chat
from airflow_provider_glm.exceptions import GLMError
from airflow_provider_glm.rows import _outcomes as outcomes
from airflow_provider_glm.rows._sources import InputError

if TYPE_CHECKING:
    from airflow_provider_glm.client._client import AsyncGLMClient
    from airflow_provider_glm.client.models import ChatCompletion
    from airflow_provider_glm.rows._concurrency import AdaptiveLimit, CircuitBreaker
    from airflow_provider_glm.rows._outcomes import Outcome, OutcomeRules
    from airflow_provider_glm.rows._plan import RunPlan
    from airflow_provider_glm.rows._rendering import PreparedRequest
    from airflow_provider_glm.rows._sources import RequestChunks
    from airflow_provider_glm.rows._state import RunState

__all__ = ["RowRunner", "RunLimits", "settle", "warn_if_truncated"]


@dataclass(frozen=True)
class RunLimits:
    """Bounds on one run.

    :param api: ``online`` or ``async``.
    :param async_poll_interval: seconds between polls of an async task.
    :param max_total_tokens: stop sending once the scope's known tokens, plus the bound of possibly billed
        ones, reach this.
    :param max_cost: the same for cost.
    :param deadline: ``time.monotonic()`` instant after which nothing new starts.
    :param progress_interval: seconds between progress lines.
    :param reuse_unchanged: answer a row from an earlier run's identical request instead of asking again.
    """

    api: str = "online"
    async_poll_interval: float = 2.0
    max_total_tokens: int | None = None
    max_cost: Decimal | None = None
    deadline: float | None = None
    progress_interval: float = 5.0
    reuse_unchanged: bool = True


class RowRunner:
    """Runs one task try's rows to completion.

    :param run: the validated run (its rules, state, writer and sink).
    :param client: the async client every worker sends through (owned by the caller); its pool holds a
        connection per worker.
    :param workers: how many workers (the most rows that can ever be in flight).
    :param limit: the adaptive limit the workers take slots from.
    :param breaker: stops sending when the endpoint cannot be reached.
    """

    def __init__(self, *, run: RunPlan, client: AsyncGLMClient, workers: int, limits: RunLimits,
                 limit: AdaptiveLimit, breaker: CircuitBreaker, log: Any = None) -> None:
        self.run_plan = run
        self.client = client
        self.workers = workers
        self.rules = run.rules
        self.state = run.state
        self.writer = run.writer
        self.limits = limits
        self.limit = limit
        self.breaker = breaker
        self.log = log or logging.getLogger(__name__)
        self._started = time.monotonic()
        self._logged_changes = 0
        self._in_memory = True
        self._reader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="glm-source")

    async def run(self, source: RequestChunks) -> None:
        """Send every row that needs a call; return once every outcome is written."""
        queue: asyncio.Queue[PreparedRequest | None] = asyncio.Queue(maxsize=max(self.workers * 2, 64))
        progress = asyncio.create_task(self._progress())
        workers = [asyncio.create_task(self._worker(queue, self.client)) for _ in range(self.workers)]
        producer = asyncio.create_task(self._produce_all(source, queue, len(workers)))
        try:
            # a worker that dies (a bug, an exception a signal raised inside it) ends the run at once,
            # instead of leaving the producer blocked on a full queue and the others waiting
            done, _ = await asyncio.wait([producer, *workers], return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
            await asyncio.gather(producer, *workers)
        finally:
            for task in (producer, *workers):
                task.cancel()
            await asyncio.gather(producer, return_exceptions=True)  # it closes the source on the reader
            progress.cancel()
            self._reader.shutdown(wait=False)
            await self.writer.flush()
        warn_if_truncated(self.state, self.rules, self.log)
        self._log_progress(final=True)

    # --- reading and settling rows -------------------------------------------------------------------

    async def _produce_all(self, source: RequestChunks, queue: asyncio.Queue[PreparedRequest | None],
                           workers: int) -> None:
        await self._produce(source, queue)
        for _ in range(workers):
            await queue.put(None)

    async def _produce(self, source: RequestChunks, queue: asyncio.Queue[PreparedRequest | None]) -> None:
        self._in_memory = source.in_memory
        chunks = source.chunks()
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self.state.stopped is not None and not source.in_memory:
                    break  # a streamed source is not read past a stop
                try:
                    chunk = await loop.run_in_executor(self._reader, next, chunks, None)
                except InputError as exc:
                    self.state.stop("input", f"not sent: {exc}")
                    break
                if chunk is None:
                    break
                for request in await self._settle(chunk):
                    await queue.put(request)
        finally:
            await loop.run_in_executor(self._reader, source.close)

    async def _settle(self, chunk: list[PreparedRequest]) -> list[PreparedRequest]:
        run = self.run_plan
        return await settle(chunk, run, reuse=self.limits.reuse_unchanged,
                            since=None if self._in_memory else run.started_at)

    # --- sending rows ----------------------------------------------------------------------------------

    def _stop_reason(self) -> tuple[str, str] | None:
        state, limits = self.state, self.limits
        if state.stopped is not None:
            return state.stopped
        fatal = state.fatal
        if fatal is not None:
            return "fatal", f"not sent: {type(fatal).__name__}: {fatal}"
        if self.writer.error is not None:
            # The sink gave up: an answer now could not be recorded, and a rerun would buy it again.
            return "sink", f"not sent: results could not be written ({type(self.writer.error).__name__})"
        if self.breaker.open_reason is not None:
            return "unreachable", self.breaker.open_reason
        if limits.deadline is not None and time.monotonic() >= limits.deadline:
            return "deadline", "not sent: the task's execution_timeout was reached"
        if limits.max_total_tokens is None and limits.max_cost is None:
            return None
        budget = state.budget_exceeded(limits.max_total_tokens, limits.max_cost)
        return ("budget", budget) if budget else None

    async def _worker(self, queue: asyncio.Queue[PreparedRequest | None], client: AsyncGLMClient) -> None:
        rules = self.rules
        while (request := await queue.get()) is not None:
            stop = self._stop_reason()
            if stop is not None:
                self.state.stop(*stop)
                await self._record(outcomes.skipped(rules, request.key, stop[1]))
                continue
            if request.unsendable:
                await self._record(outcomes.not_answered(rules, request.key, InputError(request.unsendable),
                                                         fingerprint=request.fingerprint))
                continue
            await self.limit.acquire()
            try:
                outcome = await self._send(client, request)
                # counted before the slot is freed, so the worker that takes it sees this row's spend
                self.run_plan.record(outcome)
            finally:
                self.limit.release()
            await self.writer.flush()

    async def _send(self, client: AsyncGLMClient, request: PreparedRequest) -> Outcome:
        """Ask for one row, unless a stop came while this worker waited for its slot."""
        stop = self._stop_reason()
        if stop is not None:
            self.state.stop(*stop)
            return outcomes.skipped(self.rules, request.key, stop[1])
        try:
            completion = await self._ask(client, request)
        except GLMError as exc:
            return outcomes.call_failed(self.rules, request, exc)
        if completion.usage is None:
            self.log.warning("GLM answered row %s without usage (response %s): it was billed, but its tokens "
                             "are unknown; the ledger records it as billing='unknown' with an upper bound.",
                             request.key, completion.id)
        return outcomes.answered(self.rules, request, completion)

    async def _record(self, outcome: Outcome) -> None:
        self.run_plan.record(outcome)
        await self.writer.flush()

    async def _ask(self, client: AsyncGLMClient, request: PreparedRequest) -> ChatCompletion:
        if self.limits.api != "async":
            return await client.send_chat(request.body, deadline=self.limits.deadline)
        deadline = self.limits.deadline
        task, submitted = await client.call_with_info(submit_async_chat(request.body), deadline=deadline)
        while task.task_status == "PROCESSING":
            await asyncio.sleep(self.limits.async_poll_interval)
            task = await client.call(get_async_result(task.id), deadline=deadline)
        if task.task_status != "SUCCESS":
            error = task.failure()
            error.call_info = submitted
            raise error
        completion = task.completion()
        completion._call_info = submitted
        return completion

    # --- progress --------------------------------------------------------------------------------------

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(self.limits.progress_interval)
            self._log_progress()

    def _log_progress(self, *, final: bool = False) -> None:
        changes = self.limit.changes[self._logged_changes:]
        if changes:
            self._logged_changes += len(changes)
            first, last = changes[0], changes[-1]
            self.log.info("Concurrency limit %d -> %d over %d change(s) (last: %s); max_concurrency %d.",
                          first[1], last[2], len(changes), last[3], self.limit.maximum)
        state = self.state
        elapsed = max(1e-6, time.monotonic() - self._started)
        sent = state.done - state.count("resumed") - state.count("reused")
        rate = sent / elapsed
        todo = state.count("seen") - state.done
        eta = f"{todo / rate:.0f} s" if rate > 0 and todo > 0 else "-"
        extra = f"; in flight {self.limit.in_flight}, limit {self.limit.limit}/{self.limit.maximum}"
        self.log.info(state.progress_line(final=final, rate=rate, eta=eta, extra=extra))


async def settle(chunk: list[PreparedRequest], run: RunPlan, *, reuse: bool,
                 since: datetime.datetime | None) -> list[PreparedRequest]:
    """Record the rows of ``chunk`` that need no call; return the others, in order.

    A row already ``ok`` in this task instance (an earlier try) is resumed: counted, not written again.
    With ``reuse``, a row whose row key and fingerprint match an ``ok`` result of an earlier run of the
    same DAG and task is answered from it, at no cost. For a streamed source (``since`` given; a list is
    checked before any call), a row key seen twice (in this chunk, still being written, or written by this
    process at or after ``since``) stops the run (``input``).
    """
    rules, state, writer, sink = run.rules, run.state, run.writer, run.sink
    state.saw(len(chunk))
    for request in chunk:
        state.order(request.key)
    if sink is None or not chunk:
        return chunk
    keys = [r.key for r in chunk]
    busy = {key for key in keys if writer.pending(key)}
    stored = await asyncio.to_thread(sink.this_run, rules.scope, keys)
    todo = [r for r in chunk if r.key not in stored or stored[r.key]["status"] != "ok"]
    earlier: dict[str, dict[str, Any]] = {}
    if reuse and todo:
        earlier = await asyncio.to_thread(sink.earlier_answers, rules.scope, {r.key: r.fingerprint for r in todo})
    send: list[PreparedRequest] = []
    seen: set[str] = set()
    for request in chunk:
        row = stored.get(request.key)
        if since is not None and (request.key in seen or request.key in busy
                                  or (row is not None and row["updated_at"] >= since)):
            state.stop("input", f"not sent: the row key {request.key!r} appears twice in the input; "
                                "row_key must identify one row")
            break
        seen.add(request.key)
        if row is not None and row["status"] == "ok":
            run.record(outcomes.resumed(rules, request.key, row))
        elif request.key in earlier:
            run.record(outcomes.reused(rules, request, earlier[request.key]))
        else:
            send.append(request)
    await writer.flush()
    return send


def warn_if_truncated(state: RunState, rules: OutcomeRules, log: Any) -> None:
    """The end-of-run warning about answers cut short (``ok`` rows unless ``fail_on_truncation``)."""
    if state.count("truncated") and not rules.fail_on_truncation:
        log.warning("%d answers were cut short (finish_reason length or model_context_window_exceeded).",
                    state.count("truncated"))
