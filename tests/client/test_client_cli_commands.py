"""The dataaccess command's subcommands against one real server on a loopback port.

The commands run in process through ``cli.main`` (what the console script
calls), reading what they print; one runs as the installed script, for its
exit status.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dataaccess_client.cli import main
from tests.conftest import _wait_serving, base_document, free_port

CLI = [str(Path(sys.executable).parent / "dataaccess")]  # the installed console script
MAX_ROWS = 500  # the server's limits.max_rows: archive's 1,080 runs are past it
ARCHIVE_RUNS, LIVE_RUNS = 1080, 720  # the seed: 90 and 60 days of 4 lines x 3 shifts


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m service`` with a ``history`` group over archive and live, and a low max_rows."""
    workdir = tmp_path_factory.mktemp("cli-commands")
    document: dict[str, Any] = base_document(workdir / "data")
    document["groups"] = [{"name": "history", "members": ["archive", "live"]}]
    document["limits"].update(max_rows=MAX_ROWS, stream_chunk_rows=200)
    (workdir / "data").mkdir()
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(document))
    port, log = free_port(), workdir / "server.log"
    env = {
        **os.environ,
        "DATAACCESS_CONFIG": str(config),
        "DATAACCESS_LISTEN": f"127.0.0.1:{port}",
        "DATAACCESS_WORKERS": "1",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=workdir, env=env, stdout=out, stderr=out
        )
    try:
        _wait_serving(port, process, log)
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(5)


def cli(target: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``dataaccess --target TARGET ARGS``; its exit status, stdout and stderr."""
    capsys.readouterr()
    status = main(["--target", target, *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def as_json(out: str) -> Any:
    return json.loads(out.strip().splitlines()[-1])


# query: a group's merge options, and the cache status in words


def test_query_merges_a_group_by_order_and_limit(target: str, capsys: Any) -> None:
    sql = "SELECT day, line, shift FROM production_runs ORDER BY day DESC, line, shift LIMIT 3"
    args = ["--json", "query", "history", sql, "--order-by", "day DESC, line, shift"]
    status, out, err = cli(target, capsys, *args, "--limit", "3")
    assert status == 0, err
    result = as_json(out)
    assert result["rows"] == [["2026-03-01", "L1", shift] for shift in (1, 2, 3)]
    assert sorted(result["databases"]) == ["archive", "live"]


def test_query_reaggregates_a_group_by_its_group_columns(target: str, capsys: Any) -> None:
    sql = (
        "SELECT line, count(*) AS runs, sum(units_scrapped) AS scrapped, min(day) AS first,"
        " max(day) AS last FROM production_runs GROUP BY line ORDER BY line"
    )
    status, out, err = cli(
        target, capsys, "--json", "query", "history", sql, "--group-by", "line",
        "--count", "runs", "--sum", "scrapped", "--min", "first", "--max", "last",
        "--order-by", "line",
    )  # fmt: skip
    assert status == 0, err
    rows = as_json(out)["rows"]
    assert [row[0] for row in rows] == ["L1", "L2", "L3", "L4"]
    assert {row[1] for row in rows} == {(ARCHIVE_RUNS + LIVE_RUNS) // 4}
    assert {(row[3], row[4]) for row in rows} == {("2025-10-03", "2026-03-01")}
    # The summed partial sums are the sums over both databases.
    status, out, _ = cli(
        target, capsys, "--json", "query", "archive",
        "SELECT sum(units_scrapped) FROM production_runs WHERE line = 'L1'",
    )  # fmt: skip
    archive_l1 = as_json(out)["rows"][0][0]
    status, out, _ = cli(
        target, capsys, "--json", "query", "live",
        "SELECT sum(units_scrapped) FROM production_runs WHERE line = 'L1'",
    )  # fmt: skip
    assert rows[0][2] == archive_l1 + as_json(out)["rows"][0][0]


def test_query_says_where_the_answer_came_from_in_words(target: str, capsys: Any) -> None:
    sql = "SELECT sku FROM products WHERE unit_cost > 40 ORDER BY sku"
    first = cli(target, capsys, "query", "live", sql)
    second = cli(target, capsys, "query", "live", sql)
    bypassed = cli(target, capsys, "query", "live", sql, "--bypass-cache")
    assert "cache miss" in first[1]
    assert "cache hit (in process)" in second[1]
    assert "cache bypass" in bypassed[1]
    assert as_json(cli(target, capsys, "--json", "query", "live", sql)[1])["cache_status"] == (
        "hit_local"  # --json keeps the name a program matches on
    )


def test_bad_sql_is_one_clear_line_and_exit_status_1(target: str) -> None:
    done = subprocess.run(
        [*CLI, "--target", target, "query", "live", "SELEKT 1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("error: INVALID_ARGUMENT")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


# update: one statement, several parameter sets, one transaction


def kitchen_items(target: str, capsys: Any, where: str = "1") -> list[list[Any]]:
    sql = f"SELECT id, code, qty, b FROM items WHERE {where} ORDER BY id"
    status, out, err = cli(target, capsys, "--json", "query", "kitchen", sql, "--bypass-cache")
    assert status == 0, err
    rows: list[list[Any]] = as_json(out)["rows"]
    return rows


def test_update_runs_once_per_set_and_prints_rows_and_token(target: str, capsys: Any) -> None:
    insert = "INSERT INTO items (id, code, qty, b) VALUES (?, ?, ?, ?)"
    status, out, err = cli(
        target, capsys, "update", "kitchen", insert, "--set", '[101, "u1", 1, null]',
        "--set", '[102, "u2", 2, {"$base64": "AAE="}]', "--set", '[103, "u3", true, null]',
    )  # fmt: skip
    assert status == 0, err
    assert "3 rows affected by 3 runs in one transaction" in out
    assert "consistency token: " in out and "consistency token: -" not in out
    assert "table:kitchen.items" in out
    assert kitchen_items(target, capsys, "id > 100") == [
        [101, "u1", 1, None],
        [102, "u2", 2, {"$base64": "AAE="}],
        [103, "u3", 1, None],
    ]


def test_update_takes_sets_from_jsonl_and_csv_files(
    target: str, capsys: Any, tmp_path: Path
) -> None:
    insert = "INSERT INTO items (id, code, qty) VALUES (?, ?, ?)"
    jsonl = tmp_path / "sets.jsonl"
    jsonl.write_text("".join(json.dumps([200 + i, f"j{i}", i]) + "\n" for i in range(5)))
    status, out, err = cli(
        target, capsys, "--json", "update", "kitchen", insert, "--params", str(jsonl)
    )
    assert status == 0, err
    answer = as_json(out)
    assert answer["rows_affected"] == [5] and answer["param_sets"] == 5
    assert answer["consistency_token"]
    sets = tmp_path / "sets.csv"
    sets.write_text("qty,id\n" + "".join(f"{10 + i},{200 + i}\n" for i in range(3)))
    update = "UPDATE items SET qty = ? WHERE id = ?"
    status, out, err = cli(target, capsys, "update", "kitchen", update, "--params", str(sets))
    assert status == 0, err
    assert "3 rows affected by 3 runs" in out
    rows = kitchen_items(target, capsys, "id BETWEEN 200 AND 299")
    assert [row[2] for row in rows] == [10, 11, 12, 3, 4]


def test_update_is_all_or_nothing_and_says_why_it_failed(target: str, capsys: Any) -> None:
    before = kitchen_items(target, capsys)
    update = "UPDATE items SET qty = ? WHERE id = ?"
    status, out, err = cli(
        target, capsys, "update", "kitchen", update, "--set", "[50, 101]", "--set", "[-1, 102]"
    )
    assert status == 1 and out == ""
    assert err.startswith("error: FAILED_PRECONDITION") and "CHECK" in err.upper()
    assert kitchen_items(target, capsys) == before  # the first set was rolled back too
    status, _, err = cli(target, capsys, "update", "kitchen", "UPDATE itemz SET qty = 1")
    assert status == 1 and err.startswith("error: NOT_FOUND")
    status, _, err = cli(target, capsys, "update", "kitchen", "UPDAT items SET qty = 1")
    assert status == 1 and err.startswith("error: INVALID_ARGUMENT")


def test_update_refuses_a_set_that_is_not_a_json_array(target: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--target", target, "update", "kitchen", "DELETE FROM items", "--set", "1, 2"])
    assert exit_info.value.code == 2
    assert "a parameter set is a JSON array" in capsys.readouterr().err


# export: QueryStream past max_rows, as CSV or JSONL


def test_export_streams_past_max_rows_as_csv(target: str, capsys: Any, tmp_path: Path) -> None:
    sql = "SELECT id, day, line, units_produced, note FROM production_runs ORDER BY id"
    status, _, err = cli(target, capsys, "query", "archive", sql)
    assert status == 1 and "RESOURCE_EXHAUSTED" in err  # Query stops at max_rows
    assert "note: `dataaccess export` streams every row" in err
    output = tmp_path / "runs.csv"
    status, out, err = cli(target, capsys, "export", "archive", sql, "--output", str(output))
    assert status == 0, err
    assert f"exported {ARCHIVE_RUNS} rows as csv to {output}" in " ".join(out.split())
    records = list(csv.reader(io.StringIO(output.read_text())))
    assert records[0] == ["id", "day", "line", "units_produced", "note"]
    assert len(records) == ARCHIVE_RUNS + 1
    assert records[1][:3] == ["1", "2025-10-03", "L1"] and records[1][4] == ""  # NULL: empty


def test_export_jsonl_to_stdout_keeps_types(target: str, capsys: Any) -> None:
    insert = "INSERT INTO items (id, code, r, b, n) VALUES (?, ?, ?, ?, ?)"
    status, _, err = cli(
        target, capsys, "update", "kitchen", insert,
        "--set", '[301, "e1", 1.5, {"$base64": "AP8="}, null]', "--set", '[302, "", null, null, 7]',
    )  # fmt: skip
    assert status == 0, err
    sql = "SELECT id, code, r, b, n, id FROM items WHERE id > 300 ORDER BY id"
    status, out, err = cli(target, capsys, "export", "kitchen", sql, "--format", "jsonl")
    assert status == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [
        {"id": 301, "code": "e1", "r": 1.5, "b": {"$base64": "AP8="}, "n": None, "id_2": 301},
        {"id": 302, "code": "", "r": None, "b": None, "n": 7, "id_2": 302},
    ]
    assert "exported 2 rows as jsonl to standard output" in err  # the summary stays off stdout


def test_export_max_rows_and_bad_sql(target: str, capsys: Any) -> None:
    sql = "SELECT id FROM production_runs ORDER BY id"
    status, out, err = cli(target, capsys, "export", "live", sql, "--max-rows", "3")
    assert status == 0, err
    assert out.splitlines() == ["id", "1", "2", "3"] and "cut by --max-rows" in err
    status, out, err = cli(target, capsys, "export", "live", "SELECT nope FROM production_runs")
    assert status == 1 and err.splitlines()[-1].startswith("error: ")


def test_query_says_hit_redis_in_words(
    tmp_path: Path, redis_server: Any, service_process: Any, capsys: Any
) -> None:
    """With L1 off, a repeated read is answered by Redis: "hit (Redis)"."""
    server = service_process(
        base_document(tmp_path / "data"),
        {"DATAACCESS_REDIS_URL": redis_server.url, "DATAACCESS_L1_MAX_ENTRIES": "0"},
    )
    target = f"127.0.0.1:{server.port}"
    sql = "SELECT count(*) AS n FROM production_runs"
    assert "cache miss" in cli(target, capsys, "query", "live", sql)[1]
    status, out, err = cli(target, capsys, "query", "live", sql)
    assert status == 0, err
    assert "cache hit (Redis)" in out


def test_update_refuses_an_empty_params_file(target: str, capsys: Any, tmp_path: Path) -> None:
    empty = tmp_path / "none.csv"
    empty.write_text("id\n")
    before = kitchen_items(target, capsys)
    status, _, err = cli(
        target, capsys, "update", "kitchen", "DELETE FROM items", "--params", str(empty)
    )
    assert status == 1 and "holds no parameter sets" in err
    assert kitchen_items(target, capsys) == before


async def test_async_and_sync_clients_take_the_merge_options(target: str) -> None:
    from dataaccess_client import AsyncClient, Client

    sql = "SELECT line, count(*) AS runs FROM production_runs GROUP BY line ORDER BY line"
    merge: dict[str, Any] = {"order_by": "line", "group_by": ["line"], "limit": 2}
    async with AsyncClient(target) as client:
        merged = await client.query("history", sql, aggregates={"runs": "count"}, **merge)
        concatenated = await client.query("history", sql)
    assert merged.rows == [("L1", 450), ("L2", 450)]
    assert len(concatenated.rows) == 8  # no merge: each member's four lines
    with Client(target) as sync_client:
        again = sync_client.query("history", sql, aggregates={"runs": "count"}, **merge)
    assert again.rows == merged.rows


def test_csv_with_a_null_marker_tells_null_from_empty_text_both_ways(
    target: str, capsys: Any, tmp_path: Path
) -> None:
    insert = "INSERT INTO items (id, t, n) VALUES (?, ?, ?)"
    status, _, err = cli(
        target, capsys, "update", "kitchen", insert, "--set", '[401, "", null]',
        "--set", '[402, "x", 5]',
    )  # fmt: skip
    assert status == 0, err
    sql = "SELECT id, t, n FROM items WHERE id IN (401, 402) ORDER BY id"
    output = tmp_path / "items.csv"
    status, _, err = cli(
        target, capsys, "export", "kitchen", sql, "--output", str(output), "--null", "\\N"
    )
    assert status == 0, err
    assert output.read_text() == "id,t,n\n401,,\\N\n402,x,5\n"  # empty text: empty
    delete = "DELETE FROM items WHERE id IN (401, 402)"
    assert cli(target, capsys, "update", "kitchen", delete)[0] == 0
    status, _, err = cli(target, capsys, "insert", "kitchen", "items", str(output), "--null", "\\N")
    assert status == 0, err
    status, out, err = cli(target, capsys, "export", "kitchen", sql, "--format", "jsonl")
    assert status == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [
        {"id": 401, "t": "", "n": None},
        {"id": 402, "t": "x", "n": 5},
    ]
    assert cli(target, capsys, "update", "kitchen", delete)[0] == 0  # the module's server's
    # A value written as the marker itself would read back as NULL: the export refuses it.
    for sql, null in (("SELECT 'NA' AS code", "NA"), ("SELECT 0 AS n", "0")):
        status, _, err = cli(target, capsys, "export", "kitchen", sql, "--null", null)
        assert status == 1 and f"is written as the NULL marker {null!r}" in err
    # --null means nothing to JSONL: refused rather than ignored.
    status, _, err = cli(
        target, capsys, "export", "kitchen", sql, "--format", "jsonl", "--null", "NA"
    )
    assert status == 1 and "--null is for CSV" in err


def test_update_runs_several_statements_in_one_transaction(
    target: str, capsys: Any, tmp_path: Path
) -> None:
    """A transfer: both statements commit, or (the second failing its CHECK) neither."""
    insert = "INSERT INTO items (id, code, qty) VALUES (?, ?, ?)"
    assert cli(target, capsys, "update", "kitchen", insert, "--set", '[501, "from", 10]')[0] == 0
    assert cli(target, capsys, "update", "kitchen", insert, "--set", '[502, "to", 0]')[0] == 0

    def transfer(units: int) -> Path:
        path = tmp_path / f"transfer-{units}.jsonl"
        lines = [
            {"sql": "UPDATE items SET qty = qty + ? WHERE id = ?", "sets": [[units, 502]]},
            {"sql": "UPDATE items SET qty = qty - ? WHERE id = ?", "sets": [[units, 501]]},
            {"sql": "UPDATE items SET t = 'moved' WHERE id IN (501, 502)"},
        ]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return path

    status, out, err = cli(
        target, capsys, "--json", "update", "kitchen", "--statements", str(transfer(4))
    )
    assert status == 0, err
    answer = as_json(out)
    assert answer["rows_affected"] == [1, 1, 2] and answer["param_sets"] == 3
    assert [row[2] for row in kitchen_items(target, capsys, "id IN (501, 502)")] == [6, 4]
    status, _, err = cli(target, capsys, "update", "kitchen", "--statements", str(transfer(7)))
    assert status == 1 and err.startswith("error: FAILED_PRECONDITION")
    assert [row[2] for row in kitchen_items(target, capsys, "id IN (501, 502)")] == [6, 4]
    # Neither SQL nor sets beside the file; a line that is not a statement names its place.
    status, _, err = cli(
        target, capsys, "update", "kitchen", "DELETE FROM items", "--statements", str(transfer(1))
    )
    assert status == 1 and "give neither" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sql": "DELETE FROM items WHERE id = 501"}\n{"sql": "x", "params": []}\n')
    status, _, err = cli(target, capsys, "update", "kitchen", "--statements", str(bad))
    assert status == 1 and f"{bad}:2: unknown keys: params" in err
    assert [row[2] for row in kitchen_items(target, capsys, "id IN (501, 502)")] == [6, 4]
    cleanup = "DELETE FROM items WHERE id IN (501, 502)"
    assert cli(target, capsys, "update", "kitchen", cleanup)[0] == 0  # the module's server's


def test_export_of_a_group_streams_every_member_past_max_rows(target: str, capsys: Any) -> None:
    sql = "SELECT id, day FROM production_runs ORDER BY id"
    status, out, err = cli(target, capsys, "export", "history", sql)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "id,day" and len(lines) == 1 + ARCHIVE_RUNS + LIVE_RUNS
    status, _, err = cli(target, capsys, "query", "history", sql)
    assert status == 1 and "RESOURCE_EXHAUSTED" in err  # what Query cannot answer whole


def test_update_takes_options_before_its_sql(target: str, capsys: Any) -> None:
    """`update DB -p 1 SQL` parses as it did before SQL became optional."""
    sql = "UPDATE items SET qty = qty WHERE id = ?"
    plain = "UPDATE items SET qty = qty WHERE id = 1"
    for args in (["-p", "1", sql], ["--set", "[1]", sql], ["--tag", "x", plain], [sql, "-p", "1"]):
        status, out, err = cli(target, capsys, "--json", "update", "kitchen", *args)
        assert status == 0, (args, err)
        assert as_json(out)["param_sets"] == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["--target", target, "update", "kitchen", sql, "-p", "1", "extra"])
    assert exit_info.value.code == 2
