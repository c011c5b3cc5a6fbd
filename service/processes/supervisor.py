"""The supervisor: the parent of the workers, which does nothing but start and stop them.

Before any fork it holds the shared address (``port``) and has the migrations
applied once, by a child of its own, so it never makes an event loop, a
database connection, a Redis client, a gRPC object or a telemetry thread:
each worker makes its own after the fork (gRPC and SQLite both forbid
carrying them across one). It forks the workers, passes SIGTERM and SIGINT
on to each once (``worker``), and waits for them.

A worker that dies on its own stops the service: the others drain and the
supervisor exits with the dead worker's status (128 + signal when it was
killed), so the orchestrator restarts the whole service and counts it,
rather than a restart here hiding a crash loop. Otherwise the exit code is
0 after a stop, or 128 + the signal's number after a second one.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import FrameType

from service.cache.siblings import SiblingMarks
from service.config import Config
from service.db import MigrationError, migrate
from service.processes.count import budget_share
from service.processes.port import SharedAddress, shared_address
from service.processes.seat import WorkerSeat
from service.processes.worker import SIBLING_DIED, run_worker

log = logging.getLogger("service")
_STOPPING = (signal.SIGTERM, signal.SIGINT)


@dataclass
class _Worker:
    index: int
    pid: int
    control: int  # the write end of its control pipe


def serve_workers(config: Config, count: int) -> int:
    """Serve ``config`` from ``count`` forked workers sharing one port; the exit code."""
    supervisor = Supervisor(count)
    with supervisor.signals_caught(), shared_address(config.listen) as address:
        migrated = migrate_in_child(config, address)
        if migrated != 0:
            return migrated
        if not supervisor.stopping:  # else a signal came while migrating: serve nothing
            supervisor.run(config, address)
        return supervisor.exit_code()


def worker_config(config: Config, listen: str, index: int, count: int) -> Config:
    """What worker ``index`` of ``count`` serves: the shared port, its metrics port (the
    configured one plus its index), its share of the memory budget."""
    metrics = config.metrics_listen
    if metrics is not None:
        host, _, port = metrics.rpartition(":")
        metrics = f"{host}:{int(port) + index if int(port) else 0}"
    return replace(
        config,
        listen=listen,
        listen_reuse_port=True,
        workers=count,
        metrics_listen=metrics,
        limits=replace(config.limits, memory_budget_mib=budget_share(config, count)),
    )


class Supervisor:
    """Forks the workers, tells them to stop, and says how they ended."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.stopping = False  # the workers were told to drain (or will not be started)
        self._workers: dict[int, _Worker] = {}
        self._signals = 0
        self._forced: int | None = None  # the second signal's number
        self._failure: int | None = None  # the exit status of the first worker that failed

    @contextmanager
    def signals_caught(self) -> Iterator[None]:
        """Take SIGTERM and SIGINT (to pass on to the workers) for the block."""
        previous = {signum: signal.signal(signum, self._on_signal) for signum in _STOPPING}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def run(self, config: Config, address: SharedAddress) -> None:
        """Fork the workers and wait for every one of them."""
        marks = SiblingMarks(self.count)
        # Blocked across the forks: a signal then reaches every worker, none twice.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING)
        try:
            for index in range(self.count):
                seat = WorkerSeat(index, self.count, marks.seat(index))
                self._fork(worker_config(config, address.listen, index, self.count), seat, address)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPPING)
        pids = [worker.pid for worker in self._workers.values()]
        log.info("workers started", extra={"listen": address.listen, "pids": pids})
        self._reap()

    def exit_code(self) -> int:
        """128 + the second signal's number, else the first failed worker's status, else 0."""
        if self._forced is not None:
            return 128 + self._forced
        return self._failure or 0

    def _fork(self, config: Config, seat: WorkerSeat, address: SharedAddress) -> None:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: keep only its own end of its own pipe
            os.close(write)
            for sibling in self._workers.values():
                os.close(sibling.control)
            address.holder.close()
            _exit(lambda: run_worker(config, seat, read))
        os.close(read)
        self._workers[pid] = _Worker(seat.index, pid, write)

    def _reap(self) -> None:
        while self._workers:
            pid, status = os.waitpid(-1, 0)
            worker = self._workers.pop(pid, None)
            if worker is not None:
                os.close(worker.control)
                self._ended(worker, _exit_status(status))

    def _ended(self, worker: _Worker, status: int) -> None:
        fields = {"worker": worker.index, "pid": worker.pid, "exit_code": status}
        if not self.stopping:
            log.error("a worker died: stopping the others", extra=fields)
            self._failure = status or 1
            self._tell(SIBLING_DIED)
            return
        if status != 0 and self._failure is None:
            self._failure = status
        log.info("worker stopped", extra=fields)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info("stopping the workers", extra={"cause": name})
            if not self.stopping:  # else they drain already, since a sibling died
                self._tell(signum)
            return
        log.warning("second %s: the workers exit now, without waiting for calls in flight", name)
        self._forced = signum
        self._tell(signum)

    def _tell(self, code: int) -> None:
        """Send one control byte to every worker still running."""
        self.stopping = True
        for worker in self._workers.values():
            try:
                os.write(worker.control, bytes([code]))
            except OSError:  # it has just exited: it is reaped next
                pass


def migrate_in_child(config: Config, address: SharedAddress) -> int:
    """Apply the migrations once, in a forked child (so this process opens no database and
    no event loop); its exit code."""
    pid = os.fork()
    if pid == 0:
        address.holder.close()
        for signum in _STOPPING:  # a stop waits for the migration (one transaction each)
            signal.signal(signum, signal.SIG_IGN)
        _exit(lambda: _migrated(config))
    return _exit_status(os.waitpid(pid, 0)[1])


def _migrated(config: Config) -> int:
    try:
        migrate(config)
    except MigrationError as exc:
        print(f"dataaccess: {exc}", file=sys.stderr)
        return 1
    return 0


def _exit(run: Callable[[], int]) -> None:
    """End a forked child with ``run``'s code, never returning into the parent's code."""
    code = 1
    try:
        code = run()
    except BaseException:  # noqa: BLE001 - whatever it was, the child ends here
        traceback.print_exc()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _exit_status(status: int) -> int:
    """A wait status as a shell shows it: the exit code, or 128 + the killing signal."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code
