"""Read-your-writes in the client package: it keeps the newest consistency token per
database from its writes' answers and sends it with its reads, unless told not to."""

from __future__ import annotations

from typing import Any

import grpc

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess_client import AsyncClient
from dataaccess_client._bookmarks import Bookmarks, positions
from tests.conftest import Running


def test_positions_keep_the_newest_per_database_and_skip_what_is_no_token() -> None:
    assert positions("live@3,orders@20,live@7, junk ,x@y") == {"live": 7, "orders": 20}
    bookmarks = Bookmarks()
    bookmarks.remember("orders@20")
    bookmarks.remember("orders@12,live@1")
    assert bookmarks.token == "live@1,orders@20"
    request = pb.QueryRequest(database="orders", sql="SELECT 1")
    bookmarks.stamp(request)
    assert request.consistency_token == "live@1,orders@20"
    own = pb.QueryRequest(database="orders", sql="SELECT 1", consistency_token="orders@99")
    bookmarks.stamp(own)
    # A token given by the caller is merged with the client's own: neither hides the other.
    assert own.consistency_token == "live@1,orders@99"
    off = Bookmarks(enabled=False)
    off.note(pb.BatchInsertResponse(consistency_token="orders@5"))
    quiet = pb.QueryRequest(database="orders", sql="SELECT 1")
    off.stamp(quiet)
    assert off.token == "" and quiet.consistency_token == ""


class _SeenTokens(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Records the consistency_token of every QueryRequest the client sends."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if isinstance(request, pb.QueryRequest):
            self.tokens.append(request.consistency_token)
        return await continuation(details, request)


async def test_a_client_sends_the_token_of_its_own_writes(running: Running) -> None:
    target = f"127.0.0.1:{running.port}"
    async with AsyncClient(target) as client:
        assert client.consistency_token == ""
        first = await client.batch_insert("kitchen", "items", ["id"], [[1]])
        assert first.consistency_token.startswith("kitchen@")
        second = await client.batch_update(
            "kitchen", [("UPDATE items SET qty = ? WHERE id = ?", [[2, 1]])]
        )
        assert (
            positions(second.consistency_token)["kitchen"]
            > positions(first.consistency_token)["kitchen"]
        )
        assert client.consistency_token == second.consistency_token
        seen = _SeenTokens()
        client._channel = grpc.aio.insecure_channel(target, interceptors=[seen])  # type: ignore[list-item]
        client._stub = type(client._stub)(client._channel)
        result = await client.query("kitchen", "SELECT qty FROM items WHERE id = ?", [1])
        assert result.rows == [(2,)]
        other = AsyncClient(target)
        other.remember(client.consistency_token)  # handed over to another process's client
        assert other.consistency_token == client.consistency_token
        await other.close()
    assert seen.tokens == [second.consistency_token]


async def test_a_client_can_opt_out(running: Running) -> None:
    async with AsyncClient(f"127.0.0.1:{running.port}", consistency=False) as client:
        written = await client.batch_insert("kitchen", "items", ["id"], [[1]])
        assert written.consistency_token  # still answered, just not kept
        assert client.consistency_token == ""
