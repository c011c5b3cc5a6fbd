"""Replication for the durability bench: moto's S3 server and the real ``litestream`` binary.

Both run on this machine only (moto on a free loopback port, Litestream's
control socket in a short directory under /tmp) and are stopped by their
pid. Both get this environment without any ``AWS_*`` but dummy credentials:
the machines here set ``AWS_CA_BUNDLE``, and Litestream's S3 client fails
with it. Litestream's config is the service's own (``python -m service
litestream-config FILE``), whose placeholders it expands from
``LITESTREAM_BUCKET``, ``LITESTREAM_PATH``, ``LITESTREAM_ENDPOINT`` and
``LITESTREAM_REGION``. Like tests/conftest.py's helpers, in a few lines.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from bench.harness import free_port

BIN = Path(sys.executable).parent  # the venv's bin: litestream and moto_server are there
LITESTREAM = BIN / "litestream"
MOTO = BIN / "moto_server"
BUCKET = "bench"
REGION = "us-east-1"


def missing() -> str | None:
    """What of litestream and moto_server is not installed, if anything."""
    absent = [p.name for p in (LITESTREAM, MOTO) if not p.exists()]
    return ", ".join(absent) or None


def aws_free_environ() -> dict[str, str]:
    """This environment without ``AWS_*`` and ``DATAACCESS_*``, with dummy credentials."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DATAACCESS_"))},
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
    }


class S3:
    """A running ``moto_server`` with the bucket ``BUCKET``."""

    def __init__(self, port: int) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"

    def request(self, method: str, path: str = "/") -> tuple[int, bytes]:
        """One unsigned request (moto does not check signatures), never through a proxy."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(self.endpoint + path, method=method)
        try:
            with opener.open(request, timeout=10) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def keys(self, prefix: str) -> list[str]:
        """Up to 1,000 object keys under ``prefix``."""
        query = urllib.parse.urlencode({"list-type": "2", "prefix": prefix, "max-keys": "1000"})
        status, body = self.request("GET", f"/{BUCKET}?{query}")
        if status != 200:
            raise SystemExit(f"bench: moto: listing {prefix}: {status} {body[:200]!r}")
        return re.findall(r"<Key>([^<]*)</Key>", body.decode())


@contextmanager
def s3_server(workdir: Path) -> Iterator[S3]:
    """``moto_server`` on a free loopback port with the bucket made; stopped by its pid."""
    port = free_port()
    log = workdir / f"moto-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=out,
            env=aws_free_environ(),
            cwd=workdir,
        )
    try:
        s3 = S3(port)
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise SystemExit(f"bench: moto_server exited: {log.read_text()[-2000:]}")
            try:
                if s3.request("GET")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("bench: moto_server did not answer within 30 s")
            time.sleep(0.1)
        status, body = s3.request("PUT", f"/{BUCKET}")
        if status != 200:
            raise SystemExit(f"bench: moto: creating the bucket: {status} {body[:200]!r}")
        yield s3
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class Litestream:
    """``litestream`` for the databases of one service config, replicating under ``prefix``."""

    def __init__(self, workdir: Path, s3: S3, service_config: Path, prefix: str) -> None:
        self.workdir = workdir
        self.service_config = service_config
        self.env = {
            **aws_free_environ(),
            "LITESTREAM_BUCKET": BUCKET,
            "LITESTREAM_PATH": prefix,
            "LITESTREAM_ENDPOINT": s3.endpoint,
            "LITESTREAM_REGION": REGION,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # for `service restore`
        }
        self.config = workdir / "litestream.yml"
        self.service_command(["litestream-config", str(self.config)], 30)
        document = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        self.socket = Path(document["socket"]["path"])
        self.databases = [Path(db["path"]) for db in document["dbs"]]
        self.log = workdir / "litestream.log"
        self.process: subprocess.Popen[bytes] | None = None

    def service_command(self, argv: list[str], timeout: float) -> None:
        """``python -m service ARGV`` on the service config with Litestream's environment."""
        done = subprocess.run(
            [sys.executable, "-m", "service", *argv],
            env={**self.env, "DATAACCESS_CONFIG": str(self.service_config)},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"bench: python -m service {argv[0]} failed: {done.stderr[-2000:]}")

    def replicate(self) -> None:
        """Start ``litestream replicate``; return once its control socket exists."""
        self.socket.unlink(missing_ok=True)  # left by a killed one
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(LITESTREAM), "replicate", "-config", str(self.config)],
                stdout=out,
                stderr=out,
                env=self.env,
            )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: litestream did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def sync(self, timeout: float = 30) -> float:
        """Ship every database now and wait until the replica has it (``litestream sync
        -wait`` through the control socket); the seconds it took."""
        started = time.monotonic()
        for database in self.databases:
            argv = [str(LITESTREAM), "sync", "-wait", "-json", "-timeout", str(round(timeout))]
            argv += ["-socket", str(self.socket), str(database)]
            done = subprocess.run(
                argv,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout + 10,
                check=False,
            )
            answer = json.loads(done.stdout) if done.returncode == 0 else {}
            if not answer or answer.get("replica_txid") != answer.get("txid"):
                raise SystemExit(f"bench: litestream sync {database}: {done.stdout}{done.stderr}")
        return time.monotonic() - started

    def stop(self, timeout: float = 120) -> None:
        """SIGTERM (its final sync) and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout)
        self.process = None

    def kill(self) -> None:
        """SIGKILL it (a lost node) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restore(self, timeout: float = 1800) -> float:
        """``litestream restore -if-db-not-exists -if-replica-exists`` of every database, as
        ``python -m service restore`` runs it; the seconds it took."""
        started = time.monotonic()
        for database in self.databases:
            argv = [str(LITESTREAM), "restore", "-config", str(self.config)]
            argv += ["-if-db-not-exists", "-if-replica-exists", str(database)]
            done = subprocess.run(
                argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
            )
            if done.returncode != 0:
                raise SystemExit(f"bench: litestream restore {database}: {done.stderr[-2000:]}")
        return time.monotonic() - started

    def service_restore(self, timeout: float = 1800) -> float:
        """``python -m service restore`` (the pod's init container); the seconds it took."""
        started = time.monotonic()
        self.service_command(["restore"], timeout)
        return time.monotonic() - started
