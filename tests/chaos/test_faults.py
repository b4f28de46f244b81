"""Faults injected into live servers under a steady client: what the client sees before, during
and after each one, and that the server's own metrics tell the same story."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import httpx
import psutil
import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import insert

from skewless.core.config import SkewlessConfig
from skewless.core.errors import UnservableVersionError
from skewless.core.monitoring_db import GAPS, monitoring_engine
from skewless.core.stores import request_log_url
from skewless.features.materialize import materialize
from skewless.features.repo import FeastRepo
from skewless.monitoring.store import read_served, read_since
from skewless.registry.registry import ModelRegistry
from skewless.training.pipeline import load_history
from skewless.training.release import train_and_register
from tests.chaos.conftest import (
    LAST,
    RedisProcess,
    SteadyClient,
    scrape,
)
from tests.conftest import metric, wait_for
from tests.test_serving import (
    SERVERS,
    TIMEOUT,
    TOKEN,
    request_body,
    server_log,
    start_kind,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.chaos


def _settings(config: SkewlessConfig) -> list[str]:
    """A server's settings over the chaos store (its Redis is the tests' own)."""
    online = config.feature_store.online_store
    return [
        "feature_store.online_store.type=redis",
        f"feature_store.online_store.url={online.url}",  # type: ignore[union-attr]
        "serving.poll_seconds=3600",
    ]


def _server(
    repo: FeastRepo, config: SkewlessConfig, engine: str = "fastapi"
) -> tuple[subprocess.Popen, str]:
    return start_server(repo, config, *_settings(config), engine=engine)


RAY_HAPROXY_PORTS = (8404, 9101)  # Ray's default HAProxy stats and metrics ports


@contextmanager
def _held(*ports: int) -> Iterator[None]:
    """``ports`` listened on here (or by whatever holds one already: the same to a server)."""
    with ExitStack() as stack:
        for port in ports:
            listener = stack.enter_context(socket.socket())
            with suppress(OSError):
                listener.bind(("", port))
                listener.listen()
        yield


@pytest.fixture(params=SERVERS)
def live(
    request: pytest.FixtureRequest, chaos_repo: tuple[FeastRepo, SkewlessConfig]
) -> Iterator[tuple[subprocess.Popen, str]]:
    """A server of each kind; stopped with SIGTERM, it must leave no process behind (Ray's
    agents outlived it once). The staged Ray server starts a cluster of its own, so that its
    stop is a whole Ray server's, while Ray's fixed HAProxy ports are held, as a killed Ray
    server's HAProxy holds them; the fused one joins the session's."""
    repo, config = chaos_repo
    if request.param == "ray-staged":
        with _held(*RAY_HAPROXY_PORTS):
            process, url = _server(repo, config, "ray")
    else:
        process, url = start_kind(request.param, request, repo, config, *_settings(config))
    family = psutil.Process(process.pid).children(recursive=True)
    yield process, url
    if process.poll() is None:
        stop_server(process)
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, f"outlived serve: {_names(alive)}"


def test_an_online_store_that_hangs_or_goes_away_is_a_503_naming_it_then_recovers(
    live: tuple[subprocess.Popen, str],
    own_redis: RedisProcess,
    chaos_repo: tuple[FeastRepo, SkewlessConfig],
) -> None:
    process, url = live
    with SteadyClient(url) as client:
        with client.phase("before", 5):
            pass
        with client.phase("hung", 7):
            own_redis.pause()  # connections open, nothing answers: the timeout must bound it
        own_redis.resume()
        with client.phase("resumed", 5):
            pass
        with client.phase("down", 6):
            own_redis.stop(keep_data=True)  # refused connections
        with client.phase("back", 5):
            own_redis.start()
    seen = {phase: client.statuses(phase) for phase in client.phases}
    assert set(seen["before"]) == set(seen["resumed"]) == set(seen["back"]) == {200}, seen
    assert set(seen["hung"]) == {503} and set(seen["down"]) == {503}, seen
    unavailable = [a for a in client.answers if a.status == 503]
    assert all("Redis at 127.0.0.1:" in a.body and "does not answer" in a.body for a in unavailable)
    hung = client.during("hung")
    assert max(b.sent - a.sent for a, b in pairwise(hung)) < 3  # each bounded by 1 s
    assert client.total()[0] == 0, "every request had an HTTP answer on its kept-alive connection"

    samples = scrape(url)
    total = client.total()
    assert metric(samples, "skewless_errors_total", type="StoreUnavailableError") == total[503]
    batch = "/predict/feast/batch"
    for status, count in total.items():
        assert (
            metric(samples, "skewless_requests_total", endpoint=batch, status=str(status)) == count
        )
    assert httpx.get(f"{url}/ready", timeout=TIMEOUT).json()["status"] == "ready"
    if "ray" not in process.args:  # Ray replicas log to Ray's files, not the server's
        stop_server(process)
        log = _words(server_log(chaos_repo[0], int(url.rsplit(":", 1)[1])).read_text())
        assert log.count("stopped answering") == 2 and log.count("answers again") == 2
        assert "Traceback" not in log


def test_a_store_restarted_empty_is_not_ready_until_incremental_materialize_rewrites_it(
    own_redis: RedisProcess, chaos_repo: tuple[FeastRepo, SkewlessConfig]
) -> None:
    repo, config = chaos_repo
    process, url = _server(repo, config)
    try:
        with SteadyClient(url) as client:
            with client.phase("before", 5):
                pass
            with client.phase("empty", 5):
                own_redis.stop(keep_data=False)
                own_redis.start()  # up again, without a key
            ready = httpx.get(f"{url}/ready", timeout=TIMEOUT)
            assert ready.status_code == 503 and "holds no materialized windows" in ready.text
            with client.phase("rewritten", 5):
                report = materialize(FeastRepo(config, repo.home), incremental=True)
                assert not report.incremental and report.entities_updated == 2
        assert set(client.statuses("before")) == {200}
        empty = client.during("empty")  # a batch answers 200, each entity with its error
        assert empty and all(
            a.status == 200 and a.body.count("unknown station_id") == 2 for a in empty
        )
        assert set(client.statuses("rewritten")) == {200}
        assert httpx.get(f"{url}/ready", timeout=TIMEOUT).json()["status"] == "ready"
    finally:
        stop_server(process)


def test_a_version_the_store_cannot_feed_is_never_swapped_in_nor_promoted(
    chaos_repo: tuple[FeastRepo, SkewlessConfig],
) -> None:
    repo, config = chaos_repo
    process, url = _server(repo, config)
    registry = ModelRegistry(config.tracking.uri)  # type: ignore[arg-type]
    serving = registry.version_of(config.model_name, "production")
    long = config.model_copy(
        update={"training": config.training.model_copy(update={"lookback": 600})}
    )
    try:
        with SteadyClient(url) as client:
            unfed = train_and_register(long, load_history(long, repo.home), repo.home).version
            for force in (False, True):
                with pytest.raises(UnservableVersionError, match="lookback of 600 points"):
                    registry.promote(config.model_name, unfed, "production", "mse", force)
            # Moved by hand (another tool, an older skewless): the server must still refuse.
            MlflowClient(config.tracking.uri).set_registered_model_alias(
                config.model_name, "production", str(unfed)
            )
            headers = {"Authorization": f"Bearer {TOKEN}"}
            for _ in range(2):
                refused = httpx.post(f"{url}/admin/reload", headers=headers, timeout=TIMEOUT)
                assert refused.status_code == 503 and "lookback of 600" in refused.text
            client.answered_more(10)  # still served after the refusals
        assert set(client.total()) == {200}
        assert {a.body.count(f'"version":{serving}') for a in client.answers} == {1}
        ready = httpx.get(f"{url}/ready", timeout=TIMEOUT).json()
        model = httpx.get(f"{url}/model", timeout=TIMEOUT).json()
        assert ready["status"] == "ready" and "exceeds the online window" in ready["reload_error"]
        assert model["version"] == serving and "lookback of 600" in model["reload_error"]
        assert metric(scrape(url), "skewless_model_reloads_total", outcome="refused") == 2
    finally:
        MlflowClient(config.tracking.uri).set_registered_model_alias(
            config.model_name, "production", str(serving)
        )
        stop_server(process)
    log = _words(server_log(repo, int(url.rsplit(":", 1)[1])).read_text())
    assert log.count("still serving version") == 1  # once, not at every attempt


def _words(log: str) -> str:
    """A log's words, one space apart: the console wraps long lines where it likes."""
    return " ".join(log.split())


def _writer_of(server: subprocess.Popen) -> psutil.Process | None:
    """The server's request-log writer (its one child started by multiprocessing's spawn),
    or None while there is none."""
    children = psutil.Process(server.pid).children(recursive=True)
    writers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
    assert len(writers) <= 1
    return writers[0] if writers else None


def test_a_killed_request_log_writer_is_restarted_and_every_answer_is_logged_or_counted(
    chaos_repo: tuple[FeastRepo, SkewlessConfig],
) -> None:
    repo, config = chaos_repo
    process, url = _server(repo, config)
    engine = monitoring_engine(request_log_url(config, repo.home))
    logged_before = len(read_served(engine))
    began = datetime.now(UTC)
    try:
        with SteadyClient(url) as client:
            with client.phase("before", 5):
                pass
            with client.phase("restarted", 5):
                first = _writer_of(process)
                assert first is not None
                first.kill()
                degraded = httpx.get(f"{url}/ready", timeout=TIMEOUT)
                assert degraded.status_code == 200
                wait_for(lambda: _writer_of(process) not in (None, first), "a new writer")
        assert set(client.total()) == {200}
        ready = httpx.get(f"{url}/ready", timeout=TIMEOUT).json()
        samples = scrape(url)
    finally:
        stop_server(process)  # the writer writes what is queued, then the server exits
    assert ready["request_log"]["restarts"] == 1
    dropped = metric(samples, "skewless_request_log_records_total", outcome="dropped")
    assert ready["request_log"]["dropped"] == dropped
    assert ready["status"] == ("degraded" if dropped else "ready")
    answered = 2 * len(client.answers)  # two entities a request
    logged = len(read_served(engine)) - logged_before
    assert logged + dropped == answered
    gaps = read_since(engine, GAPS, GAPS.c.until, began)
    assert gaps["records"].sum() == dropped


BAD_REQUESTS = [
    ("/predict/feast", {"entity": 1, "time_point": "0001-01-01T00:00:00Z"}, 422),
    ("/predict/feast", {"entity": 1, "time_point": "today"}, 422),
    ("/predict/feast", {"entity": 1, "time_point": "9" * 3_000_000}, 413),
    ("/predict/feast", {"entity": 1, "time_point": "9" * 100_000}, 422),
    ("/predict/feast/batch", {"entities": [True], "time_point": LAST}, 422),
    ("/predict/feast/batch", {"entities": [2**70], "time_point": LAST}, 422),
    ("/predict", b'{"rows": [{"station_id": 1, "event_timestamp": "2018", "OT": 1e400}]}', 422),
]


def test_hostile_input_beside_steady_traffic_is_4xx_and_costs_the_others_nothing(
    chaos_repo: tuple[FeastRepo, SkewlessConfig],
) -> None:
    """On FastAPI; test_serving sends the same requests to both engines."""
    process, url = _server(*chaos_repo)
    refused: Counter[int] = Counter()
    try:
        with SteadyClient(url) as client, httpx.Client(timeout=TIMEOUT) as hostile:
            client.answered_more(10)
            began = time.monotonic()
            for _ in range(3):
                for path, body, status in BAD_REQUESTS:
                    answer = hostile.post(f"{url}{path}", **request_body(body))
                    assert answer.status_code == status, (path, answer.text[:300])
                    assert len(answer.content) < 2000  # never an echo of the input
                    refused[status] += 1
                accented = hostile.post(
                    f"{url}/admin/reload", headers={"Authorization": "Bearer é".encode()}
                )
                assert accented.status_code == 401
                refused[401] += 1
            assert time.monotonic() - began < 60
            client.answered_more(10)
        assert set(client.total()) == {200}
        waits = [b.sent - a.sent for a, b in pairwise(client.answers)]
        assert max(waits) < 5, "no request of the steady client waited behind the hostile ones"
        samples = scrape(url)
        batch = "/predict/feast/batch"
        assert metric(samples, "skewless_requests_total", endpoint=batch, status="200") == len(
            client.answers
        )
        for status, count in refused.items():
            assert metric(samples, "skewless_requests_total", status=str(status)) == count
    finally:
        stop_server(process)


def _names(processes: list[psutil.Process]) -> list[str]:
    names = []
    for process in processes:
        try:
            names.append(" ".join(process.cmdline())[:120])
        except psutil.NoSuchProcess:
            continue
    return names


def test_malformed_settings_are_one_line_errors(tmp_path: Path) -> None:
    skewless = str(Path(sys.executable).parent / "skewless")
    env = {**os.environ, "SKEWLESS_HOME": str(tmp_path)}
    cases = [
        ("materialize", "--set", f"feature_store.project={'p' * 120_000}"),
        ("train", "--set", "tracking.uri=not-a-database"),
    ]
    for case in cases:
        command = [skewless, case[0], "configs/etth.yaml", *case[1:]]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode in (1, 2), done.stderr[-2000:]
        assert "Traceback" not in done.stderr and "error" in done.stderr.lower()
        assert len(done.stderr) < 2000, done.stderr[:500]


def test_monitor_reports_what_the_request_log_lost(
    chaos_repo: tuple[FeastRepo, SkewlessConfig],
) -> None:
    repo, config = chaos_repo
    engine = monitoring_engine(request_log_url(config, repo.home))
    lost = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    with engine.begin() as connection:
        connection.execute(
            insert(GAPS),
            [{"since": lost, "until": lost, "records": 7, "reason": "writer died"}],
        )
    monitor = subprocess.run(
        [
            str(Path(sys.executable).parent / "skewless"),
            "monitor",
            "configs/etth.yaml",
            "--set",
            f"feature_store.project={config.project}",
            "--set",
            f"tracking.uri={config.tracking.uri}",
            "--set",
            f"registry.model_name={config.model_name}",
        ],
        env={**os.environ, "SKEWLESS_HOME": str(repo.home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    said = _words(monitor.stdout + monitor.stderr)
    assert monitor.returncode in (0, 2), said[-2000:]  # 2: alerts fired
    reported = re.search(r"request log gaps: (\d+) records not logged in (\d+) gap", said)
    assert reported is not None, said[-2000:]
    assert int(reported[1]) >= 7 and int(reported[2]) >= 1  # and any an earlier test left
    assert "writer died" in said
