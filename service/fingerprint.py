"""Statement fingerprints: the SQL with its literals replaced by ``?`` and blanks folded.

Traces and Stats record a fingerprint, never the SQL as sent: a literal may
hold a value the caller would not want in a trace. Comments are dropped and
the keyword case left as written.

SQLite reads a double-quoted token as a string when no column in scope has
that name (``WHERE name = "SSN-123"``), and only it knows, at prepare, what is
in scope. So a double-quoted token is kept only where it cannot be a value:
when it is a name the database's schema declares (then at worst it shows a
schema name, as any identifier does), or where SQLite reads no expression
(after ``.``, ``AS``, ``FROM``, ``JOIN``, ``INTO``, ``UPDATE``, ``TABLE``, or
before ``.`` or ``(``). Every other one is masked like a literal. Backquoted
and bracketed names are never literals and are kept.
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
def fingerprint(sql: str, names: frozenset[str] = frozenset()) -> str:
    """The statement's shape: literals become ``?``, comments go, blanks fold to one space.

    ``names``: the lower-cased names the database declares (tables, views, columns).
    """
    parts: list[str] = []
    significant = [t for t in tokens(sql) if t[0] not in ("comment", "space")]
    at = 0
    for kind, text in tokens(sql):
        if kind in ("comment", "space"):
            if parts and parts[-1] != " ":
                parts.append(" ")
            continue
        if kind in ("string", "number") or (kind == "ident" and not _kept(significant, at, names)):
            parts.append("?")
        else:
            parts.append(text)
        at += 1
    return "".join(parts).strip()


_NAME_BEFORE = frozenset({".", "as", "from", "join", "into", "update", "table"})
_NAME_AFTER = frozenset({".", "("})


def _kept(significant: list[tuple[str, str]], at: int, names: frozenset[str]) -> bool:
    """Whether the quoted token at ``at`` is surely an identifier, not a string SQLite read."""
    text = significant[at][1]
    if text[0] != '"':
        return True  # `name` and [name] are identifiers only
    if text[1:-1].replace('""', '"').lower() in names:
        return True
    before = significant[at - 1][1].lower() if at > 0 else ""
    after = significant[at + 1][1] if at + 1 < len(significant) else ""
    return before in _NAME_BEFORE or after in _NAME_AFTER
