"""What a statement reads, learnt from PostgreSQL's plan (``EXPLAIN (VERBOSE, FORMAT JSON)``
of its generic plan), not from its SQL.

- **Relations**: every scan node's ``Relation Name`` and ``Schema`` (views are
  already expanded into their tables by the rewriter).
- **Functions**: every ``name(`` in the plan's expressions, outside string
  literals, and the SQL-standard functions PostgreSQL prints as keywords
  (``CURRENT_TIMESTAMP``, ``CURRENT_USER``, ...). The caller resolves the names
  in ``pg_proc``: volatile or stable ones make a read uncacheable, user-defined
  ones hide the tables they read, a few are refused outright.
- **Key conditions**: per scan of a table, the conjuncts of its ``Index Cond``,
  ``Recheck Cond`` and ``Filter`` of the form ``column = $n`` or
  ``column = literal``. Rows of the table failing them are dropped at the scan,
  so the result depends on no other rows of it, whichever way the scan runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# Nodes that produce rows of a table; their filters restrict that table's rows.
_SCANS = {
    "Seq Scan",
    "Index Scan",
    "Index Only Scan",
    "Bitmap Heap Scan",
    "Tid Scan",
    "Tid Range Scan",
    "Sample Scan",
    "Foreign Scan",
}
_UNCACHEABLE_NODES = {"Sample Scan", "Foreign Scan", "Custom Scan"}
_CONDITION_KEYS = ("Index Cond", "Recheck Cond", "Filter")
# Read left to right, so a quote inside a quoted name never opens a string, nor the
# reverse: E'' strings are taken as plain ones (a backslash-quote inside one ends it
# early here, which can only show more calls, never fewer).
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_$]*)\s*\(")
_MOMENT = re.compile(r"^'\s*(?:now|today|tomorrow|yesterday)\s*'$", re.IGNORECASE)
# The SQL-standard functions PostgreSQL prints as keywords: each depends on the moment
# or the session, never on the data.
_KEYWORD_FUNCTIONS = re.compile(
    r"\b(CURRENT_DATE|CURRENT_TIME|CURRENT_TIMESTAMP|LOCALTIME|LOCALTIMESTAMP|CURRENT_ROLE"
    r"|CURRENT_USER|SESSION_USER|USER|CURRENT_CATALOG|CURRENT_SCHEMA|SYSTEM_USER)\b"
)
_NOT_FUNCTIONS = {
    "ARRAY",
    "ROW",
    "ANY",
    "ALL",
    "SOME",
    "CASE",
    "WHEN",
    "AND",
    "OR",
    "NOT",
    "IN",
    "EXISTS",
    "SubPlan",
    "InitPlan",
    "CTE",
    "VALUES",
    "hashed",
    "COALESCE",
    "NULLIF",
    "GREATEST",
    "LEAST",
    "CAST",
}
_NAME = r"(?:[A-Za-z_][A-Za-z0-9_$]*|\"(?:[^\"]|\"\")+\")"
_QUALIFIER = r"(?:[A-Za-z_][A-Za-z0-9_$]*\.|\"(?:[^\"]|\"\")+\"\.)?"
_VALUE = (
    r"(?P<value>\$\d+|-?\d+"
    r"|'(?:[^']|'')*'::(?:text|integer|bigint|smallint|character varying))"
)
_SUBJECT = rf"(?:{_QUALIFIER}(?P<col>{_NAME})|\({_QUALIFIER}(?P<cast>{_NAME})\)::text)"
# col = ANY (ARRAY[$1, $2]) or col = ANY ('{1,2}'::integer[]): an IN list.
_ANY = re.compile(
    rf"^{_SUBJECT}\s*=\s*ANY\s*\((?:ARRAY\[(?P<items>[$\d, -]+)\]"
    rf"|'\{{(?P<ints>[\d, -]+)\}}'::(?:integer|bigint|smallint)\[\])\)$"
)
_EQUALITY = re.compile(rf"^{_SUBJECT}\s*=\s*\(?{_VALUE}\)?(?:::[a-z ]+)?$")


@dataclass(frozen=True)
class Scan:
    """One scan of a table: the columns its rows are restricted to equal, and to what
    (``$n`` as the parameter's index from 0, or a literal's text)."""

    schema: str
    table: str
    equal: Mapping[str, tuple[int | str, ...]]  # the values a column may equal (IN lists)


@dataclass
class PlanFacts:
    """What a statement's plan says it reads and calls."""

    scans: list[Scan] = field(default_factory=list)
    calls: set[str] = field(default_factory=set)  # function names as PostgreSQL stores them
    moments: bool = False  # a 'now' (or 'today', ...) literal: the moment it was read
    written: set[str] = field(default_factory=set)  # tables a write statement changes
    keyword_functions: bool = False
    uncacheable_nodes: bool = False
    top_node: str = ""
    operation: str = ""  # ModifyTable's Insert/Update/Delete, for a write
    text: str = ""  # the plan's expressions, literals removed, for operator checks

    @property
    def relations(self) -> set[tuple[str, str]]:
        """(schema, table) of every table scanned."""
        return {(scan.schema, scan.table) for scan in self.scans}


def analyse(explained: Any) -> PlanFacts:
    """The facts of one ``EXPLAIN (VERBOSE, FORMAT JSON)`` answer."""
    root = explained[0]["Plan"] if isinstance(explained, list) else explained["Plan"]
    facts = PlanFacts(top_node=str(root.get("Node Type", "")))
    facts.operation = str(root.get("Operation", "")) if facts.top_node == "ModifyTable" else ""
    nodes = list(_nodes(root))
    # PostgreSQL 15 prints the values sub-plans hand on ($0, $1, ...) like the
    # statement's own parameters: with any sub-plan, a "$n" cannot be told apart.
    subplans = any(n.get("Parent Relationship") in ("InitPlan", "SubPlan") for n in nodes)
    texts: list[str] = []
    for node in nodes:
        kind = str(node.get("Node Type", ""))
        if kind in _UNCACHEABLE_NODES:
            facts.uncacheable_nodes = True
        if kind == "ModifyTable" and "Relation Name" in node:
            # A table written (also inside a WITH): its triggers report the rows.
            facts.scans.append(Scan(str(node.get("Schema", "")), str(node["Relation Name"]), {}))
            facts.written.add(str(node["Relation Name"]))
        if kind in _SCANS and "Relation Name" in node:
            facts.scans.append(_scan(node, subplans))
        for key, value in node.items():
            if key in ("Plans", "Relation Name", "Alias", "Schema", "Index Name", "Node Type"):
                continue
            texts.extend(_strings(value))
    # Each expression on its own: joined, an output column would run into the next one.
    scanned = [scan_expression(text) for text in texts]
    facts.text = "\n".join(found.cleaned for found in scanned)
    facts.calls = set().union(*(found.calls for found in scanned))
    facts.moments = any(found.moments for found in scanned)
    facts.keyword_functions = any(_KEYWORD_FUNCTIONS.search(f.cleaned) for f in scanned)
    return facts


@dataclass(frozen=True)
class Expression:
    """One expression's text with its literals and quoted names blanked out, the functions
    it calls (unquoted names lower-cased, quoted ones as written), and whether a literal
    names a moment."""

    cleaned: str
    calls: frozenset[str]
    moments: bool


def scan_expression(text: str) -> Expression:
    """Read ``text`` (an expression from a plan, or a statement) left to right."""
    calls: set[str] = set()
    moments = False
    parts: list[str] = []
    position = 0
    for match in _QUOTED.finditer(text):
        parts.append(text[position : match.start()])
        token = match.group(0)
        if token.startswith("'"):
            moments = moments or bool(_MOMENT.match(token))
            parts.append("''")
        elif text[match.end() :].lstrip().startswith("("):
            calls.add(token[1:-1].replace('""', '"'))  # a quoted function name
            parts.append(" _quoted_ ")
        else:
            parts.append(" _quoted_ ")
        position = match.end()
    parts.append(text[position:])
    cleaned = "".join(parts)
    calls.update(
        name.lower()
        for name in _CALL.findall(cleaned)
        if name not in _NOT_FUNCTIONS and name != "_quoted_"
    )
    return Expression(cleaned, frozenset(calls), moments)


def _nodes(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield node
    for child in node.get("Plans", ()) or ():
        yield from _nodes(child)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _scan(node: Mapping[str, Any], subplans: bool) -> Scan:
    equal: dict[str, tuple[int | str, ...]] = {}
    for key in _CONDITION_KEYS:
        condition = node.get(key)
        if isinstance(condition, str):
            for conjunct in conjuncts(condition):
                found = equality(conjunct) or any_of(conjunct)
                if found is None:
                    continue
                if subplans and any(isinstance(source, int) for source in found[1]):
                    continue  # maybe a sub-plan's value, not the caller's parameter
                equal.setdefault(found[0], found[1])
    return Scan(str(node.get("Schema", "")), str(node["Relation Name"]), equal)


def conjuncts(condition: str) -> list[str]:
    """The top-level AND-ed parts of a condition as EXPLAIN prints it."""
    text = _strip_parens(condition.strip())
    parts, depth, start, quoted = [], 0, 0, False
    index = 0
    while index < len(text):
        char = text[index]
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and text.startswith(" AND ", index):
            parts.append(text[start:index].strip())
            start = index + 5
            index += 4
        index += 1
    parts.append(text[start:].strip())
    return [_strip_parens(p) for p in parts if p]


def _strip_parens(text: str) -> str:
    """``text`` without parentheses that wrap all of it."""
    while text.startswith("(") and text.endswith(")") and _wraps(text):
        text = text[1:-1].strip()
    return text


def _wraps(text: str) -> bool:
    depth, quoted = 0, False
    for index, char in enumerate(text):
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
            if depth == 0 and index != len(text) - 1:
                return False
    return True


def equality(conjunct: str) -> tuple[str, tuple[int | str, ...]] | None:
    """``(column, ($n index or literal text,))`` for ``column = $n`` or ``column = literal``."""
    match = _EQUALITY.match(conjunct)
    if match is None:
        return None
    value = match.group("value")
    if value.startswith("'"):
        return _column(match), (value[1 : value.rindex("'")].replace("''", "'"),)
    return _column(match), (_source(value),)


def any_of(conjunct: str) -> tuple[str, tuple[int | str, ...]] | None:
    """``(column, sources)`` for an IN list of parameters or integers, as PostgreSQL prints
    it: ``column = ANY (ARRAY[$1, $2])`` or ``column = ANY ('{1,2}'::integer[])``."""
    match = _ANY.match(conjunct)
    if match is None:
        return None
    items = [item.strip() for item in (match.group("items") or match.group("ints")).split(",")]
    if not all(re.fullmatch(r"\$\d+|-?\d+", item) for item in items):
        return None
    return _column(match), tuple(_source(item) for item in items)


def _column(match: re.Match[str]) -> str:
    column = match.group("col") or match.group("cast")
    if column.startswith('"'):
        column = column[1:-1].replace('""', '"')
    return column


def _source(item: str) -> int | str:
    """``$n`` as the parameter's index from 0; an integer literal as its text."""
    return int(item[1:]) - 1 if item.startswith("$") else item
