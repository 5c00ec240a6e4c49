"""JSON from outside the agent: its nesting is bounded before a parser sees it.

The JSON parsers recurse per level (orjson 3.8 crashes the process on 200,000 levels; the
standard library raises ``RecursionError``), so a hostile job could stop the CLI or an agent.
:func:`nested_deeper` answers without parsing and without recursion, in C-speed string passes.
"""

from __future__ import annotations

import re

MAX_DEPTH = 64  # JSON nesting a job may have (a job needs four levels)

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_SQUARE = bytes.maketrans(b"{}", b"[]")


def nested_deeper(data: bytes | str, limit: int = MAX_DEPTH) -> bool:
    """Whether ``data`` nests arrays and objects more than ``limit`` levels deep.

    Strings are cut out (their brackets do not count), the rest is reduced to its brackets,
    and the innermost pairs are removed once per level: a pair left after ``limit`` rounds is
    deeper than that. Unbalanced input is judged by its unclosed openers; the parser that
    follows refuses it anyway.
    """
    if _openers(data) <= limit:  # the common case: too few to nest deeper
        return False
    raw = data.encode(errors="surrogatepass") if isinstance(data, str) else data
    brackets = _STRING.sub(b"", raw).translate(_SQUARE, _NOT_BRACKET)
    run = b"[" * (limit + 1)
    for _ in range(limit):
        if run in brackets:  # that many openers in a row: deeper, whatever follows
            return True
        fewer = brackets.replace(b"[]", b"")
        if fewer == brackets:
            break
        brackets = fewer
    # a pair left is deeper than ``limit``; so is a run of openers never closed ("]]][[[[")
    return b"[]" in brackets or brackets.count(b"[") > limit


def _openers(data: bytes | str) -> int:
    if isinstance(data, str):
        return data.count("[") + data.count("{")
    return data.count(b"[") + data.count(b"{")
