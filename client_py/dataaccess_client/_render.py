"""Turns client results into rich tables for a person and into JSON for a program."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Sequence
from datetime import UTC
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from rich.cells import cell_len
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess_client._convert import from_value
from dataaccess_client._models import HealthResult, QueryResult, SqlValue

_BLOB_PREVIEW_BYTES = 16
# A header breaks only between words: after a space, "_" or "-" (units_|produced).
_HEADER_PIECES = re.compile(r"[^\s_-]*[_-]+|[^\s_-]+|\s+")
# Each column costs "│ " before its cells and " " after them, and the table one last "│".
_BORDER_PER_COLUMN, _BORDER = 3, 1
# What QueryResult.cache_status means, for a person.
_CACHE_WORDS = {
    "hit_local": "hit (in process)",
    "hit_redis": "hit (Redis)",
    "miss": "miss",
    "stale": "stale",
    "bypass": "bypass",
}
_STATUS_STYLES = {"healthy": "green", "degraded": "yellow", "critical": "bold red"}


def to_json(value: object) -> str:
    """``value`` (dataclasses, lists, dicts, SQL values) as one line of JSON."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def _json_default(value: object) -> object:
    # JSON has no bytes; a tagged object keeps a blob apart from text.
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def cell(value: SqlValue) -> Text:
    """One SQL value as a table cell; Text, so that data is never read as rich markup."""
    if value is None:
        return Text("NULL", style="dim italic")
    if isinstance(value, bytes):
        preview = value[:_BLOB_PREVIEW_BYTES].hex()
        more = "…" if len(value) > _BLOB_PREVIEW_BYTES else ""
        return Text(f"x'{preview}{more}' ({len(value)} bytes)", style="magenta")
    if isinstance(value, int | float):
        return Text(repr(value), justify="right")
    return Text(value)


def query_table(result: QueryResult, width: int = 80) -> Table:
    """The rows of a query result under their column names (and declared types), in ``width``."""
    headers = [
        [name, decl_type] if decl_type else [name]
        for name, decl_type in zip(result.columns, result.decl_types, strict=True)
    ]
    rows = [[cell(value) for value in row] for row in result.rows]
    return fitted_table(headers, rows, width)


def fitted_table(headers: Sequence[Sequence[str]], rows: list[list[Text]], width: int) -> Table:
    """A table of ``rows`` no wider than ``width`` whose headers break only between words.

    Each header is its lines (a name, then dim ones like a declared type). Every
    column is at least as wide as its header's longest word while they all fit,
    and shares out the rest by need; a word too long even so is cut with "…".
    Cells fold rather than truncate, so a narrow terminal never hides data.
    """
    words = [max(len(piece) for line in lines for piece in _words(line)) for lines in headers]
    wants = [
        max([*(cell_len(line) for line in lines), *(_text_width(row[i]) for row in rows)])
        for i, lines in enumerate(headers)
    ]
    widths = column_widths(words, wants, width - _BORDER_PER_COLUMN * len(headers) - _BORDER)
    table = Table()
    for lines, column_width in zip(headers, widths, strict=True):
        header = Text(wrap_header(lines[0], column_width), style="bold")
        for line in lines[1:]:
            header.append("\n" + wrap_header(line, column_width), style="dim")
        table.add_column(header, width=column_width, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def column_widths(mins: list[int], wants: list[int], room: int) -> list[int]:
    """Widths within ``room``: each column its ``min`` (the widest first cut down when
    those do not fit), then the room left shared out among those wanting more."""
    widths = [max(1, m) for m in mins]
    while sum(widths) > room and max(widths) > 1:
        widths[widths.index(max(widths))] -= 1
    spare = room - sum(widths)
    while spare > 0:
        hungry = [i for i, w in enumerate(widths) if w < wants[i]]
        if not hungry:
            break
        share = max(1, spare // len(hungry))
        for i in hungry[:spare]:
            give = min(share, wants[i] - widths[i], spare)
            widths[i] += give
            spare -= give
    return widths


def wrap_header(header: str, width: int) -> str:
    """``header`` in lines of at most ``width``, broken only between words; a word
    longer than ``width`` is cut, ending in "…"."""
    lines: list[str] = []
    line, space = "", False
    for piece in _HEADER_PIECES.findall(header):
        if piece.isspace():
            space = bool(line)
            continue
        joined = f"{line}{' ' if space else ''}{piece}"
        if cell_len(joined) <= width:
            line, space = joined, False
            continue
        if line:
            lines.append(line)
        line, space = (piece if len(piece) <= width else piece[: max(width - 1, 0)] + "…"), False
    lines.append(line)
    return "\n".join(lines)


def _words(line: str) -> list[str]:
    return [piece for piece in _HEADER_PIECES.findall(line) if not piece.isspace()] or [""]


def _text_width(text: Text) -> int:
    return max((cell_len(line) for line in text.plain.splitlines()), default=0)


def query_footer(result: QueryResult) -> str:
    """One line saying how many rows came, from where and from which databases."""
    parts = [
        f"{len(result.rows)} row{'' if len(result.rows) == 1 else 's'}",
        f"cache {cache_words(result.cache_status)}",
        f"databases: {', '.join(result.databases) or '-'}",
    ]
    if result.truncated:
        parts.append("truncated by --max-rows")
    return " · ".join(parts)


def tags_summary(tags: list[str]) -> str:
    """The tags a write bumped, for a person: table and named tags, and how many key tags."""
    named = [tag for tag in tags if not tag.startswith("key:")]
    keys = len(tags) - len(named)
    parts = [*named, f"{keys} key tag{'' if keys == 1 else 's'}"] if keys else named
    return ", ".join(parts) or "nothing"


def cache_words(status: str) -> str:
    """Where an answer came from in words: ``hit_redis`` is "hit (Redis)"."""
    return _CACHE_WORDS.get(status, status)


def health_renderables(result: HealthResult) -> list[RenderableType]:
    """The overall grade, then one table row per check."""
    style = _STATUS_STYLES.get(result.status, "")
    title = Text.assemble((result.status, style), f" (score {result.score:.2f})")
    table = Table("check", "status", "message", "ms")
    for check in result.checks:
        table.add_row(
            Text(check.name),
            Text(check.status, style=_STATUS_STYLES.get(check.status, "")),
            Text(check.message),
            Text(f"{check.duration_ms:.1f}", justify="right"),
        )
    return [title, table]


def stats_sections(stats: pb.StatsResponse) -> dict[str, list[dict[str, Any]]]:
    """Each list in the response (cache, pools, statements, ...) as plain dicts."""
    return {
        field.name: [_plain_fields(entry) for entry in getattr(stats, field.name)]
        for field in stats.DESCRIPTOR.fields
    }


def stats_tables(stats: pb.StatsResponse, width: int = 80) -> list[Table]:
    """One table per non-empty list in the response, titled by its field name, in ``width``."""
    return [
        _dicts_table(name, entries, width)
        for name, entries in stats_sections(stats).items()
        if entries
    ]


def _dicts_table(title: str, entries: list[dict[str, Any]], width: int) -> Table:
    # Headers like acquire_p99_ms break between words (acquire_|p99_|ms), never inside one.
    names = list(entries[0])
    if not fits(names, width) and fits(["", *(str(e[names[0]]) for e in entries)], width):
        # Too many fields for their names to fit side by side: a row per field instead,
        # a column per entry, headed by its first field (the tier, the database, ...).
        headers = [[names[0]], *([str(entry[names[0]])] for entry in entries)]
        rows = [[Text(name), *(_stat_cell(entry[name]) for entry in entries)] for name in names[1:]]
    else:
        headers = [[name] for name in names]
        rows = [[_stat_cell(value) for value in entry.values()] for entry in entries]
    table = fitted_table(headers, rows, width)
    table.title, table.title_justify = title, "left"
    return table


def fits(headers: list[str], width: int) -> bool:
    """Whether columns under these headers fit ``width`` with every header word whole."""
    words = sum(max(len(piece) for piece in _words(header)) for header in headers)
    return words + _BORDER_PER_COLUMN * len(headers) + _BORDER <= width


def _stat_cell(value: object) -> Text:
    if isinstance(value, float):
        return Text(f"{value:.2f}", justify="right")
    if isinstance(value, int):
        return Text(str(value), justify="right")
    return Text("" if value is None else str(value))


def _plain_fields(message: Message) -> dict[str, Any]:
    return {field.name: _plain_value(message, field.name) for field in message.DESCRIPTOR.fields}


def _plain_value(message: Message, name: str) -> Any:
    value = getattr(message, name)
    if isinstance(value, pb.Value):  # an archive bound: a date as text, or unix seconds
        return from_value(value)
    if isinstance(value, timestamp_pb2.Timestamp):
        return value.ToDatetime(tzinfo=UTC).isoformat() if message.HasField(name) else None
    enum_type = message.DESCRIPTOR.fields_by_name[name].enum_type
    if enum_type is None:
        return value
    # Every enum's zero is <PREFIX>_UNSPECIFIED, which gives the prefix to drop.
    prefix = enum_type.values_by_number[0].name.removesuffix("UNSPECIFIED")
    known = enum_type.values_by_number.get(value)
    # A newer server may send a value this client's stubs do not name yet.
    return known.name.removeprefix(prefix).lower() if known else str(value)


def archive_rule(entry: pb.ArchiveStats) -> dict[str, Any]:
    """One archive rule of Stats as plain values."""
    return _plain_fields(entry)


def archive_line(rule: dict[str, Any], dry_run: bool) -> str:
    """One archive rule for a person: where its rows go, its bounds, and what it did."""
    head = (
        f"{rule['group']}: {rule['table']} rows {rule['age_days']:g} days old by "
        f"{rule['date_column']} move {rule['source']} -> {rule['target']}"
    )
    bounds = f"  moved below: {rule['boundary'] or '-'}"
    if rule["moving_below"] is not None:
        bounds += f", moving below: {rule['moving_below']}"
    done = (
        f"  since start: {rule['rows_moved']} rows in {rule['slices']} slices, "
        f"{rule['rows_kept']} left (changed after their copy)"
    )
    lines = [head, bounds, done]
    if rule["last_error"]:
        lines.append(f"  last pass stopped: {rule['last_error']}")
    if dry_run:
        would = rule["would_move"]
        span = f" ({would['oldest']} .. {would['newest']})" if would["rows"] else ""
        lines.append(f"  dry run: {would['rows']} rows dated below {rule['cutoff']}{span}")
    return "\n".join(lines)
