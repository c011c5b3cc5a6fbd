"""The ``dataaccess`` command's subcommands: each makes one kind of call through the sync Client
and shows its answer, for a person or (``--json``) for a program."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from dataaccess_client import _render
from dataaccess_client._export import Export
from dataaccess_client._models import InsertResult, Row, SqlValue
from dataaccess_client._row_files import (
    RowReader,
    format_of,
    json_param_set,
    number_or_text,
    read_param_sets,
    read_statements,
)
from dataaccess_client.client import Client
from dataaccess_client.errors import DataAccessClientError

# Below this a progress bar would only flicker.
_PROGRESS_MIN_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Output:
    """Where a command's answer goes: rich renderables, or one line of JSON with --json."""

    console: Console
    as_json: bool

    def show(self, data: object, *renderables: RenderableType) -> None:
        """Print ``data`` as JSON, or the ``renderables`` for a person."""
        if self.as_json:
            print(_render.to_json(data))
            return
        for renderable in renderables:
            self.console.print(renderable)


Command = Callable[[Client, argparse.Namespace, Output], None]


def param_value(text: str) -> SqlValue:
    """A --param: ``null`` is NULL, integers and floats are numbers, anything else text."""
    return None if text == "null" else number_or_text(text)


def param_set(text: str) -> Row:
    """A --set: one parameter set as a JSON array."""
    try:
        return json_param_set(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_query(client: Client, args: argparse.Namespace, out: Output) -> None:
    result = client.query(
        args.database,
        args.sql,
        args.param or None,
        max_rows=args.max_rows,
        cache_mode="bypass" if args.bypass_cache else "use",
        order_by=args.order_by,
        limit=args.limit,
        group_by=args.group_by or (),
        aggregates=dict(args.aggregates or ()),
    )
    out.show(result, _render.query_table(result, out.console.width), _render.query_footer(result))


@dataclass
class InsertTotals:
    """What the batches of one ``insert`` have done so far."""

    batches: int = 0
    rows_sent: int = 0
    rows_affected: int = 0
    last_insert_rowid: int = 0
    invalidated_tags: list[str] = field(default_factory=list)

    def add(self, rows_sent: int, result: InsertResult) -> None:
        """Count one committed batch."""
        self.batches += 1
        self.rows_sent += rows_sent
        self.rows_affected += result.rows_affected
        if result.last_insert_rowid:  # 0: no row got a rowid (WITHOUT ROWID, all ignored)
            self.last_insert_rowid = result.last_insert_rowid
        new = [t for t in result.invalidated_tags if t not in self.invalidated_tags]
        self.invalidated_tags.extend(new)

    def summary(self) -> str:
        """One line for a person."""
        return (
            f"inserted {self.rows_affected} of {self.rows_sent} rows "
            f"in {self.batches} batch{'' if self.batches == 1 else 'es'}"
        )

    def report(self) -> dict[str, object]:
        """What --json prints; last_insert_rowid only when an inserted row got a rowid."""
        data = dataclasses.asdict(self)
        if not self.last_insert_rowid:
            del data["last_insert_rowid"]
        return data


@contextmanager
def _byte_progress(size: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr over ``size`` bytes; yields a function taking bytes read."""
    progress = Progress(
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=size < _PROGRESS_MIN_BYTES,
    )
    with progress:
        task = progress.add_task("insert", total=size)
        yield lambda done: progress.update(task, completed=done)


def run_insert(client: Client, args: argparse.Namespace, out: Output) -> None:
    path = Path(args.file)
    totals = InsertTotals()
    with path.open("rb") as stream, _byte_progress(path.stat().st_size) as advance:
        fmt = args.format or format_of(path.name)
        _null_for_csv(args.null, fmt)
        reader = RowReader(stream, fmt, name=str(path), null=args.null)
        try:
            for batch in reader.batches(args.batch_size):
                result = client.batch_insert(
                    args.database, args.table, reader.columns, batch, on_conflict=args.on_conflict
                )
                totals.add(len(batch), result)
                advance(reader.bytes_read)
        except (DataAccessClientError, ValueError):
            if totals.batches:  # earlier batches are committed: say how far the load got
                print(f"note: committed before the failure: {totals.summary()}", file=sys.stderr)
            raise
    out.show(totals.report(), totals.summary())


def run_export(client: Client, args: argparse.Namespace, out: Output) -> None:
    fmt = args.format or (format_of(args.output) if args.output else "csv")
    with ExitStack() as files:
        stream = (
            files.enter_context(open(args.output, "w", encoding="utf-8", newline=""))
            if args.output
            else sys.stdout
        )
        _null_for_csv(args.null, fmt)
        export = Export(stream, fmt, args.null)
        chunks = client.query_stream(
            args.database, args.sql, args.param or None, max_rows=args.max_rows
        )
        try:
            export.write(chunks)
        except (DataAccessClientError, ValueError):
            print(f"note: {export.rows} rows written before the failure", file=sys.stderr)
            raise
    where = args.output or "standard output"
    summary = f"exported {export.rows} row{'' if export.rows == 1 else 's'} as {fmt} to {where}"
    if export.truncated:
        summary += " (cut by --max-rows)"
    data = {
        "rows": export.rows,
        "format": fmt,
        "output": args.output,
        "truncated": export.truncated,
    }
    # The rows themselves may be on stdout: then the summary goes to stderr.
    summary_out = out if args.output else Output(Console(stderr=True, highlight=False), out.as_json)
    summary_out.show(data, summary)


def _statements(args: argparse.Namespace) -> list[tuple[str, list[Row]]]:
    """The update's statements: SQL with its parameter sets, or every one of --statements."""
    if args.statements is None:
        if args.sql is None:
            raise ValueError("update needs its SQL, or --statements FILE")
        return [(args.sql, _param_sets(args))]
    if args.sql is not None or args.param or args.set or args.params or args.format or args.null:
        raise ValueError(
            "--statements carries the SQL and its sets: give neither (nor --format or --null) "
            "beside it"
        )
    path = Path(args.statements)
    with path.open("rb") as stream:
        statements = read_statements(stream, str(path))
    if not statements:
        raise ValueError(f"{path} holds no statements")
    return statements


def _null_for_csv(null: str, fmt: str) -> None:
    if null and fmt != "csv":
        raise ValueError(f"--null is for CSV; {fmt} has its own null")


def _param_sets(args: argparse.Namespace) -> list[Row]:
    """The update's parameter sets: -p's one, each --set, or every row of --params FILE."""
    if args.null and not args.params:
        raise ValueError("--null is for a CSV --params file")
    if args.param:
        return [tuple(args.param)]
    if args.params:
        path = Path(args.params)
        with path.open("rb") as stream:
            fmt = args.format or format_of(path.name)
            _null_for_csv(args.null, fmt)
            sets = read_param_sets(stream, fmt, str(path), args.null)
        if not sets:  # else the statement would run once, without parameters
            raise ValueError(f"{path} holds no parameter sets")
        return sets
    return list(args.set or [])


def run_update(client: Client, args: argparse.Namespace, out: Output) -> None:
    statements = _statements(args)
    result = client.batch_update(
        args.database,
        statements,
        invalidate_tags=args.tag or (),
        idempotency_key=args.idempotency_key,
    )
    runs = sum(len(sets) or 1 for _, sets in statements)  # no set: it runs once
    affected = sum(result.rows_affected)
    of = f" of {len(statements)} statements" if len(statements) > 1 else ""
    summary = (
        f"{affected} row{'' if affected == 1 else 's'} affected "
        f"by {runs} run{'' if runs == 1 else 's'}{of} in one transaction"
    )
    token = f"consistency token: {result.consistency_token or '-'}"
    tags = f"invalidated: {_render.tags_summary(result.invalidated_tags)}"
    out.show({**dataclasses.asdict(result), "param_sets": runs}, summary, token, tags)


def run_health(client: Client, args: argparse.Namespace, out: Output) -> None:
    result = client.health(deep=args.deep)
    out.show(result, *_render.health_renderables(result))


def run_stats(client: Client, args: argparse.Namespace, out: Output) -> None:
    stats = client.stats(reset=args.reset)
    tables: list[RenderableType] = [*_render.stats_tables(stats, out.console.width)]
    out.show(_render.stats_sections(stats), *(tables or ["no statistics yet"]))


def run_invalidate(client: Client, args: argparse.Namespace, out: Output) -> None:
    tags = client.invalidate(tags=args.tag or (), databases=args.database or (), all=args.all)
    out.show({"invalidated_tags": tags}, f"invalidated: {', '.join(tags) or 'nothing'}")


def run_archive(client: Client, args: argparse.Namespace, out: Output) -> None:
    """Each archive rule's bounds and figures; with ``--dry-run``, what its next pass
    would move (rows of the source dated below the cutoff, read now, nothing moved)."""
    rules = [_render.archive_rule(entry) for entry in client.stats().archive]
    if args.dry_run:
        for rule in rules:
            rule["would_move"] = _would_move(client, rule)
    lines = [_render.archive_line(rule, args.dry_run) for rule in rules]
    out.show({"archive": rules}, *(lines or ["no archive rules are configured"]))


def _would_move(client: Client, rule: dict[str, object]) -> dict[str, object]:
    date, table = _quoted(str(rule["date_column"])), _quoted(str(rule["table"]))
    sql = f"SELECT count(*), min({date}), max({date}) FROM {table} WHERE {date} < ?"
    cutoff = rule["cutoff"]
    assert cutoff is None or isinstance(cutoff, int | float | str)
    result = client.query(str(rule["source"]), sql, [cutoff], cache_mode="bypass")
    rows, oldest, newest = result.rows[0]
    return {"rows": rows, "oldest": oldest, "newest": newest}


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
