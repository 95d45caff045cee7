"""Sample strings for JSON-schema ``pattern`` keywords, best effort and deterministic.

A small parser covers the regular expressions schemas usually carry: literals, escapes (``\\d``,
``\\w``, ``\\s`` and escaped punctuation), ``.``, character classes with ranges and negation, groups
(capturing, ``(?:...)``, named), alternation, anchors and the quantifiers ``*``, ``+``, ``?``,
``{n}``, ``{n,}``, ``{n,m}`` (lazy and possessive suffixes are ignored). It builds a sample from the
first alternative of each choice and the fewest repetitions; lookarounds produce nothing.

Every candidate is checked with :func:`re.search` (JSON schema patterns are not anchored) and the
length bounds; :func:`sample_for_pattern` returns None when no candidate passes, for example with
backreferences or conflicting lookarounds, and the caller then falls back to a plain string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_REPEAT_FILL = 64
CLASS_ESCAPES = {"d": "0123456789", "w": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_",
                 "s": " \t\n"}
CONTROL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}
NEGATED_CANDIDATES = "aA0_ -x.Zz9"


class PatternUnsupported(Exception):
    """The pattern uses a construct the sampler does not handle."""


@dataclass
class _Node:
    """One parsed piece: ``kind`` is ``"text"``, ``"seq"``, ``"alt"`` or ``"repeat"``."""

    kind: str
    text: str = ""
    children: tuple[_Node, ...] = ()
    low: int = 1
    high: int | None = 1


class _Parser:
    def __init__(self, pattern: str) -> None:
        self.src = pattern
        self.pos = 0

    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def take(self) -> str:
        char = self.peek()
        if not char:
            raise PatternUnsupported("unexpected end of pattern")
        self.pos += 1
        return char

    def parse(self) -> _Node:
        node = self.alternation()
        if self.pos != len(self.src):
            raise PatternUnsupported(f"unbalanced ')' at {self.pos}")
        return node

    def alternation(self) -> _Node:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence())
        return branches[0] if len(branches) == 1 else _Node("alt", children=tuple(branches))

    def sequence(self) -> _Node:
        items: list[_Node] = []
        while self.peek() not in ("", "|", ")"):
            atom = self.atom()
            items.append(self.quantified(atom))
        return _Node("seq", children=tuple(items))

    def quantified(self, atom: _Node) -> _Node:
        char = self.peek()
        if char in ("*", "+", "?"):
            self.pos += 1
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
        elif char == "{" and re.match(r"\{\d+(,\d*)?\}", self.src[self.pos:]):
            end = self.src.index("}", self.pos)
            low_text, _, high_text = self.src[self.pos + 1:end].partition(",")
            low = int(low_text)
            high = low if "," not in self.src[self.pos:end] else (int(high_text) if high_text else None)
            self.pos = end + 1
        else:
            return atom
        if self.peek() in ("?", "+"):
            self.pos += 1
        return _Node("repeat", children=(atom,), low=low, high=high)

    def atom(self) -> _Node:
        char = self.take()
        if char in ("^", "$"):
            return _Node("text")
        if char == ".":
            return _Node("text", text="a")
        if char == "[":
            return _Node("text", text=self.char_class())
        if char == "(":
            return self.group()
        if char == "\\":
            return _Node("text", text=self.escape(in_class=False))
        if char in ("*", "+", "?", "{"):
            if char == "{":
                return _Node("text", text="{")
            raise PatternUnsupported(f"nothing to repeat at {self.pos - 1}")
        return _Node("text", text=char)

    def group(self) -> _Node:
        lookaround = False
        if self.src.startswith("?", self.pos):
            head = self.src[self.pos:self.pos + 4]
            if head.startswith(("?:", "?>")):
                self.pos += 2
            elif head.startswith(("?=", "?!")) or head.startswith(("?<=", "?<!")):
                lookaround = True
                self.pos += 3 if head[1] == "<" else 2
            elif head.startswith(("?P<", "?<")):
                self.pos = self.src.index(">", self.pos) + 1
            else:
                raise PatternUnsupported(f"group syntax at {self.pos}")
        inner = self.alternation()
        if self.take() != ")":
            raise PatternUnsupported("unclosed group")
        return _Node("text") if lookaround else inner

    def escape(self, *, in_class: bool) -> str:
        char = self.take()
        if char in CLASS_ESCAPES:
            return CLASS_ESCAPES[char][0] if not in_class else CLASS_ESCAPES[char]
        if char in CONTROL_ESCAPES:
            return CONTROL_ESCAPES[char]
        if char in ("D", "W", "S"):
            return "-" if char != "S" else "a"
        if char in ("b", "B", "A", "Z", "z") and not in_class:
            return ""
        if char == "u" and re.match(r"[0-9a-fA-F]{4}", self.src[self.pos:]):
            self.pos += 4
            return chr(int(self.src[self.pos - 4:self.pos], 16))
        if char.isalnum():
            raise PatternUnsupported(f"escape \\{char}")
        return char

    def char_class(self) -> str:
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        members: list[str] = []
        first = True
        while True:
            char = self.take()
            if char == "]" and not first:
                break
            first = False
            if char == "\\":
                members.append(self.escape(in_class=True))
                continue
            if self.peek() == "-" and self.src[self.pos + 1:self.pos + 2] not in ("]", ""):
                self.pos += 1
                end = self.take()
                if end == "\\":
                    end = self.escape(in_class=True)[:1]
                members.append("".join(chr(c) for c in range(ord(char), ord(end) + 1)))
                continue
            members.append(char)
        allowed = "".join(members)
        if not negated:
            if not allowed:
                raise PatternUnsupported("empty character class")
            return allowed[0]
        for candidate in NEGATED_CANDIDATES:
            if candidate not in allowed:
                return candidate
        raise PatternUnsupported("negated class excludes every candidate")


def _render(node: _Node, extra: int) -> str:
    if node.kind == "text":
        return node.text
    if node.kind == "seq":
        return "".join(_render(child, extra) for child in node.children)
    if node.kind == "alt":
        return _render(node.children[0], extra)
    count = node.low + extra if node.high is None else min(node.high, node.low + extra)
    return _render(node.children[0], extra) * count


def sample_for_pattern(pattern: str, preferred: str, min_length: int = 0,
                       max_length: int | None = None) -> str | None:
    """Return a string that :func:`re.search` finds ``pattern`` in, within the length bounds.

    :param pattern: the schema's ``pattern`` (ECMA-262 in theory; the common subset in practice).
    :param preferred: a string to use as is when it already fits (e.g. derived from the request text).
    :param min_length: the schema's ``minLength``.
    :param max_length: the schema's ``maxLength``, or None.
    :return: the sample, or None when none was found.
    """
    try:
        compiled = re.compile(pattern)
    except re.error:
        return None

    def fits(value: str) -> bool:
        return (len(value) >= min_length and (max_length is None or len(value) <= max_length)
                and compiled.search(value) is not None)

    if fits(preferred):
        return preferred
    try:
        tree = _Parser(pattern).parse()
    except (PatternUnsupported, ValueError):
        return None
    candidates = [_render(tree, 0)]
    base = candidates[0]
    if len(base) < min_length:
        gap = min_length - len(base)
        candidates += [_render(tree, min(gap, MAX_REPEAT_FILL)), base + "x" * gap, "x" * gap + base]
    for extra in range(1, 4):
        candidates.append(_render(tree, extra))
    for candidate in candidates:
        if fits(candidate):
            return candidate
    return None
