"""``GLMBatchOperator``: every row through GLM's Batch API, at half the online price.

It takes the same row, template, structured-output, sink, pricing and XCom options as
:class:`~airflow_provider_glm.operators.chat.GLMChatOperator` (both extend
:class:`~airflow_provider_glm.operators.base.GLMBaseOperator`). It writes the rows not yet ``ok``
as JSONL (``custom_id`` = row key; split above 50,000 lines or 100 MB), uploads it, creates the
batch, then waits: deferred to :class:`~airflow_provider_glm.triggers.batch.GLMBatchTrigger`, or
polling in the task. Output lines become results and ledger entries priced at the batch discount;
error-file lines become failed (or filtered) rows.

A retried task re-attaches to the batches it created for the same (dag, task, run, map_index):
their ids are kept in Airflow's task state store, and each batch carries the scope in its metadata
so a crash between creating a batch and storing its id is also recovered. It never submits a second
batch for the same rows.

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

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import conf

from airflow_provider_glm.operators.base import GLMBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_glm.batch_api import Batch, BatchAPI
    from airflow_provider_glm.operators.base import Prepared

__all__ = ["GLMBatchOperator"]

STATE_KEY = "glm_batch_ids"
"""Task state store key holding the batch ids of this task instance."""
LOOKUP_PAGES = 5
"""Pages of 100 newest batches searched for this task instance's metadata on every try."""
MAX_LINES = 50_000
MAX_BYTES = 100 * 1024 * 1024


class GLMBatchOperator(GLMBaseOperator):
    """Send rows through the Batch API; results and ledger exactly like the chat operator.

    Takes every parameter of :class:`~airflow_provider_glm.operators.base.GLMBaseOperator`, plus:

    :param deferrable: wait in the triggerer (default: Airflow's ``[operators] default_deferrable``).
    :param poll_interval: seconds between status polls.
    :param cancel_on_kill: cancel the batches when the task is killed.
    :param completion_window: the batch's completion window (the API offers ``24h``).
    :param max_lines_per_file: lines per uploaded file (the API allows 50,000).
    :param max_bytes_per_file: bytes per uploaded file (the API allows 100 MB).
    """

    def __init__(self, *, deferrable: bool | None = None, poll_interval: float = 60.0, cancel_on_kill: bool = True,
                 completion_window: str = "24h", max_lines_per_file: int = MAX_LINES,
                 max_bytes_per_file: int = MAX_BYTES, **kwargs: Any) -> None:
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
        self._batch_ids: list[str] = []

    def execute(self, context: Context) -> Any:
        from airflow_provider_glm.pricing import BATCH_DISCOUNT

        run = self.prepare(context, discount=BATCH_DISCOUNT)
        api = self._api(run)
        todo = asyncio.run(run.recorder.resume([row.key for row in run.rows]))
        earlier = self._earlier(context, run, api) if todo else []
        if any(not b.terminal for b in earlier):
            self.log.info("Re-attaching to batches %s created by an earlier try.", [b.id for b in earlier])
            batches = earlier
        else:
            if earlier:
                asyncio.run(self._record(run, api, earlier, final=False))
                todo = [key for key in todo if key in run.recorder.pending]
            batches = self._submit(context, run, api, set(todo)) if todo else []
        if not batches or all(b.terminal for b in batches):
            return self._collect(context, run, api, batches)
        self._batch_ids = [b.id for b in batches]
        if self.deferrable:
            from airflow_provider_glm.triggers.batch import GLMBatchTrigger

            if run.sink is not None:
                run.sink.dispose()
            self.defer(
                trigger=GLMBatchTrigger(self._batch_ids, self.glm_conn_id, self.poll_interval),
                method_name="execute_complete",
            )
        return self._collect(context, run, api, self._poll(api, self._batch_ids))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume after the trigger: write every batch's results and finish like the chat operator."""
        from airflow_provider_glm.batch_api import Batch
        from airflow_provider_glm.pricing import BATCH_DISCOUNT

        if event.get("status") != "done":
            raise RuntimeError(f"waiting for GLM batches failed: {event.get('message')}")
        run = self.prepare(context, discount=BATCH_DISCOUNT)
        api = self._api(run)
        asyncio.run(run.recorder.resume([row.key for row in run.rows]))
        waited = {b["id"]: Batch.model_validate(b) for b in event["batches"]}
        earlier = [b for b in self._earlier(context, run, api) if b.id not in waited]
        return self._collect(context, run, api, [*earlier, *waited.values()])

    def on_kill(self) -> None:
        if not (self.cancel_on_kill and self._batch_ids):
            return
        from airflow_provider_glm.batch_api import BatchAPI, cancel_batch
        from airflow_provider_glm.exceptions import GLMError

        api = BatchAPI(self.hook.client)
        for batch_id in self._batch_ids:
            try:
                api(cancel_batch(batch_id))
                self.log.info("Cancelled GLM batch %s.", batch_id)
            except GLMError as exc:
                self.log.warning("Could not cancel GLM batch %s: %s", batch_id, exc)

    def _api(self, run: Prepared) -> BatchAPI:
        from airflow_provider_glm.batch_api import BatchAPI

        return BatchAPI(run.hook.client)

    @staticmethod
    def _scope_tag(run: Prepared) -> str:
        s = run.recorder.scope
        return json.dumps([s.dag_id, s.task_id, s.run_id, s.map_index])

    def _earlier(self, context: Context, run: Prepared, api: BatchAPI) -> list[Batch]:
        """Batches earlier tries of this task instance created: the state store's, plus any of the
        newest :data:`LOOKUP_PAGES` pages of the account's batches whose metadata names this task
        instance (a crash between creating a batch and storing its id)."""
        from airflow_provider_glm.batch_api import list_batches, retrieve_batch

        ids = _stored_ids(context)
        found = {batch_id: api(retrieve_batch(batch_id)) for batch_id in ids}
        tag, after = self._scope_tag(run), None
        for _ in range(LOOKUP_PAGES):
            page = api(list_batches(after=after))
            found.update({b.id: b for b in page.data if (b.metadata or {}).get("airflow_scope") == tag
                          and b.id not in found})
            if not page.has_more or not page.data:
                break
            after = page.data[-1].id
        return list(found.values())

    def _submit(self, context: Context, run: Prepared, api: BatchAPI, todo: set[str]) -> list[Batch]:
        from airflow_provider_glm.batch_api import create_batch, upload_file

        store = context.get("task_state_store")
        created: list[Batch] = []
        metadata = {"airflow_scope": self._scope_tag(run), "airflow_try": str(run.recorder.try_number)}
        for number, content in enumerate(self._files(run, todo), start=1):
            file = api(upload_file(content, f"{run.recorder.scope.task_id}-{number}.jsonl"))
            batch = api(create_batch(file.id, metadata=metadata, completion_window=self.completion_window))
            created.append(batch)
            if store is not None:
                store.set(STATE_KEY, [*_stored_ids(context), batch.id])
            self.log.info("Created GLM batch %s (%d bytes of requests).", batch.id, len(content))
        return created

    def _files(self, run: Prepared, todo: set[str]) -> Iterator[bytes]:
        """JSONL request files for the rows to do, split at the line and byte limits."""
        from airflow_provider_glm.batch_api import BATCH_ENDPOINT
        from airflow_provider_glm.models import build_chat_request

        lines: list[bytes] = []
        size = 0
        for row in run.rows:
            if row.key not in todo:
                continue
            body = build_chat_request(run.model, run.template.render(row), **run.params).to_body()
            request = {"custom_id": row.key, "method": "POST", "url": BATCH_ENDPOINT, "body": body}
            try:
                line = json.dumps(request, ensure_ascii=False).encode() + b"\n"
            except UnicodeEncodeError:
                line = json.dumps(request).encode() + b"\n"  # a lone surrogate: escaped, GLM judges the row
            if lines and (len(lines) >= self.max_lines_per_file or size + len(line) > self.max_bytes_per_file):
                yield b"".join(lines)
                lines, size = [], 0
            lines.append(line)
            size += len(line)
        if lines:
            yield b"".join(lines)

    def _poll(self, api: BatchAPI, batch_ids: Sequence[str]) -> list[Batch]:
        from airflow_provider_glm.batch_api import retrieve_batch

        while True:
            batches = [api(retrieve_batch(batch_id)) for batch_id in batch_ids]
            if all(b.terminal for b in batches):
                return batches
            self.log.info("Batches %s: %s.", list(batch_ids), [b.status for b in batches])
            time.sleep(self.poll_interval)

    def _collect(self, context: Context, run: Prepared, api: BatchAPI, batches: list[Batch]) -> Any:
        try:
            asyncio.run(self._record(run, api, batches))
        finally:
            if run.sink is not None:
                run.sink.dispose()
        return self.finish(context, run)

    async def _record(self, run: Prepared, api: BatchAPI, batches: list[Batch], *, final: bool = True) -> None:
        """Record every answered row of ``batches``; when ``final``, also their error lines and the rest.

        Answers come first across all batches, so a row that failed in an earlier batch and was
        answered in a later one ends ``ok``.
        """
        from airflow_provider_glm.batch_api import file_content, parse_result_lines
        from airflow_provider_glm.error_codes import rule_for_code

        recorder = run.recorder
        errors: list[tuple[str, str, str | None]] = []
        for batch in batches:
            for file_id in (batch.output_file_id, batch.error_file_id):
                if not file_id:
                    continue
                content = await asyncio.to_thread(api, file_content(file_id))
                for line in parse_result_lines(content):
                    if line.custom_id not in recorder.pending:
                        continue
                    if line.completion is not None:
                        recorder.pending.discard(line.custom_id)
                        await recorder.completion(line.custom_id, line.completion)
                    else:
                        errors.append((line.custom_id, f"batch {batch.id}: code {line.error_code}: "
                                       f"{line.error_message}", line.error_code))
        if final:
            for key, reason, code in errors:
                if key in recorder.pending:
                    recorder.pending.discard(key)
                    rule = rule_for_code(int(code)) if code and code.isdigit() else None
                    filtered = rule is not None and rule.error == "GLMContentFilterError"
                    await recorder.failed(key, reason, filtered=filtered)
            statuses = ", ".join(f"{b.id} {b.status}" for b in batches) or "no batch"
            for key in sorted(recorder.pending):
                await recorder.failed(key, f"no result for this row in the batch output ({statuses})")
            recorder.pending.clear()
        await recorder.flush(force=True)


def _stored_ids(context: Context) -> list[str]:
    """The batch ids this task instance stored in Airflow's task state store (none without one)."""
    store = context.get("task_state_store")
    value = store.get(STATE_KEY) if store is not None else None
    return [str(batch_id) for batch_id in value] if isinstance(value, list) else []
