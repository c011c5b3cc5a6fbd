"""The client's conversions, without a server: Python values, requests and results."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess_client import _convert, _rpcs

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def query_request(*args, **kwargs):
    return _rpcs.query.call(*args, **kwargs).request


def insert_request(*args, **kwargs):
    return _rpcs.batch_insert.call(*args, **kwargs).request


def update_request(*args, **kwargs):
    return _rpcs.batch_update.call(*args, **kwargs).request


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
    request = query_request(
        "live", "SELECT ?", [1, "a", None], cache_mode="refresh", ttl=1.5, tags=["t"], max_rows=9
    )
    assert [_convert.from_value(v) for v in request.params] == [1, "a", None]
    assert request.cache.mode == pb.CACHE_MODE_REFRESH
    assert request.cache.ttl.ToNanoseconds() == 1_500_000_000
    assert list(request.cache.tags) == ["t"]
    assert request.max_rows == 9
    assert not request.HasField("route_key")


def test_query_request_named_params_and_route_key():
    request = query_request("history", "SELECT :id", {"id": 7}, route_key="2026-02-01")
    assert _convert.from_value(request.named_params["id"]) == 7
    assert not request.params
    assert request.route_key.text == "2026-02-01"
    assert not request.cache.HasField("ttl")


@pytest.mark.parametrize("params", ["abc", b"abc"])
def test_a_single_string_is_not_taken_as_params(params):
    with pytest.raises(TypeError, match="params"):
        query_request("live", "SELECT ?", params)


def test_bad_choices_are_refused():
    with pytest.raises(ValueError, match="cache_mode"):
        query_request("live", "SELECT 1", cache_mode="never")
    with pytest.raises(ValueError, match="on_conflict"):
        insert_request("live", "t", ["a"], [[1]], on_conflict="merge")
    with pytest.raises(ValueError):
        query_request("live", "SELECT 1", ttl=-1)


def test_insert_and_update_requests():
    insert = insert_request(
        "live", "t", ["a", "b"], [(1, "x"), (2, None)], on_conflict="upsert",
        conflict_columns=["a"], idempotency_key="k",
    )  # fmt: skip
    assert insert.on_conflict == pb.ON_CONFLICT_UPSERT
    assert list(insert.conflict_columns) == ["a"]
    assert [list(c.integers) for c in insert.column_data[:1]] == [[1, 2]]  # test_client_columns
    assert insert.idempotency_key == "k"
    mixed = insert_request("live", "t", ["a"], [(1,), ("x",)])
    assert [_convert.from_row(r) for r in mixed.rows] == [(1,), ("x",)]
    update = update_request("live", [("DELETE FROM t WHERE a = ?", [[1], [2]])])
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
