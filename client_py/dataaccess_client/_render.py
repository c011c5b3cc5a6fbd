"""Turns client results into rich tables for a person and into JSON for a program."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess_client._models import HealthResult, QueryResult, SqlValue

_BLOB_PREVIEW_BYTES = 16
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


def query_table(result: QueryResult) -> Table:
    """The rows of a query result under its column names."""
    table = Table()
    for name, decl_type in zip(result.columns, result.decl_types, strict=True):
        header = Text(name, style="bold")
        if decl_type:
            header.append(f"\n{decl_type}", style="dim")
        # Fold rather than truncate, so a narrow terminal never hides data.
        table.add_column(header, overflow="fold")
    for row in result.rows:
        table.add_row(*(cell(value) for value in row))
    return table


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


def stats_tables(stats: pb.StatsResponse) -> list[Table]:
    """One table per non-empty list in the response, titled by its field name."""
    return [
        _dicts_table(name, entries) for name, entries in stats_sections(stats).items() if entries
    ]


def _dicts_table(title: str, entries: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for name in entries[0]:
        # Fold, not truncate: names like acquire_p99_ms must stay readable when narrow.
        table.add_column(name, overflow="fold")
    for entry in entries:
        table.add_row(*(_stat_cell(value) for value in entry.values()))
    return table


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
