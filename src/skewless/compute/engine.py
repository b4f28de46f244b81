"""Compute engines: map a function over items here, or as Ray tasks, results in item order.

``compute.engine: ray`` starts a local Ray (``address`` null) or joins a cluster (``auto`` or
``host:port`` / ``ray://host:port``). Tasks read their batches themselves, so every node must
reach the offline store and MLflow artifacts through their URIs (a shared path or PostgreSQL)
and run the same skewless. A task whose worker dies is retried by Ray; work is deterministic,
so a retried task returns the same result.
"""

from __future__ import annotations

import logging
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlparse

from skewless.core.config import ComputeConfig
from skewless.core.errors import ComputeError, ConfigError

T = TypeVar("T")
R = TypeVar("R")

# How long a cluster address may take to answer before it is reported as down.
CONNECT_TIMEOUT_S = 10.0


class Compute(ABC):
    @abstractmethod
    def map(self, function: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """``function(item)`` for every item, in item order."""

    @abstractmethod
    def concurrently(self, jobs: Sequence[Callable[[], R]]) -> Iterator[R]:
        """The result of every job, in job order; jobs are whole steps run by this process
        that ``map`` their own work (fits of several folds), thread-safe."""


class LocalCompute(Compute):
    """Everything in this process, one item after another."""

    def map(self, function: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        return (function(item) for item in items)

    def concurrently(self, jobs: Sequence[Callable[[], R]]) -> Iterator[R]:
        """One job after another, each started only when its result is asked for."""
        return (job() for job in jobs)


class RayCompute(Compute):
    """Each item a Ray task, at most ``in_flight`` running at once. A new task starts as soon
    as any finishes; results are handed out in item order, and at most ``2 x in_flight`` of
    them wait in memory for a slower one."""

    def __init__(self, in_flight: int) -> None:
        self.in_flight = in_flight

    def map(self, function: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        import ray

        # A plain function (Ray refuses partials and callables): exported once with what it
        # captures, then each task ships only its item.
        def call(item: T) -> R:
            return function(item)

        task = ray.remote(max_retries=3, retry_exceptions=False)(call)
        queue = enumerate(items)
        running: dict[Any, int] = {}  # task -> item number
        finished: dict[int, R] = {}
        following = 0  # the item number handed out next
        exhausted = False
        while True:
            while (
                not exhausted
                and len(running) < self.in_flight
                and len(running) + len(finished) < 2 * self.in_flight
            ):
                entry = next(queue, None)
                if entry is None:
                    exhausted = True
                else:
                    running[task.remote(entry[1])] = entry[0]
            if following in finished:
                yield finished.pop(following)
                following += 1
            elif running:
                done, _ = ray.wait(list(running), num_returns=1)
                for reference in done:
                    finished[running.pop(reference)] = _result(ray, reference)
            else:
                return

    def concurrently(self, jobs: Sequence[Callable[[], R]]) -> Iterator[R]:
        """Up to ``in_flight`` jobs at once in threads of this process: their tasks share the
        cluster, and one job's work here (reducing, solving) fills the others' waits."""
        with ThreadPoolExecutor(max_workers=self.in_flight) as pool:
            futures = [pool.submit(job) for job in jobs]
            try:
                yield from (future.result() for future in futures)
            finally:
                for future in futures:
                    future.cancel()

    def __reduce__(self) -> tuple[Any, ...]:
        return (RayCompute, (self.in_flight,))


def _result(ray: Any, reference: Any) -> Any:
    """A task's result. An exception the work raised comes back as itself (Ray's error
    subclasses its type, so a SkewlessError stays one); Ray's own failures become a
    ComputeError that says what happened."""
    try:
        return ray.get(reference)
    except ray.exceptions.RayTaskError:
        raise
    except ray.exceptions.RayError as exc:
        raise ComputeError(
            f"the Ray cluster failed a task ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "check the cluster (ray status), or set compute.engine: local"
        ) from exc


def compute_engine(config: ComputeConfig) -> Compute:
    """The configured engine; Ray is started or joined here, once per process."""
    if config.engine == "local":
        return LocalCompute()
    ray = _import_ray()
    if config.address not in (None, "auto", "local"):
        _require_answer(config.address)
    if not ray.is_initialized():
        # Ray 2.60 turns token auth on by default; a cluster started here needs none.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        try:
            ray.init(
                address=config.address or "local",
                num_cpus=config.workers if config.address is None else None,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot join the Ray cluster at compute.address: {exc}") from None
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return RayCompute(max(1, min(cpus, config.workers or cpus)))


def _require_answer(address: str) -> None:
    """Refuse an address nobody listens on at once, instead of Ray's long reconnect loop."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.hostname is None or parsed.port is None:
        raise ConfigError(
            f"compute.address {address!r} is not 'auto', 'host:port' or 'ray://host:port'"
        )
    try:
        with socket.create_connection((parsed.hostname, parsed.port), CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(
            f"the Ray cluster at compute.address {address!r} does not answer ({exc}); start it "
            "with `ray start --head`, or set compute.engine: local"
        ) from None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "compute.engine: ray needs Ray: pip install 'skewless[ray]' (ray[serve]==2.60.0)"
        ) from None
    return ray
