"""``GLMBatchOperator``: every row through GLM's Batch API, at half the online price.

It takes the same row, template, structured-output, sink, reuse, pricing and XCom options as
:class:`~airflow_provider_glm.operators.chat.GLMChatOperator` (both extend
:class:`~airflow_provider_glm.operators.base.GLMBaseOperator`). Rows already ``ok`` in this run are
resumed and rows an earlier run answered identically are reused; the rest are written as JSONL
(``custom_id`` = row key; split above 50,000 lines or 100 MB), uploaded and submitted, after the
budget check on their upper-bound cost. It then waits: deferred to
:class:`~airflow_provider_glm.triggers.batch.GLMBatchTrigger`, or polling in the task. Output lines
become results and ledger entries priced at the batch discount; error-file lines become failed (or
filtered) rows.

A retried task re-attaches to the batches it created for the same (dag, task, run, map_index): their
ids are kept in Airflow's task state store, and each batch carries the scope in its metadata, so a
crash between creating a batch and storing its id is also recovered. Rows that no earlier batch
holds (a crash between two submissions) are submitted; rows of an earlier batch are never submitted
twice. Everything runs on the async client, one event loop per ``execute``.

Example::

    GLMBatchOperator(
        task_id="summarize_nightly",
        rows=extract.output,
        row_key="id",
        prompt="Summarize: {{ row.body }}",
        sqlalchemy_url="sqlite:///warehouse.db",
        poll_interval=300,
    )
"""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_glm._compat import AirflowFailException, conf
from airflow_provider_glm._event_loop import run_in_task
from airflow_provider_glm.exceptions import GLMError
from airflow_provider_glm.operators.base import GLMBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_glm.client._client import AsyncGLMClient
    from airflow_provider_glm.rows._batch_jobs import BatchJobs
    from airflow_provider_glm.rows._plan import RunPlan

__all__ = ["GLMBatchOperator"]

MAX_LINES = 50_000
MAX_BYTES = 100 * 1024 * 1024
EVENT_STATUSES = ("done", "timeout", "error")


class GLMBatchOperator(GLMBaseOperator):
    """Send rows through the Batch API; results and ledger exactly like the chat operator.

    Takes every parameter of :class:`~airflow_provider_glm.operators.base.GLMBaseOperator`, plus:

    :param deferrable: wait in the triggerer (default: Airflow's ``[operators] default_deferrable``).
    :param poll_interval: seconds between status polls.
    :param cancel_on_kill: cancel the batches when the task is killed (also while deferred, on Airflow 3.3+)
        or times out.
    :param completion_window: the batch's completion window (the API offers ``24h``).
    :param max_lines_per_file: lines per uploaded file (the API allows 50,000).
    :param max_bytes_per_file: bytes per uploaded file (the API allows 100 MB).
    :param max_total_tokens: refuse to submit when the rows' upper-bound tokens (prompt bound plus
        ``max_tokens`` each) would pass this, counting what earlier tries spent.
    :param max_cost: the same for cost at batch prices.
    """

    def __init__(self, *, deferrable: bool | None = None, poll_interval: float = 60.0, cancel_on_kill: bool = True,
                 completion_window: str = "24h", max_lines_per_file: int = MAX_LINES,
                 max_bytes_per_file: int = MAX_BYTES, max_total_tokens: int | None = None,
                 max_cost: float | Decimal | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if deferrable is None:
            deferrable = conf.getboolean("operators", "default_deferrable", fallback=False)
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
        if not 0 < max_lines_per_file <= MAX_LINES or not 0 < max_bytes_per_file <= MAX_BYTES:
            raise ValueError(f"files hold at most {MAX_LINES} lines and {MAX_BYTES} bytes")
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.cancel_on_kill = cancel_on_kill
        self.completion_window = completion_window
        self.max_lines_per_file = max_lines_per_file
        self.max_bytes_per_file = max_bytes_per_file
        self.max_total_tokens = max_total_tokens
        self.max_cost = Decimal(str(max_cost)) if max_cost is not None else None
        self._batch_ids: list[str] = []

    def execute(self, context: Context) -> Any:
        started = time.monotonic()
        run = self._plan(context)
        try:
            waiting = run_in_task(self._start(context, run))
        finally:
            if run.sink is not None:
                run.sink.dispose()
        if run.state.stopped is not None:  # nothing submitted (a budget, a bad input row): done already
            return self._done(context, run)
        reason = None
        if waiting:
            self._batch_ids = waiting
            if self.deferrable:
                self._defer(waiting, started)
            reason = run_in_task(self._wait(waiting, self._end_time(started)))
        return self._collect(context, reason=reason)

    def execute_complete(self, context: Context, event: Any) -> Any:
        """Resume after the trigger: write every batch's results and finish like the chat operator."""
        if not isinstance(event, dict) or event.get("status") not in EVENT_STATUSES:
            raise RuntimeError(f"the GLM batch trigger sent an unexpected event: {event!r}")
        if event["status"] == "error":
            message = f"waiting for GLM batches failed: {event.get('message')}"
            if event.get("fatal"):
                raise AirflowFailException(message + ". Retrying cannot help until the account is fixed.")
            raise RuntimeError(message)
        reason = None if event["status"] == "done" else str(event.get("message") or "the batches timed out")
        return self._collect(context, reason=reason)

    def on_kill(self) -> None:
        if not (self.cancel_on_kill and self._batch_ids):
            return
        for batch_id in self._batch_ids:
            try:
                self.hook.cancel_batch(batch_id)
                self.log.info("Cancelled GLM batch %s.", batch_id)
            except GLMError as exc:
                self.log.warning("Could not cancel GLM batch %s: %s", batch_id, exc)

    # --- phases ------------------------------------------------------------------------------------------

    def _plan(self, context: Context) -> RunPlan:
        from airflow_provider_glm.rows._pricing import BATCH_DISCOUNT  # lazy: DAG files import operators on every parse

        return self.plan(context, api="batch", price_required=self.max_cost is not None, discount=BATCH_DISCOUNT)

    def _jobs(self, context: Context, run: RunPlan, client: AsyncGLMClient) -> BatchJobs:
        """The batch engine for one phase, given this operator's limits (never the operator itself)."""
        from airflow_provider_glm.rows._batch_jobs import BatchJobs, BatchLimits  # lazy: the engine loads at execute

        limits = BatchLimits(completion_window=self.completion_window, max_lines_per_file=self.max_lines_per_file,
                             max_bytes_per_file=self.max_bytes_per_file, max_total_tokens=self.max_total_tokens,
                             max_cost=self.max_cost, reuse_unchanged=self.reuse_unchanged)
        return BatchJobs(limits, run, client, store=context.get("task_state_store"), log=self.log)

    async def _start(self, context: Context, run: RunPlan) -> list[str]:
        """Settle, re-attach, check the budget, submit; return the batches to wait for.

        Answers of earlier tries' finished batches are recorded first; rows a running batch holds are not
        submitted again; the rest (never submitted, or failed in a finished batch) go in a new batch.
        """
        async with run.hook.get_async_client() as client:
            jobs = self._jobs(context, run, client)
            todo = await jobs.settle()
            earlier = await jobs.earlier() if todo else []
            running = [b for b in earlier if not b.terminal]
            if len(running) < len(earlier):
                await jobs.record([b for b in earlier if b.terminal], final=False)
            if running:
                self.log.info("Re-attaching to batches %s created by an earlier try.", [b.id for b in running])
                held = await jobs.covered(running)
                todo = [r for r in todo if r.key not in held]
            todo = [r for r in todo if r.key not in jobs.answered]
            created = []
            if todo and run.state.stopped is None:
                jobs.check_budget(todo)
            if run.state.stopped is not None:
                for request in todo:
                    await jobs.skip(request.key, run.state.stopped[1])
                await run.writer.flush()
            elif todo:
                created = await jobs.submit(todo)
            return [b.id for b in [*running, *created] if not b.terminal]

    def _budgets(self) -> dict[str, Any]:
        return {"max_total_tokens": self.max_total_tokens, "max_cost": self.max_cost}

    def _end_time(self, started: float) -> float | None:
        """Wall-clock time (epoch seconds) when waiting must end: shortly before ``execution_timeout``."""
        if not self.execution_timeout:
            return None
        timeout = self.execution_timeout.total_seconds()
        return time.time() + (started + timeout - min(5.0, 0.1 * timeout) - time.monotonic())

    def _defer(self, batch_ids: list[str], started: float) -> None:
        from airflow_provider_glm.triggers.batch import (
            GLMBatchTrigger,  # lazy: DAG files import operators on every parse
        )

        end_time = self._end_time(started)
        trigger = GLMBatchTrigger(batch_ids, self.glm_conn_id, self.poll_interval, end_time=end_time,
                                  cancel_on_kill=self.cancel_on_kill)
        # the trigger ends its own wait at end_time (cancelling the batches); this is the backstop
        timeout = self.execution_timeout + timedelta(minutes=5) if self.execution_timeout else None
        self.defer(trigger=trigger, method_name="execute_complete", timeout=timeout)

    async def _wait(self, batch_ids: list[str], end_time: float | None) -> str | None:
        """Poll in the task until every batch is terminal; at ``end_time`` cancel them and say why."""
        from airflow_provider_glm.triggers.batch import BatchesTimedOut, wait_for_batches  # lazy: as in _defer

        async with self.hook.get_async_client() as client:
            try:
                async for message in wait_for_batches(client, batch_ids, self.poll_interval, end_time,
                                                      self.cancel_on_kill):
                    self.log.info(message)
            except BatchesTimedOut as exc:
                return str(exc)
        return None

    def _collect(self, context: Context, *, reason: str | None) -> Any:
        """Write every result of this task instance's batches and finish (a fresh plan: may run after deferral)."""
        run = self._plan(context)

        async def collect() -> None:
            async with run.hook.get_async_client() as client:
                jobs = self._jobs(context, run, client)
                todo = await jobs.settle()
                batches = await jobs.earlier() if todo else []
                await jobs.record(batches, reason=reason)

        try:
            run_in_task(collect())
        finally:
            if run.sink is not None:
                run.sink.dispose()
        if reason is not None:
            run.state.stop("deadline", f"not answered: {reason}")
        return self._done(context, run)

    def _done(self, context: Context, run: RunPlan) -> Any:
        """The ``Done:`` line (as the chat operator logs it), then the task's outcome."""
        self.log.info(run.state.progress_line(final=True, rate=0.0, eta="-"))
        return self.finish(context, run, api="batch", budgets=self._budgets())
