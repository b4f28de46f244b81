"""What the fault-injection tests share: a Redis of their own, a model of their own, a live
server over both, and a steady client that records every answer with its time."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from skewless.core.config import SkewlessConfig
from skewless.features.ingest import ingest
from skewless.features.materialize import materialize
from skewless.features.repo import FeastRepo
from skewless.registry.registry import ModelRegistry
from skewless.training.pipeline import load_history
from skewless.training.release import train_and_register
from tests.conftest import MetricSamples, etth_config, free_port, metric_samples, wait_for
from tests.test_serving import TIMEOUT

LAST = "2018-06-26T19:00:00Z"  # the last hour of both ETTh files
BATCH = {"entities": [1, 2], "time_point": LAST}


class RedisProcess:
    """A redis-server on a free port with its own folder, stopped and started by the test."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client().ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def stop(self, keep_data: bool) -> None:
        """Shut down, saving the data to disk first (it comes back on start) or not."""
        assert self.process is not None
        self.client().shutdown(save=keep_data, nosave=not keep_data)
        self.process.wait(timeout=30)
        if not keep_data:
            (self.folder / "dump.rdb").unlink(missing_ok=True)  # an earlier save

    def pause(self) -> None:
        """Freeze the process: connections stay open and nothing answers."""
        assert self.process is not None
        psutil.Process(self.process.pid).suspend()

    def resume(self) -> None:
        assert self.process is not None
        psutil.Process(self.process.pid).resume()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def chaos_repo(
    own_redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> tuple[FeastRepo, SkewlessConfig]:
    """Both ETTh stations in a store whose online side is our own Redis, and a model of its
    own (registered name, MLflow store) in production, so that moving aliases touches nothing
    another test reads."""
    home = tmp_path_factory.mktemp("chaos") / "home"
    uri = f"sqlite:///{home.parent / 'mlflow.db'}"
    config = etth_config(
        "feature_store.online_store.type=redis",
        f"feature_store.online_store.url={own_redis.url}",
        f"tracking.uri={uri}",
        "registry.model_name=chaos_forecaster",
    )
    repo = FeastRepo(config, home)
    ingest(repo)
    materialize(repo)
    released = train_and_register(config, load_history(config, home), home)
    ModelRegistry(uri).promote(config.model_name, released.version, "production", "mse")
    return repo, config


@dataclass
class Answer:
    sent: float  # time.monotonic() when sent
    status: int  # 0: no HTTP answer at all (connection refused, reset, timed out)
    body: str


@dataclass
class SteadyClient:
    """One keep-alive connection asking the same question back to back, recording every
    answer, until stopped."""

    url: str
    path: str = "/predict/feast/batch"
    body: dict = field(default_factory=lambda: dict(BATCH))
    answers: list[Answer] = field(default_factory=list)
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SteadyClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    @contextmanager
    def phase(self, name: str, seconds: float) -> Iterator[None]:
        """A phase: what the block sets up, then ``seconds`` of steady traffic, longer if
        need be until a few requests count for it. Only requests sent 1 s after the setup and
        2.5 s before the end count: one in flight while things change (a store call takes up
        to 2 x its 1 s timeout) is nobody's."""
        yield
        began = time.monotonic()
        time.sleep(seconds)  # the phase's length: steady traffic, not a wait for an event
        wait_for(
            lambda: len(self._sent(began + 1.0, time.monotonic() - 2.5)) >= 3,
            f"requests in phase {name!r}",
            TIMEOUT,
        )
        self.phases[name] = (began + 1.0, time.monotonic() - 2.5)

    def answered_more(self, count: int) -> None:
        """Wait until ``count`` more answers came back, whatever the machine's pace."""
        wanted = len(self.answers) + count
        wait_for(lambda: len(self.answers) >= wanted, f"{count} more answers", TIMEOUT)

    def _run(self) -> None:
        with httpx.Client(timeout=TIMEOUT) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    answer = client.post(f"{self.url}{self.path}", json=self.body)
                    self.answers.append(Answer(sent, answer.status_code, answer.text))
                except httpx.TransportError as exc:
                    self.answers.append(Answer(sent, 0, repr(exc)))
                    time.sleep(0.05)

    def during(self, phase: str) -> list[Answer]:
        return self._sent(*self.phases[phase])

    def _sent(self, begin: float, end: float) -> list[Answer]:
        return [a for a in self.answers if begin <= a.sent <= end]

    def statuses(self, phase: str) -> Counter[int]:
        return Counter(a.status for a in self.during(phase))

    def total(self) -> Counter[int]:
        return Counter(a.status for a in self.answers)


def scrape(url: str) -> MetricSamples:
    """The server's metrics: (sample name, sorted labels) -> value."""
    return metric_samples(httpx.get(f"{url}/metrics", timeout=TIMEOUT).text)
