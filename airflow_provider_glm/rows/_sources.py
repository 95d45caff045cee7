"""Where rows come from, in chunks of prepared requests: a list given to the task, or a SQL query streamed.

* :class:`PreparedRows`: ``rows=`` (an upstream task's list). Every row is rendered and validated
  before the first call, so one bad row costs nothing; the prepared requests are kept and sent as is.
* :class:`QueryRows`: ``source_sql``. Rows stream through a server-side cursor, ``chunk_size`` at a
  time, and are rendered and validated per chunk: memory stays flat in the number of rows, and a bad
  row stops the run there (the rows after it are neither sent nor read). It cannot be known before
  the first row is sent; that is the price of not reading everything first.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_glm.rows._rendering import make_row

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from airflow_provider_glm.rows._rendering import PreparedRequest, RequestBuilder, Row

__all__ = ["InputError", "PreparedRows", "QueryRows", "RequestChunks"]

log = logging.getLogger(__name__)


class InputError(ValueError):
    """A row of the input cannot be sent: a template error, an invalid request, a duplicate or empty key."""


class RequestChunks:
    """Chunks of prepared requests; :meth:`chunks` may raise :class:`InputError` after the good part of a chunk."""

    in_memory = True
    """Whether every row is already known (a stop then still records each remaining row as skipped)."""

    def chunks(self) -> Iterator[list[PreparedRequest]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the source holds (a database cursor)."""


class PreparedRows(RequestChunks):
    """Requests prepared up front (``rows=``), handed out in chunks for the resume/reuse lookups."""

    def __init__(self, requests: list[PreparedRequest], chunk_size: int = 1000) -> None:
        self.requests = requests
        self.chunk_size = chunk_size

    def __len__(self) -> int:
        return len(self.requests)

    def chunks(self) -> Iterator[list[PreparedRequest]]:
        for start in range(0, len(self.requests), self.chunk_size):
            yield self.requests[start : start + self.chunk_size]


def prepare_all(rows: Sequence[Row], builder: RequestBuilder) -> list[PreparedRequest]:
    """Render, validate and serialize every row before any call (``rows=``).

    :raises ValueError: the first row that cannot be sent; nothing has been sent.
    """
    return [builder.build(row) for row in rows]


class QueryRows(RequestChunks):
    """Rows of a SQL query, streamed and prepared per chunk.

    :param engine: the database to read (the source connection, or the sink's).
    :param sql: the rendered query.
    :param builder: prepares each row's request.
    :param row_key: the column that identifies a row (required: reuse and resume match on it).
    :param chunk_size: rows fetched, rendered and looked up at a time.
    """

    in_memory = False

    def __init__(self, engine: Engine, sql: str, builder: RequestBuilder, *, row_key: str,
                 chunk_size: int = 1000) -> None:
        if not isinstance(sql, str) or not sql.strip():
            raise ValueError("source_sql is empty")
        if not row_key:
            raise ValueError("source_sql needs row_key: the column that identifies a row")
        if chunk_size < 1:
            raise ValueError(f"source_chunk_size must be >= 1, got {chunk_size}")
        self.engine = engine
        self.sql = sql
        self.builder = builder
        self.row_key = row_key
        self.chunk_size = chunk_size
        self.read = 0
        self._result: Any = None
        self._conn: Any = None

    def chunks(self) -> Iterator[list[PreparedRequest]]:
        import sqlalchemy as sa

        self._conn = self.engine.connect()
        try:
            if _is_sqlite_file(self.engine):
                pages: Iterator[Sequence[Any]] = self._sqlite_pages()
            else:
                self._result = self._conn.execution_options(stream_results=True,
                                                            yield_per=self.chunk_size).execute(sa.text(self.sql))
                pages = self._result.mappings().partitions(self.chunk_size)
            for raw_rows in pages:
                prepared: list[PreparedRequest] = []
                for raw in raw_rows:
                    self.read += 1
                    try:
                        prepared.append(self.builder.build(make_row(self.read - 1, dict(raw), None, self.row_key)))
                    except ValueError as exc:
                        yield prepared
                        raise InputError(f"source_sql row {self.read}: {exc}") from None
                yield prepared
        finally:
            self.close()

    def _sqlite_pages(self) -> Iterator[list[dict[str, Any]]]:
        """A SQLite file is read from a snapshot of the query in a temporary table, a page per short
        transaction: an open cursor on the file would pin its write-ahead log, which then grows with
        every result written to the same file until the run ends (gigabytes at 500,000 rows)."""
        import sqlalchemy as sa

        _allow_concurrent_writes(self.engine)
        conn = self._conn
        snapshot = f"glm_source_{uuid.uuid4().hex}"
        conn.execute(sa.text(f"CREATE TEMP TABLE {snapshot} AS {self.sql}"))
        conn.commit()
        try:
            last = 0
            page = sa.text(f"SELECT rowid AS glm_snapshot_rowid_, * FROM temp.{snapshot} "
                           "WHERE rowid > :last ORDER BY rowid LIMIT :size")
            while True:
                rows = [dict(r) for r in conn.execute(page, {"last": last, "size": self.chunk_size}).mappings()]
                conn.rollback()  # end the read transaction, so the log can be checkpointed between pages
                if not rows:
                    return
                last = rows[-1].pop("glm_snapshot_rowid_")
                for row in rows[:-1]:
                    row.pop("glm_snapshot_rowid_")
                yield rows
        finally:
            if self._conn is not None and not self._conn.closed:
                self._conn.execute(sa.text(f"DROP TABLE IF EXISTS temp.{snapshot}"))
                self._conn.commit()

    def close(self) -> None:
        if self._result is not None:
            self._result.close()
            self._result = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _is_sqlite_file(engine: Engine) -> bool:
    url = engine.url
    return url.get_backend_name() == "sqlite" and bool(url.database) and url.database != ":memory:"


def _allow_concurrent_writes(engine: Engine) -> None:
    """A SQLite file read through an open cursor blocks every commit in its default journal mode; WAL
    lets the results be written while the query streams (the mode persists in the file)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    import sqlalchemy as sa

    with engine.connect() as conn:
        mode = conn.execute(sa.text("PRAGMA journal_mode")).scalar()
        if str(mode).lower() != "wal":
            conn.execute(sa.text("PRAGMA journal_mode=WAL"))
            log.info("Switched SQLite database %s to WAL journal mode so results can be written while "
                     "source_sql streams.", url.database)
