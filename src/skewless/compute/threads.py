"""How many threads a fit may use: the cores this process may run on, shared by the fits that
run in it at the same time.

OpenMP and torch pools size themselves from the machine's core count, not from what a container
or CPU affinity allows, and several fits side by side (folds on Ray, the backtest beside the
final fit) each start such a pool. Threads that outnumber the cores wait for each other at every
barrier: XGBoost on 2 cores ran for 27 minutes without finishing (issue 17). Every fit takes its
share here instead: ``available_cores() // fits running now``, at least 1.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

# cgroup v2 writes "QUOTA PERIOD" (or "max PERIOD"); v1 splits them into two files.
_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (
    Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
)

_lock = threading.Lock()
_running = 0  # fits inside ``sharing_cores`` now, in every thread of this process


@cache
def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by its cgroup's CPU quota (read
    once per process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cgroup_quota()
    return max(1, min(cores or 1, math.floor(quota) if quota else cores or 1))


def cgroup_quota(v2: Path = _CGROUP_V2, v1: tuple[Path, Path] = _CGROUP_V1) -> float | None:
    """The CPU quota in cores, or None when there is none (or it cannot be read)."""
    try:
        if v2.exists():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if v1[0].exists():
            quota_us, period_us = (int(path.read_text()) for path in v1)
            return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
    return None


def share() -> int:
    """Threads for one fit now: the available cores divided among the fits running (at least
    one each, so more fits than cores means one thread each)."""
    with _lock:
        return max(1, available_cores() // max(1, _running))


@contextmanager
def sharing_cores() -> Iterator[None]:
    """Count the enclosed fit among those sharing the cores; ask :func:`share` for its part,
    again from time to time (as other fits start and end)."""
    global _running
    with _lock:
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
