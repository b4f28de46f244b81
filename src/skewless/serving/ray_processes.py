"""Processes a local Ray cluster leaves behind: Ray 2.60's dashboard and runtime-env agents
outlive ``ray.shutdown()`` (their raylet is gone, they are not), so ``serve`` stops what it
started itself."""

from __future__ import annotations

import psutil


def started_here() -> list[psutil.Process]:
    """Every process this one has started, and theirs."""
    return psutil.Process().children(recursive=True)


def stop_leftovers(processes: list[psutil.Process], grace_s: float = 5.0) -> None:
    """Terminate those of ``processes`` still running; kill them after ``grace_s``."""
    alive = [p for p in processes if p.is_running()]
    for process in alive:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            continue
    _, stubborn = psutil.wait_procs(alive, timeout=grace_s)
    for process in stubborn:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
