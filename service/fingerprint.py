"""Statement fingerprints: the SQL with its literals replaced by ``?`` and blanks folded.

Traces record a fingerprint, never the SQL as sent: a literal may hold a
value the caller would not want in a trace. Comments are dropped, quoted
identifiers kept, and the keyword case left as written.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

_TOKEN = re.compile(
    r"""
    (?P<comment>--[^\n]*|/\*.*?(?:\*/|$))
    | (?P<string>[xX]?'(?:[^']|'')*'?)
    | (?P<ident>"(?:[^"]|"")*"?|`[^`]*`?|\[[^\]]*\]?)
    | (?P<number>(?<![\w$])(?:0[xX][0-9a-fA-F]+|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))
    | (?P<space>\s+)
    | (?P<other>[\w$]+|.)
    """,
    re.VERBOSE | re.DOTALL,
)


def tokens(sql: str) -> Iterator[tuple[str, str]]:
    """``sql`` as (kind, text) tokens: comment, string (or blob), ident (quoted), number,
    space or other (a word or one character)."""
    for match in _TOKEN.finditer(sql):
        yield str(match.lastgroup), match.group()


@functools.lru_cache(maxsize=4096)
def fingerprint(sql: str) -> str:
    """The statement's shape: literals become ``?``, comments go, blanks fold to one space."""
    parts: list[str] = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        if kind in ("string", "number"):
            parts.append("?")
        elif kind in ("comment", "space"):
            if parts and parts[-1] != " ":
                parts.append(" ")
        else:
            parts.append(match.group())
    return "".join(parts).strip()
