"""The client's pure logic, without a server: errors, retries and the one table of RPCs."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess_client import _rpcs, errors
from dataaccess_client._policy import CallPolicy
from dataaccess_client.client import AsyncClient, Client


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
    serialized: bytes = status.SerializeToString()  # google.rpc is untyped here
    return serialized


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
        grpc.StatusCode.INVALID_ARGUMENT,
        aio.Metadata(),
        trailing,
        details="bad",
        debug_error_string=None,  # its default; grpc-stubs make it required
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
    assert pauses[0] is not None and pauses[1] is not None
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
    client: Any  # handed fakes for its stub's methods
    with Client("127.0.0.1:1", retries=3, backoff=0, token="t") as client:
        method = FlakyMethod(failures=2)
        assert client._unary(method, "req", None, retry=True) == "answer"
        assert len(method.calls) == 3
        assert method.calls[0][1] == (("authorization", "Bearer t"),)
        assert 0 < method.calls[0][0] <= 10
        with pytest.raises(errors.Unavailable):
            client._unary(FlakyMethod(failures=1), "req", None, retry=False)


async def test_async_client_retries_reads_but_not_writes():
    client: Any  # handed fakes for its stub's methods
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


# the one table of RPCs

ROWS = [row for row in vars(_rpcs).values() if isinstance(row, _rpcs.Rpc)]


def test_every_rpc_of_the_service_has_one_row():
    service = pb.DESCRIPTOR.services_by_name["DataAccess"]
    assert sorted(row.stub for row in ROWS) == sorted(service.methods_by_name)
    retried = {row.name for row in ROWS if isinstance(row, _rpcs.Unary) and row.retry}
    assert retried == {"query", "health", "stats"}


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_both_clients_make_the_method_of_each_row(row):
    async_method, sync_method = getattr(AsyncClient, row.name), getattr(Client, row.name)
    assert async_method.__doc__ == sync_method.__doc__ == row.doc
    assert async_method.__qualname__ == f"AsyncClient.{row.name}"
    arguments = [*inspect.signature(row.call).parameters.values()]
    for method in (async_method, sync_method):
        this, *rest = inspect.signature(method).parameters.values()
        assert this.name == "self" and rest == arguments
    streams = isinstance(row, _rpcs.Stream)
    assert inspect.isasyncgenfunction(async_method) is streams
    assert inspect.iscoroutinefunction(async_method) is not streams
    assert inspect.isgeneratorfunction(sync_method) is streams


def test_signatures_read_as_written():
    assert str(inspect.signature(Client.invalidate)) == (
        "(self, tags: 'Sequence[str]' = (), databases: 'Sequence[str]' = (), "
        "all: 'bool' = False, *, timeout: 'float | None' = None) -> 'list[str]'"
    )
    assert str(inspect.signature(AsyncClient.query_stream)).endswith(
        "timeout: 'float | None' = None) -> 'AsyncIterator[QueryResult]'"
    )
    assert inspect.signature(Client.stats).return_annotation == "pb.StatsResponse"


def test_the_methods_retry_as_their_rows_say():
    client: Any  # handed a fake stub
    with Client("127.0.0.1:1", retries=3, backoff=0) as client:
        client._stub = SimpleNamespace(Stats=FlakyMethod(failures=1))
        assert client.stats(timeout=5) == "answer" and len(client._stub.Stats.calls) == 2
        client._stub = SimpleNamespace(Invalidate=FlakyMethod(failures=1))
        with pytest.raises(errors.Unavailable):
            client.invalidate(all=True)
        assert len(client._stub.Invalidate.calls) == 1
