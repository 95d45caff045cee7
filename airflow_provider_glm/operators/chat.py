"""``GLMChatOperator``: one chat request, or every row of an upstream result, answered by GLM.

Single mode sends ``prompt`` (or ``messages``) once and returns the content. Row mode (``rows=``)
renders the prompt per row with ``{{ row.<column> }}``, runs the rows concurrently at
``max_concurrency``, writes results and a usage ledger to SQL, resumes without re-billing on a
retry, and returns the contents (or a summary when they would not fit in XCom).

Example::

    GLMChatOperator(
        task_id="summarize",
        rows=extract.output,
        row_key="id",
        prompt="Summarize in one sentence: {{ row.text }}",
        sqlalchemy_url="sqlite:///warehouse.db",
    )
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.operators.base import GLMBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_glm.operators.base import Prepared
    from airflow_provider_glm.recording import RunTotals

__all__ = ["GLMChatOperator"]

_WORKERS_PER_POOL = 8
"""Workers sharing one httpx pool. httpcore scans every pooled connection on each request; in
profiles of 2,000 rows at concurrency 32, pools of 8 cut that scan's CPU several-fold. Wall-clock
throughput on a 2-core machine did not separate the two beyond noise."""


class GLMChatOperator(GLMBaseOperator):
    """Ask GLM once, or once per upstream row; content and usage to XCom and SQL.

    Takes every parameter of :class:`~airflow_provider_glm.operators.base.GLMBaseOperator`
    (``prompt``, ``messages``, ``rows``, sinks, ...; see ``docs/operator.md``), plus:

    :param max_concurrency: rows in flight at once (the account's concurrency limit).
    :param max_total_tokens: budget over all tries of this task in this run.
    :param max_cost: budget in the price table's currency.
    :param progress_interval: seconds between progress log lines.
    :param api: ``online`` (default) calls chat completions; ``async`` submits each row to the async
        API and polls its result, for accounts where that beats the online concurrency limit.
    :param async_poll_interval: seconds between polls of an async task.
    """

    def __init__(self, *, max_concurrency: int = 8, max_total_tokens: int | None = None,
                 max_cost: float | Decimal | None = None, progress_interval: float = 5.0, api: str = "online",
                 async_poll_interval: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if api not in ("online", "async"):
            raise ValueError(f"api must be 'online' or 'async', got {api!r}")
        if async_poll_interval <= 0:
            raise ValueError(f"async_poll_interval must be > 0 seconds, got {async_poll_interval}")
        self.api = api
        self.async_poll_interval = async_poll_interval
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if progress_interval <= 0:
            raise ValueError(f"progress_interval must be > 0 seconds, got {progress_interval}")
        self.max_concurrency = max_concurrency
        self.max_total_tokens = max_total_tokens
        self.max_cost = Decimal(str(max_cost)) if max_cost is not None else None
        self.progress_interval = progress_interval

    def execute(self, context: Context) -> Any:
        started = time.monotonic()
        run = self.prepare(context, price_required=self.max_cost is not None)
        try:
            asyncio.run(self._run(run, started))
        finally:
            if run.sink is not None:
                run.sink.dispose()
        return self.finish(context, run)

    def _deadline(self, started: float) -> float | None:
        """When to stop starting rows: shortly before ``execution_timeout``, whose clock Airflow started
        earlier, so skipped rows are still recorded and the last answers written before it fires."""
        if not self.execution_timeout:
            return None
        timeout = self.execution_timeout.total_seconds()
        return started + timeout - min(5.0, 0.1 * timeout)

    async def _run(self, run: Prepared, started: float) -> RunTotals:
        from airflow_provider_glm.runner import RowRunner, RunLimits

        concurrency = self.max_concurrency if self.row_mode else 1
        limits = RunLimits(
            max_concurrency=concurrency,
            api=self.api,
            async_poll_interval=self.async_poll_interval,
            max_total_tokens=self.max_total_tokens,
            max_cost=self.max_cost,
            deadline=self._deadline(started),
            progress_interval=self.progress_interval,
        )
        pools = -(-concurrency // _WORKERS_PER_POOL)
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(run.hook.get_async_client(max_connections=-(-concurrency // pools)))
                for _ in range(pools)
            ]
            runner = RowRunner(clients=clients, model=run.model, request_params=run.params, template=run.template,
                               recorder=run.recorder, limits=limits, log=self.log)
            return await runner.run(run.rows)
