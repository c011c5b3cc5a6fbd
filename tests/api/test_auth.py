"""Authentication and scopes: every RPC x every scope x {no token, wrong token, right token}."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import Running, row, started

TOKENS = {
    "reader": ["read:kitchen"],
    "writer": ["write:kitchen"],
    "admin": ["admin"],
    "members": ["read:archive", "read:live"],
    "historian": ["read:history"],
}
OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNKNOWN = grpc.StatusCode.UNAUTHENTICATED


def _secret(name: str) -> str:
    return f"token-of-{name}-0123456789"


@pytest.fixture
async def secured(tmp_path: Path, document: dict[str, Any]) -> AsyncIterator[Running]:
    document["groups"] = [{"name": "history", "members": ["archive", "live"]}]
    kitchen = next(db for db in document["databases"] if db["name"] == "kitchen")
    # A database whose name starts with another's: scopes and tags must stop at the name.
    document["databases"].append({**kitchen, "name": "kitchen2", "path": "kitchen2.db"})
    document["auth"] = {
        "tokens": [
            {
                "name": name,
                "sha256": hashlib.sha256(_secret(name).encode()).hexdigest(),
                "scopes": scopes,
            }
            for name, scopes in TOKENS.items()
        ]
    }
    async with started(tmp_path, document) as running:
        yield running


Call = Callable[[Running, list[tuple[str, str]]], Any]


async def _query(running: Running, metadata: list[tuple[str, str]]) -> Any:
    request = pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM items")
    return await running.stub.Query(request, metadata=metadata)


async def _stream(running: Running, metadata: list[tuple[str, str]]) -> Any:
    request = pb.QueryRequest(database="kitchen", sql="SELECT id FROM parents")
    return [chunk async for chunk in running.stub.QueryStream(request, metadata=metadata)]


async def _insert(running: Running, metadata: list[tuple[str, str]]) -> Any:
    request = pb.BatchInsertRequest(
        database="kitchen", table="items", columns=["qty"], rows=[row(1)]
    )
    return await running.stub.BatchInsert(request, metadata=metadata)


async def _update(running: Running, metadata: list[tuple[str, str]]) -> Any:
    statement = pb.Statement(sql="UPDATE items SET qty = qty + 1")
    request = pb.BatchUpdateRequest(database="kitchen", statements=[statement])
    return await running.stub.BatchUpdate(request, metadata=metadata)


async def _invalidate(running: Running, metadata: list[tuple[str, str]]) -> Any:
    return await running.stub.Invalidate(pb.InvalidateRequest(tags=["t"]), metadata=metadata)


async def _stats(running: Running, metadata: list[tuple[str, str]]) -> Any:
    return await running.stub.Stats(pb.StatsRequest(), metadata=metadata)


async def _health(running: Running, metadata: list[tuple[str, str]]) -> Any:
    return await running.stub.Health(pb.HealthRequest(), metadata=metadata)


async def _deep_health(running: Running, metadata: list[tuple[str, str]]) -> Any:
    return await running.stub.Health(pb.HealthRequest(deep=True), metadata=metadata)


MATRIX: dict[str, tuple[Call, dict[str, grpc.StatusCode]]] = {
    # A caller with no scope on kitchen is not told it exists: NOT_FOUND, as for an unknown name.
    "Query": (_query, {"reader": OK, "writer": DENIED, "admin": DENIED, "members": NOT_FOUND}),
    "QueryStream": (
        _stream,
        {"reader": OK, "writer": DENIED, "admin": DENIED, "members": NOT_FOUND},
    ),
    "BatchInsert": (
        _insert,
        {"reader": DENIED, "writer": OK, "admin": DENIED, "members": NOT_FOUND},
    ),
    "BatchUpdate": (
        _update,
        {"reader": DENIED, "writer": OK, "admin": DENIED, "members": NOT_FOUND},
    ),
    "Invalidate": (
        _invalidate,
        {"reader": DENIED, "writer": DENIED, "admin": OK, "members": DENIED},
    ),
    "Stats": (_stats, {"reader": DENIED, "writer": DENIED, "admin": OK, "members": DENIED}),
    "Health": (_health, {"reader": OK, "writer": OK, "admin": OK, "members": OK}),
    "Health(deep)": (
        _deep_health,
        {"reader": DENIED, "writer": DENIED, "admin": OK, "members": DENIED},
    ),
}


async def _code(call: Call, running: Running, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    try:
        await call(running, metadata)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return OK


@pytest.mark.parametrize("rpc", list(MATRIX))
async def test_scope_matrix(secured: Running, rpc: str) -> None:
    call, expected = MATRIX[rpc]
    assert await _code(call, secured, []) == UNKNOWN
    assert await _code(call, secured, [("authorization", "Bearer not-a-known-token")]) == UNKNOWN
    assert (
        await _code(call, secured, [("authorization", _secret("reader"))]) == UNKNOWN
    )  # no scheme
    for name, code in expected.items():
        metadata = [("authorization", f"Bearer {_secret(name)}")]
        assert await _code(call, secured, metadata) == code, name


async def test_a_cached_answer_is_not_served_to_a_caller_without_the_scope(
    secured: Running,
) -> None:
    reader = [("authorization", f"Bearer {_secret('reader')}")]
    writer = [("authorization", f"Bearer {_secret('writer')}")]
    for _ in range(3):  # warm the cache and the request-bytes fast path
        await _query(secured, reader)
    assert await _code(_query, secured, writer) == DENIED
    assert await _code(_query, secured, []) == UNKNOWN


async def test_a_group_needs_its_own_scope_or_every_members(secured: Running) -> None:
    request = pb.QueryRequest(database="history", sql="SELECT count(*) AS n FROM production_runs")

    async def group(running: Running, metadata: list[tuple[str, str]]) -> Any:
        return await running.stub.Query(request, metadata=metadata)

    members = [("authorization", f"Bearer {_secret('members')}")]
    reader = [("authorization", f"Bearer {_secret('reader')}")]
    assert await _code(group, secured, members) == OK
    assert await _code(group, secured, reader) == NOT_FOUND  # no scope on it or its members


async def test_the_standard_health_service_stays_open_for_probes(secured: Running) -> None:
    stub = health_pb2_grpc.HealthStub(secured.channel)
    answer = await stub.Check(health_pb2.HealthCheckRequest(service="dataaccess.v1.DataAccess"))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_writers_may_bump_their_own_tags_but_not_everyone_elses(secured: Running) -> None:
    writer = [("authorization", f"Bearer {_secret('writer')}")]

    def insert(tags: list[str]) -> Any:
        return secured.stub.BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen",
                table="items",
                columns=["qty"],
                rows=[row(1)],
                invalidate_tags=tags,
            ),
            metadata=writer,
        )

    await insert(["user:1", "table:kitchen.items", "database:kitchen"])
    foreign_tags = (
        ["all"],
        ["database:live"],
        ["table:live.products"],
        ["database:kitchen2"],  # write:kitchen stops at the name: kitchen2 is another database
        ["table:kitchen2.items"],
        ["database:kitchen.x"],
        ["database:kitchen "],
    )
    for foreign in foreign_tags:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await insert(foreign)
        assert refused.value.code() == DENIED, foreign


async def test_garbage_from_a_caller_without_a_token_is_unauthenticated(secured: Running) -> None:
    for method in ("QueryStream", "BatchInsert", "Stats"):
        path = f"/dataaccess.v1.DataAccess/{method}"
        call: Callable[[bytes], Any]
        if method == "QueryStream":
            call = secured.channel.unary_stream(
                path, request_serializer=None, response_deserializer=None
            )
        else:
            call = secured.channel.unary_unary(
                path, request_serializer=None, response_deserializer=None
            )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            answer: Any = call(b"\xff\xff\xff garbage")  # a stream to drain or a call to await
            if method == "QueryStream":
                async for _ in answer:
                    pass
            else:
                await answer
        assert refused.value.code() == UNKNOWN, method


async def test_a_caller_without_the_scope_learns_nothing_about_its_rows(secured: Running) -> None:
    reader = [("authorization", f"Bearer {_secret('reader')}")]
    bad_rows = pb.BatchInsertRequest(
        database="kitchen", table="items", columns=["qty"], rows=[pb.Row(values=[pb.Value()] * 9)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await secured.stub.BatchInsert(bad_rows, metadata=reader)
    assert refused.value.code() == DENIED


async def test_an_unknown_database_does_not_list_the_others_when_auth_is_on(
    secured: Running,
) -> None:
    reader = [("authorization", f"Bearer {_secret('reader')}")]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await secured.stub.Query(pb.QueryRequest(database="nope", sql="SELECT 1"), metadata=reader)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "archive" not in (missing.value.details() or "")


def _bearer(name: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {_secret(name)}")]


async def _refusal(
    call: Callable[[Running, str], Any], running: Running, name: str
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(running, name)
    return refused.value.code(), refused.value.details() or ""


NAMED_CALLS: dict[str, Callable[[Running, str], Any]] = {
    "Query": lambda r, name: r.stub.Query(
        pb.QueryRequest(database=name, sql="SELECT 1"), metadata=_bearer("reader")
    ),
    "Query(route_key)": lambda r, name: r.stub.Query(
        pb.QueryRequest(database=name, sql="SELECT 1", route_key=pb.Value(integer=1)),
        metadata=_bearer("reader"),
    ),
    "QueryStream": lambda r, name: _drain(
        r.stub.QueryStream(
            pb.QueryRequest(database=name, sql="SELECT 1"), metadata=_bearer("reader")
        )
    ),
    "BatchInsert": lambda r, name: r.stub.BatchInsert(
        pb.BatchInsertRequest(database=name, table="items", columns=["qty"], rows=[row(1)]),
        metadata=_bearer("reader"),
    ),
    "BatchUpdate": lambda r, name: r.stub.BatchUpdate(
        pb.BatchUpdateRequest(
            database=name, statements=[pb.Statement(sql="UPDATE items SET qty = 1")]
        ),
        metadata=_bearer("reader"),
    ),
}


async def _drain(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


@pytest.mark.parametrize("rpc", list(NAMED_CALLS))
async def test_a_name_the_caller_has_no_scope_on_answers_as_an_unknown_one(
    secured: Running, rpc: str
) -> None:
    call = NAMED_CALLS[rpc]
    unknown = await _refusal(call, secured, "nowhere")
    assert unknown == (NOT_FOUND, "unknown database 'nowhere'")
    for hidden in ("kitchen2", "live", "history"):  # a database, a member, a group
        code, details = await _refusal(call, secured, hidden)
        assert (code, details.replace(hidden, "nowhere")) == unknown, hidden


async def test_health_lists_only_the_databases_the_caller_may_know_of(secured: Running) -> None:
    async def shown(caller: str) -> set[str]:
        report = await secured.stub.Health(pb.HealthRequest(), metadata=_bearer(caller))
        names = {check.name.split(":")[1] for check in report.checks}
        assert all(0 <= check.status for check in report.checks)
        assert 0.0 <= report.score <= 1.0
        return names

    assert await shown("reader") == {"kitchen"}
    assert await shown("writer") == {"kitchen"}
    assert await shown("members") == {"archive", "live"}
    assert await shown("historian") == {"archive", "live"}  # the group's answers name them
    assert await shown("admin") == {"archive", "live", "kitchen", "kitchen2"}


async def test_a_group_stream_answers_a_stranger_as_if_there_were_no_group(
    secured: Running,
) -> None:
    """Merge or not, QueryStream of a group the caller may not see is NOT_FOUND; the
    group's readers, by the group or by every member, stream it."""
    for merge in (pb.Merge(), pb.Merge(order_by="id")):
        request = pb.QueryRequest(
            database="history", sql="SELECT id FROM production_runs", merge=merge
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [m async for m in secured.stub.QueryStream(request, metadata=_bearer("reader"))]
        assert caught.value.code() == NOT_FOUND, caught.value.details()
    request = pb.QueryRequest(database="history", sql="SELECT count(*) FROM production_runs")
    for name in ("historian", "members"):
        messages = [m async for m in secured.stub.QueryStream(request, metadata=_bearer(name))]
        assert [list(m.databases) for m in messages] == [["archive"], ["live"]]
