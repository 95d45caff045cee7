"""``GLMChatOperator``: one chat request, or every row of an upstream result or a SQL query, answered by GLM.

Single mode sends ``prompt`` (or ``messages``) once and returns the content. Row mode (``rows=`` or
``source_sql=``) renders the prompt per row with ``{{ row.<column> }}``, runs the rows concurrently
(up to ``max_concurrency``, adapting to rate limits), writes results and a usage ledger to SQL,
reuses the answers of rows that did not change since an earlier run, resumes without re-billing on
a retry, and returns the contents (or a summary when they would not fit in XCom).

Example::

    GLMChatOperator(
        task_id="summarize",
        source_sql="SELECT id, body FROM reviews WHERE day = '{{ ds }}'",
        row_key="id",
        prompt="Summarize in one sentence: {{ row.body }}",
        sqlalchemy_url="sqlite:///warehouse.db",
    )
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_glm._event_loop import run_in_task
from airflow_provider_glm.exceptions import GLMError
from airflow_provider_glm.operators.base import GLMBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_glm.rows._outcomes import Outcome
    from airflow_provider_glm.rows._plan import RunPlan

__all__ = ["GLMChatOperator"]

_ANSWER_PARTS = ("finish_reason", "reasoning_content", "tool_calls", "web_search", "content_filter")
"""What single mode's ``answer`` XCom key carries: the answer beside its content (``return_value``)."""


class GLMChatOperator(GLMBaseOperator):
    """Ask GLM once, or once per row; content and usage to XCom and SQL.

    Takes every parameter of :class:`~airflow_provider_glm.operators.base.GLMBaseOperator`
    (``prompt``, ``messages``, ``rows``, ``source_sql``, sinks, ...; see ``docs/operator.md``), plus:

    :param max_concurrency: the most rows in flight at once. With a ``pool``, ``pool_slots`` defaults to it.
    :param adaptive_concurrency: lower the rows in flight on rate limits and timeouts, raise them again as
        answers arrive (default ``True``); ``False`` keeps ``max_concurrency`` throughout.
    :param max_total_tokens: budget over all tries of this task in this run (possibly billed tokens count).
    :param max_cost: budget in the price table's currency (possibly billed cost counts).
    :param progress_interval: seconds between progress log lines.
    :param api: ``online`` (default) calls chat completions; ``async`` submits each row to the async
        API and polls its result, for accounts where that beats the online concurrency limit.
    :param async_poll_interval: seconds between polls of an async task.
    """

    def __init__(self, *, max_concurrency: int = 8, adaptive_concurrency: bool = True,
                 max_total_tokens: int | None = None, max_cost: float | Decimal | None = None,
                 progress_interval: float = 5.0, api: str = "online", async_poll_interval: float = 2.0,
                 **kwargs: Any) -> None:
        _default_pool_slots(kwargs, max_concurrency)
        super().__init__(**kwargs)
        if api not in ("online", "async"):
            raise ValueError(f"api must be 'online' or 'async', got {api!r}")
        if async_poll_interval <= 0:
            raise ValueError(f"async_poll_interval must be > 0 seconds, got {async_poll_interval}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if progress_interval <= 0:
            raise ValueError(f"progress_interval must be > 0 seconds, got {progress_interval}")
        self.api = api
        self.async_poll_interval = async_poll_interval
        self.max_concurrency = max_concurrency
        self.adaptive_concurrency = adaptive_concurrency
        self.max_total_tokens = max_total_tokens
        self.max_cost = Decimal(str(max_cost)) if max_cost is not None else None
        self.progress_interval = progress_interval

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """:meth:`BaseOperator.partial`, with ``pool_slots`` defaulting to ``max_concurrency`` in a pool
        (the scheduler reads a mapped task's slots from here, before any instance exists)."""
        _default_pool_slots(kwargs, kwargs.get("max_concurrency", 8))
        return super().partial(**kwargs)

    def execute(self, context: Context) -> Any:
        started = time.monotonic()
        run = self.plan(context, api=self.api, price_required=self.max_cost is not None)
        try:
            if self.row_mode:
                run_in_task(self._run_rows(run, started))
            else:
                run_in_task(self._run_single(run, started))
                self._push_single(context, run)
        finally:
            if run.sink is not None:
                run.sink.dispose()
        return self.finish(context, run, api=self.api,
                           budgets={"max_total_tokens": self.max_total_tokens, "max_cost": self.max_cost})

    def _deadline(self, started: float) -> float | None:
        """When to stop starting rows: shortly before ``execution_timeout``, whose clock Airflow started
        earlier, so skipped rows are still recorded and the last answers written before it fires."""
        if not self.execution_timeout:
            return None
        timeout = self.execution_timeout.total_seconds()
        return started + timeout - min(5.0, 0.1 * timeout)

    async def _run_rows(self, run: RunPlan, started: float) -> None:
        # lazy, like every engine import here: DAG files import operators on every parse
        from airflow_provider_glm.rows._concurrency import AdaptiveLimit, CircuitBreaker
        from airflow_provider_glm.rows._runner import RowRunner, RunLimits

        assert run.source is not None
        limits = RunLimits(api=self.api, async_poll_interval=self.async_poll_interval,
                           max_total_tokens=self.max_total_tokens, max_cost=self.max_cost,
                           deadline=self._deadline(started), progress_interval=self.progress_interval,
                           reuse_unchanged=self.reuse_unchanged)
        limit = AdaptiveLimit(self.max_concurrency, adaptive=self.adaptive_concurrency)
        breaker = CircuitBreaker(run.hook.endpoint)

        def observe(kind: str, error: Any) -> None:
            limit.observe(kind, error)
            breaker.observe(kind, error)

        async with run.hook.get_async_client(max_connections=self.max_concurrency, observer=observe) as client:
            runner = RowRunner(run=run, client=client, workers=self.max_concurrency, limits=limits, limit=limit,
                               breaker=breaker, log=self.log)
            await runner.run(run.source)

    async def _run_single(self, run: RunPlan, started: float) -> None:
        """One request, straight through the client: resumed from an earlier try when it already succeeded."""
        # lazy, like every engine import here: DAG files import operators on every parse
        from airflow_provider_glm.rows import _outcomes as outcomes
        from airflow_provider_glm.rows._runner import warn_if_truncated
        from airflow_provider_glm.rows._sources import InputError

        request = run.single
        assert request is not None
        outcome: Outcome
        stored = run.sink.this_run(run.scope, [request.key]).get(request.key) if run.sink is not None else None
        if stored is not None and stored["status"] == "ok":
            self.log.info("This request already succeeded in an earlier try; returning the stored answer.")
            outcome = outcomes.resumed(run.rules, request.key, stored)
            run.stored = stored
        elif request.unsendable:
            outcome = outcomes.not_answered(run.rules, request.key, InputError(request.unsendable))
        elif budget := run.state.budget_exceeded(self.max_total_tokens, self.max_cost):
            run.state.stop("budget", budget)
            outcome = outcomes.skipped(run.rules, request.key, budget)
        else:
            async with run.hook.get_async_client() as client:
                try:
                    completion = await client.send_chat(request.body, deadline=self._deadline(started))
                except GLMError as exc:
                    outcome = outcomes.call_failed(run.rules, request, exc)
                else:
                    outcome = outcomes.answered(run.rules, request, completion)
        run.record(outcome)
        run.outcome = outcome
        await run.writer.flush()
        warn_if_truncated(run.state, run.rules, self.log)

    def _push_single(self, context: Context, run: RunPlan) -> None:
        """Single mode's XCom: ``usage`` (the ledger entry) and ``answer`` (the parts beside the content)."""
        outcome = run.outcome
        if not self.do_xcom_push or outcome is None:
            return
        ti = context["ti"]
        usage = outcome.usage
        if usage is not None:
            ti.xcom_push(key="usage", value={
                "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens, "cached_tokens": usage.cached_tokens,
                "reasoning_tokens": usage.reasoning_tokens, "model": usage.model, "request_id": usage.request_id,
                "response_id": usage.response_id, "try_number": usage.try_number, "billing": usage.billing,
                "cost": float(usage.cost) if usage.cost is not None else None, "currency": usage.currency,
                "unknown_billing_attempts": usage.unknown_billing_attempts,
                "unknown_tokens_max": usage.unknown_tokens_max,
            })
        result = outcome.result
        if result is not None and result.status != "skipped":
            ti.xcom_push(key="answer", value={name: getattr(result, name) for name in _ANSWER_PARTS})
        elif outcome.resumed and run.stored is not None:
            stored = run.stored
            ti.xcom_push(key="answer", value={name: stored.get(name) for name in _ANSWER_PARTS})


def _default_pool_slots(kwargs: dict[str, Any], max_concurrency: Any) -> None:
    """In a pool, a task takes as many slots as rows it may have in flight, unless ``pool_slots`` says otherwise:
    a pool sized to the account's concurrency limit then bounds every task on every worker together."""
    if kwargs.get("pool") is not None and "pool_slots" not in kwargs and isinstance(max_concurrency, int) \
            and max_concurrency >= 1:
        kwargs["pool_slots"] = max_concurrency
