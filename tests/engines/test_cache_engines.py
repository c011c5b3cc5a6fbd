"""The cache's promise on both engines: no read is served stale once a write was
acknowledged, keyed reads stay hits until their own key is written, replicas and
other processes are heard, Redis may die, and volatile reads are never cached.

Every test runs once with ``kitchen`` on SQLite and once on PostgreSQL. Tests that
take ``tier`` run with L1 alone (no Redis), L1 in front of a real redis-server, and
Redis alone (L1 off).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import RedisProcess, Running, plain_rows, row, started, value
from tests.engines.conftest import Engine

HITS = (pb.CACHE_STATUS_HIT_LOCAL, pb.CACHE_STATUS_HIT_REDIS)
TIERS = ["l1", "l1+redis", "redis"]
REDIS_TIERS = ["l1+redis", "redis"]
OUTSIDE_WAIT_SECONDS = 3.0


def configured(
    engine: Engine, request: pytest.FixtureRequest, tier: str, **cache: Any
) -> tuple[dict[str, Any], RedisProcess | None]:
    """The engine's config for ``tier`` (starting a redis-server when it needs one)."""
    document = engine.document()
    redis: RedisProcess | None = None
    if tier != "l1":
        redis = cast("RedisProcess", request.getfixturevalue("redis_server"))
        document["redis_url"] = redis.url
        cache = {"breaker_reset_seconds": 0.2, **cache}
    if tier == "redis":
        document["l1_max_entries"] = 0
    if cache:
        document["cache"] = cache
    return document, redis


async def query(running: Running, sql: str, *params: Any) -> pb.QueryResponse:
    """One read of ``kitchen``."""
    return await running.stub.Query(
        pb.QueryRequest(database="kitchen", sql=sql, params=[value(p) for p in params]),
        timeout=10,
    )


async def update(running: Running, sql: str, *params: Any) -> pb.BatchUpdateResponse:
    """One BatchUpdate statement on ``kitchen``, once with ``params``."""
    return await running.stub.BatchUpdate(
        pb.BatchUpdateRequest(
            database="kitchen", statements=[pb.Statement(sql=sql, param_sets=[row(*params)])]
        ),
        timeout=10,
    )


async def insert(running: Running, columns: list[str], *rows: tuple[Any, ...]) -> None:
    """A BatchInsert of ``rows`` into ``kitchen.items``."""
    await running.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen", table="items", columns=columns, rows=[row(*r) for r in rows]
        ),
        timeout=10,
    )


async def cached(running: Running, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read twice: the second read must be a hit with the same rows; the rows."""
    first = await query(running, sql, *params)
    again = await query(running, sql, *params)
    assert again.cache_status in HITS, (sql, params, first.cache_status, again.cache_status)
    assert plain_rows(again) == plain_rows(first)
    return plain_rows(again)


async def still_hit(running: Running, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """A read that must still be served from the cache; its rows."""
    answer = await query(running, sql, *params)
    assert answer.cache_status in HITS, f"{sql} {params} was dropped by a write to another key"
    return plain_rows(answer)


async def fresh(running: Running, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """A read whose entry a write must have dropped: a miss; its rows."""
    answer = await query(running, sql, *params)
    assert answer.cache_status == pb.CACHE_STATUS_MISS, (
        f"{sql} {params} served {pb.CacheStatus.Name(answer.cache_status)} after a write to it"
    )
    return plain_rows(answer)


async def l2_state(running: Running) -> str:
    """The Redis tier's breaker state, as Stats reports it."""
    stats = await running.stub.Stats(pb.StatsRequest(), timeout=10)
    return next(t.state for t in stats.cache if t.tier == "l2")


async def until_l2_closed(running: Running, seconds: float = 10.0) -> None:
    """Wait (bounded) until the service uses Redis again with nothing held."""
    deadline = time.monotonic() + seconds
    while (state := await l2_state(running)) != "closed":
        assert time.monotonic() < deadline, f"Redis not in use again after {seconds} s: {state}"
        await asyncio.sleep(0.05)


async def until_rows(
    running: Running, sql: str, params: Sequence[Any], wanted: list[tuple[Any, ...]]
) -> float:
    """Read until the rows are ``wanted`` (at most OUTSIDE_WAIT_SECONDS); the time it took."""
    started_at = time.monotonic()
    while True:
        seen = plain_rows(await query(running, sql, *params))
        if seen == wanted:
            return time.monotonic() - started_at
        waited = time.monotonic() - started_at
        assert waited < OUTSIDE_WAIT_SECONDS, (
            f"{sql} {params} still answers {seen}, not {wanted}, {waited:.1f} s after the write"
        )
        await asyncio.sleep(0.05)


# 1. Concurrent readers never see a value older than the last acknowledged write


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "table"])
async def test_reads_racing_a_writer_never_see_a_value_older_than_acknowledged(
    tmp_path: Path, engine: Engine, request: pytest.FixtureRequest, tier: str, keyed: bool
) -> None:
    document, _ = configured(engine, request, tier)
    sql = f"SELECT i FROM items WHERE id = {engine.p(1)}" if keyed else "SELECT max(i) FROM items"
    params: tuple[int, ...] = (1,) if keyed else ()
    writes = 60
    async with started(tmp_path, document) as running:
        await insert(running, ["id", "i"], (1, 0), (2, 1000))
        acknowledged = 0
        stale: list[tuple[int, int]] = []
        statuses: dict[int, int] = {}
        done = asyncio.Event()
        reads = 0

        async def reader() -> None:
            nonlocal reads
            while not done.is_set():
                floor = acknowledged
                answer = await query(running, sql, *params)
                seen = int(plain_rows(answer)[0][0])
                seen = seen if keyed else seen - 1000  # row 2 holds max(i) + 1000
                if seen < floor:
                    stale.append((seen, floor))
                statuses[answer.cache_status] = statuses.get(answer.cache_status, 0) + 1
                reads += 1

        readers = [asyncio.ensure_future(reader()) for _ in range(8)]
        try:
            for step in range(1, writes + 1):
                await update(running, f"UPDATE items SET i = {engine.p(1)} WHERE id = 1", step)
                if not keyed:
                    await update(
                        running, f"UPDATE items SET i = {engine.p(1)} WHERE id = 2", 1000 + step
                    )
                acknowledged = step
                # Let the readers race this value a while: bounded by reads, not time.
                target = reads + 16
                deadline = time.monotonic() + 10
                while reads < target and not stale:
                    assert time.monotonic() < deadline, "the readers stopped answering"
                    await asyncio.sleep(0)
                answer = await query(running, sql, *params)
                seen = int(plain_rows(answer)[0][0]) - (0 if keyed else 1000)
                assert seen == step, f"read after write {step} answered {seen}"
        finally:
            done.set()
            await asyncio.gather(*readers)
        assert stale == [], f"{len(stale)} stale reads, first {stale[:5]}"
        hits = sum(statuses.get(s, 0) for s in HITS)
        assert hits > 0, f"the cache never answered: {statuses}"


# 2. Key-level invalidation: a write drops only the reads of the keys it changed


@pytest.mark.parametrize("tier", TIERS)
async def test_keyed_reads_stay_hits_until_a_write_changes_their_key(
    tmp_path: Path, engine: Engine, request: pytest.FixtureRequest, tier: str
) -> None:
    p = engine.p
    by_id = f"SELECT id, parent_id, t, code FROM items WHERE id = {p(1)}"
    by_code = f"SELECT id FROM items WHERE code = {p(1)}"
    document, _ = configured(engine, request, tier)
    async with started(tmp_path, document) as running:
        await insert(
            running,
            ["id", "parent_id", "t", "code"],
            (1, 1, "a", "c1"),
            (2, 1, "b", "c2"),
            (3, 2, "c", "c3"),
            (6, 2, "f", "c6"),
        )
        answer = await query(running, by_id, 1)
        assert answer.cache_status == pb.CACHE_STATUS_MISS
        assert any(t.startswith("key:kitchen.items.id=") for t in answer.tags), list(answer.tags)
        assert "table:kitchen.items" not in answer.tags, list(answer.tags)
        coded = await query(running, by_code, "c1")
        assert any(t.startswith("key:kitchen.items.code=") for t in coded.tags), list(coded.tags)
        for key in (1, 2, 3, 4, 5, 6):
            await cached(running, by_id, key)

        # An update of one row: its key only.
        await update(running, f"UPDATE items SET t = {p(1)} WHERE id = {p(2)}", "bb", 2)
        assert await fresh(running, by_id, 2) == [(2, 1, "bb", "c2")]
        await still_hit(running, by_id, 1)
        await still_hit(running, by_id, 3)

        # An insert of a key that was cached as absent.
        await insert(running, ["id", "parent_id", "t", "code"], (4, 2, "d", "c4"))
        assert await fresh(running, by_id, 4) == [(4, 2, "d", "c4")]
        await still_hit(running, by_id, 1)
        await still_hit(running, by_id, 5)

        # An update moving a row from one key to another: the old and the new key.
        await cached(running, by_id, 4)
        await update(running, f"UPDATE items SET id = {p(1)} WHERE id = {p(2)}", 5, 4)
        assert await fresh(running, by_id, 4) == []
        assert await fresh(running, by_id, 5) == [(5, 2, "d", "c4")]
        await still_hit(running, by_id, 1)
        assert await cached(running, by_code, "c1") == [(1,)]
        assert await cached(running, by_code, "c4") == [(5,)]
        assert await cached(running, by_code, "c9") == []
        await update(running, f"UPDATE items SET code = {p(1)} WHERE id = {p(2)}", "c9", 5)
        assert await fresh(running, by_code, "c4") == []
        assert await fresh(running, by_code, "c9") == [(5,)]
        await still_hit(running, by_code, "c1")

        # A delete.
        await cached(running, by_id, 5)
        await update(running, f"DELETE FROM items WHERE id = {p(1)}", 3)
        assert await fresh(running, by_id, 3) == []
        await still_hit(running, by_id, 1)
        await still_hit(running, by_id, 5)

        # ON DELETE CASCADE from parents: the child rows' keys go, the others stay.
        await cached(running, by_id, 1)
        await cached(running, by_id, 2)
        await cached(running, by_code, "c2")
        await update(running, f"DELETE FROM parents WHERE id = {p(1)}", 1)
        assert await fresh(running, by_id, 1) == []
        assert await fresh(running, by_id, 2) == []
        assert await fresh(running, by_code, "c2") == []
        assert await still_hit(running, by_id, 6) == [(6, 2, "f", "c6")]
        assert await still_hit(running, by_id, 5) == [(5, 2, "d", "c9")]
        assert await engine.direct("SELECT count(*) FROM items") == [(2,)]


async def test_a_read_keyed_through_a_subquerys_result_sees_writes_to_the_row_it_found(
    served: Running, engine: Engine
) -> None:
    """The key a read looks up may come from the data, not from the request (a scalar
    subquery): that lookup must not be tagged by a key of the request's values."""
    p = engine.p
    await insert(served, ["id", "parent_id"], (10, 1), (20, 2))
    parent_of = (
        f"SELECT name FROM parents WHERE id = (SELECT parent_id FROM items WHERE id = {p(1)})"
    )
    assert await cached(served, parent_of, 10) == [("one",)]
    assert await cached(served, parent_of, 20) == [("two",)]
    await update(served, f"UPDATE parents SET name = {p(1)} WHERE id = {p(2)}", "uno", 1)
    answer = await query(served, parent_of, 10)
    assert plain_rows(answer) == [("uno",)], (
        f"{pb.CacheStatus.Name(answer.cache_status)} {plain_rows(answer)} after the write;"
        f" tags {list(answer.tags)}"
    )
    first = (
        f"SELECT name FROM parents WHERE id = (SELECT min(parent_id) FROM items) AND id >= {p(1)}"
    )
    assert await cached(served, first, 0) == [("uno",)]
    await update(served, f"UPDATE parents SET name = {p(1)} WHERE id = {p(2)}", "eins", 1)
    answer = await query(served, first, 0)
    assert plain_rows(answer) == [("eins",)], (
        f"{pb.CacheStatus.Name(answer.cache_status)} {plain_rows(answer)} after the write;"
        f" tags {list(answer.tags)}"
    )


# 3. Two replicas on one database and one Redis


@pytest.mark.parametrize("tier", REDIS_TIERS)
async def test_a_write_through_one_replica_is_never_served_stale_by_the_other(
    tmp_path: Path, engine: Engine, request: pytest.FixtureRequest, tier: str
) -> None:
    # An L1 hit asks Redis every time (no validation window): the promise holds at once.
    document, _ = configured(engine, request, tier, l1_validation_window_seconds=0.0)
    keyed = f"SELECT i FROM items WHERE id = {engine.p(1)}"
    every = "SELECT id, i FROM items ORDER BY id"  # table-tagged: no key lookup
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    async with (
        started(tmp_path / "a", document) as one,
        started(tmp_path / "b", document) as other,
    ):
        await insert(one, ["id", "i"], (1, 0), (2, 0))
        for step in range(1, 21):
            writer, reader = (one, other) if step % 2 else (other, one)
            key = 1 + step % 2
            before = await cached(reader, keyed, key)
            listed = await cached(reader, every)
            await cached(reader, keyed, 3 - key)
            await update(
                writer, f"UPDATE items SET i = i + 1 WHERE id = {engine.p(1)}", key
            )  # acknowledged: the other replica must not serve what it cached before
            after = await query(reader, keyed, key)
            assert plain_rows(after) == [(before[0][0] + 1,)], (
                f"step {step}: {pb.CacheStatus.Name(after.cache_status)} {plain_rows(after)}"
                f" after the write, {before} before"
            )
            again = await query(reader, every)
            wanted = [(k, i + 1 if k == key else i) for k, i in listed]
            assert plain_rows(again) == wanted, (
                f"step {step}: {pb.CacheStatus.Name(again.cache_status)} {plain_rows(again)}"
                f" after the write, {listed} before"
            )
        assert await engine.direct("SELECT id, i FROM items ORDER BY id") == [(1, 10), (2, 10)]


# 4. Redis dies and comes back (from an old snapshot)


@pytest.mark.parametrize("tier", REDIS_TIERS)
async def test_redis_killed_and_restarted_never_serves_stale_and_never_fails_a_call(
    tmp_path: Path, engine: Engine, request: pytest.FixtureRequest, tier: str
) -> None:
    document, redis = configured(engine, request, tier)
    assert redis is not None
    p = engine.p
    by_id = f"SELECT i FROM items WHERE id = {p(1)}"
    every = "SELECT i FROM items ORDER BY id"  # table-tagged: no key lookup
    set_i = f"UPDATE items SET i = {p(1)} WHERE id = {p(2)}"
    async with started(tmp_path, document) as running:
        await until_l2_closed(running)
        await insert(running, ["id", "i"], (1, 0), (2, 0))
        assert await cached(running, by_id, 1) == [(0,)]
        assert await cached(running, by_id, 2) == [(0,)]
        assert await cached(running, every) == [(0,), (0,)]
        redis.save()  # the snapshot holds these entries and the tokens they are current under
        await update(running, set_i, 1, 1)  # replaces those tokens: the entries are stale now
        assert plain_rows(await query(running, by_id, 1)) == [(1,)]

        redis.kill()
        for step in range(2, 12):  # every call answers, and nothing is stale
            started_at = time.monotonic()
            assert plain_rows(await query(running, by_id, 1)) == [(1,)]
            assert plain_rows(await query(running, by_id, 2)) == [(step - 2,)]
            assert plain_rows(await query(running, every)) == [(1,), (step - 2,)]
            assert time.monotonic() - started_at < 3.0
            await update(running, set_i, step - 1, 2)  # row 2 only: key 1 is not written
            assert plain_rows(await query(running, by_id, 2)) == [(step - 1,)]
        assert plain_rows(await query(running, every)) == [(1,), (10,)]

        redis.start()  # from the snapshot: old entries under their old tokens
        await until_l2_closed(running)
        for _ in range(3):
            assert plain_rows(await query(running, by_id, 1)) == [(1,)]
            assert plain_rows(await query(running, by_id, 2)) == [(10,)]
            assert plain_rows(await query(running, every)) == [(1,), (10,)]
        assert (await query(running, by_id, 1)).cache_status in HITS  # the cache is back
        await update(running, set_i, 7, 1)
        assert plain_rows(await query(running, by_id, 1)) == [(7,)]
        assert plain_rows(await query(running, every)) == [(7,), (10,)]
        assert await still_hit(running, by_id, 2) == [(10,)]

        redis.kill()  # and once more, to an empty Redis
        (redis.workdir / "dump.rdb").unlink()
        assert plain_rows(await query(running, by_id, 1)) == [(7,)]
        await update(running, set_i, 8, 1)
        redis.start()
        await until_l2_closed(running)
        assert plain_rows(await query(running, by_id, 1)) == [(8,)]
        assert plain_rows(await query(running, every)) == [(8,), (10,)]


# 5. Writes by another process


@pytest.mark.parametrize("tier", ["l1", "l1+redis"])
async def test_a_write_by_another_process_is_seen_within_a_bounded_wait(
    tmp_path: Path, engine: Engine, request: pytest.FixtureRequest, tier: str
) -> None:
    p = engine.p
    by_id = f"SELECT id, i FROM items WHERE id = {p(1)}"
    count = "SELECT count(*) FROM items"
    document, _ = configured(engine, request, tier)
    async with started(tmp_path, document) as running:
        await insert(running, ["id", "i"], (1, 0))
        assert await cached(running, by_id, 1) == [(1, 0)]
        assert await cached(running, by_id, 2) == []
        assert await cached(running, count) == [(1,)]

        await engine.direct(f"UPDATE items SET i = {p(1)} WHERE id = {p(2)}", 5, 1)
        await until_rows(running, by_id, (1,), [(1, 5)])
        for _ in range(5):  # and never the old value again
            assert plain_rows(await query(running, by_id, 1)) == [(1, 5)]

        await cached(running, by_id, 1)
        await engine.direct(f"INSERT INTO items (id, i) VALUES ({p(1)}, {p(2)})", 2, 9)
        await until_rows(running, count, (), [(2,)])
        await until_rows(running, by_id, (2,), [(2, 9)])
        assert plain_rows(await query(running, by_id, 1)) == [(1, 5)]

        await cached(running, by_id, 2)
        await engine.direct(f"DELETE FROM items WHERE id = {p(1)}", 2)
        await until_rows(running, by_id, (2,), [])
        await until_rows(running, count, (), [(1,)])


# 6. Volatile reads are never cached


async def test_a_volatile_read_is_answered_bypass_and_never_cached(
    served: Running, engine: Engine
) -> None:
    p = engine.p
    volatile = [
        "SELECT random()",
        "SELECT CURRENT_TIMESTAMP",
        f"SELECT id, random() FROM parents WHERE id = {p(1)}",
    ]
    if engine.postgres:
        volatile += [
            "SELECT now()",
            "SELECT clock_timestamp()",
            "SELECT id FROM parents WHERE now() > '2000-01-01'",
        ]
    else:
        volatile += ["SELECT datetime('now')", "SELECT id FROM parents WHERE julianday('now') > 0"]
    for sql in volatile:
        params = (1,) if p(1) in sql else ()
        for attempt in range(3):
            answer = await query(served, sql, *params)
            assert answer.cache_status == pb.CACHE_STATUS_BYPASS, (
                sql,
                attempt,
                pb.CacheStatus.Name(answer.cache_status),
            )
    randoms = {plain_rows(await query(served, "SELECT random()"))[0][0] for _ in range(5)}
    assert len(randoms) > 1, "random() answered the same value five times: it was cached"
    # The same shape without the volatile call is cached: the check above can fail.
    deterministic = f"SELECT id FROM parents WHERE id = {p(1)}"
    assert (await query(served, deterministic, 1)).cache_status == pb.CACHE_STATUS_MISS
    assert await cached(served, deterministic, 1) == [(1,)]


async def test_a_read_of_now_written_as_a_literal_or_passed_as_a_parameter_is_never_cached(
    served: Running, engine: Engine
) -> None:
    """'now' need not be a function call: a date/time input of 'now' (or 'today') in the
    SQL or in a parameter depends on the moment just the same."""
    p = engine.p
    if engine.postgres:
        reads: list[tuple[str, tuple[Any, ...]]] = [
            ("SELECT 'now'::timestamptz", ()),
            ("SELECT CAST('today' AS date)", ()),
            (f"SELECT {p(1)}::timestamptz", ("now",)),
        ]
    else:
        reads = [("SELECT datetime('now')", ()), (f"SELECT datetime({p(1)})", ("now",))]
    for sql, params in reads:
        for attempt in range(2):
            answer = await query(served, sql, *params)
            assert answer.cache_status == pb.CACHE_STATUS_BYPASS, (
                sql,
                params,
                attempt,
                pb.CacheStatus.Name(answer.cache_status),
                plain_rows(answer),
            )
