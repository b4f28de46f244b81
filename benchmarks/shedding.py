"""Which `serving.max_in_flight` a FastAPI worker should shed at: a sweep in one run.

For each limit, one `skewless serve` worker answers closed-loop load of 10 entities per request
at concurrency 8 and 64 (far above the default limit), from clients of two kinds: ones that
honour the 503's Retry-After (wait that long, and up to as long again at random, before their
next request, as a well-behaved client or a load balancer does) and ones that retry at once
(the worst case: every refusal costs the worker a request parse and an answer). Recorded per
cell: the throughput and p50/p99 of the answered requests, and how many were shed (503 at
once). A lower limit sheds earlier but keeps fewer requests contending for the worker's GIL,
so the answered ones are faster and often more numerous.

The goal of issue 18 is judged for the shipped default (the config's `serving.max_in_flight`)
with clients that honour Retry-After: at concurrency 64 the p99 of accepted requests stays
within 2x the p99 at concurrency 8. The sweep shows what other limits and clients that retry at
once would give. Results: benchmarks/results/shedding.json.

    python benchmarks/shedding.py [--seconds 4] [--limits 2,4,8,16]
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from machine import report
from servers import closed_loop, post, running, show, warm_up
from serving import CONFIG, batch_body, prepare, skewless_serve
from skewless.core.config import load_config
from skewless.serving.admission import RETRY_AFTER_SECONDS
from synthetic import ROOT

RESULTS = ROOT / "benchmarks" / "results" / "shedding.json"
ENTITIES = 10
SATURATING = 64  # far above the default serving.max_in_flight (8)
CONCURRENCY = (8, SATURATING)
# Seconds a client waits after a 503: as long as the server's Retry-After says, or not at all.
CLIENTS = {"honours Retry-After": float(RETRY_AFTER_SECONDS), "retries at once": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="load per cell")
    parser.add_argument("--limits", default="2,4,8,16", help="max_in_flight values to sweep")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    default = load_config(CONFIG, environ={}).serving.max_in_flight
    limits = sorted({int(v) for v in args.limits.split(",")} | {default or 0} - {0})
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        bench = prepare(Path(folder))
        for limit in limits:
            server = skewless_serve(bench, f"--set=serving.max_in_flight={limit}")
            send = post(f"{server.url}/predict/feast/batch", batch_body(ENTITIES))
            probe = f"GET {server.url}/health"
            with running(server.command, bench.env, probe, bench.home / "server.log"):
                warm_up(send)
                for clients, pause in CLIENTS.items():
                    for concurrency in CONCURRENCY:
                        result = closed_loop(send, concurrency, args.seconds, pause).summary()
                        cell = {"max_in_flight": limit, "clients": clients}
                        records.append(cell | {"concurrency": concurrency} | result)
                        show(
                            f"max_in_flight {limit:3d} clients {clients:19s} "
                            f"concurrency {concurrency:2d}",
                            result,
                        )
    results = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds_per_cell": args.seconds,
        "entities": ENTITIES,
        "default_max_in_flight": default,
        "results": records,
    }
    report(goals(records, default), results, args.out)


def goals(records: list[dict[str, Any]], default: int | None) -> list[dict[str, object]]:
    """The load-shedding goal for the shipped default limit, a ratio of two cells of this run
    (clients that honour Retry-After)."""
    clients = next(iter(CLIENTS))
    cells = {(r["max_in_flight"], r["clients"], r["concurrency"]): r for r in records}
    calm, saturated = cells[(default, clients, 8)], cells[(default, clients, SATURATING)]
    tail = saturated["p99_ms"] / calm["p99_ms"]
    return [
        {
            "goal": f"max_in_flight {default} (the default), clients that honour Retry-After: "
            f"at concurrency {SATURATING}, p99 of accepted requests <= 2x the p99 at 8",
            "measured": f"{tail:.2f}x ({saturated['p99_ms']:.1f} vs {calm['p99_ms']:.1f} ms; "
            f"{saturated['shed']:.0f} shed)",
            "pass": tail <= 2.0,
        }
    ]


if __name__ == "__main__":
    main()
