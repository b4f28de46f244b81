"""The closed loop against real stores: the request log on SQLite and PostgreSQL, drift and
accuracy of served forecasts, alert rules, the webhook, retraining, and the HTML report opened
in headless Chromium."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pandas as pd
import psycopg
import pytest

from skewless.bundle.reference import reference_statistics
from skewless.core.config import AlertRules, SkewlessConfig
from skewless.core.monitoring_db import GAPS, monitoring_engine
from skewless.core.stores import request_log_url
from skewless.features.ingest import ingest_frames
from skewless.features.materialize import materialize, push
from skewless.features.repo import FeastRepo
from skewless.monitoring.accuracy import accuracy_by, versus_backtest
from skewless.monitoring.alerts import AlertLog, evaluate
from skewless.monitoring.drift import entity_drift_table, ks, most_moved, psi
from skewless.monitoring.monitor import assess
from skewless.monitoring.observations import VERSION
from skewless.monitoring.store import read_served, read_since
from skewless.registry.registry import ModelRegistry
from skewless.serving import log_writer
from skewless.serving.log_writer import RequestLog, served_records
from skewless.serving.schemas import FailedPrediction, Prediction
from skewless.training.pipeline import load_history
from skewless.training.release import train_and_register
from tests.conftest import ETTH_CONFIG, ROOT, etth_config, wait_for
from tests.services import POSTGRES_DSN
from tests.test_serving import TIMEOUT, start_server, stop_server

HELD_BACK = 300  # hours of each station kept out of ingestion, pushed later as new data
SHIFTED = ["HUFL", "MUFL"]  # covariates the test shifts; the NLinear target OT stays real
ARTIFACTS = ROOT / "test-artifacts"
ENTITY_ERROR = FailedPrediction(entity=1, error="1", kind="KeyError", status=404)


# -- drift statistics ------------------------------------------------------------------------


def test_psi_and_ks_separate_a_shift_from_a_fresh_sample() -> None:
    rng = np.random.default_rng(0)
    reference = reference_statistics(pd.DataFrame({"x": rng.normal(size=20_000)}), ["x"])["x"]
    same, shifted = rng.normal(size=3000), rng.normal(1.0, 1.0, size=3000)
    assert psi(reference, same) < 0.02 and psi(reference, shifted) > 0.5
    # KS against the stored percentiles agrees with the exact two-sample KS within 0.01:
    # N(0,1) against N(1,1) is 2*Phi(0.5)-1 = 0.383 in the limit.
    assert ks(reference, same) < 0.04 and abs(ks(reference, shifted) - 0.383) < 0.03


def test_drift_handles_a_variable_with_point_masses() -> None:
    rng = np.random.default_rng(1)
    train = pd.DataFrame({"level": rng.integers(0, 3, 20_000).astype(float)})
    reference = reference_statistics(train, ["level"])["level"]
    same = rng.integers(0, 3, 3000).astype(float)
    moved = rng.integers(1, 4, 3000).astype(float)
    assert ks(reference, same) < 0.03 and psi(reference, same) < 0.01
    assert ks(reference, moved) > 0.3 and psi(reference, moved) > 1


def _fleet(levels: dict[int, float], rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.concat(
        [
            pd.DataFrame({"station_id": entity, "x": rng.normal(level, 1.0, rows)})
            for entity, level in levels.items()
        ],
        ignore_index=True,
    )


def test_each_entity_is_compared_with_its_own_training_rows() -> None:
    """Entities far apart (levels 0, 50, 100) are each judged against their own past, so only
    the one that moved shows drift; the training rows come a batch of entities at a time."""
    training = _fleet({1: 0.0, 2: 50.0, 3: 100.0}, 720, seed=0)
    served = _fleet({1: 0.0, 2: 52.0, 3: 100.0}, 400, seed=1)  # entity 2 moved by 2 sd
    batches = (training[training["station_id"].isin(batch)] for batch in ([1, 2], [3]))
    table = entity_drift_table(batches, served, "station_id", ["x"]).set_index("entity")
    assert list(table.index) == [1, 2, 3] and set(table["count"]) == {400}
    assert table.loc[2, "psi"] > 2 and table.loc[2, "ks"] > 0.6
    assert (table.loc[[1, 3], "psi"] < 0.1).all() and (table.loc[[1, 3], "ks"] < 0.1).all()
    assert most_moved(table.reset_index(), 1)["entity"].tolist() == [2]


# -- alert rules -----------------------------------------------------------------------------


def _served(latencies: list[float], errors: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": [str(i) for i in range(len(latencies))],
            "latency_ms": latencies,
            "error": [None] * (len(latencies) - errors) + ["UnknownEntityError: 9"] * errors,
        }
    )


def test_rules_fire_on_their_own_evidence_only() -> None:
    rules = AlertRules(min_samples=10, latency_p99_ms=100, error_rate=0.1, accuracy_factor=1.5)
    drift = pd.DataFrame(
        [
            {
                "variable": "a",
                "count": 500,
                "mean": 3.0,
                "training_mean": 1.0,
                "psi": 0.9,
                "ks": 0.5,
            },
            {
                "variable": "b",
                "count": 500,
                "mean": 1.0,
                "training_mean": 1.0,
                "psi": 0.01,
                "ks": 0.02,
            },
            {"variable": "c", "count": 5, "mean": 9.0, "training_mean": 1.0, "psi": 3.0, "ks": 0.9},
        ]
    )
    accuracy = versus_backtest(
        pd.DataFrame({VERSION: [1, 2], "steps": [48, 48], "mae": [4.0, 1.0], "mse": [20.0, 1.0]}),
        {1: {"mae": 2.0, "mse": 5.0}, 2: {"mae": 1.0, "mse": 1.0}},
    )
    by_entity = drift.iloc[0:0].assign(entity=[])
    quiet = evaluate(
        rules, drift.iloc[1:2], by_entity, accuracy.iloc[1:2], _served([10.0] * 50, errors=0)
    )
    assert quiet == []
    fired = evaluate(
        rules, drift, by_entity, accuracy, _served([10.0] * 45 + [500.0] * 5, errors=10)
    )
    assert sorted((a.rule, a.subject) for a in fired) == [
        ("accuracy", "version 1"),
        ("drift_ks", "a"),
        ("drift_psi", "a"),
        ("error_rate", "server"),
        ("latency_p99", "server"),
    ]  # c has too few rows to judge; version 2 is as good as its backtest
    assert next(a for a in fired if a.rule == "accuracy").value == pytest.approx(2.0)


def test_a_drift_alert_names_the_entities_that_moved_most_and_counts_the_rest() -> None:
    rules = AlertRules(min_samples=10, drift_ks=None, accuracy_factor=None)
    pooled = pd.DataFrame(
        [{"variable": "a", "count": 900, "mean": 3.0, "training_mean": 1.0, "psi": 0.9, "ks": 0.5}]
    )
    psis = [0.1, 0.2, 3.0] + [0.5 + e / 100 for e in range(3, 15)]  # 3..14 moved, 2 most
    by_entity = pd.DataFrame(
        {"entity": range(len(psis)), "variable": "a", "count": 60, "psi": psis, "ks": 0.0}
    )
    by_entity.loc[0, ["psi", "count"]] = [9.0, 5]  # entity 0: too few rows to judge
    (alert,) = evaluate(rules, pooled, by_entity, pd.DataFrame(), _served([], errors=0))
    assert alert.entities == ("2", *[str(e) for e in range(14, 5, -1)])
    assert alert.message.endswith(
        "entities that moved: 2, 14, 13, 12, 11, 10, 9, 8, 7, 6 and 3 more"
    )
    quiet = by_entity.assign(psi=0.1)
    (diffuse,) = evaluate(rules, pooled, quiet, pd.DataFrame(), _served([], errors=0))
    assert diffuse.entities == () and diffuse.message.endswith(
        "no entity crosses the threshold on its own"
    )


def test_coverage_alert_fires_below_nominal_minus_the_margin() -> None:
    accuracy = pd.DataFrame(
        {
            VERSION: [1, 2, 3],
            "steps": [48, 48, 5],
            "coverage_80": [0.74, 0.76, 0.1],  # 1: over 5 points short; 3: too few steps
            "coverage_95": [0.95, 0.85, 0.1],
        }
    )
    rules = AlertRules(min_samples=10, accuracy_factor=None, coverage_margin=0.05)
    no_drift, served = pd.DataFrame(columns=["count"]), _served([], errors=0)
    fired = evaluate(rules, no_drift, pd.DataFrame(), accuracy, served)
    assert [(a.rule, a.subject, a.threshold) for a in fired] == [
        ("coverage", "version 1", pytest.approx(0.75)),
        ("coverage", "version 2", pytest.approx(0.90)),
    ]
    assert fired[0].message == (
        "version 1: its 80% intervals held 74.0% of 48 forecast steps, more than 5% below "
        "nominal (threshold 75.0%)"
    )
    off = rules.model_copy(update={"coverage_margin": None})
    assert evaluate(off, no_drift, pd.DataFrame(), accuracy, served) == []


def test_accuracy_scores_coverage_per_level() -> None:
    outcomes = pd.DataFrame(
        {
            VERSION: [1, 1, 1, 1],
            "forecast": [1.0, 2.0, 3.0, 4.0],
            "actual": [1.0, 3.0, 3.0, 8.0],
            "lower_80": [0.0, 1.5, 2.5, 3.0],
            "upper_80": [2.0, 2.5, 3.5, 5.0],
        }
    )
    table = accuracy_by(outcomes, ["80"], [VERSION])
    assert table.loc[0, "steps"] == 4 and table.loc[0, "mae"] == pytest.approx(5 / 4)
    assert table.loc[0, "mse"] == pytest.approx(17 / 4)
    assert table.loc[0, "coverage_80"] == pytest.approx(0.5)


# -- the request log -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitoring.db'}"
    schema = f"log_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"


def test_the_request_log_keeps_every_record_across_threads(log_url: str) -> None:
    outcomes: dict[str, int] = {}
    log = RequestLog(
        log_url,
        on_outcome=lambda o, n: outcomes.__setitem__(o, outcomes.get(o, 0) + n),
    )
    model = {"name": "m", "version": 3, "alias": "production"}
    item = Prediction(
        entity=7,
        timestamps=["2018-01-01T01:00:00+00:00", "2018-01-01T02:00:00+00:00"],
        forecast={"OT": [1.5, 2.5]},
        lower={"OT": {"80": [1.0, 2.0]}},
        upper={"OT": {"80": [2.0, 3.0]}},
    )

    def client(index: int) -> None:
        for request in range(50):
            error = FailedPrediction(entity=8, error="'gone'", kind="KeyError", status=404)
            log.append(served_records(f"{index}-{request}", "/b", model, [item, error], None, 0.01))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    logged = read_served(monitoring_engine(log_url))
    assert len(logged) == 400 and logged["request_id"].nunique() == 200
    assert outcomes == {"written": 400}
    forecast = logged[logged["entity"] == "7"].iloc[0]
    assert forecast["forecast"] == {"OT": [1.5, 2.5]} and forecast["upper"]["OT"]["80"] == [2, 3]
    assert forecast["first_step"] == datetime(2018, 1, 1, 1)
    assert (logged[logged["entity"] == "8"]["error"] == "KeyError: 'gone'").all()


def test_a_full_request_log_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    database = tmp_path / "monitoring.db"
    counted: dict[str, int] = {}
    log = RequestLog(
        f"sqlite:///{database}",
        max_pending=1,
        on_outcome=lambda o, n: counted.__setitem__(o, counted.get(o, 0) + n),
    )
    model = {"name": "m", "version": 1, "alias": "a"}
    records = served_records("r", "/b", model, [ENTITY_ERROR], None, 0.0)
    blocker = sqlite3.connect(database)
    blocker.execute("BEGIN EXCLUSIVE")  # the database is busy: the writer waits on its insert
    log.append(records)
    while log.pending:  # the writer took that one and is stuck writing it
        time.sleep(0.01)
    for _ in range(6):  # one more fits the queue; five do not
        log.append(records)
    blocker.rollback()
    blocker.close()
    log.close()
    assert counted == {"dropped": 5, "written": 2}


def _writer() -> multiprocessing.Process:
    """The request log's writer process (failing the test when there is none)."""
    (writer,) = [c for c in multiprocessing.active_children() if c.name == "skewless-request-log"]
    return writer


def test_the_request_log_writer_survives_ctrl_c_and_imports_this_skewless(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "model_code" / "skewless"  # a loaded model's own copy, first on sys.path
    stale.mkdir(parents=True)
    (stale / "__init__.py").write_text("raise ImportError('the model artifact copy')\n")
    monkeypatch.syspath_prepend(str(stale.parent))
    url = f"sqlite:///{tmp_path / 'monitoring.db'}"
    counted: dict[str, int] = {}
    log = RequestLog(url, on_outcome=lambda o, n: counted.__setitem__(o, counted.get(o, 0) + n))
    model = {"name": "m", "version": 1, "alias": "a"}
    for request_id in ("before", "after"):
        log.append(served_records(request_id, "/b", model, [Prediction(entity=1)], None, 0))
        while not counted:  # until the writer is up and has written the first one
            assert _writer().is_alive()
            time.sleep(0.01)
        os.kill(_writer().pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    log.close()
    assert counted == {"written": 2}
    assert list(read_served(monitoring_engine(url))["request_id"]) == ["before", "after"]


def test_a_killed_writer_is_restarted_and_what_waited_for_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_writer, "_FIRST_RESTART_S", 0.5)
    url = f"sqlite:///{tmp_path / 'monitoring.db'}"
    counted: dict[str, int] = {}
    log = RequestLog(
        url, max_pending=3, on_outcome=lambda o, n: counted.__setitem__(o, counted.get(o, 0) + n)
    )
    model = {"name": "m", "version": 1, "alias": "a"}
    records = served_records("r", "/b", model, [ENTITY_ERROR], None, 0)
    first = _writer()
    first.kill()
    first.join()
    assert log.status()["degraded"] and log.status()["writer"] == "restarting"
    for _ in range(5):  # three wait for the new writer (the bound), two are dropped
        log.append(records)
    deadline = time.monotonic() + 60
    while counted.get("written", 0) < 3:
        assert time.monotonic() < deadline, f"no new writer wrote the backlog: {counted}"
        time.sleep(0.05)
    status = log.status()
    assert status["writer"] == "running" and status["restarts"] == 1
    assert status["dropped"] == 2 and status["degraded"]  # lost records lately
    log.close()
    assert counted == {"written": 3, "dropped": 2}
    gaps = read_since(monitoring_engine(url), GAPS, GAPS.c.until, None)
    assert gaps["records"].sum() == 2 and set(gaps["reason"]) == {"writer down"}


def test_a_writer_that_keeps_dying_is_restarted_ever_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_writer, "_FIRST_RESTART_S", 0.2)
    log = RequestLog(f"sqlite:///{tmp_path / 'monitoring.db'}")
    deaths = []
    for _ in range(3):
        writer = _writer_waiting(deadline=time.monotonic() + 60)
        writer.kill()
        writer.join()
        deaths.append(time.monotonic())
    _writer_waiting(deadline=time.monotonic() + 60)
    assert log.restarts == 3
    assert deaths[2] - deaths[1] > deaths[1] - deaths[0]  # 0.2 s, then 0.4 s
    began = time.monotonic()
    log.close(timeout=5)
    assert time.monotonic() - began < 5


def _writer_waiting(deadline: float) -> multiprocessing.Process:
    while True:
        children = [
            c for c in multiprocessing.active_children() if c.name == "skewless-request-log"
        ]
        if children and children[0].is_alive():
            return children[0]
        assert time.monotonic() < deadline, "no writer was started"
        time.sleep(0.02)


def test_failed_inserts_are_recorded_as_a_gap_once_the_database_is_back(tmp_path: Path) -> None:
    database = tmp_path / "monitoring.db"
    url = f"sqlite:///{database}"
    counted: dict[str, int] = {}
    log = RequestLog(url, on_outcome=lambda o, n: counted.__setitem__(o, counted.get(o, 0) + n))
    model = {"name": "m", "version": 1, "alias": "a"}
    blocker = sqlite3.connect(database)
    blocker.execute("DROP TABLE served_forecasts")  # every insert fails
    blocker.commit()
    log.append(served_records("lost", "/b", model, [Prediction(entity=1)], None, 0))
    deadline = time.monotonic() + 30
    while not counted.get("failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    monitoring_engine(url).dispose()  # the table again
    log.append(served_records("kept", "/b", model, [Prediction(entity=1)], None, 0))
    log.close()
    assert counted == {"failed": 1, "written": 1}
    gaps = read_since(monitoring_engine(url), GAPS, GAPS.c.until, None)
    assert list(gaps["records"]) == [1] and list(gaps["reason"]) == ["database unavailable"]


_KILLED_SERVER = """
import multiprocessing, sys
from skewless.serving.log_writer import RequestLog, served_records
from skewless.serving.schemas import Prediction
log = RequestLog(sys.argv[1], max_pending=100)
print(multiprocessing.active_children()[0].pid, flush=True)
items = [Prediction(entity=i, forecast={"OT": [float(i)] * 2000}) for i in range(100)]
model = {"name": "m", "version": 1, "alias": "a"}
while True:
    log.append(served_records("r", "/b", model, items, None, 0))
"""


def _written(database: Path) -> int:
    """Records the writer has committed so far (0 before it made its table)."""
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as db:
            return int(db.execute("SELECT count(*) FROM served_forecasts").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow  # a second Python importing skewless, and its writer
def test_the_writer_of_a_killed_server_exits(tmp_path: Path) -> None:
    database = tmp_path / "monitoring.db"
    server = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SERVER, f"sqlite:///{database}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    writer = int(server.stdout.readline())
    # Killed while the writer is busy and more records are on their way through the pipe.
    wait_for(lambda: _written(database) > 0, "the writer's first records")
    server.kill()
    server.wait()
    deadline = time.monotonic() + 30
    while _running(writer):
        assert time.monotonic() < deadline, "the writer outlived its server"
        time.sleep(0.2)


# -- the loop, end to end --------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A real HTTP receiver on loopback; yields its URL and what it received."""
    _Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", _Receiver.received
    server.shutdown()


@dataclass(frozen=True)
class Loop:
    repo: FeastRepo
    config: SkewlessConfig
    held_back: dict[int, pd.DataFrame]  # per station, the raw rows not yet ingested
    production: int


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Loop:
    """Both stations without their last HELD_BACK hours; a naive model trained on that and
    promoted to production (the shipped config's NLinear is what a retrain will fit)."""
    home = tmp_path_factory.mktemp("loop") / "home"
    config = etth_config(f"tracking.uri=sqlite:///{home.parent / 'mlflow.db'}")
    repo = FeastRepo(config, home)
    stations = {s: pd.read_csv(ROOT / "data" / f"ETTh{s}.csv").assign(station_id=s) for s in (1, 2)}
    ingest_frames(repo, [(f"ETTh{s}", rows.iloc[:-HELD_BACK]) for s, rows in stations.items()])
    materialize(repo)
    naive = config.model_copy(
        update={"training": config.training.model_copy(update={"model": "naive"})}
    )
    release = train_and_register(naive, load_history(config, home), home)
    ModelRegistry(config.tracking.uri).promote(
        config.model_name, release.version, "production", "mse"
    )
    held = {s: rows.iloc[-HELD_BACK:].reset_index(drop=True) for s, rows in stations.items()}
    return Loop(repo, config, held, release.version)


def _hour(rows: pd.DataFrame, index: int) -> str:
    return pd.Timestamp(rows["date"].iloc[index], tz="UTC").isoformat()


def test_a_shift_in_pushed_data_alerts_the_webhook_and_retrains(
    loop: Loop, webhook: tuple[str, list[dict]]
) -> None:
    repo, config = loop.repo, loop.config
    last_ingested = pd.Timestamp(load_history(config, repo.home)["event_timestamp"].max())
    server, url = start_server(repo, config)
    try:
        before = _ask(url, last_ingested.isoformat())
        _wait_for_log(config, repo.home, 2)
        baseline = assess(config, repo.home)
        assert baseline.alerts == []  # served windows look like the recent training data
        # The actuals of those forecasts arrive; then station 2's HUFL and MUFL jump to a new
        # regime (e.g. a changed sensor calibration); station 1's stay as they were.
        arriving = {s: rows.iloc[:24] for s, rows in loop.held_back.items()}
        push(repo, pd.concat(arriving.values(), ignore_index=True), "actuals")
        shifted = {s: rows.iloc[24:].copy() for s, rows in loop.held_back.items()}
        shifted[2][SHIFTED] = shifted[2][SHIFTED] * 3 + 10
        push(repo, pd.concat(shifted.values(), ignore_index=True), "shifted rows")
        for index in range(-30, 0):  # the last 30 hours, each from the shifted online windows
            _ask(url, _hour(loop.held_back[1], index))
    finally:
        stop_server(server)  # also flushes the request log

    logged = read_served(monitoring_engine(request_log_url(config, repo.home)))
    assert before["request_id"] in set(logged["request_id"]) and len(logged) == 62
    receiver, received = webhook
    result = _skewless(
        repo,
        "monitor",
        "--retrain",
        "--set",
        f"monitoring.webhook={receiver}",
        "--set",
        "monitoring.retrain.promote_staging=true",
    )
    assert result.returncode == 2, result.stdout + result.stderr  # 2: alerts fired

    (payload,) = received
    drifted = {a["subject"]: a["entities"] for a in payload["alerts"] if a["rule"] == "drift_psi"}
    assert drifted == {variable: ["2"] for variable in SHIFTED}  # station 1 did not move
    stored = AlertLog(monitoring_engine(request_log_url(config, repo.home))).read()
    assert set(stored["subject"]) >= set(SHIFTED)

    registry = ModelRegistry(config.tracking.uri)
    retrained = registry.version_of(config.model_name, "latest")
    assert retrained > loop.production
    assert registry.version_of(config.model_name, "production") == loop.production
    metrics = {v.version: v.metrics for v in registry.versions(config.model_name)}
    assert metrics[retrained]["mse"] < metrics[loop.production]["mse"]  # NLinear beats naive
    assert registry.version_of(config.model_name, "staging") == retrained
    assert f"version {retrained} registered and staged" in result.stdout

    # Every logged forecast step whose hour has been recorded met its actual: all 2 x 24 of
    # the forecasts made before the push, and the earlier steps of the later ones.
    assessment = assess(config, repo.home)
    outcomes = assessment.observations.outcomes
    assert set(outcomes[VERSION]) == {loop.production}
    assert (outcomes["request_id"] == before["request_id"]).sum() == 48
    later = 2 * sum(range(1, 24)) + 2 * 24 * 6  # the last 30 requests end 0..29 hours early
    assert len(outcomes) == 48 + later
    first = outcomes[(outcomes["entity"] == 1) & (outcomes["step"] == 1)].iloc[0]
    assert first["actual"] == pytest.approx(loop.held_back[1]["OT"].iloc[0], rel=1e-6)
    assert first["forecast"] == before["predictions"][0]["forecast"]["OT"][0]
    (row,) = assessment.accuracy.to_dict("records")
    assert row["steps"] == len(outcomes) and 0 <= row["coverage_80"] <= row["coverage_95"] <= 1
    assert row["backtest_mse"] == pytest.approx(metrics[loop.production]["mse"])
    drift, calm = assessment.drift.set_index("variable"), baseline.drift.set_index("variable")
    assert (drift.loc[SHIFTED, "psi"] > 5 * calm.loc[SHIFTED, "psi"]).all()
    assert abs(drift.loc["OT", "psi"] - calm.loc["OT", "psi"]) < 0.1
    own = assessment.entity_drift.set_index(["entity", "variable"])["psi"]
    assert (own.loc[2].loc[SHIFTED] > 0.25).all() and (own.loc[1].loc[SHIFTED] < 0.25).all()

    _report_in_chromium(repo)


def _wait_for_log(config: SkewlessConfig, home: Path, records: int) -> None:
    engine = monitoring_engine(request_log_url(config, home))
    deadline = time.monotonic() + 30
    while len(read_served(engine)) < records:
        assert time.monotonic() < deadline, "the request log was not written"
        time.sleep(0.1)


def _ask(url: str, time_point: str) -> dict:
    answer = httpx.post(
        f"{url}/predict/feast/batch",
        json={"entities": [1, 2], "time_point": time_point},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    assert all("error" not in p or p["error"] is None for p in answer.json()["predictions"])
    return answer.json()


def _skewless(repo: FeastRepo, *arguments: str) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).parent / "skewless"),
        arguments[0],
        str(ETTH_CONFIG),
        "--set",
        f"feature_store.project={repo.config.project}",
        "--set",
        f"tracking.uri={repo.config.tracking.uri}",
        *arguments[1:],
    ]
    env = {**os.environ, "SKEWLESS_HOME": str(repo.home)}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _report_in_chromium(repo: FeastRepo) -> None:
    """The report renders in a real browser: every section and plot is on the page, and a
    screenshot of it stays in test-artifacts/."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "the report test needs Chromium (Debian: apt-get install chromium)"
    page = repo.home.parent / "report.html"
    result = _skewless(repo, "report", "--out", str(page))
    assert result.returncode == 0, result.stderr
    headless = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [*headless, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    for section in ("Alerts", "Forecast against actual", "Input drift", "Serving latency"):
        assert f"<h2>{section}" in dom
    assert dom.count("<img") == 4 and "HUFL" in dom and "drifted" in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    subprocess.run(
        [*headless, f"--screenshot={shot}", "--window-size=1200,2600", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 50_000  # a rendered page of plots, not a blank one
