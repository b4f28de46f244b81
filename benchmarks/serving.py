"""Serving latency and throughput, and issue 18's goals judged as ratios inside one run.

Closed-loop load on loopback (each client sends its next request when the previous answer
arrives) at concurrency 1 and 8, for 1, 10, 100 and `serving.max_entities` (1,000) entities per
request, against:
- the ceiling: a bare FastAPI endpoint returning a constant under the same uvicorn;
- the in-process cost: `ForecastService.predict_entities` called directly in this process (the
  service core with its request log, no HTTP);
- `skewless serve --engine fastapi`: POST /predict/feast/batch, with its request log on (the
  default) and off, and with `--workers 2`;
- per Ray Serve topology (`RAY_TOPOLOGIES`): its floor, an ingress awaiting a chain of as many
  async no-op deployments as the topology has stages, each awaiting the next (as skewless's
  stages call one another), with `serve`'s Ray settings; the same chain with each hop answering
  an array of the size of its stage's answer at 10 entities (the floor with the payloads); and
  `skewless serve --engine ray` in that topology with 1 and 2 replicas of the deployment that
  runs the model (every other deployment pinned to one replica, so autoscaling never changes
  a cell);
- peers: `mlflow models serve` on the same registered version, sent the raw rows (what a client
  without a feature store would send), and the two-hop setup a user would build without
  skewless: the client asks Feast's own feature server (`feast serve`) for the same online
  windows, unpacks them into rows and posts those to `mlflow models serve`.

Where skewless answers, each cell also records the mean time of each stage (fetch, prepare,
forecast) where it ran, from the server's skewless_stage_seconds: what Ray's replicas spend on
the work itself, beside what the hops cost.

Everything but Ray runs at once and is measured in interleaved rounds (each cell in ROUNDS
slices, one after another cell's), so that the cells a goal compares see the same load from
whatever else runs on the machine; each Ray server runs alone.

The goals, each a ratio of cells of this run (hosts differ from day to day), print PASS/FAIL:
- FastAPI overhead at 10 and 100 entities: p50 <= in-process p50 + 2x the ceiling's p50, and
  p99 <= 1.5x the in-process p99 + the ceiling's p99 (concurrency 1);
- Ray overhead, per topology: p50 at 10 entities <= its floor's p50 + 1.2x the in-process p50;
- scaling at concurrency 8 with 10 entities: 2 FastAPI workers >= 1.6x the throughput of 1; per
  topology, 2 model replicas >= 1.4x the throughput of 1;
- peers: skewless (FastAPI) >= 3x faster at p50 than Feast's feature server + mlflow at 10
  entities;
- batches of `serving.max_entities` answered by both servers.
Load shedding at concurrency 64 is benchmarks/shedding.py's.

The model is the shipped config's NLinear trained on ETTh1 + ETTh2; the entities are synthetic
copies of the stations in a SQLite online store. Results: benchmarks/results/serving.json.

    python benchmarks/serving.py [--seconds 4] [--only ceiling,in-process,two hops]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import inspect
import json
import os
import pickle
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from machine import report
from servers import JSON, Load, Send, closed_loop, free_port, post, running, show, warm_up
from skewless.core.config import SkewlessConfig, load_config
from skewless.core.schema import EVENT_TS
from skewless.features.ingest import ingest, ingest_frames
from skewless.features.materialize import materialize
from skewless.features.repo import WINDOW_FEATURE, WINDOW_VIEW, FeastRepo
from skewless.features.window_view import unpack_window, windows_frame
from skewless.registry.registry import ModelRegistry
from skewless.serving.service import ForecastService
from skewless.serving.stages import OnlineWindowFetcher, forecast_prepared, prepare_fetched
from skewless.training.pipeline import open_history
from skewless.training.release import train_and_register
from synthetic import ROOT, VARIABLES, synthetic_rows

RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
STAGE_SECONDS = "skewless_stage_seconds"
CONFIG = ROOT / "configs" / "etth.yaml"
MAX_ENTITIES = load_config(CONFIG, environ={}).serving.max_entities
ENTITY_COUNTS = (1, 10, 100, MAX_ENTITIES)
PEER_ENTITY_COUNTS = (1, 10, 100)  # raw rows of 1,000 entities would be a 40 MB body
CONCURRENCY = (1, 8)
SCALING = 8  # the concurrency of the scaling goals
GOAL_ENTITIES = 10
Cell = tuple[int, int]  # (entities, concurrency); 0 entities: a constant endpoint
EVERY_CELL = [(n, c) for n in ENTITY_COUNTS for c in CONCURRENCY]
GOAL_CELLS = [(GOAL_ENTITIES, c) for c in CONCURRENCY]
PEER_CELLS = [(n, c) for n in PEER_ENTITY_COUNTS for c in CONCURRENCY]
CONSTANT_CELLS = [(0, c) for c in CONCURRENCY]
KEY = "station_id"
LOOKBACK = 336
TIME_POINT = "2018-06-26T19:00:00Z"
BIN = Path(sys.executable).parent
SERVED_PROJECT = "feature_store.project=bench_serve"
WARM_SECONDS = 2.0  # load before the measured cells, so every replica has loaded its model
ROUNDS = 4  # each cell measured in this many slices, interleaved with the other cells

CEILING = "ceiling: bare FastAPI constant"
IN_PROCESS = "in-process ForecastService.predict_entities"
FASTAPI = "fastapi /predict/feast/batch"
FASTAPI_LOG_OFF = "fastapi, request log off"
TWO_WORKERS = "fastapi --workers 2"
MLFLOW = "mlflow models serve /invocations (raw rows)"
FEAST_MLFLOW = "feast serve + mlflow models serve (two hops)"

CEILING_APP = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.post("/constant")
def constant() -> dict:
    return {"forecast": [0.0] * 24}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""
# Ray Serve's own floor for a topology: the ingress awaits a chain of as many no-op deployments
# as the topology's stages, each awaiting the next, as skewless's stages call one another; same
# Ray settings as `serve`. Given reply sizes (bytes, one per stage, innermost first), each stage
# answers an array of its size instead of nothing: the floor with the stages' payloads.
RAY_FLOOR_APP = """
import os, signal, sys, threading
from skewless.serving.ray_launch import ray_serve_settings
os.environ.update({"RAY_AUTH_MODE": "disabled", **ray_serve_settings()})
import numpy as np
import ray
from fastapi import FastAPI
from ray import serve
app = FastAPI()
@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Stage:
    def __init__(self, inner, reply_bytes: int) -> None:
        self.inner = inner
        self.reply = np.ones(reply_bytes, np.uint8) if reply_bytes else 0
    async def run(self, value: int):
        if self.inner is not None:
            await self.inner.run.remote(value)
        return self.reply
@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, stage) -> None:
        self.stage = stage
    @app.post("/constant")
    async def constant(self) -> dict:
        await self.stage.run.remote(0)
        return {"forecast": [0.0] * 24}
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
ray.init(address="local", include_dashboard=False, logging_level="WARNING")
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
stage = None
for i, reply_bytes in enumerate(sys.argv[2].split(",")):
    stage = Stage.options(name=f"Stage{i}").bind(stage, int(reply_bytes))
serve.run(Ingress.bind(stage), route_prefix="/")
stop.wait()
serve.shutdown()
ray.shutdown()
"""


@dataclass(frozen=True)
class Topology:
    """A layout of the Ray Serve application, as the benchmark runs and judges it."""

    name: str
    # what each deployment behind the ingress answers, innermost first: its floor's hops
    replies: tuple[str, ...]
    deployments: tuple[str, ...]  # its `serving.ray` deployments, each pinned to fixed replicas
    scaled: str  # the deployment that runs the model: 1 or 2 replicas in the scaling goal
    settings: tuple[str, ...] = ()  # the `--set` overrides that select it

    @property
    def hops(self) -> int:
        return len(self.replies)


RAY_TOPOLOGIES = (
    Topology(
        "staged",
        replies=("fetched", "prepared", "forecasted"),
        deployments=("ingress", "features", "preprocessing", "model"),
        scaled="model",
    ),
    Topology(  # the Fused deployment is sized by serving.ray.model
        "fused",
        replies=("forecasted",),
        deployments=("ingress", "model"),
        scaled="model",
        settings=("serving.ray.topology=fused",),
    ),
)

# entities -> one request of that many entities
Requests = Callable[[int], Send]
# stage -> (seconds, requests), summed by skewless_stage_seconds since a server started
StageTotals = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Row:
    """A group of rows of the table: what one request of n entities is, the (entities,
    concurrency) cells measured, and labels that go into each of its records."""

    name: str
    requests: Requests
    cells: Sequence[Cell]
    labels: Mapping[str, object] = field(default_factory=dict)
    stages: Callable[[], StageTotals] | None = None  # where the time went, as the server counts


@dataclass(frozen=True)
class Phase:
    """Servers (and in-process services, ``beside``) running at once, and the rows measured on
    them in interleaved rounds."""

    servers: list[Server]
    rows: list[Row]
    beside: list[AbstractContextManager[object]] = field(default_factory=list)


@dataclass(frozen=True)
class Bench:
    """What every target shares: the home, the served config, the raw rows, the environment."""

    home: Path
    config: SkewlessConfig
    rows: pd.DataFrame
    env: dict[str, str]

    @property
    def overrides(self) -> list[str]:
        return [SERVED_PROJECT, f"tracking.uri={self.config.tracking.uri}"]


def prepare(home: Path) -> Bench:
    """Train and register on the real stations; serve synthetic entities from another project."""
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
    served = FeastRepo(
        load_config(CONFIG, [SERVED_PROJECT, f"tracking.uri={uri}"], environ={}), home
    )
    rows = synthetic_rows(max(ENTITY_COUNTS), LOOKBACK + 24)
    ingest_frames(served, [("synthetic", rows)])
    materialize(served)
    env = {
        **os.environ,
        "SKEWLESS_HOME": str(home),
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    return Bench(home, served.config, rows, env)


# -- what is sent -----------------------------------------------------------------------------


def batch_body(entities: int) -> bytes:
    return json.dumps({"entities": list(range(1, entities + 1)), "time_point": TIME_POINT}).encode()


def invocations_body(frame: pd.DataFrame) -> bytes:
    """Raw rows (entity, timestamp, variables) as mlflow's /invocations takes them."""
    rows = frame[[KEY, EVENT_TS, *VARIABLES]].assign(
        **{EVENT_TS: frame[EVENT_TS].dt.strftime("%Y-%m-%dT%H:%M:%S")}
    )
    return b'{"dataframe_split": ' + rows.to_json(orient="split", index=False).encode() + b"}"


def raw_rows_body(rows: pd.DataFrame, entities: int) -> bytes:
    """The last LOOKBACK raw rows of the first ``entities`` synthetic entities."""
    chosen = rows[rows[KEY] <= entities].groupby(KEY).tail(LOOKBACK)
    return invocations_body(chosen.assign(**{EVENT_TS: pd.to_datetime(chosen["date"])}))


def feast_then_mlflow(feast: str, mlflow: str, variables: tuple[str, ...], entities: int) -> Send:
    """What a client of Feast's feature server and `mlflow models serve` does for one forecast
    of many entities: read their online windows (one Bytes feature each, base64 in JSON), cut
    them at the time point into LOOKBACK raw rows, and post those to /invocations."""
    ids = list(range(1, entities + 1))
    features = json.dumps({"features": [f"{WINDOW_VIEW}:{WINDOW_FEATURE}"], "entities": {KEY: ids}})
    point = datetime.fromisoformat(TIME_POINT)

    def send(http: httpx.Client) -> int:
        answer = http.post(f"{feast}/get-online-features", content=features, headers=JSON)
        if answer.status_code != 200:
            return answer.status_code
        found = answer.json()
        names = found["metadata"]["feature_names"]
        blobs = found["results"][names.index(WINDOW_FEATURE)]["values"]
        windows = [
            unpack_window(base64.b64decode(blob), entity, variables).until(point)
            for entity, blob in zip(ids, blobs, strict=True)
        ]
        body = invocations_body(windows_frame([w.last(LOOKBACK) for w in windows], KEY))
        return http.post(f"{mlflow}/invocations", content=body, headers=JSON).status_code

    return send


# -- the targets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A server process: its command (its port already in it) and the path probed until it
    answers."""

    command: list[str]
    port: int
    probe: str = "GET /health"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serving(bench: Bench, servers: list[Server]) -> Iterator[None]:
    """``servers`` started (all at once) and answering, until the block ends."""
    with ExitStack() as stack:
        for server in servers:
            method, path = server.probe.split(" ")
            log = bench.home / f"server-{server.port}.log"
            stack.enter_context(
                running(server.command, bench.env, f"{method} {server.url}{path}", log)
            )
        yield


class InProcess:
    """The service core in this process: every stage, and the request log, without HTTP. Open
    (``with``), it is the requests of its row. Its entry point is a coroutine (the servers
    await it) or a plain call: either is measured."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench

    def __enter__(self) -> InProcess:
        # What training and ingestion left in this process stays out of every garbage
        # collection from now on, as a server process never had it.
        gc.collect()
        gc.freeze()
        self.service = ForecastService(self.bench.config, self.bench.home)
        self.loop = asyncio.new_event_loop()
        return self

    def __exit__(self, *_: object) -> None:
        self.service.close()
        self.loop.close()

    def stages(self) -> StageTotals:
        return stage_totals(self.service.metrics.registry.collect())

    def __call__(self, entities: int) -> Send:
        ids = list(range(1, entities + 1))

        def send(_: httpx.Client) -> int:
            served = self.service.predict_entities(ids, TIME_POINT)
            if inspect.isawaitable(served):
                self.loop.run_until_complete(served)
            return 200

        return send


def stage_totals(families: Iterable[Metric]) -> StageTotals:
    """skewless_stage_seconds' sum and count per stage."""
    totals: dict[str, tuple[float, float]] = {}
    for family in families:
        if family.name != STAGE_SECONDS:
            continue
        values = {
            (s.labels["stage"], s.name.removeprefix(STAGE_SECONDS)): s.value for s in family.samples
        }
        for stage in {stage for stage, _ in values}:
            totals[stage] = (values[stage, "_sum"], values[stage, "_count"])
    return totals


def scraped(server: Server) -> Callable[[], StageTotals]:
    """The server's stage totals, from its /metrics."""

    def stages() -> StageTotals:
        text = httpx.get(f"{server.url}/metrics").text
        return stage_totals(text_string_to_metric_families(text))

    return stages


def constant(server: Server) -> Requests:
    return lambda _: post(f"{server.url}/constant", b"{}")


def batches(server: Server) -> Requests:
    return lambda entities: post(f"{server.url}/predict/feast/batch", batch_body(entities))


def skewless_serve(bench: Bench, *options: str) -> Server:
    port = free_port()
    overrides = [f"--set={o}" for o in bench.overrides]
    command = [str(BIN / "skewless"), "serve", str(CONFIG), "--port", str(port), *overrides]
    return Server([*command, *options], port)


def mlflow_serve() -> Server:
    port = free_port()
    model = "models:/etth_forecaster@production"
    command = [str(BIN / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local"]
    return Server([*command, "--host", "127.0.0.1", "--port", str(port)], port, "GET /ping")


def feast_serve(bench: Bench) -> Server:
    """Feast's own feature server on the served project's repo: no access log, and no worker
    restart every 1,000 requests (its default)."""
    port = free_port()
    command = [str(BIN / "feast"), "-c", str(FeastRepo(bench.config, bench.home).folder)]
    options = ["--no-access-log", "--max-requests", "0"]
    return Server([*command, "serve", "--host", "127.0.0.1", "--port", str(port), *options], port)


def python_app(source: str, *arguments: object) -> Server:
    port = free_port()
    command = [sys.executable, "-c", source, str(port), *map(str, arguments)]
    return Server(command, port, "POST /constant")


def ray_serve(bench: Bench, topology: Topology, replicas: int) -> Server:
    """skewless on Ray in ``topology``, with ``replicas`` of the deployment that runs the model
    and one of every other."""
    settings = [f"--set={setting}" for setting in topology.settings]
    for deployment in topology.deployments:
        count = replicas if deployment == topology.scaled else 1
        settings.append(
            f"--set=serving.ray.{deployment}={{min_replicas: {count}, max_replicas: {count}}}"
        )
    return skewless_serve(bench, "--engine", "ray", *settings)


def ray_floor_name(topology: Topology) -> str:
    return f"ray floor, {topology.name}: ingress + {topology.hops} no-op hops"


def payload_floor_name(topology: Topology) -> str:
    return f"ray floor, {topology.name}: ingress + {topology.hops} hops answering stage payloads"


def ray_name(topology: Topology, replicas: int) -> str:
    return f"ray {topology.name} /predict/feast/batch, {topology.scaled} x{replicas}"


def stage_replies(bench: Bench) -> dict[str, int]:
    """The pickled size of each stage's answer to a request of GOAL_ENTITIES entities: what
    the floor with the stages' payloads answers from each hop."""
    bundle = ModelRegistry(bench.config.tracking.uri).load_bundle(
        bench.config.model_name, "production"
    )
    point = datetime.fromisoformat(TIME_POINT)
    fetched = OnlineWindowFetcher(bench.config, bench.home).fetch(
        list(range(1, GOAL_ENTITIES + 1)), point, bundle.spec.lookback
    )
    prepared = prepare_fetched(bundle, fetched)
    answers = {"fetched": fetched, "prepared": prepared}
    answers["forecasted"] = forecast_prepared(bundle, prepared)
    return {stage: len(pickle.dumps(answer, protocol=5)) for stage, answer in answers.items()}


def ray_phases(bench: Bench, topology: Topology, replies: Mapping[str, int]) -> list[Phase]:
    """The topology's floor, without and with its stages' payloads, then skewless on it with
    1 and 2 model replicas: one at a time, two Ray clusters on two cores would each slow the
    other."""
    floor = python_app(RAY_FLOOR_APP, ",".join("0" for _ in topology.replies))
    sizes = [replies[stage] for stage in topology.replies]
    loaded = python_app(RAY_FLOOR_APP, ",".join(map(str, sizes)))
    one, two = ray_serve(bench, topology, 1), ray_serve(bench, topology, 2)
    labels = {"topology": topology.name}
    return [
        Phase([floor], [Row(ray_floor_name(topology), constant(floor), CONSTANT_CELLS, labels)]),
        Phase(
            [loaded],
            [
                Row(
                    payload_floor_name(topology),
                    constant(loaded),
                    [(0, 1)],
                    {**labels, "reply_bytes": sizes},
                )
            ],
        ),
        Phase(
            [one],
            [
                Row(
                    ray_name(topology, 1),
                    batches(one),
                    EVERY_CELL,
                    {**labels, "model_replicas": 1},
                    scraped(one),
                )
            ],
        ),
        Phase(
            [two],
            [
                Row(
                    ray_name(topology, 2),
                    batches(two),
                    GOAL_CELLS,
                    {**labels, "model_replicas": 2},
                    scraped(two),
                )
            ],
        ),
    ]


def one_machine(bench: Bench) -> Phase:
    """Everything that is not Ray, started together and measured in interleaved rounds, so that
    each goal's cells see the same load from whatever else runs on the machine: the ceiling,
    the in-process service, skewless's FastAPI server (1 worker, request log off, 2 workers)
    and the peers."""
    ceiling = python_app(CEILING_APP)
    fastapi = skewless_serve(bench, "--engine", "fastapi")
    log_off = skewless_serve(
        bench, "--engine", "fastapi", "--set=monitoring.request_log.enabled=false"
    )
    workers = skewless_serve(bench, "--engine", "fastapi", "--workers", "2")
    mlflow, feast = mlflow_serve(), feast_serve(bench)
    local = InProcess(bench)
    variables = tuple(bench.config.data.window_columns)

    def raw_rows(entities: int) -> Send:
        return post(f"{mlflow.url}/invocations", raw_rows_body(bench.rows, entities))

    two_hops = partial(feast_then_mlflow, feast.url, mlflow.url, variables)
    rows = [
        Row(CEILING, constant(ceiling), CONSTANT_CELLS),
        Row(IN_PROCESS, local, [(n, 1) for n in ENTITY_COUNTS], stages=local.stages),
        Row(FASTAPI, batches(fastapi), EVERY_CELL, stages=scraped(fastapi)),
        Row(FASTAPI_LOG_OFF, batches(log_off), [(10, 1), (100, 1)], stages=scraped(log_off)),
        Row(TWO_WORKERS, batches(workers), GOAL_CELLS, stages=scraped(workers)),
        Row(MLFLOW, raw_rows, PEER_CELLS),
        Row(FEAST_MLFLOW, two_hops, PEER_CELLS),
    ]
    return Phase([ceiling, fastapi, log_off, workers, mlflow, feast], rows, beside=[local])


def phases(bench: Bench) -> list[Phase]:
    replies = stage_replies(bench)
    on_ray = (p for t in RAY_TOPOLOGIES for p in ray_phases(bench, t, replies))
    return [one_machine(bench), *on_ray]


# -- measuring and judging ----------------------------------------------------------------------


def measure(bench: Bench, phase: Phase, seconds: float, only: list[str]) -> list[dict[str, Any]]:
    """Every cell of the phase's rows (those named in ``only``, if any), after warming each row
    up, in ROUNDS interleaved slices of ``seconds / ROUNDS``."""
    rows = [r for r in phase.rows if not only or any(part in r.name for part in only)]
    if not rows:
        return []
    loads: dict[tuple[str, Cell], Load] = defaultdict(Load)
    spent: dict[tuple[str, Cell], StageTotals] = defaultdict(dict)
    with serving(bench, phase.servers), ExitStack() as stack:
        for service in phase.beside:
            stack.enter_context(service)
        for row in rows:
            entities = [n for n, _ in row.cells]
            typical = GOAL_ENTITIES if GOAL_ENTITIES in entities else entities[0]
            warm_up(row.requests(typical))
            closed_loop(row.requests(typical), max(c for _, c in row.cells), WARM_SECONDS)
        for _ in range(ROUNDS):
            for row in rows:
                for entities, concurrency in row.cells:
                    sent = row.requests(entities)
                    before = row.stages() if row.stages else {}
                    loads[row.name, (entities, concurrency)] += closed_loop(
                        sent, concurrency, seconds / ROUNDS
                    )
                    after = row.stages() if row.stages else {}
                    add_stages(spent[row.name, (entities, concurrency)], before, after)
    records = []
    for row in rows:
        for entities, concurrency in row.cells:
            result = loads[row.name, (entities, concurrency)].summary()
            stage_ms = {
                stage: round(1000 * total / count, 2)
                for stage, (total, count) in spent[row.name, (entities, concurrency)].items()
                if count
            }
            show(f"{row.name:50s} entities {entities:4d} concurrency {concurrency:2d}", result)
            if stage_ms:
                print(f"{'':50s} mean ms per stage, where it ran: {stage_ms}")
            cell = {"server": row.name, "entities": entities, "concurrency": concurrency}
            records.append(cell | dict(row.labels) | result | {"stage_ms": stage_ms})
    return records


def add_stages(spent: StageTotals, before: StageTotals, after: StageTotals) -> None:
    """What each stage took between two readings of a server's totals, added to ``spent``."""
    for stage, (total, count) in after.items():
        was_total, was_count = before.get(stage, (0.0, 0.0))
        so_far_total, so_far_count = spent.get(stage, (0.0, 0.0))
        spent[stage] = (so_far_total + total - was_total, so_far_count + count - was_count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="load per cell")
    parser.add_argument("--only", help="comma-separated parts of row names: measure those")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    only = args.only.split(",") if args.only else []
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        bench = prepare(Path(folder))
        for phase in phases(bench):
            records.extend(measure(bench, phase, args.seconds, only))
    results = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds_per_cell": args.seconds,
        "rounds": ROUNDS,
        "results": records,
    }
    report(goals(records), results, args.out)


def goals(records: list[dict[str, Any]]) -> list[dict[str, object]]:
    """Issue 18's goals, each a ratio of cells of this run; a goal whose cells were not measured
    (``--only``) is left out."""
    cells = {(r["server"], r["entities"], r["concurrency"]): r for r in records}
    judged: list[dict[str, object]] = []
    for judge in (
        *(partial(fastapi_overhead, n) for n in (GOAL_ENTITIES, 100)),
        *(partial(ray_overhead, t) for t in RAY_TOPOLOGIES),
        fastapi_scaling,
        *(partial(ray_scaling, t) for t in RAY_TOPOLOGIES),
        beats_feast_and_mlflow,
        largest_batches,
    ):
        try:
            judged.extend(judge(lambda s, n, c: cells[(s, n, c)]))
        except KeyError:
            continue
    return judged


# (server, entities, concurrency) -> that cell's record
Lookup = Callable[[str, int, int], dict[str, Any]]


def verdict(goal: str, measured: str, passed: bool) -> dict[str, object]:
    return {"goal": goal, "measured": measured, "pass": passed}


def fastapi_overhead(entities: int, cell: Lookup) -> list[dict[str, object]]:
    served, alone, ceiling = (
        cell(FASTAPI, entities, 1),
        cell(IN_PROCESS, entities, 1),
        cell(CEILING, 0, 1),
    )
    p50 = alone["p50_ms"] + 2 * ceiling["p50_ms"]
    p99 = 1.5 * alone["p99_ms"] + ceiling["p99_ms"]
    return [
        verdict(
            f"FastAPI p50 at {entities} entities <= in-process p50 + 2x ceiling p50",
            f"{served['p50_ms']:.1f} vs {p50:.1f} ms ({alone['p50_ms']:.1f} + "
            f"2 x {ceiling['p50_ms']:.1f})",
            served["p50_ms"] <= p50,
        ),
        verdict(
            f"FastAPI p99 at {entities} entities <= 1.5x in-process p99 + ceiling p99",
            f"{served['p99_ms']:.1f} vs {p99:.1f} ms (1.5 x {alone['p99_ms']:.1f} + "
            f"{ceiling['p99_ms']:.1f})",
            served["p99_ms"] <= p99,
        ),
    ]


def ray_overhead(topology: Topology, cell: Lookup) -> list[dict[str, object]]:
    served = cell(ray_name(topology, 1), GOAL_ENTITIES, 1)
    floor, alone = cell(ray_floor_name(topology), 0, 1), cell(IN_PROCESS, GOAL_ENTITIES, 1)
    bound = floor["p50_ms"] + 1.2 * alone["p50_ms"]
    return [
        verdict(
            f"Ray ({topology.name}) p50 at {GOAL_ENTITIES} entities <= its floor's p50 + "
            "1.2x in-process p50",
            f"{served['p50_ms']:.1f} vs {bound:.1f} ms ({floor['p50_ms']:.1f} + "
            f"1.2 x {alone['p50_ms']:.1f})",
            served["p50_ms"] <= bound,
        ),
    ]


def scaling(
    goal: str, more: dict[str, Any], one: dict[str, Any], at_least: float
) -> dict[str, object]:
    ratio = more["throughput_rps"] / one["throughput_rps"]
    return verdict(
        f"{goal} >= {at_least}x the throughput of 1 (concurrency {SCALING}, "
        f"{GOAL_ENTITIES} entities)",
        f"{ratio:.2f}x ({more['throughput_rps']:.1f} vs {one['throughput_rps']:.1f} req/s; "
        f"cores busy {more['cores_busy']:.2f} vs {one['cores_busy']:.2f}, the load generator "
        f"{more['client_cores']:.2f} vs {one['client_cores']:.2f})",
        ratio >= at_least,
    )


def fastapi_scaling(cell: Lookup) -> list[dict[str, object]]:
    two, one = cell(TWO_WORKERS, GOAL_ENTITIES, SCALING), cell(FASTAPI, GOAL_ENTITIES, SCALING)
    return [scaling("2 FastAPI workers", two, one, 1.6)]


def ray_scaling(topology: Topology, cell: Lookup) -> list[dict[str, object]]:
    two = cell(ray_name(topology, 2), GOAL_ENTITIES, SCALING)
    one = cell(ray_name(topology, 1), GOAL_ENTITIES, SCALING)
    return [scaling(f"Ray ({topology.name}) 2 {topology.scaled} replicas", two, one, 1.4)]


def beats_feast_and_mlflow(cell: Lookup) -> list[dict[str, object]]:
    ours, theirs = cell(FASTAPI, GOAL_ENTITIES, 1), cell(FEAST_MLFLOW, GOAL_ENTITIES, 1)
    ratio = theirs["p50_ms"] / ours["p50_ms"]
    busy = (
        cell(FASTAPI, GOAL_ENTITIES, SCALING)["throughput_rps"]
        / cell(FEAST_MLFLOW, GOAL_ENTITIES, SCALING)["throughput_rps"]
    )
    return [
        verdict(
            f"FastAPI p50 at {GOAL_ENTITIES} entities >= 3x faster than Feast's feature "
            "server + mlflow models serve",
            f"{ratio:.1f}x ({ours['p50_ms']:.1f} vs {theirs['p50_ms']:.1f} ms; "
            f"throughput at concurrency {SCALING}: {busy:.1f}x)",
            ratio >= 3.0,
        ),
    ]


def largest_batches(cell: Lookup) -> list[dict[str, object]]:
    names = [FASTAPI, *(ray_name(topology, 1) for topology in RAY_TOPOLOGIES)]
    answered = {name: cell(name, MAX_ENTITIES, 1) for name in names}

    def said(name: str, load: dict[str, Any]) -> str:
        if load["p50_ms"] is None:
            return f"{name}: none answered ({load['failed']} failed)"
        return f"{name}: p50 {load['p50_ms']:.0f} ms ({load['failed']} failed)"

    return [
        verdict(
            f"batches of serving.max_entities ({MAX_ENTITIES}) answered by every server",
            "; ".join(said(name, load) for name, load in answered.items()),
            all(a["requests"] > 0 and a["failed"] == 0 for a in answered.values()),
        )
    ]


if __name__ == "__main__":
    main()
