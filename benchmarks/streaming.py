"""``skewless stream`` under a sustained load: rows per second into both stores, and the time
from publication to the row being in the online window.

One run, on this machine: a store seeded with 100 entities x 7 variables (the window's 512
hours), a ``skewless stream`` process consuming a NATS JetStream subject of the run's own, and
this process publishing messages of 100 rows (one hour of every entity) at a steady rate while
it polls the online store: a message is "online" when every entity's window ends at its hour.
Goal (issue 19): 10,000 rows/s sustained with publish-to-online p99 under 2 s. When the goal
rate is not held, a second phase runs at 80% of the rate that was sustained, so the latency is
also reported at a rate the machine holds. Then, the consumer stopped, the same store times
``push`` (rows appended to the windows) against the incremental materialize that rebuilds the
windows from the offline store, as every micro-batch did before: a ratio within one run.

    python benchmarks/streaming.py [--rate 10000] [--seconds 20] [--broker nats|rabbitmq]

Results: benchmarks/results/streaming.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from machine import report
from skewless.core.config import load_config
from skewless.features.brokers import make_broker, stamp
from skewless.features.materialize import materialize, push
from skewless.features.online import window_reader
from skewless.features.repo import FeastRepo
from skewless.features.window_view import unpack_window

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "etth.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "streaming.json"
VARIABLES = ["OT", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"]
ENTITIES = 100
SEED_HOURS = 512
GOAL_ROWS_PER_SECOND = 10_000
GOAL_P99_SECONDS = 2.0
POLL_SECONDS = 0.1
COMPARED_BATCHES, COMPARED_HOURS = 5, 50  # push against materialize: 5 batches of 5,000 rows
URLS = {"nats": "nats://127.0.0.1:4222", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/"}


def hour_rows(hour: pd.Timestamp, rng: np.random.Generator) -> pd.DataFrame:
    """One hour of every entity, in the source's column names."""
    frame = pd.DataFrame(
        {"station_id": np.arange(1, ENTITIES + 1), "date": hour.strftime("%Y-%m-%d %H:%M:%S")}
    )
    for column in VARIABLES:
        frame[column] = rng.normal(10, 3, ENTITIES).round(3)
    return frame


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def window_ends(repo: FeastRepo, reader: Any) -> pd.Timestamp:
    """The earliest end among every entity's online window."""
    variables = tuple(repo.config.data.variables)
    entities = list(range(1, ENTITIES + 1))
    ends = [
        unpack_window(blob, e, variables).end if blob is not None else pd.Timestamp.min
        for e, blob in zip(entities, reader.read(entities), strict=True)
    ]
    return min(ends)


async def load(
    repo: FeastRepo, first_hour: pd.Timestamp, rate: float, seconds: float
) -> dict[str, Any]:
    """Publish ``rate`` rows/s for ``seconds`` starting at ``first_hour``; poll the online
    windows until every message is online (or a deadline passes)."""
    assert repo.config.streaming is not None
    messages = int(rate * seconds / ENTITIES)
    rng = np.random.default_rng(0)
    hours = [first_hour + pd.Timedelta(hours=i) for i in range(messages)]
    payloads = [hour_rows(h, rng).to_json(orient="records").encode() for h in hours]
    broker = make_broker(repo.config.streaming)
    await broker.connect(consume=False)
    reader = window_reader(repo)
    published: list[float] = []
    online: list[float | None] = [None] * messages
    interval = ENTITIES / rate
    began = time.monotonic()

    async def publisher() -> None:
        for index, payload in enumerate(payloads):
            due = began + index * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            published.append(time.monotonic())
            await broker.publish(repo.config.streaming.subject, [payload], stamp())

    task = asyncio.create_task(publisher())
    done = 0
    deadline = began + seconds + 120
    while done < messages and time.monotonic() < deadline:
        await asyncio.sleep(POLL_SECONDS)
        end = await asyncio.to_thread(window_ends, repo, reader)
        now = time.monotonic()
        while done < len(published) and hours[done] <= end:
            online[done] = now
            done += 1
    await task
    await broker.close()
    latencies = np.array([o - p for o, p in zip(online, published, strict=False) if o is not None])
    finished = max((o for o in online if o is not None), default=began)
    return {
        "target_rows_per_second": rate,
        "seconds_published": round(published[-1] - began, 2) if published else 0,
        "messages": messages,
        "rows": messages * ENTITIES,
        "rows_online": done * ENTITIES,
        "sustained_rows_per_second": round(done * ENTITIES / max(finished - began, 1e-9)),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3) if len(latencies) else None,
        "latency_p99_s": round(float(np.percentile(latencies, 99)), 3) if len(latencies) else None,
        "latency_max_s": round(float(latencies.max()), 3) if len(latencies) else None,
        "poll_seconds": POLL_SECONDS,
    }


def append_versus_rebuild(repo: FeastRepo, first_hour: pd.Timestamp) -> dict[str, Any]:
    """In this process, the consumer stopped: ``push`` of a 5,000-row batch (validate, append
    offline, append to the windows), against the incremental materialize that rebuilds the same
    100 windows from the offline store, which every micro-batch ran before windows were
    appended to. Both on this run's store and host, so their ratio holds across hosts."""
    rng = np.random.default_rng(2)
    pushes, rebuilds = [], []
    for batch in range(COMPARED_BATCHES):
        start = first_hour + pd.Timedelta(hours=batch * COMPARED_HOURS)
        rows = pd.concat(
            [hour_rows(start + pd.Timedelta(hours=h), rng) for h in range(COMPARED_HOURS)],
            ignore_index=True,
        )
        began = time.perf_counter()
        push(repo, rows)
        pushes.append(time.perf_counter() - began)
        began = time.perf_counter()
        materialize(repo, incremental=True)
        rebuilds.append(time.perf_counter() - began)
    push_s, rebuild_s = float(np.median(pushes)), float(np.median(rebuilds))
    return {
        "batch_rows": COMPARED_HOURS * ENTITIES,
        "batches": COMPARED_BATCHES,
        "push_append_seconds_median": round(push_s, 3),
        "materialize_rebuild_seconds_median": round(rebuild_s, 3),
        "rebuild_over_push": round(rebuild_s / push_s, 2),
    }


def consumer_metrics(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"(skewless_stream_[a-z_]+?)(_total|_sum|_count)? ([0-9.e+-]+)$", line)
        if match and not match.group(1).endswith("_created"):
            found[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=GOAL_ROWS_PER_SECOND)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--broker", choices=sorted(URLS), default="nats")
    parser.add_argument("--batch-seconds", type=float, default=0.5)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    name = uuid.uuid4().hex[:8]
    port = free_port()
    overrides = [
        f"feature_store.project=bench_stream_{name}",
        f"streaming.broker={args.broker}",
        f"streaming.url={URLS[args.broker]}",
        f"streaming.subject=bench_stream_{name}",
        f"streaming.metrics_port={port}",
        f"streaming.batch_seconds={args.batch_seconds}",
        "streaming.batch_rows=20000",
        "streaming.ack_wait_seconds=60",
    ]
    config = load_config(CONFIG, overrides, environ={})
    repo = FeastRepo(config, home)
    rng = np.random.default_rng(1)
    start = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(days=365)
    seed = pd.concat(
        [hour_rows(start + pd.Timedelta(hours=h), rng) for h in range(SEED_HOURS)],
        ignore_index=True,
    )
    began = time.monotonic()
    push(repo, seed)
    print(f"seeded {len(seed)} rows in {time.monotonic() - began:.1f} s", flush=True)
    log = home / "stream.log"
    env = {**os.environ, "SKEWLESS_HOME": str(home)}
    command = [str(Path(sys.executable).parent / "skewless"), "stream", str(CONFIG)]
    with log.open("wb") as out:
        consumer = subprocess.Popen(
            [*command, *(f"--set={o}" for o in overrides)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    phases = []
    try:
        while "consuming" not in log.read_text():
            assert consumer.poll() is None, log.read_text()
            time.sleep(0.2)
        next_hour = start + pd.Timedelta(hours=SEED_HOURS)
        print(f"phase 1: {args.rate:.0f} rows/s for {args.seconds:.0f} s", flush=True)
        goal = asyncio.run(load(repo, next_hour, args.rate, args.seconds))
        phases.append(goal)
        print(json.dumps(goal), flush=True)
        held = goal["rows_online"] == goal["rows"] and goal["sustained_rows_per_second"] >= (
            0.95 * args.rate
        )
        if not held:
            rate = max(ENTITIES, 0.8 * goal["sustained_rows_per_second"])
            next_hour += pd.Timedelta(hours=goal["messages"])
            time.sleep(5)  # what the first phase left behind
            print(f"phase 2: {rate:.0f} rows/s (80% of the sustained rate)", flush=True)
            phases.append(asyncio.run(load(repo, next_hour, rate, args.seconds)))
            print(json.dumps(phases[-1]), flush=True)
        metrics = consumer_metrics(port)
        next_hour += pd.Timedelta(hours=phases[-1]["messages"])
    finally:
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(60)
        asyncio.run(_delete(repo))
    try:
        stored = len(repo.offline.history(None, None, None, columns=["station_id"]))
        print("in process: push (append) against materialize (rebuild)", flush=True)
        compared = append_versus_rebuild(repo, next_hour)
        print(json.dumps(compared), flush=True)
    finally:
        repo.store.teardown()
    expected = len(seed) + sum(p["rows"] for p in phases)
    verdicts = [
        {
            "goal": f"{GOAL_ROWS_PER_SECOND} rows/s sustained into both stores "
            f"({ENTITIES} entities x {len(VARIABLES)} variables)",
            "measured": f"{goal['sustained_rows_per_second']} rows/s "
            f"({goal['rows_online']} of {goal['rows']} rows online)",
            "pass": goal["rows_online"] == goal["rows"]
            and goal["sustained_rows_per_second"] >= 0.95 * GOAL_ROWS_PER_SECOND,
        },
        {
            "goal": f"publish-to-online p99 < {GOAL_P99_SECONDS} s at {args.rate:.0f} rows/s",
            "measured": f"p50 {goal['latency_p50_s']} s, p99 {goal['latency_p99_s']} s",
            "pass": goal["latency_p99_s"] is not None
            and goal["latency_p99_s"] < GOAL_P99_SECONDS
            and goal["rows_online"] == goal["rows"],
        },
        {
            "goal": "every published row stored exactly once",
            "measured": f"{stored} rows stored, {expected} expected",
            "pass": stored == expected,
        },
    ]
    results = {
        "broker": args.broker,
        "batch_seconds": args.batch_seconds,
        "entities": ENTITIES,
        "variables": len(VARIABLES),
        "window_size": config.feature_store.window_size,
        "phases": phases,
        "consumer_metrics": metrics,
        "append_versus_rebuild": compared,
    }
    report(verdicts, results, RESULTS)


async def _delete(repo: FeastRepo) -> None:
    assert repo.config.streaming is not None
    broker = make_broker(repo.config.streaming)
    await broker.connect(consume=False)
    await broker.delete()
    await broker.close()


if __name__ == "__main__":
    main()
