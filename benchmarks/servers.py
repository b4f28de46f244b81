"""Servers under load, for the serving benchmarks: start one until it answers, warm it up, run
closed-loop load against it, stop it."""

from __future__ import annotations

import random
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

JSON = {"Content-Type": "application/json"}
# One request on a client's own connection; returns the HTTP status.
Send = Callable[[httpx.Client], int]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def post(url: str, body: bytes) -> Send:
    """A JSON POST of ``body`` to ``url``."""
    return lambda http: http.post(url, content=body, headers=JSON).status_code


@contextmanager
def running(
    command: list[str], env: dict[str, str], probe: str, log: Path, cwd: Path | None = None
) -> Iterator[None]:
    """A server, from when ``probe`` ("GET http://...") answers to its clean stop (SIGTERM, then
    a wait); its output goes to ``log`` (a pipe nobody reads would fill and block it)."""
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait_until_it_answers(process, probe, log)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_it_answers(process: subprocess.Popen, probe: str, log: Path) -> None:
    deadline = time.monotonic() + 180
    while True:
        try:
            httpx.request(*probe.split(" ", 1), timeout=2)
            return
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{process.args!r:.120} did not start: {tail}") from None
            time.sleep(0.5)


def warm_up(send: Send, seconds: float = 300) -> None:
    """Until a request is answered 200: Ray's proxy answers 404 until the application is
    deployed, and its stage replicas load the model on first use."""
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=120) as http:
        while (status := send(http)) != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server still answers {status} after warming up")
            time.sleep(0.5)


@dataclass
class Load:
    """What closed-loop load got: the latencies of the answered (200) requests, the counts of
    those shed (503) and failed otherwise, over how many seconds. Loads of one cell measured in
    several slices add up."""

    latencies: list[float] = field(default_factory=list)
    shed: int = 0
    failed: int = 0
    seconds: float = 0.0
    # Core-seconds spent while the load ran: by the whole machine, and by the load generator
    # (this process) itself. A server can only scale onto cores these leave idle.
    machine_cpu: float = 0.0
    client_cpu: float = 0.0

    def __add__(self, other: Load) -> Load:
        return Load(
            self.latencies + other.latencies,
            self.shed + other.shed,
            self.failed + other.failed,
            self.seconds + other.seconds,
            self.machine_cpu + other.machine_cpu,
            self.client_cpu + other.client_cpu,
        )

    def summary(self) -> dict[str, float | None]:
        """Counts, throughput, and p50 / p99 latency (None when nothing was answered)."""
        ordered = sorted(self.latencies)
        p50 = 1000 * statistics.median(ordered) if ordered else None
        p99 = 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else None
        return {
            "requests": len(ordered),
            "shed": self.shed,
            "failed": self.failed,
            "p50_ms": p50,
            "p99_ms": p99,
            "throughput_rps": len(ordered) / self.seconds,
            # Busy cores on average (2.0: both of a 2-core machine), and the load generator's.
            "cores_busy": round(self.machine_cpu / self.seconds, 2),
            "client_cores": round(self.client_cpu / self.seconds, 2),
        }


def closed_loop(
    send: Send, concurrency: int, seconds: float, pause_after_shed: float = 0.0
) -> Load:
    """``concurrency`` clients, each sending its next request when the previous one is answered,
    until the deadline (a new loopback connection each: it costs a tenth of a millisecond).
    After a 503 a client waits ``pause_after_shed`` seconds and up to as long again at random
    first, as one that honours the server's Retry-After with jitter does, so that the clients
    refused together do not all come back together (0: it retries at once, the worst case for
    the server)."""
    load = Load()
    lock = threading.Lock()
    # Every client is built before the clock starts: each loads an SSL context, about 50 ms of
    # CPU here (64 of them: 3.5 s), which would land on the first requests' latencies.
    ready = threading.Barrier(concurrency + 1)

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            ready.wait()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                began = time.perf_counter()
                status = send(http)
                elapsed = time.perf_counter() - began
                with lock:
                    if status == 200:
                        load.latencies.append(elapsed)
                    load.shed += status == 503
                    load.failed += status not in (200, 503)
                if status == 503 and pause_after_shed:
                    pause = pause_after_shed * (1 + random.random())
                    time.sleep(max(0.0, min(pause, deadline - time.monotonic())))

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    ready.wait()
    machine, mine = _busy_seconds(), time.process_time()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    load.seconds = time.perf_counter() - began
    load.machine_cpu = _busy_seconds() - machine
    load.client_cpu = time.process_time() - mine
    return load


def _busy_seconds() -> float:
    """Core-seconds the machine has spent on anything but idling since it booted."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq


def show(cell: str, result: dict[str, float | None]) -> None:
    """One line per measured cell."""

    def ms(value: float | None) -> str:
        return "      —" if value is None else f"{value:7.1f}"

    print(
        f"{cell}: p50 {ms(result['p50_ms'])} ms  p99 {ms(result['p99_ms'])} ms  "
        f"{result['throughput_rps']:7.1f} req/s  ({result['shed']} shed, "
        f"{result['failed']} failed; cores busy {result['cores_busy']:.2f}, "
        f"load generator {result['client_cores']:.2f})",
        flush=True,
    )
