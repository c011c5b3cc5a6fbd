"""Which statements answer differently from one run to the next: the cache must not keep them.

SQLite's authorizer names every function a statement calls, but not its
arguments, and ``'now'`` may be written in the SQL or bound as a parameter.
So the guard sorts the functions it saw, and the SQL text (read once, when
the statement's shape is first learnt) and the bound values (read on every
call) say whether a date/time function is asked for the current time.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.fingerprint import tokens
from service.values import Params, SqlValue

# Functions whose result changes between runs whatever their arguments.
VOLATILE_FUNCTIONS = frozenset(
    """
    random randomblob changes last_insert_rowid total_changes sqlite_offset
    current_timestamp current_date current_time
    """.split()
)
# Date/time functions: the current time when their time value is 'now' or missing.
CLOCK_FUNCTIONS = frozenset("date time datetime julianday unixepoch strftime timediff".split())
_TIME_VALUE_AT = {"strftime": 1}  # strftime(format, time-value, ...); the others start with it


def is_now(value: SqlValue) -> bool:
    """Whether SQLite's date functions read ``value`` as the current time (ASCII, any case)."""
    if isinstance(value, str):
        return len(value) == 3 and value.lower() == "now"
    if isinstance(value, bytes):
        return len(value) == 3 and value.lower() == b"now"
    return False


def binds_now(params: Params) -> bool:
    """Whether any bound value, positional or named, is ``'now'``."""
    values: Iterable[SqlValue] = params.values() if isinstance(params, dict) else params
    return any(is_now(value) for value in values)


def sql_reads_now(sql: str) -> bool:
    """Whether ``sql`` spells ``'now'`` as a literal, or calls a date/time function without
    its time value (``datetime()``, ``strftime('%s')``): both mean the current time."""
    significant = [(kind, text) for kind, text in tokens(sql) if kind not in ("comment", "space")]
    for at, (kind, text) in enumerate(significant):
        if kind == "string" and is_now(_literal(text)):
            return True
        name = _unquoted(text).lower() if kind in ("other", "ident") else ""
        if name in CLOCK_FUNCTIONS and at + 1 < len(significant) and significant[at + 1][1] == "(":
            if _argument_count(significant, at + 2) <= _TIME_VALUE_AT.get(name, 0):
                return True
    return False


def _argument_count(significant: list[tuple[str, str]], start: int) -> int:
    """How many arguments a call has whose first token (after its ``(``) is at ``start``."""
    depth, count = 0, 0
    for _kind, text in significant[start:]:
        if text == ")" and depth == 0:
            return count
        count = max(count, 1)
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        elif text == "," and depth == 0:
            count += 1
    return count


def _literal(text: str) -> SqlValue:
    """The value of a string or blob literal token (an unterminated one is taken as is)."""
    if text[:1] in "xX":
        try:
            return bytes.fromhex(text[2:].rstrip("'"))
        except ValueError:
            return None
    body = text[1:-1] if len(text) > 1 and text.endswith("'") else text[1:]
    return body.replace("''", "'")


def _unquoted(text: str) -> str:
    if text[:1] in '"`[' and len(text) > 1:
        return text[1:-1]
    return text
