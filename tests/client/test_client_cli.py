"""The dataaccess command's pure logic, without a server: its input, row files and output."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest
from google.protobuf import timestamp_pb2
from rich.console import Console

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess_client import _convert, _render
from dataaccess_client._models import InsertResult
from dataaccess_client._row_files import RowFileError, RowReader, format_of, number_or_text
from dataaccess_client.cli import InsertTotals, build_parser, param_value

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


# CLI input


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42),
        ("-7", -7),
        (str(INT64_MIN), INT64_MIN),
        (str(INT64_MAX), INT64_MAX),
        (str(INT64_MAX + 1), str(INT64_MAX + 1)),
        ("1.5", 1.5),
        ("-.5", -0.5),
        ("2e3", 2000.0),
        ("1e999", "1e999"),
        ("null", None),
        ("NULL", "NULL"),
        ("007", "007"),
        ("+5", "+5"),
        ("nan", "nan"),
        ("", ""),
        ("abc", "abc"),
    ],
)
def test_param_value(text, value):
    parsed = param_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_query_parser_collects_typed_params():
    args = build_parser().parse_args(
        ["--target", "h:1", "query", "live", "SELECT ?, ?", "-p", "1", "--param", "x"]
    )
    assert args.param == [1, "x"] and args.target == "h:1" and not args.bypass_cache


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--target", "h:1", "--timeout", "3", "--token", "t", "query", "live", "x"],
        ["query", "live", "x", "--json", "--target", "h:1", "--timeout", "3", "--token", "t"],
        ["--json", "--timeout", "3", "query", "live", "x", "--target", "h:1", "--token", "t"],
        ["--target", "elsewhere:2", "query", "live", "x", "--target", "h:1", "--timeout=3"]
        + ["--token=t", "--json"],  # after the command wins
    ],
)
def test_global_options_are_taken_before_or_after_the_command(argv):
    args = build_parser().parse_args(argv)
    assert (args.json, args.target, args.timeout, args.token) == (True, "h:1", 3.0, "t")
    assert (args.command, args.database, args.sql) == ("query", "live", "x")


@pytest.mark.parametrize("command", [["health"], ["stats"], ["invalidate", "--all"]])
def test_global_options_not_given_keep_their_defaults_after_any_command(command):
    parser = build_parser()
    before = parser.parse_args(["--tls-ca", "ca.pem", "--tls-cert", "c", *command])
    after = parser.parse_args([*command, "--tls-ca", "ca.pem", "--tls-cert", "c"])
    for args in (before, after):
        assert (args.tls_ca, args.tls_cert, args.tls_key) == ("ca.pem", "c", None)
        assert args.json is False and args.timeout == 10.0


def test_invalidate_needs_something_to_drop(capsys):
    from dataaccess_client.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["invalidate"])
    assert exit_info.value.code == 2
    assert "--tag" in capsys.readouterr().err


def test_format_of():
    assert format_of("rows.JSONL") == "jsonl" and format_of("a.ndjson") == "jsonl"
    assert format_of("rows.csv") == "csv" and format_of("rows") == "csv"


def reader(text, fmt):
    data = text.encode()
    return RowReader(io.BytesIO(data), fmt, name="f"), len(data)


def test_csv_batches():
    rows_reader, size = reader('\ufeffid,name,price\n1,a,1.5\n2,,\n3,"multi\nline",007\n', "csv")
    assert rows_reader.columns == ["id", "name", "price"]
    batches = list(rows_reader.batches(2))
    assert batches == [[(1, "a", 1.5), (2, None, None)], [(3, "multi\nline", "007")]]
    assert rows_reader.bytes_read == size


def test_csv_wrong_width_names_the_line():
    rows_reader, _ = reader("a,b\n1,2\n3\n", "csv")
    with pytest.raises(RowFileError, match=r"f:3: 1 fields"):
        list(rows_reader.batches(10))


def test_csv_without_header():
    with pytest.raises(RowFileError, match="header"):
        reader("", "csv")


def test_jsonl_batches():
    lines = [
        {"id": 1, "name": "a", "ok": True},
        {"id": 2, "ok": False},
        {"id": INT64_MAX, "name": None, "ok": 0.5},
    ]
    text = "\n".join(json.dumps(line) for line in lines[:2]) + "\n\n" + json.dumps(lines[2])
    rows_reader, size = reader(text, "jsonl")
    assert rows_reader.columns == ["id", "name", "ok"]
    assert list(rows_reader.batches(1000)) == [[(1, "a", 1), (2, None, 0), (INT64_MAX, None, 0.5)]]
    assert rows_reader.bytes_read == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1}\n{"a": 2, "b": 3}\n', "f:2: keys not among"),
        ('{"a": [1]}\n', "nested list"),
        ('{"a": 1}\n[1]\n', "one JSON object"),
        ('{"a": 1}\n{oops\n', "f:2: not JSON"),
    ],
)
def test_jsonl_errors(text, message):
    rows_reader, _ = reader(text, "jsonl")
    with pytest.raises(RowFileError, match=message):
        list(rows_reader.batches(10))


def test_batch_size_must_be_positive():
    rows_reader, _ = reader("a\n1\n", "csv")
    with pytest.raises(ValueError):
        list(rows_reader.batches(0))


def test_number_or_text_keeps_leading_zeros():
    assert number_or_text("0") == 0 and number_or_text("00") == "00"


# output


def test_insert_totals():
    totals = InsertTotals()
    totals.add(2, InsertResult(rows_affected=2, last_insert_rowid=5, invalidated_tags=["t"]))
    totals.add(1, InsertResult(rows_affected=0, last_insert_rowid=5, invalidated_tags=["t"]))
    assert totals.summary() == "inserted 2 of 3 rows in 2 batches"
    assert json.loads(_render.to_json(totals))["invalidated_tags"] == ["t"]


def test_json_tags_blobs():
    result = _convert.query_result(pb.QueryResponse(rows=[_convert.to_row([b"\x00", "x"])]))
    assert json.loads(_render.to_json(result))["rows"] == [[{"$base64": "AA=="}, "x"]]


def test_stats_sections_are_plain():
    finished = timestamp_pb2.Timestamp(seconds=0)
    stats = pb.StatsResponse(
        advisories=[pb.Advisory(kind=pb.ADVISORY_KIND_FULL_SCAN, database="live")],
        slow_queries=[pb.SlowQuery(database="live", finished_at=finished), pb.SlowQuery()],
    )
    sections = _render.stats_sections(stats)
    assert sections["advisories"][0]["kind"] == "full_scan"
    assert sections["slow_queries"][0]["finished_at"].startswith("1970-01-01T00:00:00")
    assert sections["slow_queries"][1]["finished_at"] is None
    assert sections["pools"] == []
    assert [t.title for t in _render.stats_tables(stats)] == ["slow_queries", "advisories"]


# the cli extra: rich is the command's, not the client's


def run_python(code):
    """``code`` run in a fresh interpreter, so that nothing imported here hides its imports."""
    command = [sys.executable, "-c", code]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.integration  # a fresh interpreter
def test_the_client_imports_without_rich():
    done = run_python(
        "import sys, dataaccess_client\n"
        "print(sorted(name for name in sys.modules if name.partition('.')[0] == 'rich'))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.integration  # a fresh interpreter
def test_the_command_without_rich_says_in_one_line_what_to_install():
    # None in sys.modules makes `import rich` fail as it does where rich is not installed.
    done = run_python(
        "import sys\n"
        "sys.modules['rich'] = None\n"
        "from dataaccess_client.__main__ import main\n"
        "sys.exit(main())"
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "dataaccess: the command needs rich: pip install 'dataaccess-client[cli]'"
    ]


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (pb.CACHE_STATUS_HIT_LOCAL, "hit (in process)"),
        (pb.CACHE_STATUS_HIT_REDIS, "hit (Redis)"),
        (pb.CACHE_STATUS_MISS, "miss"),
        (pb.CACHE_STATUS_STALE, "stale"),
        (pb.CACHE_STATUS_BYPASS, "bypass"),
    ],
)
def test_the_footer_says_the_cache_status_in_words(status, words):
    result = _convert.query_result(pb.QueryResponse(cache_status=status))
    assert f"cache {words} ·" in _render.query_footer(result)


def test_merge_options_become_the_requests_merge():
    from dataaccess_client import _rpcs

    plain = _rpcs.query.call("history", "SELECT 1").request
    assert not plain.HasField("merge")
    call = _rpcs.query.call(
        "history", "SELECT 1", order_by="day DESC", limit=5, group_by=["day"],
        aggregates={"units": "sum", "runs": "count"},
    )  # fmt: skip
    assert isinstance(call.request, pb.QueryRequest)
    merge = call.request.merge
    assert (merge.order_by, merge.limit, list(merge.group_by)) == ("day DESC", 5, ["day"])
    assert [(a.column, a.function) for a in merge.aggregates] == [
        ("units", pb.AGGREGATE_FUNCTION_SUM),
        ("runs", pb.AGGREGATE_FUNCTION_COUNT),
    ]
    with pytest.raises(ValueError, match="aggregate must be one of"):
        _rpcs.query.call("history", "SELECT 1", aggregates={"units": "avg"})  # type: ignore[dict-item]


def test_query_parser_collects_merge_options():
    args = build_parser().parse_args(
        ["query", "history", "x", "--order-by", "day DESC", "--limit", "7", "--group-by", "day"]
        + ["--group-by", "line", "--sum", "units", "--max", "last", "--count", "n"]
    )
    assert (args.order_by, args.limit, args.group_by) == ("day DESC", 7, ["day", "line"])
    assert args.aggregates == [("units", "sum"), ("last", "max"), ("n", "count")]


def test_json_param_sets():
    from dataaccess_client._row_files import json_param_set, read_param_sets

    assert json_param_set('[1, 2.5, "x", null, true, {"$base64": "AAE="}]') == (
        1, 2.5, "x", None, 1, b"\x00\x01",
    )  # fmt: skip
    for bad in ("{}", "[[1]]", '[{"$base64": "!"}]', "1,2"):
        with pytest.raises(ValueError):
            json_param_set(bad)
    jsonl = io.BytesIO(b'[1, "a"]\n\n[2, null]\n')
    assert read_param_sets(jsonl, "jsonl") == [(1, "a"), (2, None)]
    assert read_param_sets(io.BytesIO(b"a,b\n1,\n2,x\n"), "csv") == [(1, None), (2, "x")]
    with pytest.raises(RowFileError, match="f:2: a parameter set is a JSON array"):
        read_param_sets(io.BytesIO(b"[1]\n{}\n"), "jsonl", name="f")


# tables at 80 columns: headers break between words, never inside one


@pytest.mark.parametrize(
    ("header", "width", "lines"),
    [
        ("units_produced", 20, "units_produced"),
        ("units_produced", 10, "units_\nproduced"),
        ("acquire_p99_ms", 12, "acquire_p99_\nms"),
        ("total units made", 11, "total units\nmade"),
        ("supercalifragilistic", 6, "super…"),
        ("a_supercalifragilistic_b", 8, "a_\nsupercа…\nb".replace("а", "a")),
    ],
)
def test_wrap_header(header, width, lines):
    assert _render.wrap_header(header, width) == lines


def test_column_widths_give_each_its_longest_word_then_share_the_rest():
    assert _render.column_widths([5, 3], [40, 3], 30) == [27, 3]
    assert _render.column_widths([5, 5, 5], [50, 50, 5], 25) == [10, 10, 5]
    assert _render.column_widths([20, 4], [20, 4], 10) == [6, 4]  # too long: the widest gives


def test_a_wide_result_fits_80_columns_with_whole_header_words():
    names = [
        "production_run_identifier",
        "units_produced_per_shift",
        "units_scrapped_per_shift",
        "acquire_p99_ms",
        "line",
        "customer_facing_description",
    ]
    result = _convert.query_result(
        pb.QueryResponse(
            columns=[pb.Column(name=name, decl_type="INTEGER") for name in names],
            rows=[_convert.to_row([123456789, 4242, 17, 3.25, "L1", "x" * 120])],
        )
    )
    screen = io.StringIO()
    console = Console(file=screen, width=80, color_system=None)
    console.print(_render.query_table(result, console.width))
    text = screen.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    header = text.split("┡")[0]  # above the rule under the headers
    for name in names:
        for word in re.findall(r"[^_]+_?", name):
            assert word in header, (word, header)
    assert "x" * 120 in "".join(line.strip("│ ┃") for line in text.splitlines())  # folded, whole


def test_stats_with_too_many_fields_to_fit_turn_to_a_row_per_field():
    stats = pb.StatsResponse(pools=[pb.PoolStats(database="live", size=4, in_use=1)])
    screen = io.StringIO()
    Console(file=screen, width=80, color_system=None).print(*_render.stats_tables(stats, 80))
    text = screen.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "acquire_p99_ms" in text and "…" not in text  # every field's name whole
    assert any(line.split() == ["│", "in_use", "│", "1", "│"] for line in text.splitlines())


def test_tags_summary_counts_key_tags():
    assert _render.tags_summary([]) == "nothing"
    assert _render.tags_summary(["table:live.t", "key:live.t.id=1", "key:live.t.id=2"]) == (
        "table:live.t, 2 key tags"
    )
