"""Rows in, messages out: normalizing upstream rows and rendering per-row prompts safely.

Row templates render in a sandboxed Jinja environment with ``StrictUndefined``: a value inside a
row is data and is never rendered again (a row whose text is ``{{ 7*7 }}`` is sent literally), and
a name that is not defined fails while the operator validates, before any API call.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MessageTemplate", "Row", "normalize_rows", "prompt_messages"]

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
        values = _row_values(index, raw, columns)
        key = _row_key(index, values, row_key)
        if key in seen:
            raise ValueError(f"rows[{index}]: duplicate row key {key!r} in column {row_key!r}")
        seen.add(key)
        out.append(Row(key, values))
    return out


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

    :param messages: message dicts whose string contents (or text parts) are Jinja templates.
    :param context: the Airflow context (``ti``, ``ds``, ``params``, ...) available next to ``row``.
    """

    def __init__(self, messages: list[dict[str, Any]], context: Mapping[str, Any]) -> None:
        from jinja2 import StrictUndefined, TemplateSyntaxError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self._context = {k: v for k, v in context.items() if k != "row"}
        self._messages = messages
        self._compiled: dict[tuple[int, int | None], Any] = {}
        for path, text in self._strings():
            try:
                self._compiled[path] = env.from_string(text)
            except TemplateSyntaxError as exc:
                where = f"messages[{path[0]}]"
                raise ValueError(f"{where}: template syntax error: {exc.message} (line {exc.lineno})") from None

    def _strings(self) -> Iterator[tuple[tuple[int, int | None], str]]:
        for i, message in enumerate(self._messages):
            content = message.get("content")
            if isinstance(content, str):
                yield (i, None), content
            elif isinstance(content, list):
                for j, part in enumerate(content):
                    if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                        yield (i, j), part["text"]

    def render(self, row: Row) -> list[dict[str, Any]]:
        """Messages for one row.

        :raises ValueError: the template uses a name (or row column) that is not defined.
        """
        from jinja2 import UndefinedError
        from jinja2.exceptions import SecurityError

        variables = {**self._context, "row": row.values}
        out = [dict(m) for m in self._messages]
        for (i, j), template in self._compiled.items():
            try:
                text = template.render(variables)
            except (UndefinedError, SecurityError) as exc:
                raise ValueError(f"row {row.key!r}: messages[{i}]: {exc}") from None
            if j is None:
                out[i]["content"] = text
            else:
                parts = list(out[i]["content"])
                parts[j] = {**parts[j], "text": text}
                out[i]["content"] = parts
        return out
