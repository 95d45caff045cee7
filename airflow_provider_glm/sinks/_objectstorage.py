"""The object-storage export: one scope's results as a JSON Lines file on any Airflow object store.

:class:`JSONLResultsExport` writes one line per input row, ordered by ``row_key``, to an Airflow
:class:`~airflow.sdk.ObjectStoragePath` (``file://``, ``s3://``, ``gs://``, ... any scheme a provider
registers). Each line is a plain JSON object with the keys of :data:`FIELDS`, in that order;
``updated_at`` and ``logical_date`` are ISO 8601 in UTC (``2026-11-26T13:00:35.059410Z``), and
``output``, ``tool_calls``, ``web_search`` and ``content_filter`` are JSON values (``null`` when absent).

The rows come either from the SQL sink (:meth:`SQLSink.iter_results`, streamed, so the file holds the
scope's complete state, rows resumed from earlier tries included, without loading them all), or from
:class:`~airflow_provider_glm.rows._records.ResultRecord` objects handed over in memory when no SQL
sink is configured.

The write goes to a temporary sibling (``.<name>.<random>.tmp`` beside the final path) that is moved
into place only once complete, so a failure midway never leaves a partial file at the final path and
the temporary one is deleted. Locally the move is an atomic ``rename``. On object stores (S3, GCS,
Azure Blob) a move is a server-side copy followed by a delete: the copy replaces the final object in
one step (readers see the old object or the new one, never a mix), but it costs a copy, and a process
killed between the copy and the delete (or during the write) leaves the temporary key behind. A rerun
writes the full current state to the same path again (idempotent).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_glm.rows._records import ResultRecord, RunScope
    from airflow_provider_glm.sinks.sql._sink import SQLSink

__all__ = ["FIELDS", "JSONLResultsExport"]

log = logging.getLogger(__name__)

FIELDS: tuple[str, ...] = (
    "dag_id", "task_id", "run_id", "map_index", "logical_date", "row_key", "status", "content",
    "reasoning_content", "finish_reason", "output", "tool_calls", "web_search", "content_filter", "error",
    "model", "prompt_tokens", "completion_tokens", "total_tokens", "fingerprint", "reused_from_run_id",
    "updated_at",
)
"""The keys of every line, in order: the scope, the row, the whole answer, where it came from."""
_SCOPE_FIELDS = frozenset({"dag_id", "task_id", "run_id", "map_index", "logical_date"})
_JSON_FIELDS = ("output", "tool_calls", "web_search", "content_filter")

_LOCAL = frozenset({"file", "local"})
_BUCKET_STORES = frozenset(
    {"s3", "s3a", "s3n", "gs", "gcs", "abfs", "abfss", "az", "adl", "wasb", "wasbs", "oss"}
)
"""Schemes whose URL is ``scheme://bucket/key``: both parts are required."""


class JSONLResultsExport:
    """Writes one scope's results as JSON Lines to an object store (or a local file).

    The path must be a URL with a scheme: ``s3://bucket/glm/run-1/results.jsonl``, or
    ``file:///abs/path/results.jsonl`` for a local file. A bare path such as ``/data/results.jsonl``
    is refused on purpose: a local file lands on whichever worker ran the task, so it must be asked
    for explicitly. Templated paths (``{{ run_id }}``) must be rendered before this is built.

    Call :meth:`write` from synchronous code (or ``asyncio.to_thread``): building the S3 filesystem
    runs its own ``asyncio.run``, which fails inside a running event loop.

    :param path: a URL string, or an :class:`~airflow.sdk.ObjectStoragePath`.
    :param conn_id: the Airflow connection of the store (``aws_default`` style); may also be given
        in the URL as ``s3://conn_id@bucket/key``. ``None``: the store's default credentials.
    :param batch_size: rows fetched per round trip from the SQL sink.
    """

    def __init__(self, path: str | ObjectStoragePath, conn_id: str | None = None, *,
                 batch_size: int = 1000) -> None:
        self.path = path
        self.conn_id = conn_id
        self.batch_size = batch_size

    def validate(self) -> str:
        """Check the path and options without any I/O (no connection look-up, no store call).

        Meant for the operator's pre-flight: a bad path fails the task before any API call.

        :return: the URL the file will have, without the connection id (what :meth:`write` returns).
        :raises ValueError: the path is not a usable URL, or no filesystem is registered for its scheme.
        """
        return self._target()[3]

    @property
    def url(self) -> str:
        """The final URL, ``scheme://path`` without the connection id (validates the path)."""
        return self.validate()

    def _target(self) -> tuple[str, str, str | None, str]:
        """``(protocol, path in the store, conn_id, final URL)``, validated."""
        from airflow.sdk import ObjectStoragePath
        from airflow.sdk.io import has_fs

        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.conn_id is not None and (not isinstance(self.conn_id, str) or not self.conn_id.strip()):
            raise ValueError(f"conn_id must be a non-empty string or None, got {self.conn_id!r}")
        conn_id = self.conn_id
        if isinstance(self.path, ObjectStoragePath):
            protocol = self.path.protocol
            if not protocol:
                raise ValueError(
                    f"results path {self.path!r} has no scheme: give e.g. file:///abs/path.jsonl"
                )
            if self.path.conn_id and conn_id and self.path.conn_id != conn_id:
                raise ValueError(
                    f"results path names connection {self.path.conn_id!r} but conn_id={conn_id!r} was given"
                )
            conn_id = conn_id or self.path.conn_id
            url = f"{protocol}://{self.path.path}"
        elif isinstance(self.path, str):
            url = self.path.strip()
        else:
            raise ValueError(f"results path must be a URL string or an ObjectStoragePath, got {self.path!r}")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if len(scheme) < 2 or "://" not in url:
            raise ValueError(
                f"results path {url!r} has no scheme: give a URL such as s3://bucket/key.jsonl, or "
                "file:///abs/path/results.jsonl for a file on the worker's local disk"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"results path {url!r} must not contain '?' or '#'")
        userinfo, at, host = parts.netloc.rpartition("@")
        if at:
            if not userinfo:
                raise ValueError(f"results path {url!r} has an empty connection id before '@'")
            if conn_id and conn_id != userinfo:
                raise ValueError(
                    f"results path names connection {userinfo!r} but conn_id={conn_id!r} was given"
                )
            conn_id = userinfo
        if scheme in _LOCAL:
            if host or not parts.path.startswith("/"):
                raise ValueError(
                    f"results path {url!r} is not an absolute local path: write file:///abs/path "
                    "(three slashes, no host)"
                )
            store_path = parts.path
        else:
            if scheme in _BUCKET_STORES and (not host or not parts.path.strip("/")):
                raise ValueError(
                    f"results path {url!r} needs a bucket and a key: {scheme}://bucket/key.jsonl"
                )
            store_path = host + parts.path
        name = store_path.rpartition("/")[2]
        if not name or name in (".", ".."):
            raise ValueError(f"results path {url!r} must name a file, not a directory")
        if not has_fs(scheme):
            hint = " (install apache-airflow-providers-amazon[s3fs])" if scheme.startswith("s3") else ""
            raise ValueError(f"no Airflow filesystem is registered for scheme {scheme!r}{hint}")
        return scheme, store_path, conn_id, f"{scheme}://{store_path}"

    def write(self, scope: RunScope, *, sink: SQLSink | None = None,
              records: Iterable[ResultRecord] | None = None) -> str:
        """Export ``scope``'s results, from the SQL sink when given, else from ``records``.

        With a sink the rows are streamed (:meth:`SQLSink.iter_results`): the file has the scope's
        complete state, rows resumed from earlier tries included. Without one, ``records`` are the
        results of this try; a repeated ``row_key`` keeps its last record, as the sink's upsert does.
        With neither, the file is written empty (a scope without rows).

        :param scope: the task's dag, task, run and map index.
        :param sink: the configured SQL sink, if any.
        :param records: the results handed over in memory (only without a sink).
        :return: the final URL (see :meth:`validate`).
        """
        if sink is not None and records is not None:
            raise ValueError("give the SQL sink or in-memory records, not both (the sink holds every row)")
        if sink is not None:
            self.validate()
            stream = sink.iter_results(scope, batch_size=self.batch_size)
            try:
                return self.write_rows(stream)
            finally:
                stream.close()  # releases the connection (and cursor) now, even after a failure
        rows: dict[str, ResultRecord] = {}
        for record in records or ():
            if record.scope != scope:
                raise ValueError(f"record {record.row_key!r} belongs to {record.scope}, not to {scope}")
            rows[record.row_key] = record
        return self.write_rows(_record_row(rows[key]) for key in sorted(rows))

    def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> str:
        """Write ``rows`` (mappings with every key of :data:`FIELDS`, already ordered) and move into place.

        ``rows`` is consumed lazily, one line at a time. If anything fails before the move, the
        temporary file is deleted, the error is raised and the final path keeps what it had.

        :return: the final URL (see :meth:`validate`).
        """
        protocol, store_path, conn_id, url = self._target()
        target = self._object_path(protocol, store_path, conn_id)
        fs = target.fs
        parent, _, name = store_path.rpartition("/")
        temp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
        local = protocol in _LOCAL
        count = size = 0
        try:
            if local:
                fs.makedirs(parent or "/", exist_ok=True)
            with fs.open(temp, "wb") as out:
                for row in rows:
                    line = _line(row)
                    out.write(line)
                    count += 1
                    size += len(line)
                if local:
                    out.flush()
                    os.fsync(out.fileno())
            if local:
                os.replace(temp, store_path)
                _fsync_dir(parent or "/")
            else:
                fs.mv(temp, store_path)
        except BaseException:
            _remove(fs, temp, local)
            raise
        _lineage(target, url)
        log.info("Exported %d results (%d bytes) to %s", count, size, url)
        return url

    def _object_path(self, protocol: str, store_path: str, conn_id: str | None) -> ObjectStoragePath:
        from airflow.sdk import ObjectStoragePath

        if isinstance(self.path, ObjectStoragePath) and self.path.conn_id == conn_id:
            return self.path
        options = dict(self.path.storage_options) if isinstance(self.path, ObjectStoragePath) else {}
        return ObjectStoragePath(f"{protocol}://{store_path}", conn_id=conn_id, **options)


def _record_row(record: ResultRecord) -> dict[str, Any]:
    return {name: getattr(record.scope if name in _SCOPE_FIELDS else record, name) for name in FIELDS}


def _timestamp(value: Any) -> Any:
    if not isinstance(value, dt.datetime):
        return value
    value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return _timestamp(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities (not JSON) replaced by ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _dumps(item: dict[str, Any], ascii_only: bool = False) -> str:
    return json.dumps(item, ensure_ascii=ascii_only, allow_nan=False, default=_default, separators=(",", ":"))


def _line(row: Mapping[str, Any]) -> bytes:
    """One UTF-8 JSON line; lone surrogates (not UTF-8) fall back to ``\\u`` escapes, which round-trip."""
    try:
        item = {name: row[name] for name in FIELDS}
    except KeyError as exc:
        raise ValueError(f"result row {row.get('row_key')!r} lacks the field {exc.args[0]!r}") from None
    item["updated_at"] = _timestamp(item["updated_at"])
    item["logical_date"] = _timestamp(item["logical_date"])
    try:
        try:
            text = _dumps(item)
        except ValueError:
            for name in _JSON_FIELDS:
                item[name] = _finite(item[name])
            text = _dumps(item)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"result row {item['row_key']!r} is not plain JSON: {exc}") from exc
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return _dumps(item, ascii_only=True).encode("ascii") + b"\n"


def _fsync_dir(path: str) -> None:
    """Make a rename durable (best effort: not every filesystem allows opening a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(fs: Any, temp: str, local: bool) -> None:
    """Delete the temporary file after a failure, never masking the failure itself."""
    try:
        if local:
            if os.path.lexists(temp):
                os.unlink(temp)
        else:
            fs.rm_file(temp)
    except FileNotFoundError:
        pass
    except Exception as exc:
        log.warning("Could not delete the temporary export file %s: %s", temp, exc)


def _lineage(target: ObjectStoragePath, url: str) -> None:
    """Report the file as the task's output asset, as ObjectStoragePath's own writes do (best effort)."""
    try:
        from airflow.sdk.lineage import get_hook_lineage_collector

        get_hook_lineage_collector().add_output_asset(context=target, uri=url)
    except Exception:
        log.debug("Could not report lineage for %s", url, exc_info=True)
