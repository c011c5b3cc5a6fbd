"""Memory bombs from a read-scoped caller: the server stays within its memory budget.

Each statement below grew the server to gigabytes before SQLite had a heap limit,
spilled to temporary files and rows were fetched within the byte limit. Run with
``-s`` to see the peak figures the README's Reliability section reports.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from service.config import ConfigError
from tests.conftest import base_document, build_config

pytestmark = pytest.mark.slow
BUDGET_MIB = 512  # the default limits.memory_budget_mib
TOKEN = "token-of-a-reader-0123456789"
SERIES = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) "
BIG = SERIES.format(n=5_000_000)
BOMBS = {
    "recursive CTE ordered by randomblob": BIG
    + "SELECT x, randomblob(64) FROM c ORDER BY randomblob(64)",
    "count(DISTINCT) over a generated series": BIG
    + "SELECT count(DISTINCT hex(randomblob(16))) FROM c",
    "json_group_array over millions of rows": BIG + "SELECT json_group_array(x) FROM c",
    "group_concat over millions of rows": BIG + "SELECT group_concat(hex(randomblob(32))) FROM c",
    "a huge string": "SELECT replace(printf('%.*c', 5000000, 'x'), 'x', 'xyz')",
    "a huge blob by zeroblob": "SELECT zeroblob(2000000000)",
    "a big GROUP BY": BIG + "SELECT hex(randomblob(16)) AS k, count(*) FROM c GROUP BY k",
    "a window over a random order": BIG + "SELECT sum(x) OVER (ORDER BY randomblob(8)) FROM c",
    "many rows of 900 KB": SERIES.format(n=20_000) + "SELECT randomblob(900000) FROM c",
    "one row of 60 values of 8 MB": "SELECT " + ", ".join(["randomblob(8000000)"] * 60),
}
REFUSED = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}


def _memory_mib(pid: int) -> dict[str, int]:
    """VmHWM (peak resident), VmRSS and RssAnon of ``pid``, in MiB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon"):
            figures[key] = int(rest.split()[0]) // 1024
    return figures


def _open_files(pid: int) -> set[str]:
    """What the process's file descriptors point at now."""
    names = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            names.add(str(fd.readlink()))
        except OSError:
            pass  # closed meanwhile
    return names


async def _sample(pid: int, peak: dict[str, int], files: set[str], stop: asyncio.Event) -> None:
    """Keep the highest RssAnon seen (VmHWM also counts file pages, such as the mmap),
    and the files the process opened."""
    while not stop.is_set():
        peak["RssAnon"] = max(peak["RssAnon"], _memory_mib(pid)["RssAnon"])
        files |= _open_files(pid)
        await asyncio.sleep(0.005)


async def _attack(stub: pb_grpc.DataAccessAsyncStub, sql: str) -> grpc.StatusCode:
    metadata = [("authorization", f"Bearer {TOKEN}")]
    try:
        await stub.Query(pb.QueryRequest(database="live", sql=sql), timeout=5, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_memory_bombs_stay_within_the_budget(tmp_path: Path, service_process: Any) -> None:
    document = base_document(tmp_path / "data")
    sha256 = hashlib.sha256(TOKEN.encode()).hexdigest()
    document["auth"] = {"tokens": [{"name": "reader", "sha256": sha256, "scopes": ["read:live"]}]}
    server = service_process(document)
    pid = server.process.pid
    before = _memory_mib(pid)
    peak, files, stop = {"RssAnon": before["RssAnon"]}, set[str](), asyncio.Event()
    sampler = asyncio.create_task(_sample(pid, peak, files, stop))
    options = [("grpc.max_receive_message_length", 64 << 20)]
    answers: dict[str, grpc.StatusCode] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=options) as channel:
        stub = pb_grpc.DataAccessStub(channel)
        for name, sql in BOMBS.items():
            answers[name] = await _attack(stub, sql)
            print(f"{name}: {answers[name].name}, memory now {_memory_mib(pid)}")
        # Four at once, on four readers.
        wide = BOMBS["one row of 60 values of 8 MB"]
        together = await asyncio.gather(*[_attack(stub, wide) for _ in range(4)])
        after = await _attack(stub, "SELECT count(*) FROM products")
    stop.set()
    await sampler
    figures = _memory_mib(pid)
    print(f"\nbudget {BUDGET_MIB} MiB; at start {before}; peak RssAnon {peak['RssAnon']} MiB;")
    print(f"after the attack {figures} (VmHWM is the peak resident set, file pages included)")
    assert {name: code for name, code in answers.items() if code not in REFUSED} == {}
    assert set(together) <= REFUSED
    assert after == grpc.StatusCode.OK
    assert figures["VmHWM"] < BUDGET_MIB
    assert peak["RssAnon"] < BUDGET_MIB
    # Sorts spilled to SQLite's temporary files, in sqlite.temp_dir (data_dir/tmp by default).
    temp_dir = str(tmp_path / "data" / "tmp")
    assert any(name.startswith(temp_dir) for name in files), sorted(files)


def test_the_memory_settings_default_and_come_from_the_environment(tmp_path: Path) -> None:
    document = base_document(tmp_path / "data")
    (tmp_path / "data").mkdir()
    config = build_config(tmp_path, document)
    assert config.limits.memory_budget_mib == BUDGET_MIB
    assert config.sqlite.temp_store == "FILE"
    assert config.sqlite.temp_dir == tmp_path / "data" / "tmp"
    env = {"DATAACCESS_MEMORY_BUDGET_MIB": "300", "DATAACCESS_SQLITE_TEMP_DIR": "/var/big"}
    config = build_config(tmp_path, document, env)
    assert (config.limits.memory_budget_mib, config.sqlite.temp_dir) == (300, Path("/var/big"))
    document["sqlite"] = {"temp_dir": "scratch"}
    assert build_config(tmp_path, document).sqlite.temp_dir == tmp_path / "data" / "scratch"
    document["limits"] = {"memory_budget_mib": 16}
    with pytest.raises(ConfigError, match="limits.memory_budget_mib"):
        build_config(tmp_path, document)
