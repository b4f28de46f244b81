"""Lookback windows (7 variables x 336 points) for 1-1,000 entities: online readers vs offline.

Side by side in one run, on one machine:
- SQLite and Redis online stores, through each reader in skewless.features.online
  (Feast's get_online_features, Feast's online_read, the Redis hash reader), including unpacking
  into Window objects, i.e. what serving pays;
- on Redis, the fetch of the same values without decoding, by skewless's reader and by a plain
  redis-py pipeline (the reference anyone would write);
- a CPU-only control task, whose p99/p50 shows how noisy the machine itself is;
- the same windows built through Feast's offline point-in-time path (get_historical_features on
  an entity frame of 336 timestamps per entity).

Entities beyond the two real stations are synthetic: each copies the last rows of station 1 or 2,
scaled and shifted by its id. Results: benchmarks/results/online_read.json.

    python benchmarks/online_read.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from machine import describe_machine
from skewless.core.config import load_config
from skewless.core.schema import SERIES_VIEW
from skewless.features.ingest import ingest_frames
from skewless.features.materialize import materialize
from skewless.features.online import RedisHashReader, readers_for, window_reader
from skewless.features.repo import FeastRepo
from skewless.features.strategies import OnlineRetrievalStrategy
from synthetic import VARIABLES, synthetic_rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "online_read.json"
LOOKBACK = 336
COUNTS = (1, 10, 100, 1000)


def build_repo(home: Path, store: str, rows: pd.DataFrame) -> FeastRepo:
    overrides = [f"feature_store.project=bench_{store}", f"feature_store.window_size={LOOKBACK}"]
    if store == "redis":
        overrides += [
            "feature_store.online_store.type=redis",
            "feature_store.online_store.url=redis://127.0.0.1:6379/0",
        ]
    repo = FeastRepo(load_config(ROOT / "configs" / "etth.yaml", overrides, environ={}), home)
    ingest_frames(repo, [("synthetic", rows)])
    materialize(repo)
    return repo


def timed(call: Callable[[], object], calls: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    gc.collect()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def interleaved(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Time each call once per round, in turn, so that machine noise hits all of them alike."""
    for call in calls.values():
        for _ in range(5):
            call()
    gc.collect()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - start) * 1000)
    return samples


def record(store: str, method: str, entities: int, samples: list[float]) -> dict[str, object]:
    return {
        "store": store,
        "method": method,
        "entities": entities,
        "calls": len(samples),
        "p50_ms": round(float(np.percentile(samples, 50)), 3),
        "p99_ms": round(float(np.percentile(samples, 99)), 3),
        "mean_ms": round(statistics.fmean(samples), 3),
    }


def online_records(repo: FeastRepo, store: str, quick: bool) -> list[dict[str, object]]:
    """Each reader through the online strategy; on Redis also the bare fetch (the floor)."""
    calls: dict[str, Callable[[list[int]], object]] = {}
    for method in readers_for(store):
        strategy = OnlineRetrievalStrategy(repo, None, window_reader(repo, method))
        calls[method] = strategy.retrieve
    if store == "redis":
        reader = window_reader(repo, "redis_hash")
        assert isinstance(reader, RedisHashReader)
        calls["redis_fetch_only"] = reader.fetch
        calls["redis_py_pipeline_fetch"] = lambda entities: redis_py_pipeline(reader, entities)
    out = []
    for count in COUNTS:
        entities = list(range(1, count + 1))
        repeats = (20 if count >= 1000 else 50) if quick else (100 if count >= 1000 else 500)
        bound = {m: lambda c=call, e=entities: c(e) for m, call in calls.items()}
        samples = interleaved(bound, repeats)
        for method, series in samples.items():
            out.append(record(store, method, count, series))
            print_row(out[-1])
    return out


def redis_py_pipeline(reader: RedisHashReader, entities: list[int]) -> list[object]:
    """The reference: fetch the same values with a plain redis-py pipeline, no decoding."""
    with reader.client.pipeline(transaction=False) as pipe:
        for entity in entities:
            pipe.hget(reader.redis_key(entity), reader.field)  # type: ignore[arg-type]
        return pipe.execute()


def offline_records(repo: FeastRepo, quick: bool) -> list[dict[str, object]]:
    """Windows through Feast's point-in-time join: one entity row per (entity, window point)."""
    end = repo.offline.bounds()[1]
    points = pd.date_range(end=end, periods=LOOKBACK, freq="h")
    features = [f"{SERIES_VIEW}:{v}" for v in VARIABLES]
    out = []
    for count in COUNTS:
        entity_rows = pd.DataFrame(
            {
                "station_id": np.repeat(np.arange(1, count + 1), LOOKBACK),
                "event_timestamp": np.tile(points, count),
            }
        )

        def build(rows: pd.DataFrame = entity_rows) -> object:
            frame = repo.store.get_historical_features(entity_df=rows, features=features).to_df()
            return frame.sort_values(["station_id", "event_timestamp"])[VARIABLES].to_numpy(
                np.float32
            )

        calls = 3 if quick or count >= 1000 else 10
        samples = timed(build, calls, warmup=0 if count >= 1000 else 1)
        out.append(record("offline", "get_historical_features", count, samples))
        print_row(out[-1])
    return out


def print_row(row: dict[str, object]) -> None:
    print(
        f"{row['store']:>8} {row['method']:>24} {row['entities']:>5} entities: "
        f"p50 {row['p50_ms']:>9.2f} ms  p99 {row['p99_ms']:>9.2f} ms  ({row['calls']} calls)",
        flush=True,
    )


def machine_jitter(quick: bool) -> dict[str, object]:
    """A fixed CPU-only task timed like the reads: its p99/p50 is this machine's own noise."""
    matrix = np.random.default_rng(0).random((200, 200))
    samples = timed(lambda: [matrix @ matrix for _ in range(4)], 200 if quick else 1000, warmup=20)
    row = record("cpu", "control_matmul", 0, samples)
    print_row(row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, for a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = synthetic_rows(max(COUNTS), LOOKBACK + 24)
    records: list[dict[str, object]] = [machine_jitter(args.quick)]
    with tempfile.TemporaryDirectory() as home:
        for store in ("sqlite", "redis"):
            repo = build_repo(Path(home), store, rows)
            try:
                records += online_records(repo, store, args.quick)
                if store == "sqlite":
                    records += offline_records(repo, args.quick)
            finally:
                repo.store.teardown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "online_read",
                "window": {"variables": len(VARIABLES), "points": LOOKBACK},
                "run_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": describe_machine(),
                "records": records,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
