"""The listening address: one server per port unless sharing it is asked for."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from service.config import ConfigError
from tests.conftest import build_config


def _second_server(tmp_path: Path, document: dict[str, Any], port: int) -> subprocess.Popen[bytes]:
    """``python -m service`` on its own files, asked to listen on ``port``; logs to second.log."""
    second = {**document, "data_dir": str(tmp_path / "second")}
    Path(second["data_dir"]).mkdir()
    config = tmp_path / "second.yaml"
    config.write_text(yaml.safe_dump(second))
    env = {**os.environ, "DATAACCESS_CONFIG": str(config), "DATAACCESS_LISTEN": f"127.0.0.1:{port}"}
    with (tmp_path / "second.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=tmp_path, env=env, stdout=log, stderr=log
        )


def _wait_logged(process: subprocess.Popen[bytes], log: Path, text: str) -> None:
    deadline = time.monotonic() + 20
    while text not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in: {log.read_text()}")
        time.sleep(0.05)


async def _answers(port: int, times: int) -> None:
    """``times`` fresh connections to ``port`` each get an answer."""
    for _ in range(times):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.DataAccessStub(channel)
            reply = await stub.Query(pb.QueryRequest(database="live", sql="SELECT 1"), timeout=5)
            assert len(reply.rows) == 1


async def test_a_second_server_on_a_busy_port_fails_to_start_and_the_first_keeps_serving(
    tmp_path: Path, document: dict[str, Any], service_process: Any
) -> None:
    first = service_process(document)
    second = _second_server(tmp_path, document, first.port)
    try:
        assert second.wait(timeout=30) == 1
    except subprocess.TimeoutExpired:
        second.kill()
        second.wait()
        raise AssertionError("the second server started on a busy port") from None
    log = (tmp_path / "second.log").read_text()
    lines = [line for line in log.splitlines() if line.startswith("dataaccess:")]
    assert lines == [
        f"dataaccess: listen: cannot bind 127.0.0.1:{first.port}: address already in use "
        "(is another server running there? several servers share it only with "
        "listen_reuse_port: true)"
    ]
    await _answers(first.port, 10)
    assert first.process.poll() is None


async def test_servers_share_a_port_only_when_each_asks_to(
    tmp_path: Path, document: dict[str, Any], service_process: Any
) -> None:
    document["listen_reuse_port"] = True
    first = service_process(document)
    second = _second_server(tmp_path, document, first.port)
    try:
        _wait_logged(second, tmp_path / "second.log", '"msg": "serving"')
        await _answers(first.port, 4)
    finally:
        second.kill()
        second.wait()


def test_listen_reuse_port_must_be_a_boolean(tmp_path: Path, document: dict[str, Any]) -> None:
    document["listen_reuse_port"] = "yes"
    with pytest.raises(ConfigError, match="listen_reuse_port: expected true or false"):
        build_config(tmp_path, document)
