"""The ``dataaccess`` command: its arguments, and one subcommand per RPC (in ``_commands``).

Exit status: 0 on success, 1 when a call fails (``error: CODE: message`` on
stderr) or a local input is bad, 2 for a usage error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from rich.console import Console

from dataaccess_client import _commands
from dataaccess_client._commands import Command, InsertTotals, Output, param_set, param_value
from dataaccess_client._policy import TOKEN_ENV, TlsFiles
from dataaccess_client.client import DEFAULT_TARGET, Client
from dataaccess_client.errors import DataAccessClientError, ResourceExhausted

__all__ = ["InsertTotals", "build_parser", "main", "param_set", "param_value"]

TARGET_ENV = "DATAACCESS_TARGET"


def _global_options(parser: argparse.ArgumentParser, after_command: bool = False) -> None:
    """The options every command takes, before its name or (``after_command``) after it.

    After it they default to SUPPRESS: one not given there leaves the value given
    before the command (or the default) as it was, instead of resetting it.
    """
    env = os.environ
    also = "before" if after_command else "after"
    where = parser.add_argument_group(f"global options (also {also} the command)")

    def default(value: object) -> object:
        return argparse.SUPPRESS if after_command else value

    where.add_argument(
        "--target",
        default=default(env.get(TARGET_ENV, DEFAULT_TARGET)),
        help=f"server host:port (default: ${TARGET_ENV} or {DEFAULT_TARGET})",
    )
    where.add_argument(
        "--timeout", type=float, default=default(10.0), help="seconds per call (default: 10)"
    )
    where.add_argument(
        "--token",
        default=default(env.get(TOKEN_ENV)),
        help=f"bearer token (default: ${TOKEN_ENV})",
    )
    where.add_argument(
        "--tls-ca", default=default(None), help="connect over TLS, trusting this CA bundle"
    )
    where.add_argument(
        "--tls-cert", default=default(None), help="client certificate for mutual TLS"
    )
    where.add_argument("--tls-key", default=default(None), help="client key for mutual TLS")
    where.add_argument(
        "--json", action="store_true", default=default(False), help="print one line of JSON"
    )


def _query_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    query = commands.add_parser("query", help="run one read-only statement")
    query.add_argument("database", help="a database or group name")
    query.add_argument("sql")
    query.add_argument(
        "-p",
        "--param",
        action="append",
        type=param_value,
        metavar="VALUE",
        help="a positional parameter, in order: null, an integer, a float, or text",
    )
    query.add_argument("--max-rows", type=int, default=0, help="cut the result at N rows")
    query.add_argument("--bypass-cache", action="store_true", help="neither read nor fill it")
    _merge_options(query)
    query.set_defaults(run=_commands.run_query)


def _aggregate(function: str) -> Callable[[str], tuple[str, str]]:
    """The --sum (--count, ...) argument type: a column, paired with its function."""
    return lambda column: (column, function)


def _merge_options(query: argparse.ArgumentParser) -> None:
    """How a group's member results are combined (the proto's Merge)."""
    merge = query.add_argument_group(
        "merging a group's results", "without these, the members' rows are concatenated"
    )
    merge.add_argument(
        "--order-by", default="", metavar="'COL [DESC], ...'",
        help="k-way merge the members' rows, each already in this order (like 'day DESC')",
    )  # fmt: skip
    merge.add_argument(
        "--limit", type=int, default=0, metavar="N", help="cut the merged result at N rows"
    )
    merge.add_argument(
        "--group-by", action="append", metavar="COL",
        help="a column the partial aggregates are grouped by (repeatable)",
    )  # fmt: skip
    for function in ("sum", "count", "min", "max"):
        merge.add_argument(
            f"--{function}", dest="aggregates", action="append", metavar="COL",
            type=_aggregate(function),
            help=f"re-aggregate this column's partial {function.upper()}s (repeatable)",
        )  # fmt: skip


def _insert_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    insert = commands.add_parser(
        "insert",
        help="insert the rows of a CSV or JSONL file in batches",
        description="CSV: a header row names the columns; empty fields are NULL, "
        "numbers are numbers, the rest text. JSONL: one object per line, "
        "the first object's keys are the columns.",
    )
    insert.add_argument("database")
    insert.add_argument("table")
    insert.add_argument("file")
    insert.add_argument(
        "--format", choices=("csv", "jsonl"), help="default: by extension (.jsonl, else csv)"
    )
    insert.add_argument("--batch-size", type=int, default=1000, help="rows per call (1000)")
    insert.add_argument("--on-conflict", choices=("abort", "ignore", "replace"), default="abort")
    insert.add_argument(
        "--null", default="", metavar="TEXT",
        help="the CSV field that is NULL (default: the empty one), e.g. \\N: "
        "then an empty field is empty text",
    )  # fmt: skip
    insert.set_defaults(run=_commands.run_insert)


def _export_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = commands.add_parser(
        "export",
        help="stream a read's rows, however many, to CSV or JSONL (QueryStream)",
        description="CSV: a header row, then a record per row; NULL is an empty field, a blob "
        'its base64. JSONL: an object per row, NULL is null, a blob {"$base64": "..."}. '
        "--timeout bounds the whole export: give a large one more.",
    )
    export.add_argument("database", help="a database or a group (its members one after another)")
    export.add_argument("sql")
    export.add_argument(
        "-p", "--param", action="append", type=param_value, metavar="VALUE",
        help="a positional parameter, in order: null, an integer, a float, or text",
    )  # fmt: skip
    export.add_argument(
        "--format", choices=("csv", "jsonl"), help="default: by --output's extension, else csv"
    )
    export.add_argument("-o", "--output", metavar="FILE", help="default: standard output")
    export.add_argument("--max-rows", type=int, default=0, help="stop after N rows (0: all)")
    export.add_argument(
        "--null", default="", metavar="TEXT",
        help="write NULL as this CSV field (default: empty, as is an empty text), e.g. \\N",
    )  # fmt: skip
    export.set_defaults(run=_commands.run_export)


def _update_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    update = commands.add_parser(
        "update",
        help="run one UPDATE, DELETE or INSERT once per parameter set, in one transaction",
        description="Parameter sets: -p VALUE ... for one; --set '[1, \"x\"]' (a JSON array, "
        'a blob as {"$base64": "..."}) once per set; or --params FILE: JSONL, one JSON '
        "array a line, or CSV, a header row then one set per record (an empty field is "
        "NULL, numbers are numbers). None: the statement runs once without parameters. "
        'Several statements: --statements FILE.jsonl, one {"sql": ..., "sets": [[...]]} a '
        "line, run in order. All commit together or not at all.",
    )
    update.add_argument("database")
    update.add_argument("sql", nargs="?", help="the statement (or give --statements)")
    update.add_argument(
        "--statements", metavar="FILE",
        help='several statements for one transaction: JSONL, {"sql": ..., "sets": [[...]]} a line',
    )  # fmt: skip
    sets = update.add_mutually_exclusive_group()
    sets.add_argument(
        "-p", "--param", action="append", type=param_value, metavar="VALUE",
        help="a parameter of the one set, in order (as in query)",
    )  # fmt: skip
    sets.add_argument(
        "--set", action="append", type=param_set, metavar="JSON",
        help="one parameter set as a JSON array (repeatable)",
    )  # fmt: skip
    sets.add_argument("--params", metavar="FILE", help="parameter sets from a JSONL or CSV file")
    update.add_argument(
        "--format", choices=("csv", "jsonl"), help="of --params (default: by extension)"
    )
    update.add_argument(
        "--null", default="", metavar="TEXT",
        help="in a CSV --params file, the field that is NULL (default: an empty one)",
    )  # fmt: skip
    update.add_argument("--tag", action="append", help="a tag to bump after the commit")
    update.add_argument(
        "--idempotency-key", default="", help="a retry with the same key writes nothing again"
    )
    update.set_defaults(run=_commands.run_update)


def _small_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = commands.add_parser("health", help="the health of the databases and Redis")
    health.add_argument("--deep", action="store_true", help="run the slower checks too")
    health.set_defaults(run=_commands.run_health)
    stats = commands.add_parser("stats", help="cache, pool, statement and write statistics")
    stats.add_argument("--reset", action="store_true", help="clear the counters after reading")
    stats.set_defaults(run=_commands.run_stats)
    invalidate = commands.add_parser("invalidate", help="drop cached results")
    invalidate.add_argument("--tag", action="append", help="bump this tag (repeatable)")
    invalidate.add_argument("--database", action="append", help="everything cached from it")
    invalidate.add_argument("--all", action="store_true", help="the whole cache")
    invalidate.set_defaults(run=_commands.run_invalidate)
    archive = commands.add_parser("archive", help="archive rules: bounds, figures, next move")
    archive.add_argument(
        "--dry-run", action="store_true", help="show what the next pass would move (moves nothing)"
    )
    archive.set_defaults(run=_commands.run_archive)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the dataaccess command."""
    parser = argparse.ArgumentParser(
        prog="dataaccess", description="Call the dataaccess gRPC service."
    )
    _global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _query_parser(commands)
    _insert_parser(commands)
    _export_parser(commands)
    _update_parser(commands)
    _small_parsers(commands)
    for command in commands.choices.values():  # `dataaccess query live "..." --json` too
        _global_options(command, after_command=True)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "update" and args.sql is None and len(extra) == 1:
        # `update DB -p 1 "UPDATE ..."`: an option between DATABASE and the optional SQL
        # leaves argparse unable to place the SQL after it.
        args.sql = extra.pop()
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "invalidate" and not (args.tag or args.database or args.all):
        parser.error("invalidate needs --tag, --database or --all")
    if args.command == "query" and args.limit < 0:
        parser.error("--limit must be zero (no cut) or positive")
    if args.command == "insert" and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the dataaccess command; returns the exit status."""
    args = _parse(build_parser(), argv)
    out = Output(console=Console(highlight=False), as_json=args.json)
    run: Command = args.run
    try:
        tls = (
            TlsFiles(args.tls_ca, args.tls_cert, args.tls_key)
            if args.tls_ca or args.tls_cert or args.tls_key
            else None
        )
        with Client(args.target, timeout=args.timeout, token=args.token, tls=tls) as client:
            run(client, args, out)
    except (DataAccessClientError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        # The server names QueryStream when a result is over its row or byte limit.
        if isinstance(exc, ResourceExhausted) and "QueryStream" in str(exc):
            print("note: `dataaccess export` streams every row, past max_rows", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
