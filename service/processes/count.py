"""How many workers to run: the configured number, else one per CPU when Redis is there.

Without Redis the in-process cache (L1) is the whole cache and it is per
process: a write through one worker would leave another's L1 serving what
it changed. So the default is the CPUs the cgroup allows only with a
``redis_url``, and one process (saying why) without; an explicit count above
one without Redis never gets here (the Config refuses it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from service.config import Config
from service.processes.cpus import available_cpus

log = logging.getLogger(__name__)
MIN_BUDGET_MIB = 64  # limits.memory_budget_mib's own floor, for each worker's share


class WorkerCountError(Exception):
    """The workers cannot be started as configured; the message is one line."""


def worker_count(config: Config, cpus: Callable[[], int] = available_cpus) -> int:
    """The number of server processes to run for ``config``."""
    if config.workers is not None:
        count = config.workers
    elif any(group.archive for group in config.groups):
        log.info("one worker: archival holds a group's reads while a slice moves, in one process")
        count = 1
    elif config.redis_url is None:
        available = cpus()
        if available > 1:
            log.info(
                "one worker: without redis_url each process's L1 would go on serving what "
                "another's write changed; set DATAACCESS_REDIS_URL to run one per CPU",
                extra={"cpus": available},
            )
        count = 1
    else:
        count = cpus()
    _check_budget(config, count)
    return count


def budget_share(config: Config, count: int) -> int:
    """Each worker's memory budget: the service's ``limits.memory_budget_mib`` split evenly."""
    return config.limits.memory_budget_mib // count


def _check_budget(config: Config, count: int) -> None:
    if count > 1 and budget_share(config, count) < MIN_BUDGET_MIB:
        raise WorkerCountError(
            f"limits.memory_budget_mib: {config.limits.memory_budget_mib} MiB over {count} "
            f"workers leaves under {MIN_BUDGET_MIB} MiB each; raise it or run fewer workers"
        )
