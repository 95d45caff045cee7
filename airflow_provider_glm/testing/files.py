"""``{base}/files``: upload (multipart), list, retrieve, download and delete batch files.

* ``POST files``: ``multipart/form-data`` with a ``file`` part and ``purpose=batch``. The file must be
  named ``*.jsonl``, hold at most ``server.max_file_bytes`` bytes (100 MB) and
  ``server.max_file_lines`` non-blank lines (50,000), each line a JSON object
  ``{"custom_id", "method": "POST", "url": "/v4/chat/completions", "body": {chat request}}`` with a
  unique non-empty string ``custom_id``, an object ``body`` and one ``body.model`` for the whole file
  (``method`` may be left out). Any breach: 400 ``{"error": {"code": "1214", "message": "... line N: ..."}}``.
  Answer: ``{id, object: "file", bytes, created_at, filename, purpose}``.
* ``GET files`` (``purpose``, ``after``, ``limit``): ``{object: "list", data, has_more}``, newest first.
* ``GET files/{id}``: the file object. ``GET files/{id}/content``: the raw bytes
  (``application/octet-stream``). ``DELETE files/{id}``: ``{id, object: "file", deleted: true}``.
* Unknown or deleted file: 404 with code ``"1222"`` (the GLM "no such API/resource" code), message
  ``"File not found: <id>"``.

Batch results (:mod:`.batches`) are stored here too, with purpose ``"batch_output"``.
``created_at`` is in milliseconds unless the server has ``timestamps_in_seconds``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.message import Message
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

if TYPE_CHECKING:
    from airflow_provider_glm.testing.routing import RequestContext
    from airflow_provider_glm.testing.server import GLMTestServer

BATCH_URL = "/v4/chat/completions"
NOT_FOUND_CODE = "1222"
BAD_FILE_CODE = "1214"
OUTPUT_PURPOSE = "batch_output"


class UploadError(Exception):
    """An upload is refused; the message is sent with code 1214."""


@dataclass(frozen=True)
class BatchLine:
    """One request line of a batch input file.

    :param line: 1-based line number in the file.
    :param custom_id: the line's ``custom_id``.
    :param body: the chat request body.
    :param raw: the line's text (what rules are matched against).
    """

    line: int
    custom_id: str
    body: dict[str, Any]
    raw: str


@dataclass
class StoredFile:
    """A file held by the server.

    :param id: file id.
    :param filename: file name.
    :param purpose: ``"batch"`` for uploads, ``"batch_output"`` for batch results.
    :param content: the bytes.
    :param created: ``time.time()`` at creation.
    :param lines: parsed request lines (uploads only).
    """

    id: str
    filename: str
    purpose: str
    content: bytes
    created: float
    lines: list[BatchLine] = field(default_factory=list)

    def to_dict(self, server: GLMTestServer) -> dict[str, Any]:
        """Return the file object as answered."""
        return {"id": self.id, "object": "file", "bytes": len(self.content),
                "created_at": server.timestamp(self.created), "filename": self.filename,
                "purpose": self.purpose}


class FileStore:
    """The server's files (``server.extensions["files"]``), safe across threads.

    :param server: the server.
    """

    def __init__(self, server: GLMTestServer) -> None:
        self.server = server
        self.lock = threading.RLock()
        self.files: dict[str, StoredFile] = {}

    def add(self, filename: str, purpose: str, content: bytes,
            lines: list[BatchLine] | None = None) -> StoredFile:
        """Store a file under a fresh id.

        :param filename: file name.
        :param purpose: purpose.
        :param content: bytes.
        :param lines: parsed request lines.
        """
        stored = StoredFile(id=f"file-{uuid.uuid4().hex[:24]}", filename=filename, purpose=purpose,
                            content=content, created=time.time(), lines=list(lines or []))
        with self.lock:
            self.files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        """Return a stored file, or None."""
        with self.lock:
            return self.files.get(file_id)

    def delete(self, file_id: str) -> bool:
        """Delete a file; return whether it existed."""
        with self.lock:
            return self.files.pop(file_id, None) is not None

    def content(self, file_id: str) -> bytes:
        """Return a file's bytes.

        :raises KeyError: unknown file.
        """
        with self.lock:
            return self.files[file_id].content

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """File id -> file object."""
        with self.lock:
            return {f.id: f.to_dict(self.server) for f in self.files.values()}

    def clear(self) -> None:
        """Forget every file."""
        with self.lock:
            self.files.clear()


def register(server: GLMTestServer) -> None:
    """Add the files endpoints and the file store to a server.

    :param server: the server.
    """
    if "files" in server.extensions:
        return
    store = FileStore(server)
    server.extensions["files"] = store
    server.on_reset(store.clear)
    server.route("POST", "files", upload_file)
    server.route("GET", "files", list_files)
    server.route("GET", "files/{file_id}", retrieve_file)
    server.route("GET", "files/{file_id}/content", file_content)
    server.route("DELETE", "files/{file_id}", delete_file)


def file_store(server: GLMTestServer) -> FileStore:
    """Return the server's file store, registering the files endpoints if needed.

    :param server: the server.
    """
    if "files" not in server.extensions:
        register(server)
    store: FileStore = server.extensions["files"]
    return store


@dataclass(frozen=True)
class FormPart:
    """One part of a ``multipart/form-data`` body.

    :param name: the form field name.
    :param filename: the file name, or None for plain fields.
    :param content_type: the part's ``Content-Type``, or None.
    :param data: the part's bytes.
    """

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def parse_multipart(body: bytes, content_type: str) -> dict[str, FormPart]:
    """Split a ``multipart/form-data`` body into its parts (the first part of each name wins).

    :param body: the raw request body.
    :param content_type: the request's ``Content-Type`` header (carries the boundary).
    :raises UploadError: not multipart, or no boundary.
    """
    header = Message()
    header["Content-Type"] = content_type
    if header.get_content_type() != "multipart/form-data":
        raise UploadError("Content-Type must be multipart/form-data")
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise UploadError("multipart/form-data body without a boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    sections = (b"\r\n" + body).split(delimiter)
    parts: dict[str, FormPart] = {}
    for section in sections[1:]:
        if section.startswith(b"--"):
            break
        head, sep, data = section.partition(b"\r\n\r\n")
        if not sep:
            continue
        headers = Message()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon and name.strip():
                headers[name.strip()] = value.strip()
        field_name = headers.get_param("name", header="content-disposition")
        if not isinstance(field_name, str) or field_name in parts:
            continue
        filename = headers.get_filename()
        parts[field_name] = FormPart(field_name, filename, headers.get("content-type"), data)
    return parts


def parse_batch_file(content: bytes, filename: str, max_bytes: int, max_lines: int) -> list[BatchLine]:
    """Validate a batch input file and return its request lines.

    :param content: the file bytes.
    :param filename: the file name (must end in ``.jsonl``).
    :param max_bytes: size limit.
    :param max_lines: limit on non-blank lines.
    :raises UploadError: the file breaks a rule; the message names the line.
    """
    if not filename.lower().endswith(".jsonl"):
        raise UploadError(f"Invalid file {filename!r}: only .jsonl files are accepted for purpose batch")
    if len(content) > max_bytes:
        raise UploadError(f"Invalid file {filename!r}: {len(content)} bytes exceeds the limit of "
                          f"{max_bytes} bytes")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UploadError(f"Invalid file {filename!r}: not UTF-8 "
                          f"({exc.reason} at byte {exc.start})") from None
    numbered = [(n, raw.rstrip("\r")) for n, raw in enumerate(text.split("\n"), start=1)]
    numbered = [(n, raw) for n, raw in numbered if raw.strip()]
    if not numbered:
        raise UploadError(f"Invalid file {filename!r}: the file has no request lines")
    if len(numbered) > max_lines:
        raise UploadError(f"Invalid file {filename!r}: {len(numbered)} lines exceeds the limit of "
                          f"{max_lines} lines")
    lines: list[BatchLine] = []
    first_seen: dict[str, int] = {}
    model: tuple[str, int] | None = None
    for number, raw in numbered:
        def fail(reason: str, number: int = number) -> UploadError:
            return UploadError(f"Invalid file {filename!r}: line {number}: {reason}")

        try:
            item = json.loads(raw)
        except ValueError as exc:
            raise fail(f"invalid JSON ({exc})") from None
        if not isinstance(item, dict):
            raise fail("must be a JSON object")
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise fail("missing or empty custom_id")
        if custom_id in first_seen:
            raise fail(f"duplicate custom_id {custom_id!r} (first on line {first_seen[custom_id]})")
        first_seen[custom_id] = number
        method = item.get("method", "POST")
        if not isinstance(method, str) or method.upper() != "POST":
            raise fail(f"method must be POST, got {method!r}")
        url = item.get("url")
        if url != BATCH_URL:
            raise fail(f"url must be {BATCH_URL!r}, got {url!r}")
        body = item.get("body")
        if not isinstance(body, dict):
            raise fail("missing body object")
        line_model = body.get("model")
        if not isinstance(line_model, str) or not line_model:
            raise fail("missing body.model")
        if model is None:
            model = (line_model, number)
        elif line_model != model[0]:
            raise fail(f"model {line_model!r} differs from {model[0]!r} on line {model[1]} "
                       f"(one model per file)")
        lines.append(BatchLine(line=number, custom_id=custom_id, body=body, raw=raw))
    return lines


async def send_not_found(ctx: RequestContext, what: str, ident: str) -> None:
    """Answer 404 with code 1222.

    :param ctx: the request context.
    :param what: ``"File"``, ``"Batch"``, ``"Task"``.
    :param ident: the unknown id.
    """
    await ctx.send_error(404, NOT_FOUND_CODE, f"{what} not found: {ident}")


def query_params(ctx: RequestContext) -> dict[str, str]:
    """The query string's parameters (the first value of each)."""
    return {key: values[0] for key, values in parse_qs(ctx.request.query).items() if values}


def parse_limit(params: dict[str, str], default: int = 20, maximum: int = 100) -> int | None:
    """Read ``limit`` from query parameters; None when invalid.

    :param params: query parameters.
    :param default: value when absent.
    :param maximum: largest accepted value.
    """
    text = params.get("limit")
    if text is None or text == "":
        return default
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        return None
    return int(text)


async def upload_file(ctx: RequestContext) -> None:
    """``POST files``.

    :param ctx: the request context.
    """
    server = ctx.server
    try:
        parts = parse_multipart(ctx.request.body, ctx.request.headers.get("content-type", ""))
        part = parts.get("file")
        if part is None or part.filename is None:
            raise UploadError("Missing multipart file part 'file'")
        purpose_part = parts.get("purpose")
        purpose = purpose_part.data.decode("utf-8", "replace").strip() if purpose_part else ""
        if purpose != "batch":
            raise UploadError(f"Invalid purpose {purpose!r}: this server accepts only purpose 'batch'")
        lines = parse_batch_file(part.data, part.filename, server.max_file_bytes, server.max_file_lines)
    except UploadError as exc:
        await ctx.send_error(400, BAD_FILE_CODE, str(exc))
        return
    stored = file_store(server).add(part.filename, purpose, part.data, lines)
    server.state.count("files_uploaded")
    await ctx.send_json(200, stored.to_dict(server))


async def list_files(ctx: RequestContext) -> None:
    """``GET files?purpose=&after=&limit=``: newest first.

    :param ctx: the request context.
    """
    params = query_params(ctx)
    limit = parse_limit(params)
    if limit is None:
        await ctx.send_error(400, BAD_FILE_CODE, "Invalid parameter: limit must be an integer 1-100")
        return
    store = file_store(ctx.server)
    with store.lock:
        files = [f for f in reversed(store.files.values())
                 if not params.get("purpose") or f.purpose == params["purpose"]]
        ids = [f.id for f in files]
        after = params.get("after")
        if after:
            if after not in ids:
                await ctx.send_error(400, BAD_FILE_CODE, f"Invalid parameter: unknown after id {after!r}")
                return
            files = files[ids.index(after) + 1:]
        data = [f.to_dict(ctx.server) for f in files[:limit]]
    await ctx.send_json(200, {"object": "list", "data": data, "has_more": len(files) > limit})


async def retrieve_file(ctx: RequestContext) -> None:
    """``GET files/{file_id}``.

    :param ctx: the request context.
    """
    stored = file_store(ctx.server).get(ctx.params["file_id"])
    if stored is None:
        await send_not_found(ctx, "File", ctx.params["file_id"])
        return
    await ctx.send_json(200, stored.to_dict(ctx.server))


async def file_content(ctx: RequestContext) -> None:
    """``GET files/{file_id}/content``: the raw bytes.

    :param ctx: the request context.
    """
    stored = file_store(ctx.server).get(ctx.params["file_id"])
    if stored is None:
        await send_not_found(ctx, "File", ctx.params["file_id"])
        return
    fallback = stored.filename.encode("ascii", "replace").decode("ascii").replace('"', "_")
    disposition = f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(stored.filename)}"
    await ctx.send(200, stored.content, "application/octet-stream", {"Content-Disposition": disposition})


async def delete_file(ctx: RequestContext) -> None:
    """``DELETE files/{file_id}``.

    :param ctx: the request context.
    """
    file_id = ctx.params["file_id"]
    if not file_store(ctx.server).delete(file_id):
        await send_not_found(ctx, "File", file_id)
        return
    await ctx.send_json(200, {"id": file_id, "object": "file", "deleted": True})
