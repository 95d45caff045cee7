"""Scripted answers and the answer parts beyond ``content``: tool calls, web search, content filter.

A :class:`ScriptedAnswer` is what ``GLMTestServer.answer(...)``, ``Fault.answer(...)`` and the
command line's ``--answers FILE`` describe: exact content (or a JSON value), one or more tool calls,
a ``web_search`` list, a ``content_filter`` list and a finish reason. Parts left out are generated
as usual. The answers file is a JSON array of entries (or one entry), or JSONL with one entry a
line; an entry is ``{"match": "...", "times": n, "content" | "json" | "tool_call" | "web_search" |
"content_filter" | "finish_reason": ...}``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ANSWER_KEYS = ("content", "json", "tool_call", "web_search", "content_filter", "finish_reason")
ENTRY_KEYS = frozenset({"match", "times", *ANSWER_KEYS})
DEFAULT_SEARCH_COUNT = 3
MAX_SEARCH_COUNT = 50


@dataclass(frozen=True)
class ScriptedAnswer:
    """An exact answer, or exact parts of one. Build it with :meth:`build`.

    JSON-valued parts are kept as JSON text, so the value is immutable and hashable.

    :param content: the assistant content, or None to generate it (or none with tool calls).
    :param tool_calls: ``(name, arguments as a JSON string, id or None)`` per call.
    :param web_search_json: the ``web_search`` list as JSON text, or None.
    :param content_filter_json: the ``content_filter`` list as JSON text, or None.
    :param finish_reason: the finish reason to answer, or None for the usual one.
    """

    content: str | None = None
    tool_calls: tuple[tuple[str, str, str | None], ...] = ()
    web_search_json: str | None = None
    content_filter_json: str | None = None
    finish_reason: str | None = None

    @classmethod
    def build(cls, *, content: str | None = None, json_value: Any = None,
              tool_call: Mapping[str, Any] | list[Mapping[str, Any]] | None = None,
              web_search: list[Mapping[str, Any]] | None = None,
              content_filter: list[Mapping[str, Any]] | None = None,
              finish_reason: str | None = None) -> ScriptedAnswer:
        """Check and freeze the parts of an answer.

        :param content: exact assistant content.
        :param json_value: a JSON value answered as the content's JSON text (not with ``content``).
        :param tool_call: ``{"name", "arguments", "id"?}`` or a list of them; ``arguments`` is an
            object (sent as its JSON text) or a string (sent as is).
        :param web_search: the ``web_search`` list, e.g. ``[{"title", "link", "content", ...}]``.
        :param content_filter: the ``content_filter`` list, e.g. ``[{"role": "assistant", "level": 1}]``.
        :param finish_reason: e.g. ``"sensitive"``; the default is ``tool_calls`` with tool calls,
            else ``stop``.
        :raises ValueError: nothing given, or both ``content`` and ``json_value``.
        :raises TypeError: a part of the wrong type.
        """
        if content is not None and json_value is not None:
            raise ValueError("give content or json, not both")
        if content is not None and not isinstance(content, str):
            raise TypeError("content must be a string")
        if json_value is not None:
            content = json.dumps(json_value, ensure_ascii=False)
        calls = _tool_calls(tool_call)
        parts = (web_search, content_filter)
        for name, part in zip(("web_search", "content_filter"), parts, strict=True):
            if part is not None and not (isinstance(part, list) and all(isinstance(p, Mapping) for p in part)):
                raise TypeError(f"{name} must be a list of objects")
        if finish_reason is not None and not isinstance(finish_reason, str):
            raise TypeError("finish_reason must be a string")
        if content is None and not calls and web_search is None and content_filter is None \
                and finish_reason is None:
            raise ValueError("an answer needs content, json, tool_call, web_search, content_filter "
                             "or finish_reason")
        return cls(content=content, tool_calls=calls,
                   web_search_json=None if web_search is None else json.dumps(web_search, ensure_ascii=False),
                   content_filter_json=None if content_filter is None else json.dumps(content_filter,
                                                                                      ensure_ascii=False),
                   finish_reason=finish_reason)

    @property
    def web_search(self) -> list[dict[str, Any]] | None:
        """A fresh copy of the scripted ``web_search`` list, or None."""
        return None if self.web_search_json is None else list(json.loads(self.web_search_json))

    @property
    def content_filter(self) -> list[dict[str, Any]] | None:
        """A fresh copy of the scripted ``content_filter`` list, or None."""
        return None if self.content_filter_json is None else list(json.loads(self.content_filter_json))

    def tool_call_objects(self, call_id: str) -> list[dict[str, Any]] | None:
        """The ``tool_calls`` of the message, or None when no call is scripted.

        :param call_id: id of the first call (later ones get ``<id>_<n>``) unless the script names one.
        """
        if not self.tool_calls:
            return None
        return [{"id": given or (call_id if index == 0 else f"{call_id}_{index}"), "type": "function",
                 "index": index, "function": {"name": name, "arguments": arguments}}
                for index, (name, arguments, given) in enumerate(self.tool_calls)]


def _tool_calls(value: Any) -> tuple[tuple[str, str, str | None], ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, list) or not items:
        raise TypeError("tool_call must be an object or a non-empty list of objects")
    calls: list[tuple[str, str, str | None]] = []
    for item in items:
        if not isinstance(item, Mapping):
            raise TypeError("each tool_call must be an object with name and arguments")
        name, arguments, given = item.get("name"), item.get("arguments", {}), item.get("id")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise ValueError(f"tool_call name must match {TOOL_NAME.pattern}, got {name!r}")
        if given is not None and not isinstance(given, str):
            raise TypeError("tool_call id must be a string")
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        calls.append((name, text, given))
    return tuple(calls)


@dataclass(frozen=True)
class AnswerEntry:
    """One entry of an answers file.

    :param match: substring of the request body or of its messages' text; "" matches every request.
    :param answer: the answer.
    :param times: how many requests it answers; None for all.
    """

    match: str
    answer: ScriptedAnswer
    times: int | None = None

    @classmethod
    def from_mapping(cls, entry: Any, where: str = "entry") -> AnswerEntry:
        """Build an entry from its JSON form.

        :param entry: ``{"match", "times", "content" | "json" | ...}``.
        :param where: where it came from, for error messages.
        :raises ValueError: a bad entry, with ``where`` in the message.
        """
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: an answer must be a JSON object")
        unknown = sorted(set(entry) - ENTRY_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(ENTRY_KEYS)}")
        match, times = entry.get("match", ""), entry.get("times")
        if not isinstance(match, str):
            raise ValueError(f"{where}: match must be a string")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 0):
            raise ValueError(f"{where}: times must be an integer >= 0 or null")
        try:
            answer = ScriptedAnswer.build(content=entry.get("content"), json_value=entry.get("json"),
                                          tool_call=entry.get("tool_call"), web_search=entry.get("web_search"),
                                          content_filter=entry.get("content_filter"),
                                          finish_reason=entry.get("finish_reason"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        return cls(match=match, answer=answer, times=times)


def load_answers(path: str | Path) -> list[AnswerEntry]:
    """Read an answers file: a JSON array of entries, one JSON entry, or JSONL (one entry a line).

    :param path: the file.
    :raises ValueError: unreadable JSON or a bad entry (the message names the line or index).
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, list):
        return [AnswerEntry.from_mapping(item, f"{path} entry {index}") for index, item in enumerate(whole)]
    if isinstance(whole, dict):
        return [AnswerEntry.from_mapping(whole, str(path))]
    entries: list[AnswerEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path} line {number}: not JSON ({exc})") from None
        entries.append(AnswerEntry.from_mapping(item, f"{path} line {number}"))
    return entries


def web_search_results(tools: Any, text: str) -> list[dict[str, Any]] | None:
    """The generated ``web_search`` list when a ``web_search`` tool asks for ``search_result: true``.

    ``count`` results (1-50; 3 when not given), each ``{title, link, content, icon, media, refer,
    publish_date}``, derived from the tool's ``search_query`` or else ``text``.

    :param tools: the request's ``tools``.
    :param text: the last user message's text.
    :return: the list, or None when no such tool is present.
    """
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if not isinstance(tool, Mapping) or tool.get("type") != "web_search":
            continue
        options = tool.get("web_search")
        if not isinstance(options, Mapping) or options.get("search_result") is not True:
            continue
        count = options.get("count")
        if isinstance(count, bool) or not isinstance(count, int):
            count = DEFAULT_SEARCH_COUNT
        query = options.get("search_query")
        query = " ".join((query if isinstance(query, str) and query.strip() else text).split()) or "search"
        digest = hashlib.sha256(query.encode()).hexdigest()
        slug = "-".join(re.findall(r"[a-z0-9]+", query.lower()))[:40] or digest[:12]
        return [{"title": f"Result {n}: {query[:60]}", "link": f"https://example.com/{slug}/{n}",
                 "content": f"What example.com says about {query[:120]} (result {n}).",
                 "icon": "https://example.com/favicon.ico", "media": "example.com", "refer": f"ref_{n}",
                 "publish_date": f"2025-{int(digest[n % 32], 16) % 12 + 1:02d}-{n % 28 + 1:02d}"}
                for n in range(1, max(1, min(count, MAX_SEARCH_COUNT)) + 1)]
    return None
