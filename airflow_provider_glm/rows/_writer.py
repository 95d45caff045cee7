"""The buffered writer: records in, transactions out, never a dropped batch.

:class:`RecordWriter` owns every write of a run's records. Workers add an outcome's records and
await :meth:`RecordWriter.flush`; one writer at a time takes everything buffered into one
transaction (group commit), so a worker never starts its next row before its last answer is
committed and a crash loses at most the answers in flight. A database that refuses a write is
retried under one policy (:func:`~airflow_provider_glm.sinks.sql._retry.database_retry`) for
``write_timeout`` seconds, with the records kept; after that the writer gives up, keeps them
buffered, and says so through :attr:`RecordWriter.error`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from airflow_provider_glm.sinks.sql._retry import database_retry

if TYPE_CHECKING:
    from airflow_provider_glm.rows._outcomes import Outcome
    from airflow_provider_glm.rows._records import ResultRecord, UsageRecord
    from airflow_provider_glm.sinks.sql._sink import SQLSink

__all__ = ["RecordWriter"]


class RecordWriter:
    """Writes one run's records to the sink in group commits.

    :param sink: the SQL sink; ``None`` keeps nothing but what ``keep_records`` asks for.
    :param write_timeout: seconds a failing database is retried before the writer gives up.
    :param keep_records: also keep every result in :attr:`kept` (an export without a SQL sink needs them).
    :param sleep: the wait between write attempts (inject in tests).
    """

    def __init__(self, sink: SQLSink | None, *, write_timeout: float = 300.0, keep_records: bool = False,
                 sleep: Callable[[float], Any] = asyncio.sleep, log: Any = None) -> None:
        self.sink = sink
        self.write_timeout = write_timeout
        self.kept: list[ResultRecord] | None = [] if keep_records else None
        self._sleep = sleep
        self.log = log or logging.getLogger(__name__)
        self._results: list[ResultRecord] = []
        self._usage: list[UsageRecord] = []
        self._added = 0
        self._written = 0
        self._lock = asyncio.Lock()
        self._error: BaseException | None = None
        self._pending: set[str] = set()

    @property
    def error(self) -> BaseException | None:
        """Why the writer gave up (the records stay buffered), else ``None``."""
        return self._error

    @property
    def unwritten(self) -> int:
        """Records still buffered (non-zero only after the writer gave up)."""
        return len(self._results) + len(self._usage)

    def pending(self, key: str) -> bool:
        """Whether a result for ``key`` was added and is not committed yet."""
        return key in self._pending

    def add(self, outcome: Outcome) -> None:
        """Buffer an outcome's records (a resumed row has none)."""
        if outcome.result is not None:
            self._results.append(outcome.result)
            if self.kept is not None:
                self.kept.append(outcome.result)
            if self.sink is not None:
                self._pending.add(outcome.row_key)
        if outcome.usage is not None:
            self._usage.append(outcome.usage)
        self._added += 1

    def add_usage(self, usage: UsageRecord) -> None:
        """Buffer a ledger entry that belongs to no single row."""
        self._usage.append(usage)
        self._added += 1

    async def flush(self) -> None:
        """Wait until every record added so far is written (or the writer has given up)."""
        if self.sink is None:
            self._results.clear()
            self._usage.clear()
            return
        target = self._added
        async with self._lock:
            if self._written >= target or self._error is not None:
                return
            results, usage, upto = self._results, self._usage, self._added
            self._results, self._usage = [], []
            try:
                await self._write(results, usage)
            except BaseException as exc:
                self._results[:0], self._usage[:0] = results, usage
                if isinstance(exc, (SQLAlchemyError, OSError)):
                    self._error = exc  # retried while it could help; the records stay buffered
                    return
                raise
            self._written = upto
            self._pending.difference_update(r.row_key for r in results)

    async def _write(self, results: list[ResultRecord], usage: list[UsageRecord]) -> None:
        assert self.sink is not None
        sink = self.sink
        retrying = database_retry(self.write_timeout, sleep=self._sleep, log=self.log,
                                  what=f"writing {len(results)} results and {len(usage)} ledger entries",
                                  note="; the records are kept")
        async for attempt in retrying:
            with attempt:
                await asyncio.to_thread(sink.write, results, usage)
