"""The client's pure logic, without a server: values, requests, errors, retries, CLI input."""

from __future__ import annotations

import io
import json
import math
from decimal import Decimal

import grpc
import pytest
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from dataaccess_client import _convert, _render, errors
from dataaccess_client._models import InsertResult
from dataaccess_client._policy import CallPolicy
from dataaccess_client._row_files import RowFileError, RowReader, format_of, number_or_text
from dataaccess_client.cli import InsertTotals, build_parser, param_value
from dataaccess_client.client import AsyncClient, Client
from dataaccess_client.v1 import data_access_pb2 as pb

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class FakeRpcError(grpc.RpcError):
    """A failed call as the sync stubs raise it."""

    def __init__(self, code, details="", trailing=()):
        super().__init__()
        self._code, self._details, self._trailing = code, details, tuple(trailing)

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


def bad_request_status(code=grpc.StatusCode.INVALID_ARGUMENT, message="bad") -> bytes:
    violation = error_details_pb2.BadRequest.FieldViolation(field="params[0]", description="NaN")
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return status.SerializeToString()


# values


@pytest.mark.parametrize(
    "value",
    [None, 0, -1, INT64_MIN, INT64_MAX, 0.0, -1.5, 1e308, math.inf, "", "héllo ☃", b"\x00\xff"],
)
def test_value_round_trip(value):
    converted = _convert.from_value(_convert.to_value(value))
    assert converted == value
    assert type(converted) is type(value)


def test_int64_extremes_use_the_integer_kind():
    assert _convert.to_value(INT64_MAX).WhichOneof("kind") == "integer"
    assert _convert.to_value(INT64_MIN).integer == INT64_MIN


@pytest.mark.parametrize("value", [INT64_MAX + 1, INT64_MIN - 1, 2**100])
def test_int_past_int64_is_refused(value):
    with pytest.raises(ValueError, match="64-bit"):
        _convert.to_value(value)


@pytest.mark.parametrize("value", [bytearray(b"ab"), memoryview(b"ab")])
def test_other_buffers_become_bytes(value):
    assert _convert.from_value(_convert.to_value(value)) == b"ab"


@pytest.mark.parametrize("value", [True, False])
def test_bool_is_refused(value):
    with pytest.raises(TypeError, match="bool"):
        _convert.to_value(value)


@pytest.mark.parametrize("value", [Decimal("1.5"), [1], object()])
def test_other_types_are_refused(value):
    with pytest.raises(TypeError):
        _convert.to_value(value)


def test_null_uses_the_null_kind():
    assert _convert.to_value(None).WhichOneof("kind") == "null"


def test_a_value_with_no_kind_is_refused():
    with pytest.raises(ValueError):
        _convert.from_value(pb.Value())


# requests and results


def test_query_request_positional_params_and_cache_options():
    request = _convert.query_request(
        "live", "SELECT ?", [1, "a", None], cache_mode="refresh", ttl=1.5, tags=["t"], max_rows=9
    )
    assert [_convert.from_value(v) for v in request.params] == [1, "a", None]
    assert request.cache.mode == pb.CACHE_MODE_REFRESH
    assert request.cache.ttl.ToNanoseconds() == 1_500_000_000
    assert list(request.cache.tags) == ["t"]
    assert request.max_rows == 9
    assert not request.HasField("route_key")


def test_query_request_named_params_and_route_key():
    request = _convert.query_request("history", "SELECT :id", {"id": 7}, route_key="2026-02-01")
    assert _convert.from_value(request.named_params["id"]) == 7
    assert not request.params
    assert request.route_key.text == "2026-02-01"
    assert not request.cache.HasField("ttl")


@pytest.mark.parametrize("params", ["abc", b"abc"])
def test_a_single_string_is_not_taken_as_params(params):
    with pytest.raises(TypeError, match="params"):
        _convert.query_request("live", "SELECT ?", params)


def test_bad_choices_are_refused():
    with pytest.raises(ValueError, match="cache_mode"):
        _convert.query_request("live", "SELECT 1", cache_mode="never")
    with pytest.raises(ValueError, match="on_conflict"):
        _convert.insert_request("live", "t", ["a"], [[1]], on_conflict="merge")
    with pytest.raises(ValueError):
        _convert.query_request("live", "SELECT 1", ttl=-1)


def test_insert_and_update_requests():
    insert = _convert.insert_request(
        "live", "t", ["a", "b"], [(1, "x"), (2, None)], on_conflict="upsert",
        conflict_columns=["a"], idempotency_key="k",
    )  # fmt: skip
    assert insert.on_conflict == pb.ON_CONFLICT_UPSERT
    assert [_convert.from_row(r) for r in insert.rows] == [(1, "x"), (2, None)]
    assert insert.idempotency_key == "k"
    update = _convert.update_request("live", [("DELETE FROM t WHERE a = ?", [[1], [2]])])
    assert update.statements[0].sql.startswith("DELETE")
    assert len(update.statements[0].param_sets) == 2


def test_query_result_and_stream_chunks():
    first = pb.QueryResponse(
        columns=[pb.Column(name="id", decl_type="INTEGER")],
        rows=[_convert.to_row([1])],
        cache_status=pb.CACHE_STATUS_HIT_LOCAL,
        databases=["live"],
    )
    result = _convert.query_result(first)
    assert result.columns == ["id"] and result.decl_types == ["INTEGER"]
    assert result.rows == [(1,)] and result.cache_status == "hit_local"
    later = _convert.chunk_result(pb.QueryResponse(rows=[_convert.to_row([2])]), result)
    assert later.columns == ["id"] and later.rows == [(2,)]


def test_health_result_names_are_lower_case():
    response = pb.HealthResponse(
        status=pb.HEALTH_STATUS_DEGRADED,
        score=0.5,
        checks=[pb.HealthCheck(name="redis", status=pb.HEALTH_STATUS_CRITICAL, message="down")],
    )
    result = _convert.health_result(response)
    assert result.status == "degraded"
    assert result.checks[0].status == "critical"


# errors


def test_every_status_but_ok_has_its_own_class():
    codes = [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK]
    classes = {errors.error_class(c) for c in codes}
    assert len(classes) == len(codes)
    assert errors.DataAccessClientError not in classes
    assert errors.error_class(grpc.StatusCode.OK) is errors.DataAccessClientError


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.DATA_LOSS, errors.DataLoss),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
    ],
)
def test_from_rpc_error_maps_the_code(code, cls):
    err = errors.from_rpc_error(FakeRpcError(code, "no such table: nope"))
    assert type(err) is cls
    assert err.code is code and err.message == "no such table: nope"
    assert str(err) == f"{code.name}: no such table: nope"
    assert err.field_violations == []


def test_field_violations_from_sync_error():
    trailing = [("grpc-status-details-bin", bad_request_status())]
    err = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad", trailing))
    assert isinstance(err, errors.InvalidArgument)
    assert err.field_violations == [("params[0]", "NaN")]
    assert err.field_violations[0].field == "params[0]"


def test_field_violations_from_aio_error():
    trailing = aio.Metadata(("grpc-status-details-bin", bad_request_status()))
    rpc_error = aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT, aio.Metadata(), trailing, details="bad"
    )
    err = errors.from_rpc_error(rpc_error)
    assert isinstance(err, errors.InvalidArgument)
    assert err.field_violations == [("params[0]", "NaN")]


def test_undecodable_details_and_bare_errors_still_convert():
    trailing = [("grpc-status-details-bin", b"\xff\xff\xff")]
    err = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, "x", trailing))
    assert isinstance(err, errors.Internal) and err.field_violations == []
    assert isinstance(errors.from_rpc_error(grpc.RpcError()), errors.Unknown)


# call policy and retries


def test_token_comes_from_the_argument_or_the_environment():
    def metadata(token, environ):
        policy = CallPolicy.build(timeout=1, retries=0, backoff=0, token=token, environ=environ)
        return policy.metadata

    assert metadata("s3", {}) == (("authorization", "Bearer s3"),)
    assert metadata(None, {"DATAACCESS_TOKEN": "env"}) == (("authorization", "Bearer env"),)
    assert metadata(None, {}) == ()
    assert metadata("", {"DATAACCESS_TOKEN": "env"}) == ()


def test_attempts_retry_only_unavailable_and_only_so_often():
    policy = CallPolicy.build(timeout=10, retries=2, backoff=0.01, token=None, environ={})
    attempts = policy.attempts(None, retry=True)
    unavailable = FakeRpcError(grpc.StatusCode.UNAVAILABLE)
    assert attempts.pause_after(FakeRpcError(grpc.StatusCode.NOT_FOUND)) is None
    pauses = [attempts.pause_after(unavailable) for _ in range(3)]
    assert pauses[2] is None
    assert 0.005 <= pauses[0] <= 0.01 and 0.01 <= pauses[1] <= 0.02
    assert policy.attempts(None, retry=False).pause_after(unavailable) is None


def test_no_retry_past_the_deadline():
    policy = CallPolicy.build(timeout=10, retries=5, backoff=1.0, token=None, environ={})
    attempts = policy.attempts(0.1, retry=True)
    assert attempts.pause_after(FakeRpcError(grpc.StatusCode.UNAVAILABLE)) is None


class FlakyMethod:
    """A stub method failing UNAVAILABLE a number of times, then answering."""

    def __init__(self, failures):
        self.failures, self.calls = failures, []

    def __call__(self, request, timeout=None, metadata=None):
        self.calls.append((timeout, metadata))
        if len(self.calls) <= self.failures:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "try again")
        return "answer"


def test_sync_client_retries_reads_but_not_writes():
    with Client("127.0.0.1:1", retries=3, backoff=0, token="t") as client:
        method = FlakyMethod(failures=2)
        assert client._unary(method, "req", None, retry=True) == "answer"
        assert len(method.calls) == 3
        assert method.calls[0][1] == (("authorization", "Bearer t"),)
        assert 0 < method.calls[0][0] <= 10
        with pytest.raises(errors.Unavailable):
            client._unary(FlakyMethod(failures=1), "req", None, retry=False)


async def test_async_client_retries_reads_but_not_writes():
    async with AsyncClient("127.0.0.1:1", retries=1, backoff=0) as client:

        async def call(method):
            return method

        flaky = FlakyMethod(failures=1)
        answer = await client._unary(lambda *a, **k: call(flaky(*a, **k)), "r", 2.0, retry=True)
        assert answer == "answer" and len(flaky.calls) == 2
        with pytest.raises(errors.Unavailable):
            await client._unary(
                lambda *a, **k: call(FlakyMethod(failures=5)(*a, **k)), "r", None, retry=True
            )


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
