"""Caller-named tags are capped per request (INVALID_ARGUMENT naming the field) and kept bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from service.config import ConfigError, Limits
from tests.cache.test_cache_redis import _state_is, _until, with_redis
from tests.conftest import RedisProcess, Running, failure_of, row, started

MAX_TAGS, MAX_BYTES = 32, 256  # the defaults


def _tags(count: int, size: int = 8) -> list[str]:
    return [f"{i:04d}".ljust(size, "x") for i in range(count)]


def _query(running: Running, tags: list[str]) -> Any:
    request = pb.QueryRequest(database="kitchen", sql="SELECT 1", cache=pb.CacheOptions(tags=tags))
    return running.stub.Query(request)


async def _stream(running: Running, tags: list[str]) -> None:
    request = pb.QueryRequest(database="kitchen", sql="SELECT 1", cache=pb.CacheOptions(tags=tags))
    async for _ in running.stub.QueryStream(request):
        pass


def _insert(running: Running, tags: list[str]) -> Any:
    return running.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen", table="items", columns=["qty"], rows=[row(1)], invalidate_tags=tags
        )
    )


def _update(running: Running, tags: list[str]) -> Any:
    statement = pb.Statement(sql="UPDATE items SET qty = qty + 1")
    return running.stub.BatchUpdate(
        pb.BatchUpdateRequest(database="kitchen", statements=[statement], invalidate_tags=tags)
    )


def _invalidate(running: Running, tags: list[str]) -> Any:
    return running.stub.Invalidate(pb.InvalidateRequest(tags=tags))


CALLS = {
    "cache.tags": _query,
    "invalidate_tags": _insert,
    "tags": _invalidate,
}


@pytest.mark.parametrize("field", list(CALLS))
async def test_too_many_or_too_long_tags_are_invalid_argument_naming_the_field(
    running: Running, field: str
) -> None:
    call = CALLS[field]
    await call(running, _tags(MAX_TAGS, MAX_BYTES))  # at the caps: served
    await call(running, ["é" * (MAX_BYTES // 2)])  # bytes, not characters
    for tags in (_tags(MAX_TAGS + 1), _tags(1, MAX_BYTES + 1), ["é" * (MAX_BYTES // 2 + 1)]):
        failed = await failure_of(call(running, tags))
        assert (failed.code, failed.fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])


async def test_a_write_with_too_many_tags_writes_nothing(running: Running) -> None:
    for call in (_insert, _update):
        failed = await failure_of(call(running, _tags(300, 1000)))
        assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
        assert failed.fields == ["invalidate_tags"]
    with running.sqlite("kitchen") as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)


async def test_a_bad_row_is_named_before_too_many_tags(running: Running) -> None:
    bad_row = pb.Row(values=[pb.Value()])  # a Value with no kind
    failed = await failure_of(
        running.stub.BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen",
                table="items",
                columns=["qty"],
                rows=[bad_row],
                invalidate_tags=_tags(MAX_TAGS + 1),
            )
        )
    )
    assert (failed.code, failed.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["rows[0].values[0]"])


async def test_a_stream_with_too_many_tags_is_invalid_argument(running: Running) -> None:
    await _stream(running, _tags(MAX_TAGS))
    failed = await failure_of(_stream(running, _tags(MAX_TAGS + 1)))
    assert (failed.code, failed.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["cache.tags"])


async def test_the_caps_come_from_config(tmp_path: Path, document: dict[str, Any]) -> None:
    document = {**document, "limits": {"max_tags_per_request": 2, "max_tag_bytes": 4}}
    async with started(tmp_path, document) as running:
        await _query(running, ["abcd", "efgh"])
        for tags in (["a", "b", "c"], ["abcde"]):
            failed = await failure_of(_query(running, tags))
            assert failed.fields == ["cache.tags"]
    for name in ("max_tags_per_request", "max_tag_bytes"):
        zero: dict[str, Any] = {name: 0}
        with pytest.raises(ConfigError, match=f"limits.{name}"):
            Limits(**zero)


async def test_a_bumped_tag_token_is_kept_in_redis_for_an_hour_not_a_week(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    async with started(tmp_path, with_redis(document, redis_server)) as running:
        await _until(lambda: _state_is(running, "closed"))  # a slow start may trip the breaker
        await _invalidate(running, ["someone's tag"])
        tier = running.server.cache.redis
        assert tier is not None
        kept = int(redis_server.cli("PTTL", f"{tier.prefix}t:someone's tag")) / 1000
        assert 3500 < kept <= 3600
