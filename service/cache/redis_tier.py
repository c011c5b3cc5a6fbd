"""The Redis tier: entries and tag tokens in Redis, shared by every replica.

Keys live under ``<key_prefix>:<epoch>:`` where the epoch is derived from the
server's ``run_id`` and ``master_replid``: a Redis that restarts (perhaps
from an old snapshot) or fails over gets a new epoch, so nothing written
before is read again. Every new connection checks the epoch; one that finds
it changed fails its first command, so no command runs under the old prefix.

One round trip per hit: ``MGET`` of the entry and its tags' tokens. Lua only
where a write is conditional: minting missing tokens with a load lease, and
storing an entry only while its tokens are still those read before the query.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from service.cache.tokens import Snapshot, new_token

log = logging.getLogger(__name__)

# KEYS: the tags' token keys, then the lease key's stem. ARGV: a token stem,
# the token ttl (ms), the lease ttl (ms), the lease owner, how long the entry
# is kept (ms). Returns the tokens, then 1 if the owner took the lease now, 2
# if the owner already held it (one process, one lease), 0 if another does. The lease
# is per key AND tokens, so a load on newer tokens never waits for one on
# older tokens, and it is left to expire after the entry is stored: a late
# caller on the same tokens then finds it. A token lives at least as long as
# the entry about to be stored under it.
_SNAPSHOT = """
local n = #KEYS - 1
local out = {}
local keep = tonumber(ARGV[5])
for i = 1, n do
  local token = redis.call('GET', KEYS[i])
  if not token then
    token = ARGV[1] .. i
    redis.call('SET', KEYS[i], token, 'PX', math.max(tonumber(ARGV[2]), keep))
  elseif redis.call('PTTL', KEYS[i]) < keep then
    redis.call('PEXPIRE', KEYS[i], keep)
  end
  out[i] = token
end
local lease = KEYS[n + 1] .. redis.sha1hex(table.concat(out, ','))
if redis.call('SET', lease, ARGV[4], 'NX', 'PX', ARGV[3]) then
  out[n + 1] = 1
elseif redis.call('GET', lease) == ARGV[4] then
  out[n + 1] = 2
else
  out[n + 1] = 0
end
return out
"""

# KEYS: the entry key, then the tags' token keys. ARGV: the entry, its ttl
# (ms), then the tokens read before the query.
_STORE = """
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[i + 1] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Invalidation: new tokens for every tag and one message to every replica, in one
# command (a pipeline of a SET per tag costs the client more than the server).
_BUMP = """
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 3], 'PX', ARGV[1])
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return #KEYS
"""

LOOKUP_ROUND_TRIPS = 2  # MGET round trips out at once (each a pipeline of every hit waiting)
ORIGIN_TAG = ""  # the tag under which a bump's message names the process that sent it

# Who holds the load lease on a key and tokens (as _SNAPSHOT answers).
LEASE_OTHER, LEASE_TAKEN, LEASE_OURS = 0, 1, 2


class RedisUnavailable(Exception):
    """Redis did not answer in time, refused, or was replaced."""


def stop_if_cancelled() -> None:
    """Raise CancelledError if this task was asked to stop, whether or not it was told.

    On Python 3.11 redis-py sends each command through ``asyncio.wait_for``,
    which swallows a cancellation that lands just as the send completes; the
    request stays counted on the task. A task that talks to Redis until it is
    cancelled checks here on every round, or it runs on, and so does whoever
    awaits it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class EpochChanged(RedisConnectionError):
    """This connection found a Redis other than the one the command's keys were built for."""


class MgetBatcher:
    """Coalesces the MGETs issued in one pass of the event loop into one pipelined round trip.

    Under concurrent reads many hits look up at once: one write and one
    read for all of them costs far less than one each. Each MGET stays
    atomic on its own; a failure fails every caller of the batch. At most
    ``max_in_flight`` round trips are out at once (the client's pool has as
    many connections, so it never has to wait for one); MGETs issued while
    they are all out go together in the next.
    """

    def __init__(self, client: aioredis.Redis, max_in_flight: int) -> None:
        self._client = client
        self._max_in_flight = max_in_flight
        self._queue: list[tuple[list[str], asyncio.Future[list[Any]]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def mget(self, keys: list[str]) -> list[Any]:
        """The values of ``keys`` (None where missing)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((keys, future))
        return await future

    def _flush(self) -> None:
        if not self._queue or len(self._sending) >= self._max_in_flight:
            return  # the round trip out now flushes these when it is back
        batch, self._queue = self._queue, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._flush()

    async def _send(self, batch: list[tuple[list[str], asyncio.Future[list[Any]]]]) -> None:
        try:
            if len(batch) == 1:
                results = [await self._client.mget(batch[0][0])]
            else:
                pipe = self._client.pipeline(transaction=False)
                for keys, _ in batch:
                    pipe.mget(keys)
                results = await pipe.execute()
        except BaseException as exc:  # every caller must hear, whatever happened
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


@dataclass(frozen=True)
class RedisSettings:
    """How to reach Redis and how long things live there."""

    url: str
    key_prefix: str = "dataaccess"
    socket_timeout: float = 0.25
    connect_timeout: float = 0.25
    health_check_interval: float = 5.0
    token_ttl: float = 3600.0  # at least; a token lives as long as the entries stored under it
    lease_ttl: float = 2.0
    max_connections: int = 64


@dataclass(frozen=True)
class StoredEntry:
    """An entry as Redis holds it."""

    value: bytes
    snapshot: dict[str, str]
    fresh_until: float  # wall clock, shared by replicas

    @property
    def fresh(self) -> bool:
        """Whether its ttl has not run out."""
        return time.time() < self.fresh_until


@dataclass(frozen=True)
class Lookup:
    """One ``MGET``: the entry if there is one, and the tags' tokens now."""

    entry: StoredEntry | None
    tokens: dict[str, str | None]

    def current(self) -> bool:
        """Whether the entry's tokens are all still the tags' tokens."""
        return self.entry is not None and self.entry.snapshot == self.tokens


class RedisTier:
    """Entries, tokens, leases and the invalidation channel in one Redis."""

    def __init__(self, settings: RedisSettings, on_epoch_change: Callable[[], None]) -> None:
        self.settings = settings
        self.channel = f"{settings.key_prefix}:invalidations"
        # Names this process in what it publishes, so its listener skips its own news:
        # ``bump`` already took the tokens here. Sent as the tag "" (which no entry
        # carries), so a replica that does not know of it takes it as a harmless tag.
        self.origin = new_token()
        self.epoch: str | None = None
        self._on_epoch_change = on_epoch_change
        # A blocking pool: past max_connections a command waits (at most the
        # socket timeout) for a connection instead of failing at once.
        connection: dict[str, Any] = {
            "socket_timeout": settings.socket_timeout,
            "socket_connect_timeout": settings.connect_timeout,
            "health_check_interval": int(settings.health_check_interval),
            "retry": Retry(NoBackoff(), 0),
            "redis_connect_func": self._check_epoch,
        }
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.url,
            max_connections=settings.max_connections,
            timeout=settings.socket_timeout,
            **connection,
        )
        self.client = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
        # The hits' MGETs have connections of their own, never waited for: the blocking
        # pool's wait (a condition and a timeout per command) cost a third of a Redis hit.
        lookups = aioredis.ConnectionPool.from_url(
            settings.url, max_connections=LOOKUP_ROUND_TRIPS, **connection
        )
        self._lookups = aioredis.Redis.from_pool(lookups)
        self._mget = MgetBatcher(self._lookups, LOOKUP_ROUND_TRIPS)
        self._snapshot = self.client.register_script(_SNAPSHOT)
        self._store = self.client.register_script(_STORE)
        self._bump = self.client.register_script(_BUMP)

    @property
    def keyspace(self) -> tuple[str, str]:
        """The epoch ('' while unknown) and the prefix that keys built now carry."""
        return self.epoch or "", self.prefix

    @property
    def prefix(self) -> str:
        """Where this epoch's keys live."""
        return f"{self.settings.key_prefix}:{self.epoch or 'unknown'}:"

    async def lookup(self, key: str, tags: Sequence[str]) -> Lookup:
        """The entry for ``key`` and its tags' tokens, in one round trip."""
        epoch, prefix = self.keyspace
        raw = await self._call(
            epoch, self._mget.mget([f"{prefix}e:{key}", *(f"{prefix}t:{tag}" for tag in tags)])
        )
        tokens = {tag: _text(token) for tag, token in zip(tags, raw[1:], strict=True)}
        return Lookup(_decode_entry(raw[0]), tokens)

    async def tokens(self, tags: Sequence[str]) -> dict[str, str | None]:
        """The tags' tokens now."""
        epoch, prefix = self.keyspace
        raw = await self._call(epoch, self._mget.mget([f"{prefix}t:{tag}" for tag in tags]))
        return {tag: _text(token) for tag, token in zip(tags, raw, strict=True)}

    async def snapshot(
        self, key: str, tags: Sequence[str], owner: str, keep_for: float = 0.0
    ) -> tuple[dict[str, str], int]:
        """The tags' tokens (minting missing ones, kept at least ``keep_for`` seconds) and
        who holds the load lease: LEASE_TAKEN (``owner``, now), LEASE_OURS (``owner``,
        already) or LEASE_OTHER."""
        (epoch, prefix), s = self.keyspace, self.settings
        keys = [*(f"{prefix}t:{tag}" for tag in tags), f"{prefix}l:{key}:"]
        args: list[str | int] = [new_token() + ".", _ms(s.token_ttl), _ms(s.lease_ttl), owner]
        args.append(_ms(keep_for))
        raw = await self._call(epoch, self._snapshot(keys=keys, args=args))
        tokens = {tag: _text(token) or "" for tag, token in zip(tags, raw, strict=False)}
        return tokens, int(raw[-1])

    async def store(
        self, key: str, snapshot: Snapshot, value: bytes, fresh_for: float, keep_for: float
    ) -> bool:
        """Store the entry if its tokens are still those read before the query."""
        epoch, prefix = self.keyspace
        tags = list(snapshot)
        entry = _encode_entry(value, snapshot, time.time() + fresh_for)
        keys = [f"{prefix}e:{key}", *(f"{prefix}t:{tag}" for tag in tags)]
        args: list[bytes | str | int] = [entry, _ms(keep_for), *(snapshot[t] for t in tags)]
        return int(await self._call(epoch, self._store(keys=keys, args=args))) == 1

    async def release_lease(self, key: str, snapshot: Snapshot) -> None:
        """Let another caller load now (this load failed)."""
        tokens = ",".join(snapshot.values())
        lease = f"{self.prefix}l:{key}:{hashlib.sha1(tokens.encode()).hexdigest()}"
        await self._call(self.keyspace[0], self.client.delete(lease))

    async def bump(self, tags: Sequence[str]) -> dict[str, str]:
        """Give ``tags`` new tokens and tell every replica, in one round trip."""
        tokens = {tag: new_token() for tag in tags}
        if not tokens:
            return tokens
        (epoch, prefix), ttl = self.keyspace, _ms(self.settings.token_ttl)
        keys = [f"{prefix}t:{tag}" for tag in tokens]
        news = json.dumps({**tokens, ORIGIN_TAG: self.origin})
        args: list[str | int] = [ttl, self.channel, news, *tokens.values()]
        await self._call(epoch, self._bump(keys=keys, args=args))
        return tokens

    async def ping(self) -> None:
        """Raise RedisUnavailable unless Redis answers (learning its epoch on the way)."""
        await self._call(None, self._ping())

    async def _ping(self) -> None:
        try:
            await self.client.ping()
        except EpochChanged:  # a PING has no keys: ask again on the new epoch
            await self.client.ping()

    async def drop_idle_connections(self) -> None:
        """Close the pooled connections no command is using.

        After Redis went away they are dead, and a dead one fails the first
        command that takes it: the probe that should find Redis back, then
        the first reads after it. Closed, each connects afresh when next used.
        """
        for client in (self.client, self._lookups):
            try:
                await client.connection_pool.disconnect(inuse_connections=False)
            except (RedisError, OSError) as exc:  # closing a dead socket may complain: closed
                log.debug("closing idle Redis connections: %s", exc)

    async def close(self) -> None:
        """Close every connection."""
        await self.client.aclose()
        await self._lookups.aclose()

    async def _call(self, built_for: str | None, work: Any) -> Any:
        """Await ``work``, built with the keys of epoch ``built_for`` (None: no keys).

        Bounded by the socket and connect timeouts; the pool never makes a
        command wait for a connection (past max_connections it refuses). If
        the epoch moved meanwhile, the command may have run on a connection
        to the new Redis with the old keys: its answer is not trusted (and a
        bump must be delivered again under the new keys).
        """
        try:
            result = await work
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if built_for is not None and built_for != (self.epoch or ""):
            raise RedisUnavailable("Redis was replaced during the call")
        return result

    async def _check_epoch(self, conn: Connection) -> None:
        """On every new connection: is this still the Redis whose keys we trust?"""
        await conn.on_connect()
        await conn.send_command("INFO")
        info = _parse_info(await conn.read_response())
        identity = f"{info.get('run_id', '')}/{info.get('master_replid', '')}"
        epoch = hashlib.sha256(identity.encode()).hexdigest()[:12]
        if self.epoch == epoch:
            return
        first = self.epoch is None
        self.epoch = epoch
        if not first:
            self._on_epoch_change()
        # The command about to run was built for the keys of another epoch.
        raise EpochChanged("Redis was restarted or replaced: moved to a fresh key prefix")


def _encode_entry(value: bytes, snapshot: Snapshot, fresh_until: float) -> bytes:
    header = json.dumps([fresh_until, dict(snapshot)], separators=(",", ":")).encode()
    return header + b"\n" + value


def _decode_entry(raw: bytes | None) -> StoredEntry | None:
    if raw is None:
        return None
    header, _, value = raw.partition(b"\n")
    try:
        fresh_until, snapshot = json.loads(header)
    except ValueError:
        return None
    return StoredEntry(value, snapshot, float(fresh_until))


def _parse_info(raw: bytes | str) -> dict[str, str]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {name: value.strip() for name, value in pairs}


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
