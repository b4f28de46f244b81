"""What a benchmark ran on, so that runs on different hosts of the same kind can be compared."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def describe_machine() -> dict[str, object]:
    """Cores, Python, the CPU's model name, the best of five timings of a fixed pure-Python
    loop (hosts of one kind differ: the serving benchmark's ceiling, a constant over HTTP, took
    0.8 ms on one and 1.4 ms on another), and the load averages over 1, 5 and 15 minutes as the
    run ends (whether anything else ran beside it)."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "python_loop_ms": round(min(_loop_ms() for _ in range(5)), 1),
        "load_average": [round(load, 1) for load in os.getloadavg()],
    }


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _loop_ms() -> float:
    began = time.perf_counter()
    sum(range(10**7))
    return 1000 * (time.perf_counter() - began)


def report(verdicts: list[dict], results: dict[str, object], out: Path) -> None:
    """Print PASS/FAIL per goal and write the results, with the machine and the verdicts."""
    for verdict in verdicts:
        print(f"{'PASS' if verdict['pass'] else 'FAIL'}  {verdict['goal']}: {verdict['measured']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"machine": describe_machine(), **results, "goals": verdicts}
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results in {out}")
