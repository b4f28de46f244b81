"""Shared fixtures: configs over temporary homes, and small raw frames shaped like ETTh."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from skewless.core.config import SkewlessConfig, load_config
from skewless.features.ingest import ingest
from skewless.features.materialize import materialize
from skewless.features.repo import FeastRepo
from skewless.registry.registry import ModelRegistry
from skewless.training.pipeline import load_history
from skewless.training.release import Release, train_and_register

ROOT = Path(__file__).resolve().parents[1]
ETTH_CONFIG = ROOT / "configs" / "etth.yaml"
VARIABLES = ["OT", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"]

MakeRepo = Callable[..., FeastRepo]


# The fixtures under every service, live server, Ray cluster and trained release: ETTh in a
# Feast store (the release and the servers stand on it), Ray clusters, Redis servers of the
# test's own, the monitoring loop's release. A test that uses one, directly or through other
# fixtures, is marked ``integration``.
INTEGRATION_FIXTURES = frozenset({"etth_sqlite", "cluster", "serve_cluster", "own_redis", "loop"})
NOT_UNIT = frozenset({"integration", "slow", "redis", "postgres", "chaos"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by what they use, so that no one has to remember to: ``integration`` from
    their fixtures, then ``unit`` (what ``make test-unit`` runs) on every test without a mark
    in NOT_UNIT."""
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if not any(item.get_closest_marker(name) for name in NOT_UNIT):
            item.add_marker(pytest.mark.unit)


def etth_config(*overrides: str) -> SkewlessConfig:
    """The shipped config under a unique Feast project, so tests never share online keys."""
    project = f"t{uuid.uuid4().hex[:10]}"
    return load_config(ETTH_CONFIG, [f"feature_store.project={project}", *overrides], environ={})


def free_port() -> int:
    """A loopback port nobody listens on, for the live servers the tests start."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], object], what: str, seconds: float = 60) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


MetricSamples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_samples(exposition: str) -> MetricSamples:
    """A Prometheus exposition's samples: (sample name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def metric(samples: MetricSamples, name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def wait_until_healthy(server: subprocess.Popen, url: str, log: Path, seconds: float) -> None:
    """Wait for the server process at ``url`` to answer /health; if it exits or takes longer,
    kill it and fail with the end of its ``log``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.3)


def raw_rows(entity: int | None, start: str, hours: int, seed: int = 0) -> pd.DataFrame:
    """Raw rows as an ETTh CSV holds them: text timestamps, one column per variable."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {"date": pd.date_range(start, periods=hours, freq="h").strftime("%Y-%m-%d %H:%M:%S")}
    )
    for column in VARIABLES:
        frame[column] = rng.normal(10, 3, hours).astype(np.float32).astype(np.float64)
    if entity is not None:
        frame["station_id"] = entity
    return frame


def fleet(entities: int, hours: int, seed: int = 0) -> pd.DataFrame:
    """Raw rows of a fleet of random walks at different levels, with a gap and missing values."""
    rng = np.random.default_rng(seed)
    parts = []
    for entity in range(1, entities + 1):
        frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=hours, freq="h")})
        for column in VARIABLES:
            walk = np.cumsum(rng.normal(0, 1, hours)) + rng.uniform(-50, 50)
            frame[column] = walk * rng.uniform(0.5, 5)
        frame.loc[rng.integers(0, hours, 3), "HUFL"] = np.nan
        if entity % 3 == 0:
            frame = frame.drop(index=range(200, 230))  # a gap no window may cross
        parts.append(frame.assign(station_id=entity))
    rows = pd.concat(parts)
    rows["date"] = rows["date"].dt.strftime("%Y-%m-%d %H:%M:%S")
    return rows


@pytest.fixture(scope="session")
def fleet_rows(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Seven random walks of 900 hours in ingestion format, with gaps and missing values."""
    path = tmp_path_factory.mktemp("fleet") / "fleet.csv"
    fleet(7, 900).to_csv(path, index=False)
    return load_history(etth_config(), csv=path)


@pytest.fixture
def make_repo(tmp_path: Path) -> Iterator[MakeRepo]:
    """Repos over a fresh home; online stores are torn down afterwards (Redis keys included)."""
    made: list[FeastRepo] = []

    def make(*overrides: str) -> FeastRepo:
        repo = FeastRepo(etth_config(*overrides), tmp_path / "home")
        made.append(repo)
        return repo

    yield make
    for repo in made:
        if "store" in repo.__dict__:
            repo.store.teardown()


@pytest.fixture(scope="session")
def etth_sqlite(tmp_path_factory: pytest.TempPathFactory) -> FeastRepo:
    """Both ETTh stations ingested and materialized once into SQLite, for read-only tests."""
    repo = FeastRepo(etth_config(), tmp_path_factory.mktemp("etth") / "home")
    ingest(repo)
    materialize(repo)
    return repo


@pytest.fixture(scope="session")
def etth_release(
    etth_sqlite: FeastRepo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SkewlessConfig, Release, pd.DataFrame]]:
    """The shipped config trained on both stations, registered in its own SQLite MLflow store,
    and promoted to production. Read-only, whatever the order of the tests: a test that moves
    aliases or adds versions works on a copy (``own_release``, ``register_copy``); the session
    fails if one did not."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    config = etth_sqlite.config.model_copy(
        update={"tracking": etth_sqlite.config.tracking.model_copy(update={"uri": uri})}
    )
    rows = load_history(config, etth_sqlite.home)
    released = train_and_register(config, rows, etth_sqlite.home)
    registry = ModelRegistry(uri)
    registry.promote(config.model_name, released.version, "production", "mse")
    as_released = registry.versions(config.model_name)
    yield config, released, rows
    assert registry.versions(config.model_name) == as_released, "a test changed etth_release"


def copy_version(registry: ModelRegistry, name: str, version: int, to: str) -> int:
    """A new version of ``to`` with the artifact, run and tags (metrics, feed) of ``name``'s
    ``version``: a real version, registered in milliseconds instead of trained."""
    source = registry.client.get_model_version(name, str(version))
    # Where the artifact lies, not its models:/ URI: MLflow resolves that one through the
    # process-wide tracking URI, which is not this registry's.
    where = registry.client.get_model_version_download_uri(name, str(version))
    created = registry.client.create_model_version(to, where, source.run_id, source.tags)
    return int(created.version)


def register_copy(config: SkewlessConfig, version: int) -> SkewlessConfig:
    """``config``'s model ``version`` registered again as version 1 of a model of its own, in
    production; the config that names it."""
    registry = ModelRegistry(config.tracking.uri)
    name = f"etth_{uuid.uuid4().hex[:8]}"
    registry.client.create_registered_model(name)
    registry.promote(
        name, copy_version(registry, config.model_name, version, name), "production", "mse"
    )
    return config.model_copy(
        update={"registry": config.registry.model_copy(update={"model_name": name})}
    )


@pytest.fixture
def own_release(etth_release: tuple) -> SkewlessConfig:
    """The session release under a registered name of this test's own, for moving aliases and
    adding versions."""
    config, released, _ = etth_release
    return register_copy(config, released.version)


def ray_serve_test_env() -> dict[str, str]:
    """Ray Serve's settings for a test's cluster, besides ``serve``'s own: a short drain before
    an ingress replica stops (30 s by default, for load balancers to let go of it: no test has
    one)."""
    return {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


@dataclass(frozen=True)
class ServeCluster:
    """A Ray cluster that Ray Serve servers join (``skewless serve --address``): each deploys
    its application there, answers on Serve's one HTTP port, and deletes it when stopped."""

    address: str
    port: int


# The session's Ray cluster: ``ray.init(address="local")`` in a process of its own, which
# writes no machine-wide address file (ray.cluster_utils.Cluster writes one, and then any
# ``ray.init()`` on the machine joined it and could shut its Serve down); ``ray_cluster``
# stops it whole on SIGTERM.
_RAY_HEAD = """
import sys
from pathlib import Path

import ray
from skewless.serving.ray_launch import ray_cluster

with ray_cluster(None) as stop:
    Path(sys.argv[1]).write_text(ray.get_runtime_context().gcs_address)
    stop.wait()
"""


@pytest.fixture(scope="session")
def serve_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeCluster]:
    """The session's one Ray cluster for Ray Serve servers, its own (started here, never a
    machine-wide one): starting a cluster and Serve took a third of each server's start-up.
    Its nodes start with Ray Serve's settings in their environment, as ``skewless serve``
    gives a cluster of its own. A test about a server's whole life (its stop, what it leaves)
    starts one with a cluster of its own instead."""
    address = tmp_path_factory.mktemp("ray") / "address"
    head = subprocess.Popen(
        [sys.executable, "-c", _RAY_HEAD, str(address)],
        env={**os.environ, **ray_serve_test_env()},
        stdout=subprocess.DEVNULL,  # what replicas log comes to this driver too
    )

    def up_or_gone() -> bool:
        return head.poll() is not None or (address.exists() and bool(address.read_text()))

    try:
        wait_for(up_or_gone, "the session's Ray cluster", 300)
        assert head.poll() is None, "the session's Ray cluster did not start"
        yield ServeCluster(address.read_text(), free_port())
    finally:
        head.terminate()
        head.wait(timeout=120)
