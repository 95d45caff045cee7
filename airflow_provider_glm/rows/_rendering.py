"""Rows in, requests out: normalizing upstream rows, rendering per-row messages, building each request once.

Row templates render in a sandboxed Jinja environment with ``StrictUndefined``: a value inside a
row is data and is never rendered again (a row whose text is ``{{ 7*7 }}`` is sent literally), and
a name that is not defined fails while the operator validates, before any API call.
:class:`RequestBuilder` turns a row into a :class:`PreparedRequest`: rendered, validated against
the request model and serialized once, with its fingerprint and an upper bound of its prompt tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_glm._compat import AirflowTaskTimeout
from airflow_provider_glm.client.models import build_chat_request, encode_body

__all__ = ["MessageTemplate", "PreparedRequest", "RequestBuilder", "Row", "make_row", "normalize_rows",
           "prompt_messages"]

MEDIA_FIELDS: dict[str, tuple[str, str]] = {
    "image_url": ("image_url", "url"), "video_url": ("video_url", "url"), "file_url": ("file_url", "url"),
    "input_audio": ("input_audio", "data"),
}
"""Content-part types whose URL (or data) is rendered per row, and where it sits in the part."""
MAX_INLINE_MEDIA_BYTES = 10 * 1024 * 1024
"""Largest base64 image, video, file or audio a row may inline (decoded bytes)."""
MAX_MEDIA_URL_LENGTH = 4096
MEDIA_TOKENS_BOUND = 16_384
"""Prompt tokens one media part is assumed to cost at most, in the bound of a possibly billed call."""

MAX_ROW_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Row:
    """One input row with its key (the string stored in the results table)."""

    key: str
    values: Mapping[str, Any]


def prompt_messages(prompt: str | None, system_prompt: str | None, messages: Any) -> list[dict[str, Any]]:
    """The message list from either ``messages`` or ``prompt`` (+ optional ``system_prompt``).

    :raises ValueError: both or neither given, or ``messages`` is not a list of role/content mappings.
    """
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of `prompt` or `messages`")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"`prompt` must be a string, got {type(prompt).__name__}")
        out = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return [*out, {"role": "user", "content": prompt}]
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except ValueError:
            raise ValueError("`messages` is a string that is not a JSON list of messages") from None
    if not isinstance(messages, list) or not messages:
        raise ValueError("`messages` must be a non-empty list of {'role': ..., 'content': ...} mappings")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise ValueError(f"`messages[{i}]` must be a mapping with a 'role' (got {type(message).__name__})")
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                # A text part whose text is not a string would be sent as is, and refused on every row.
                if not isinstance(part, Mapping) or not isinstance(part.get("text", ""), str):
                    raise ValueError(f"`messages[{i}].content[{j}]` must be a mapping; its 'text' a string")
    out = [dict(m) for m in messages]
    if system_prompt:
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def normalize_rows(rows: Any, columns: Sequence[str] | None, row_key: str | None) -> list[Row]:
    """Turn upstream rows (mappings, or sequences with ``columns``) into keyed :class:`Row` objects.

    :param rows: a list of dicts or sequences, or a JSON string of one; ``None`` is an error.
    :param columns: column names for sequence rows.
    :param row_key: the column whose value identifies a row; ``None`` keys rows by position.
    :raises ValueError: rows not a list, a row of the wrong shape, a missing, empty, too long or
        duplicate key.
    """
    if isinstance(rows, str):
        try:
            rows = json.loads(rows)
        except ValueError:
            raise ValueError("`rows` is a string that is not a JSON list") from None
    if rows is None:
        raise ValueError("`rows` is None: the upstream task returned nothing")
    if isinstance(rows, Mapping) or not isinstance(rows, Iterable):
        raise ValueError(f"`rows` must be a list of records, got {type(rows).__name__}")
    out: list[Row] = []
    seen: set[str] = set()
    for index, raw in enumerate(rows):
        row = make_row(index, raw, columns, row_key)
        if row.key in seen:
            raise ValueError(f"rows[{index}]: duplicate row key {row.key!r} in column {row_key!r}")
        seen.add(row.key)
        out.append(row)
    return out


def make_row(index: int, raw: Any, columns: Sequence[str] | None, row_key: str | None) -> Row:
    """One keyed :class:`Row` from a mapping, or a sequence named by ``columns``.

    :param index: the row's position (its key when there is no ``row_key``).
    """
    values = _row_values(index, raw, columns)
    return Row(_row_key(index, values, row_key), values)


def _row_values(index: int, raw: Any, columns: Sequence[str] | None) -> Mapping[str, Any]:
    if isinstance(raw, Mapping):
        return raw
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise ValueError(f"rows[{index}] must be a mapping or a sequence, got {type(raw).__name__}")
    if columns is None:
        raise ValueError(f"rows[{index}] is a sequence: pass `columns` to name its values")
    if len(raw) != len(columns):
        raise ValueError(f"rows[{index}] has {len(raw)} values but `columns` names {len(columns)}")
    return dict(zip(columns, raw, strict=True))


def _row_key(index: int, values: Mapping[str, Any], row_key: str | None) -> str:
    if row_key is None:
        return str(index)
    if row_key not in values:
        raise ValueError(f"rows[{index}] has no column {row_key!r} (the row_key)")
    value = values[row_key]
    if value is None or str(value) == "":
        raise ValueError(f"rows[{index}]: the row key column {row_key!r} is empty")
    key = str(value)
    if len(key) > MAX_ROW_KEY_LENGTH:
        raise ValueError(f"rows[{index}]: row key longer than {MAX_ROW_KEY_LENGTH} characters")
    if "\x00" in key or not _encodable(key):
        # A key is stored in every database and matched on resume: it must survive each of them intact.
        raise ValueError(f"rows[{index}]: the row key {key!r} contains a NUL character or invalid Unicode")
    return key


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class MessageTemplate:
    """Message templates compiled once and rendered per row.

    Every string content, text part and media URL (``image_url``, ``video_url``, ``file_url``,
    ``input_audio`` data) is a template.

    :param messages: message dicts whose strings are Jinja templates.
    :param context: the Airflow context (``ti``, ``ds``, ``params``, ...) available next to ``row``.
    """

    def __init__(self, messages: list[dict[str, Any]], context: Mapping[str, Any]) -> None:
        from jinja2 import StrictUndefined, TemplateSyntaxError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        options: dict[str, Any] = {"undefined": StrictUndefined, "autoescape": False, "keep_trailing_newline": True}
        env = ImmutableSandboxedEnvironment(**options)
        # A NULL column renders empty in a media URL (refused before any call), not as the text "None".
        media_env = ImmutableSandboxedEnvironment(**options, finalize=_none_as_empty)
        self._context = {k: v for k, v in context.items() if k != "row"}
        self._messages = messages
        self._compiled: list[tuple[tuple[Any, ...], Any]] = []
        for path, text in _template_strings(messages):
            try:
                self._compiled.append((path, (media_env if len(path) == 5 else env).from_string(text)))
            except TemplateSyntaxError as exc:
                where = f"messages[{path[0]}]"
                raise ValueError(f"{where}: template syntax error: {exc.message} (line {exc.lineno})") from None

    def render(self, row: Row) -> list[dict[str, Any]]:
        """Messages for one row.

        :raises ValueError: the template uses a name that is not defined, or fails on the row's values (the
            row's columns are listed).
        """
        from jinja2 import UndefinedError
        from jinja2.exceptions import SecurityError

        variables = {**self._context, "row": row.values}
        out = [dict(m) for m in self._messages]
        for path, template in self._compiled:
            try:
                text = template.render(variables)
            except Exception as exc:  # noqa: BLE001 - any template error is this row's input error
                if isinstance(exc, AirflowTaskTimeout):  # the task's alarm, not the row's fault
                    raise
                # A filter or an operator on the row's data (``format`` of a NULL, a division by zero)
                # raises its own type: named here, it stops a streamed source like any bad row would.
                what = str(exc) if isinstance(exc, (UndefinedError, SecurityError)) else f"{type(exc).__name__}: {exc}"
                columns = ", ".join(sorted(map(str, row.values))) or "none"
                where = f"row {row.key!r}: messages[{path[0]}]"
                raise ValueError(f"{where}: {what} (the row's columns: {columns})") from None
            _set_path(out, path, text)
        return out


def _none_as_empty(value: Any) -> Any:
    return "" if value is None else value


def _template_strings(messages: list[dict[str, Any]]) -> Iterator[tuple[tuple[Any, ...], str]]:
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str):
            yield (i, "content"), content
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, Mapping):
                    continue
                if isinstance(part.get("text"), str):
                    yield (i, "content", j, "text"), part["text"]
                kind = part.get("type")
                if kind in MEDIA_FIELDS:
                    outer, inner = MEDIA_FIELDS[kind]
                    holder = part.get(outer)
                    if isinstance(holder, Mapping) and isinstance(holder.get(inner), str):
                        yield (i, "content", j, outer, inner), holder[inner]


def _set_path(messages: list[dict[str, Any]], path: tuple[Any, ...], value: str) -> None:
    """Set ``value`` at ``path``, copying each container on the way (the template's own stay untouched)."""
    message = messages[path[0]]
    if len(path) == 2:
        message["content"] = value
        return
    parts = list(message["content"])
    part = dict(parts[path[2]])
    if len(path) == 4:
        part[path[3]] = value
    else:
        part[path[3]] = {**part[path[3]], path[4]: value}
    parts[path[2]] = part
    message["content"] = parts


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """One row's chat request, rendered, validated and serialized once, before any call.

    :param key: the row key.
    :param body: the JSON bytes to send.
    :param fingerprint: SHA-256 hex of ``body``: model, request parameters and rendered messages.
    :param prompt_bound: an upper bound of its prompt tokens (its bytes, media parts counted at
        :data:`MEDIA_TOKENS_BOUND` each).
    :param unsendable: why it cannot be sent online (text that is not valid Unicode); ``None`` when fine.
    """

    key: str
    body: bytes
    fingerprint: str
    prompt_bound: int
    unsendable: str | None = None


class RequestBuilder:
    """Builds :class:`PreparedRequest` objects for one run.

    :param model: the model every request names.
    :param params: the other request options (validated with each request).
    :param template: renders a row's messages; ``None`` for a fixed message list.
    :param messages: the fixed messages (single mode), when there is no template.
    """

    def __init__(self, model: str, params: Mapping[str, Any], template: MessageTemplate | None = None,
                 messages: list[dict[str, Any]] | None = None) -> None:
        if (template is None) == (messages is None):
            raise ValueError("give a template or fixed messages")
        self.model = model
        self.params = dict(params)
        self.template = template
        self.messages = messages
        self.max_tokens: int | None = params.get("max_tokens") if isinstance(params.get("max_tokens"), int) else None

    def build(self, row: Row) -> PreparedRequest:
        """Render, validate and serialize one row's request.

        :raises ValueError: a template error, an invalid request, or a media part that cannot be sent.
        """
        messages = self.template.render(row) if self.template is not None else self.messages
        try:
            body = build_chat_request(self.model, messages, **self.params).to_body()
        except ValueError as exc:
            raise ValueError(f"row {row.key!r}: {exc}") from None
        media_bytes, media_parts = _check_media(row.key, body["messages"])
        unsendable = None
        try:
            data = encode_body(body)
        except UnicodeEncodeError as exc:
            data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode("ascii")
            unsendable = (f"the row's text is not valid Unicode and cannot be sent ({exc.reason} at position "
                          f"{exc.start} of the request body); nothing was sent or billed")
        bound = len(data) - media_bytes + media_parts * MEDIA_TOKENS_BOUND
        return PreparedRequest(row.key, data, hashlib.sha256(data).hexdigest(), bound, unsendable)


def _check_media(key: str, messages: list[dict[str, Any]]) -> tuple[int, int]:
    """Check every media part's URL or data; return (bytes of URL/data, number of parts)."""
    total = count = 0
    for i, message in enumerate(messages):
        content = message.get("content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind not in MEDIA_FIELDS:
                continue
            outer, inner = MEDIA_FIELDS[kind]
            value = (part.get(outer) or {}).get(inner)
            where = f"row {key!r}: messages[{i}].content[{j}].{outer}.{inner}"
            _check_media_value(where, value, allow_url=kind != "input_audio")
            total += len(str(value))
            count += 1
    return total, count


def _check_media_value(where: str, value: Any, *, allow_url: bool) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} is empty")
    parts = urlsplit(value) if ":" in value[:12] else None
    scheme = parts.scheme.lower() if parts else ""
    if parts and scheme in ("http", "https") and allow_url:
        if len(value) > MAX_MEDIA_URL_LENGTH:
            raise ValueError(f"{where}: URL longer than {MAX_MEDIA_URL_LENGTH} characters")
        if not parts.hostname:
            raise ValueError(f"{where}: the URL has no host")
        return
    if scheme == "data":
        header, sep, data = value.partition(",")
        if not sep or ";base64" not in header:
            raise ValueError(f"{where}: a data URL must be base64 (data:<type>;base64,<data>)")
        if not data.strip():
            raise ValueError(f"{where} is empty (a data URL without data)")
    elif scheme:
        raise ValueError(f"{where}: URL scheme {scheme!r} is not allowed (use https://, http:// or base64 data)")
    else:
        data = value
    if len(data) * 3 // 4 > MAX_INLINE_MEDIA_BYTES:
        raise ValueError(f"{where}: inline data larger than {MAX_INLINE_MEDIA_BYTES} bytes")
    try:
        base64.b64decode(data[:4096 - len(data[:4096]) % 4] or "", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: not a URL and not valid base64 data") from None
