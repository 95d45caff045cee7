"""The steps of a batch run, on the async client: settle rows, find earlier batches, submit, record results.

:class:`BatchJobs` is what :class:`~airflow_provider_glm.operators.batch.GLMBatchOperator` does
between planning and finishing. Earlier tries' batches are found through Airflow's task state store
and through the scope every batch carries in its metadata; a batch's rows are read from its input
file, so a row is submitted again only when no running batch holds it. Results become the same
outcomes as online answers (:mod:`airflow_provider_glm.rows._outcomes`), priced at the batch discount.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.client import _calls as calls
from airflow_provider_glm.client._error_codes import rule_for_code
from airflow_provider_glm.exceptions import GLMError
from airflow_provider_glm.rows import _outcomes as outcomes
from airflow_provider_glm.rows._runner import settle

if TYPE_CHECKING:
    from airflow_provider_glm.client._calls import Batch
    from airflow_provider_glm.client._client import AsyncGLMClient
    from airflow_provider_glm.rows._plan import RunPlan
    from airflow_provider_glm.rows._rendering import PreparedRequest

__all__ = ["LOOKUP_PAGES", "STATE_KEY", "BatchJobs", "BatchLimits"]

STATE_KEY = "glm_batch_ids"
"""Task state store key holding the batch ids of this task instance."""
LOOKUP_PAGES = 5
"""Pages of 100 newest batches searched for this task instance's metadata on every try."""


@dataclass(frozen=True)
class BatchLimits:
    """The batch operator's limits, as the engine reads them (each is the operator parameter of that name).

    :param completion_window: the batches' completion window.
    :param max_lines_per_file: lines per uploaded file.
    :param max_bytes_per_file: bytes per uploaded file.
    :param max_total_tokens: refuse to submit rows whose upper-bound tokens would pass this.
    :param max_cost: the same for cost at batch prices.
    :param reuse_unchanged: answer a row from an earlier run's identical request instead of submitting it.
    """

    completion_window: str
    max_lines_per_file: int
    max_bytes_per_file: int
    max_total_tokens: int | None = None
    max_cost: Decimal | None = None
    reuse_unchanged: bool = True


class BatchJobs:
    """One phase of a batch run (before deferring, or after).

    :param limits: file limits, completion window, budgets.
    :param run: the validated run.
    :param client: the async client every call goes through.
    :param store: Airflow's task state store (``context["task_state_store"]``), where batch ids are kept;
        ``None`` where the Airflow version has none.
    :param log: the task's logger.
    """

    def __init__(self, limits: BatchLimits, run: RunPlan, client: AsyncGLMClient, *, store: Any = None,
                 log: Any = None) -> None:
        self.limits = limits
        self.run = run
        self.client = client
        self.store = store
        self.log = log or logging.getLogger(__name__)
        self.requests: dict[str, PreparedRequest] = {}
        """Rows that still need an outcome in this phase."""
        self.answered: set[str] = set()

    # --- rows ----------------------------------------------------------------------------------------

    async def settle(self) -> list[PreparedRequest]:
        """Resume and reuse what needs no batch; return the rest (their outcome is still due)."""
        run = self.run
        assert run.source is not None
        chunks = run.source.chunks()
        todo: list[PreparedRequest] = []
        try:
            while run.state.stopped is None and (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                todo += await settle(chunk, run, reuse=self.limits.reuse_unchanged,
                                     since=None if run.source.in_memory else run.started_at)
        except ValueError as exc:
            run.state.stop("input", f"not sent: {exc}")
        finally:
            await asyncio.to_thread(run.source.close)
        self.requests = {r.key: r for r in todo}
        return todo

    # --- earlier batches -----------------------------------------------------------------------------

    def scope_tag(self) -> str:
        s = self.run.scope
        return json.dumps([s.dag_id, s.task_id, s.run_id, s.map_index])

    async def earlier(self) -> list[Batch]:
        """Batches earlier tries (or phases) of this task instance created: the state store's, plus any of
        the newest :data:`LOOKUP_PAGES` pages of the account's batches whose metadata names this task instance."""
        found = {batch_id: await self.client.call(calls.retrieve_batch(batch_id)) for batch_id in self._stored_ids()}
        tag, after = self.scope_tag(), None
        for _ in range(LOOKUP_PAGES):
            page = await self.client.call(calls.list_batches(after=after))
            found.update({b.id: b for b in page.data
                          if (b.metadata or {}).get("airflow_scope") == tag and b.id not in found})
            if not page.has_more or not page.data:
                break
            after = page.data[-1].id
        return list(found.values())

    async def covered(self, batches: list[Batch]) -> set[str]:
        """Row keys held by ``batches`` (read from their input files). When a file cannot be read, every row
        counts as held: a row is never bought twice on a guess."""
        keys: set[str] = set()
        for batch in batches:
            try:
                if not batch.input_file_id:
                    raise GLMError("the batch names no input file")
                content = await self.client.call(calls.file_content(batch.input_file_id))
            except GLMError as exc:
                self.log.warning("Cannot read the rows of batch %s (%s); none of this run's rows is submitted "
                                    "again while it runs.", batch.id, exc)
                return set(self.requests)
            for line in content.splitlines():
                if line.strip():
                    keys.add(str(json.loads(line).get("custom_id")))
        return keys

    def _stored_ids(self) -> list[str]:
        value = self.store.get(STATE_KEY) if self.store is not None else None
        return [str(batch_id) for batch_id in value] if isinstance(value, list) else []

    # --- submitting -----------------------------------------------------------------------------------

    def check_budget(self, todo: list[PreparedRequest]) -> None:
        """Refuse to submit when the rows' upper-bound spend would pass a budget: they are recorded skipped."""
        run, limits = self.run, self.limits
        if limits.max_total_tokens is None and limits.max_cost is None:
            return
        spent = run.state.total_spend
        tokens, cost, priced = spent.tokens_bound, spent.cost_bound or Decimal(0), True
        for request in todo:
            row_tokens, row_cost = run.rules.pricer.bound(request.prompt_bound, run.rules.max_tokens)
            tokens += row_tokens
            priced = priced and row_cost is not None
            cost += row_cost or Decimal(0)
        reason = None
        if limits.max_total_tokens is not None and tokens > limits.max_total_tokens:
            reason = (f"not sent: these {len(todo)} rows could bill up to {tokens} tokens (prompt bound plus "
                      f"max_tokens each, with what earlier tries spent), above "
                      f"max_total_tokens={limits.max_total_tokens}")
        elif limits.max_cost is not None and (not priced or cost > limits.max_cost):
            reason = (f"not sent: these {len(todo)} rows could cost up to {cost:.6f} at batch prices (with what "
                      f"earlier tries spent), above max_cost={limits.max_cost}")
        if reason is not None:
            run.state.stop("budget", reason)

    async def submit(self, todo: list[PreparedRequest]) -> list[Batch]:
        """Upload the rows as JSONL files (split at the limits) and create one batch per file."""
        created: list[Batch] = []
        metadata = {"airflow_scope": self.scope_tag(), "airflow_try": str(self.run.rules.try_number)}
        for number, content in enumerate(self._files(todo), start=1):
            file = await self.client.call(calls.upload_file(content, f"{self.run.scope.task_id}-{number}.jsonl"))
            batch = await self._create(file.id, metadata)
            created.append(batch)
            if self.store is not None:
                self.store.set(STATE_KEY, [*self._stored_ids(), batch.id])
            self.log.info("Created GLM batch %s (%d bytes of requests).", batch.id, len(content))
        return created

    async def _create(self, file_id: str, metadata: dict[str, str]) -> Batch:
        call = calls.create_batch(file_id, metadata=metadata, completion_window=self.limits.completion_window)
        try:
            return await self.client.call(call)
        except GLMError as exc:
            if not exc.may_have_been_billed:
                raise
            for batch in await self.earlier():
                if batch.input_file_id == file_id:
                    self.log.warning("Creating the batch lost its answer, but batch %s holds the file: using it.",
                                        batch.id)
                    return batch
            raise GLMError(f"{exc.message}; the batch may still have been created: a retry of this task finds it by "
                           "its metadata and does not submit the rows twice") from exc

    def _files(self, todo: list[PreparedRequest]) -> list[bytes]:
        """JSONL request files for the rows, split at the line and byte limits."""
        files: list[bytes] = []
        lines: list[bytes] = []
        size = 0
        head = json.dumps({"method": "POST", "url": calls.BATCH_ENDPOINT})[1:-1].encode()
        for request in todo:
            key = json.dumps(request.key).encode()
            line = b'{"custom_id":' + key + b"," + head + b',"body":' + request.body + b"}\n"
            limits = self.limits
            if lines and (len(lines) >= limits.max_lines_per_file or size + len(line) > limits.max_bytes_per_file):
                files.append(b"".join(lines))
                lines, size = [], 0
            lines.append(line)
            size += len(line)
        if lines:
            files.append(b"".join(lines))
        return files

    # --- results --------------------------------------------------------------------------------------

    async def record(self, batches: list[Batch], *, final: bool = True, reason: str | None = None) -> None:
        """Record every answered row of ``batches``; when ``final``, also their error lines and the rest.

        Answers come first across all batches, so a row that failed in an earlier batch and was answered
        in a later one ends ``ok``. A batch that says it completed more requests than its output holds
        gets a ``billing='unknown'`` ledger entry for the difference.
        """
        run = self.run
        errors: list[tuple[str, str, str | None]] = []
        for batch in batches:
            answers = 0
            for file_id in (batch.output_file_id, batch.error_file_id):
                if not file_id:
                    continue
                content = await self.client.call(calls.file_content(file_id))
                for line in calls.parse_result_lines(content):
                    answers += line.completion is not None
                    request = self.requests.get(line.custom_id)
                    if request is None or line.custom_id in self.answered:
                        continue
                    if line.completion is not None:
                        self.answered.add(line.custom_id)
                        await self._record(outcomes.answered(run.rules, request, line.completion))
                    else:
                        errors.append((line.custom_id, f"batch {batch.id}: code {line.error_code}: "
                                                       f"{line.error_message}", line.error_code))
            self._unaccounted(batch, batch.request_counts.completed - answers)
        if final:
            statuses = ", ".join(f"{b.id} {b.status}" for b in batches) or "no batch"
            for key, text, code in errors:
                if key in self.requests and key not in self.answered:
                    rule = rule_for_code(int(code)) if code and code.isdigit() else None
                    self.answered.add(key)
                    await self._record(outcomes.not_answered(
                        run.rules, key, GLMError(text), fingerprint=self.requests[key].fingerprint,
                        filtered=rule is not None and rule.error == "GLMContentFilterError"))
            for key in sorted(set(self.requests) - self.answered):
                text = reason or f"no result for this row in the batch output ({statuses})"
                await self._record(outcomes.not_answered(run.rules, key, GLMError(text),
                                                         fingerprint=self.requests[key].fingerprint))
            self.answered.update(self.requests)
        await run.writer.flush()

    def _unaccounted(self, batch: Batch, missing: int) -> None:
        """Requests a batch reports completed (so billed) whose answers are not in its output."""
        if missing <= 0 or not self.requests:
            return
        bound = max(request.prompt_bound for request in self.requests.values())
        usage = outcomes.unaccounted(self.run.rules, f"unknown-batch-{batch.id}", missing, bound)
        self.run.state.add_spend(usage)
        self.run.writer.add_usage(usage)

    async def skip(self, key: str, reason: str) -> None:
        """Record a row that is not submitted (a budget refused it)."""
        await self._record(outcomes.skipped(self.run.rules, key, reason))

    async def _record(self, outcome: outcomes.Outcome) -> None:
        self.run.record(outcome)
