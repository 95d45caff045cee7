"""Deterministic JSON values that conform to a JSON schema, for the test server's answers.

:func:`value_for_schema` turns a schema (as pydantic v2's ``model_json_schema()`` emits it, or
written by hand) and the request's text into a value that validates against the schema. The same
schema and text always give the same value. Rules, by keyword:

* ``$ref`` (``#/$defs/...``, ``#/definitions/...``, any local JSON pointer) is resolved, siblings
  of ``$ref`` are merged in; ``allOf`` parts are merged (properties joined, ``required`` unioned).
* ``const`` gives the constant; ``enum`` picks one member by a stable hash of the text and the
  value's path (array items rotate through the members).
* ``anyOf`` / ``oneOf`` and ``type`` lists take the first branch that is not ``null`` (so an
  ``Optional`` field gets a value), except deep in a recursive schema, where ``null`` ends it.
* ``object``: every property in ``properties`` (optional ones too), every ``required`` name, and
  one ``key_1`` entry from ``additionalProperties`` when that is a schema and there are no
  properties; ``minProperties`` / ``maxProperties`` are honoured.
* ``array``: ``prefixItems`` (tuples), then ``items``; 2 items by default, clamped to
  ``minItems`` / ``maxItems``; item *i* varies strings, numbers, booleans and enum picks by *i*,
  so ``uniqueItems`` holds in practice (duplicates are retried with other variants).
* ``string``: the request text, whitespace collapsed and cut to 60 characters ("sample" when
  empty), item *i* > 0 suffixed with ``" #<i+1>"``; padded by repetition to ``minLength`` and cut
  to ``maxLength``. ``format`` ``date``, ``date-time``, ``time``, ``email``, ``uri`` / ``url`` /
  ``iri``, ``uuid``, ``hostname``, ``ipv4``, ``ipv6`` and ``duration`` give a well-formed value
  derived from the text's hash. ``pattern`` is best effort (see :mod:`.pattern_samples`): the
  text when it matches, else a sample built from the pattern, else (unsatisfiable or unsupported
  pattern) the plain string, which then does not match.
* ``integer``: the text's length (plus the item index), clamped into ``minimum`` / ``maximum`` /
  ``exclusiveMinimum`` / ``exclusiveMaximum`` (numbers, or draft-4 booleans), then moved to a
  ``multipleOf``. ``number``: the text's length / 4 plus the item index, bounded the same way.
* ``boolean``: from the hash; ``null``: None. A schema with no type infers one from its keywords
  (``properties`` -> object, ``items`` -> array, bounds -> number, anything else -> string).

``not``, ``if``/``then``/``else``, ``dependentRequired``, ``propertyNames`` and
``patternProperties`` are ignored, and counts above 1,000 items or properties and lengths above
100,000 characters are capped, so such schemas may get a value that does not validate. Stdlib only.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterable
from typing import Any

from airflow_provider_glm.testing.pattern_samples import sample_for_pattern

MAX_DEPTH = 6
HARD_DEPTH = 24
DEFAULT_ITEMS = 2
STRING_CHARS = 60
UNIQUE_RETRIES = 8
MAX_COUNT = 1_000
MAX_LENGTH = 100_000
SCHEMA_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})
FENCED_JSON = re.compile(r"```json[ \t]*\r?\n?(.*?)```", re.DOTALL | re.IGNORECASE)
BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


def is_schema(value: Any) -> bool:
    """Whether a parsed JSON value looks like a JSON schema: an object with ``properties`` or a ``type``.

    :param value: any parsed JSON value.
    """
    if not isinstance(value, dict):
        return False
    kind = value.get("type")
    if isinstance(kind, list):
        return bool(kind) and all(k in SCHEMA_TYPES for k in kind)
    return isinstance(value.get("properties"), dict) or kind in SCHEMA_TYPES


def schema_in_texts(texts: Iterable[str]) -> dict[str, Any] | None:
    """Return the first fenced ````` ```json ````` block, in message order, that parses to a schema.

    :param texts: the messages' texts, in order.
    """
    for text in texts:
        for block in FENCED_JSON.findall(text):
            try:
                parsed = json.loads(block)
            except ValueError:
                continue
            if is_schema(parsed):
                schema: dict[str, Any] = parsed
                return schema
    return None


def schema_in_response_format(response_format: Any) -> dict[str, Any] | None:
    """Return the schema of ``{"type": "json_schema", "json_schema": {"schema": {...}}}``, leniently.

    Also accepts the schema directly under ``json_schema`` or under ``schema``.

    :param response_format: the request's ``response_format``.
    """
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    wrapper = response_format.get("json_schema")
    for candidate in (wrapper.get("schema") if isinstance(wrapper, dict) else None, wrapper,
                      response_format.get("schema")):
        if isinstance(candidate, dict) and is_schema(candidate):
            return candidate
    return None


def value_for_schema(schema: Any, text: str) -> Any:
    """Return a value that conforms to ``schema``, derived deterministically from ``text``.

    :param schema: a JSON schema (a dict, or a boolean schema).
    :param text: the request text the values derive from.
    """
    return _Generator(schema, text).value(schema, "$", 0, 0)


def _slug(text: str, fallback: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "-".join(words)[:24].strip("-") or fallback


class _Generator:
    def __init__(self, root: Any, text: str) -> None:
        self.root = root
        self.text = " ".join(text.split())
        self.base = self.text[:STRING_CHARS] or "sample"

    def hash(self, path: str, variant: int = 0) -> int:
        digest = hashlib.sha256(f"{self.text}\0{path}\0{variant}".encode()).digest()
        return int.from_bytes(digest[:8], "big")

    def lookup(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return {}
        return node

    def resolve(self, raw: Any, hops: int = 0) -> dict[str, Any]:
        if not isinstance(raw, dict):
            return {} if raw is not False else {"not": {}}
        schema: dict[str, Any] = raw
        if "$ref" in schema and hops < 32:
            target = self.resolve(self.lookup(str(schema["$ref"])), hops + 1)
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = _merge(target, self.resolve(siblings, hops + 1)) if siblings else target
        if isinstance(schema.get("allOf"), list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                merged = _merge(merged, self.resolve(part, hops + 1))
            schema = merged
        return schema

    def value(self, raw: Any, path: str, depth: int, variant: int) -> Any:
        if depth > HARD_DEPTH:
            return None
        schema = self.resolve(raw)
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        members = schema.get("enum")
        if isinstance(members, list) and members:
            return copy.deepcopy(members[(self.hash(path) + variant) % len(members)])
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
                resolved = [_merge(rest, self.resolve(b)) for b in branches]
                concrete = [b for b in resolved if not _is_null(b)]
                if not concrete or (depth >= MAX_DEPTH and len(concrete) < len(resolved)):
                    return None
                return self.value(concrete[0], path, depth, variant)
        kind = self.kind(schema, depth)
        if kind == "object":
            return self.object(schema, path, depth, variant)
        if kind == "array":
            return self.array(schema, path, depth)
        if kind == "integer":
            return self.number(schema, len(self.text) + variant, integer=True)
        if kind == "number":
            return self.number(schema, len(self.text) / 4 + variant, integer=False)
        if kind == "boolean":
            return (self.hash(path) + variant) % 2 == 0
        if kind == "null":
            return None
        return self.string(schema, path, variant)

    def kind(self, schema: dict[str, Any], depth: int) -> str:
        declared = schema.get("type")
        if isinstance(declared, list):
            usable = [k for k in declared if k in SCHEMA_TYPES and k != "null"]
            if not usable or (depth >= MAX_DEPTH and "null" in declared):
                return "null"
            return str(usable[0])
        if isinstance(declared, str) and declared in SCHEMA_TYPES:
            return declared
        if any(k in schema for k in ("properties", "required", "additionalProperties", "minProperties")):
            return "object"
        if any(k in schema for k in ("items", "prefixItems", "minItems", "maxItems")):
            return "array"
        if any(k in schema for k in BOUND_KEYS):
            return "number"
        return "string"

    def object(self, schema: dict[str, Any], path: str, depth: int, variant: int) -> dict[str, Any]:
        found = schema.get("properties")
        properties: dict[str, Any] = found if isinstance(found, dict) else {}
        listed = schema.get("required")
        required = [r for r in listed if isinstance(r, str)] if isinstance(listed, list) else []
        extra = schema.get("additionalProperties", True)
        deep = depth >= MAX_DEPTH
        out: dict[str, Any] = {}
        for name, sub in properties.items():
            if not deep or name in required:
                out[name] = self.value(sub, f"{path}.{name}", depth + 1, variant)
        for name in required:
            if name not in out:
                out[name] = self.value(extra if isinstance(extra, dict) else {}, f"{path}.{name}",
                                       depth + 1, variant)
        wanted = min(_int(schema.get("minProperties"), 0), MAX_COUNT)
        if not properties and isinstance(extra, dict) and not deep:
            wanted = max(wanted, 1)
        for number in range(1, wanted + len(out) + 2):
            if len(out) >= wanted or extra is False:
                break
            key = f"key_{number}"
            if key not in out:
                out[key] = self.value(extra if isinstance(extra, dict) else {}, f"{path}.{key}",
                                      depth + 1, variant)
        most = schema.get("maxProperties")
        if isinstance(most, int):
            for name in [n for n in reversed(list(out)) if n not in required][: max(0, len(out) - most)]:
                del out[name]
        return out

    def array(self, schema: dict[str, Any], path: str, depth: int) -> list[Any]:
        found = schema.get("prefixItems")
        prefix: list[Any] = found if isinstance(found, list) else []
        items = schema.get("items")
        if isinstance(items, list):
            prefix, items = items, schema.get("additionalItems")
        least, most = min(_int(schema.get("minItems"), 0), MAX_COUNT), schema.get("maxItems")
        count = least if depth >= MAX_DEPTH else max(least, len(prefix) or DEFAULT_ITEMS)
        if isinstance(most, int):
            count = min(count, most)
        if items is False:
            count = min(count, len(prefix))
        unique = schema.get("uniqueItems") is True
        out: list[Any] = []
        for index in range(count):
            sub = prefix[index] if index < len(prefix) else (items if isinstance(items, dict) else {})
            value = self.value(sub, f"{path}[]", depth + 1, index)
            retries = 0
            while unique and value in out and retries < UNIQUE_RETRIES:
                retries += 1
                value = self.value(sub, f"{path}[]", depth + 1, index + retries)
            out.append(value)
        return out

    def number(self, schema: dict[str, Any], start: float, *, integer: bool) -> int | float:
        low, low_open = _bound(schema, "minimum", "exclusiveMinimum")
        high, high_open = _bound(schema, "maximum", "exclusiveMaximum")
        if integer:
            if low is not None:
                low, low_open = (math.floor(low) + 1 if low_open else math.ceil(low)), False
            if high is not None:
                high, high_open = (math.ceil(high) - 1 if high_open else math.floor(high)), False
        value = start
        if low is not None and (value < low or (low_open and value <= low)):
            value = low if not low_open else low + (min(1.0, (high - low) / 2) if high is not None else 1.0)
        if high is not None and (value > high or (high_open and value >= high)):
            value = high if not high_open else high - (min(1.0, (high - low) / 2) if low is not None else 1.0)
        step = schema.get("multipleOf")
        if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
            value = _multiple(value, step, low, low_open, high, high_open)
        return int(value) if integer else float(value)

    def string(self, schema: dict[str, Any], path: str, variant: int) -> str:
        least = min(_int(schema.get("minLength"), 0), MAX_LENGTH)
        most = schema.get("maxLength") if isinstance(schema.get("maxLength"), int) else None
        formatted = self.formatted(str(schema.get("format", "")), path, variant)
        if formatted is not None:
            return formatted
        suffix = f" #{variant + 1}" if variant else ""
        text = self.base + suffix
        if least and len(text) < least:
            text = (text + " ") * (least // (len(text) + 1) + 1)
        if most is not None and len(text) > most:
            text = text[: max(0, most - len(suffix))] + suffix if len(suffix) < most else text[:most]
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            sample = sample_for_pattern(pattern, text, least, most)
            if sample is not None:
                return sample
        return text

    def formatted(self, fmt: str, path: str, variant: int) -> str | None:
        number = self.hash(path, variant)
        day = dt.date(2024, 1, 1) + dt.timedelta(days=number % 366)
        clock = f"{number % 24:02d}:{number // 24 % 60:02d}:00"
        slug = _slug(self.text, "user")
        values = {
            "date": day.isoformat(),
            "date-time": f"{day.isoformat()}T{clock}Z",
            "time": f"{clock}Z",
            "email": f"{slug}{variant or ''}@example.com",
            "uri": f"https://example.com/{slug}/{variant}",
            "uuid": str(uuid.UUID(int=number << 64 | self.hash(path, variant + 1), version=4)),
            "hostname": f"{slug}.example.com",
            "ipv4": f"192.0.2.{number % 254 + 1}",
            "ipv6": f"2001:db8::{number % 65535:x}",
            "duration": f"P{number % 30 + 1}D",
        }
        for alias in ("url", "iri", "uri-reference", "iri-reference"):
            values[alias] = values["uri"]
        values["idn-email"] = values["email"]
        values["idn-hostname"] = values["hostname"]
        return values.get(fmt)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if key == "properties" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        elif key == "required" and isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = list(dict.fromkeys([*merged[key], *value]))
        elif key not in merged or key in ("type", "anyOf", "oneOf", "enum", "const"):
            merged[key] = value
    return merged


def _is_null(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null" or ("const" in schema and schema["const"] is None)


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _bound(schema: dict[str, Any], closed: str, opened: str) -> tuple[float | None, bool]:
    value, flag = schema.get(closed), schema.get(opened)
    if isinstance(flag, int | float) and not isinstance(flag, bool):
        if isinstance(value, int | float) and not isinstance(value, bool):
            tighter = max(value, flag) if closed == "minimum" else min(value, flag)
            return tighter, tighter == flag
        return flag, True
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value, flag is True
    return None, False


def _multiple(value: float, step: float, low: float | None, low_open: bool, high: float | None,
              high_open: bool) -> float:
    def inside(candidate: float) -> bool:
        return ((low is None or candidate > low or (not low_open and candidate == low))
                and (high is None or candidate < high or (not high_open and candidate == high)))

    start = math.ceil(value / step)
    for offset in (0, 1, -1, 2, -2, 3, -3, 4, 5, 6, 7, 8):
        candidate = (start + offset) * step
        if isinstance(step, float):
            candidate = float(round(candidate, 12))
            quotient = candidate / step
            if int(quotient) != quotient:
                continue
        if inside(candidate):
            return candidate
    return value
