"""Serving latency and throughput, side by side in one run, on loopback.

Closed-loop load (each client sends its next request when the previous answer arrives) at
concurrency 1, 8 and 32, for 1, 10 and 100 entities per request, against:
- `skewless serve --engine fastapi`: POST /predict/feast/batch (windows from the online store),
  with its request log on (the default) and off, to show what logging every forecast costs;
- `skewless serve --engine ray`: the same contract through Ray Serve (ingress, features,
  preprocessing and model deployments);
- `mlflow models serve` on the same registered model: POST /invocations with the raw rows
  (what a client without the feature store would have to send);
- a bare FastAPI endpoint returning a constant under the same uvicorn: the ceiling of the machine;
- a Ray Serve ingress that calls a no-op deployment three times, with `serve`'s Ray settings:
  the floor of the Ray Serve path.

Two goals of issue 18 are judged in the same run, as ratios (hosts differ from day to day):
- scaling: `serve --workers 2` gives at least 1.6x the throughput of one worker at concurrency 8
  with 10 entities per request;
- load shedding: at concurrency 64, the p99 of the requests one worker accepts (the rest are
  refused at once over `serving.max_in_flight`) stays within 2x of its p99 at concurrency 8.

The model is the shipped config's NLinear trained on ETTh1 + ETTh2; the entities are synthetic
copies of the stations in a SQLite online store. Results: benchmarks/results/serving.json.

    python benchmarks/serving.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from machine import report
from skewless.core.config import load_config
from skewless.features.ingest import ingest, ingest_frames
from skewless.features.materialize import materialize
from skewless.features.repo import FeastRepo
from skewless.registry.registry import ModelRegistry
from skewless.training.pipeline import open_history
from skewless.training.release import train_and_register
from synthetic import ROOT, VARIABLES, synthetic_rows

RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
CONFIG = ROOT / "configs" / "etth.yaml"
ENTITY_COUNTS = (1, 10, 100)
CONCURRENCY = (1, 8, 32)
SATURATING = 64  # the load-shedding cell: far above serving.max_in_flight (16)
FASTAPI = "fastapi /predict/feast/batch"
TWO_WORKERS = "fastapi --workers 2"
LOOKBACK = 336
TIME_POINT = "2018-06-26T19:00:00Z"
BIN = Path(sys.executable).parent
CEILING_APP = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.post("/constant")
def constant() -> dict:
    return {"forecast": [0.0] * 24}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""
# Ray Serve's own floor: the ingress calls a no-op deployment three times in a row, as skewless's
# ingress calls its features, preprocessing and model deployments; same settings as `serve`.
RAY_FLOOR_APP = """
import os, signal, sys, threading
from skewless.serving.ray_launch import ray_serve_settings
os.environ.update({"RAY_AUTH_MODE": "disabled", **ray_serve_settings()})
import ray
from fastapi import FastAPI
from ray import serve
app = FastAPI()
@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Stage:
    def run(self, value: int) -> int:
        return value
@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, stage) -> None:
        self.stage = stage
    @app.post("/constant")
    def constant(self) -> dict:
        value = 0
        for _ in range(3):
            value = self.stage.run.remote(value).result()
        return {"forecast": [float(value)] * 24}
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
ray.init(address="local", include_dashboard=False, logging_level="WARNING")
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
serve.run(Ingress.bind(Stage.bind()), route_prefix="/")
stop.wait()
serve.shutdown()
ray.shutdown()
"""


def prepare(home: Path) -> tuple[str, pd.DataFrame]:
    """Train and register on the real stations; serve synthetic entities from another project.
    Returns the tracking URI and the raw rows of every synthetic entity."""
    uri = f"sqlite:///{home / 'mlflow.db'}"
    trained = FeastRepo(
        load_config(CONFIG, ["feature_store.project=bench_train"], environ={}), home
    )
    ingest(trained)
    config = trained.config.model_copy(
        update={"tracking": trained.config.tracking.model_copy(update={"uri": uri})}
    )
    release = train_and_register(config, open_history(config, home), home)
    ModelRegistry(uri).promote(config.model_name, release.version, "production", "mse")
    served = FeastRepo(load_config(CONFIG, ["feature_store.project=bench_serve"], environ={}), home)
    rows = synthetic_rows(max(ENTITY_COUNTS), LOOKBACK + 24)
    ingest_frames(served, [("synthetic", rows)])
    materialize(served)
    return uri, rows


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(command: list[str], env: dict[str, str], probe: str, log: Path) -> subprocess.Popen:
    """Start a server, its output to ``log`` (a pipe nobody reads would fill and block it)."""
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while True:
        try:
            httpx.request(*probe.split(" ", 1), timeout=2)
            return process
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                tail = log.read_text()[-2000:]
                raise RuntimeError(f"{command[:3]} did not start: {tail}") from None
            time.sleep(0.5)


def warm_up(url: str, body: bytes, seconds: float = 120) -> None:
    """Until the server answers 200: Ray's stage replicas load the model on first use."""
    deadline = time.monotonic() + seconds
    headers = {"Content-Type": "application/json"}
    while httpx.post(url, content=body, headers=headers, timeout=120).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} never answered 200 while warming up")
        time.sleep(0.5)


def closed_loop(url: str, body: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    """Each client loops until the deadline; latencies of the answered (200) requests, and the
    counts of those shed (503 at once) and failed otherwise."""
    latencies: list[float] = []
    failures = shed = 0
    lock = threading.Lock()
    headers = {"Content-Type": "application/json"}

    def client() -> None:
        nonlocal failures, shed
        with httpx.Client(timeout=120) as http:
            http.post(url, content=body, headers=headers)  # warm the connection
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                began = time.perf_counter()
                status = http.post(url, content=body, headers=headers).status_code
                elapsed = time.perf_counter() - began
                with lock:
                    if status == 200:
                        latencies.append(elapsed)
                    shed += status == 503
                    failures += status not in (200, 503)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "shed": shed,
        "failed": failures,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "throughput_rps": len(ordered) / wall,
    }


def show(cell: str, result: dict[str, float]) -> None:
    """One line per measured cell, as it is measured."""
    print(
        f"{cell}: p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
        f"{result['throughput_rps']:7.1f} req/s  ({result['shed']} shed, "
        f"{result['failed']} failed)",
        flush=True,
    )


def raw_rows_body(rows: pd.DataFrame, entities: int) -> bytes:
    chosen = rows[rows["station_id"] <= entities].groupby("station_id").tail(LOOKBACK)
    frame = pd.DataFrame(
        {
            "station_id": chosen["station_id"],
            "event_timestamp": pd.to_datetime(chosen["date"]).dt.strftime("%Y-%m-%dT%H:%M:%S"),
            **{v: chosen[v] for v in VARIABLES},
        }
    )
    return json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split"))}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="load per cell")
    args = parser.parse_args()
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        uri, rows = prepare(home)
        env = {
            **os.environ,
            "SKEWLESS_HOME": str(home),
            "MLFLOW_TRACKING_URI": uri,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        }
        port = free_port()
        local = f"http://127.0.0.1:{port}"
        serve_args = ["--set", "feature_store.project=bench_serve", "--set", f"tracking.uri={uri}"]
        skewless = [str(BIN / "skewless"), "serve", str(CONFIG), "--port", str(port), *serve_args]
        mlflow = [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/etth_forecaster@production",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        batches = {
            n: json.dumps({"entities": list(range(1, n + 1)), "time_point": TIME_POINT}).encode()
            for n in ENTITY_COUNTS
        }
        every_cell = [(n, c) for n in ENTITY_COUNTS for c in CONCURRENCY]
        # One server at a time, so none pays for another's idle processes (Ray's are many).
        targets = [
            (
                "ceiling",
                [sys.executable, "-c", CEILING_APP, str(port)],
                "POST /constant",
                {0: b"{}"},
                "/constant",
                [(0, c) for c in CONCURRENCY],
            ),
            (
                "ray floor: ingress + 3 no-op handle calls",
                [sys.executable, "-c", RAY_FLOOR_APP, str(port)],
                "POST /constant",
                {0: b"{}"},
                "/constant",
                [(0, c) for c in CONCURRENCY],
            ),
            (
                FASTAPI,
                [*skewless, "--engine", "fastapi"],
                "GET /health",
                batches,
                "/predict/feast/batch",
                [*every_cell, (10, SATURATING)],
            ),
            (
                "fastapi, request log off",
                [*skewless, "--engine", "fastapi", "--set", "monitoring.request_log.enabled=false"],
                "GET /health",
                batches,
                "/predict/feast/batch",
                every_cell,
            ),
            (
                TWO_WORKERS,
                [*skewless, "--engine", "fastapi", "--workers", "2"],
                "GET /health",
                batches,
                "/predict/feast/batch",
                [(10, c) for c in CONCURRENCY],
            ),
            (
                "ray /predict/feast/batch",
                [*skewless, "--engine", "ray"],
                "GET /health",
                batches,
                "/predict/feast/batch",
                every_cell,
            ),
            (
                "mlflow models serve /invocations (raw rows)",
                mlflow,
                "GET /ping",
                {n: raw_rows_body(rows, n) for n in ENTITY_COUNTS},
                "/invocations",
                every_cell,
            ),
        ]
        for server, command, probe, bodies, path, cells in targets:
            method, probe_path = probe.split(" ")
            process = start(command, env, f"{method} {local}{probe_path}", home / "server.log")
            try:
                warm_up(f"{local}{path}", max(bodies.items())[1])
                for entities, concurrency in cells:
                    body = bodies[entities]
                    result = closed_loop(f"{local}{path}", body, concurrency, args.seconds)
                    records.append(
                        {"server": server, "entities": entities, "concurrency": concurrency}
                        | result
                    )
                    show(
                        f"{server:45s} entities {entities:3d} concurrency {concurrency:2d}", result
                    )
            finally:
                process.terminate()
                process.wait(timeout=60)
    results = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds_per_cell": args.seconds,
        "results": records,
    }
    report(goals(records), results, RESULTS)


def goals(records: list[dict[str, Any]]) -> list[dict[str, object]]:
    """Issue 18's scaling and load-shedding goals, each a ratio of cells of this run."""

    def cell(server: str, concurrency: int) -> dict[str, Any]:
        (found,) = [
            r
            for r in records
            if (r["server"], r["entities"], r["concurrency"]) == (server, 10, concurrency)
        ]
        return found

    one, two = cell(FASTAPI, 8), cell(TWO_WORKERS, 8)
    scaling = two["throughput_rps"] / one["throughput_rps"]
    saturated = cell(FASTAPI, SATURATING)
    tail = saturated["p99_ms"] / one["p99_ms"]
    return [
        {
            "goal": "2 FastAPI workers >= 1.6x the throughput of 1 (concurrency 8, 10 entities)",
            "measured": f"{scaling:.2f}x ({two['throughput_rps']:.1f} vs "
            f"{one['throughput_rps']:.1f} req/s)",
            "pass": scaling >= 1.6,
        },
        {
            "goal": f"at concurrency {SATURATING}, p99 of accepted requests <= 2x the p99 at 8",
            "measured": f"{tail:.2f}x ({saturated['p99_ms']:.1f} vs {one['p99_ms']:.1f} ms; "
            f"{saturated['shed']:.0f} shed)",
            "pass": tail <= 2.0,
        },
    ]


if __name__ == "__main__":
    main()
