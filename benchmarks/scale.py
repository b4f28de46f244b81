"""Fleets of 10 to 10,000 series through every step: seconds and peak memory, side by side.

Each fleet (synthetic series derived from the real stations, 7 variables, hourly) gets its own
home and goes through the commands a user runs: ingest, materialize, train (NLinear, 3 folds),
and ``forecast --all --out``. Every step is a fresh ``skewless`` process; its peak resident
memory is the whole process tree's (Ray's processes included), sampled every 50 ms. The steps
that run on the compute engine (train, forecast) run again on a local Ray with two workers
(``--ray``), in the same run, on the same home.

Goals, judged in this run (PASS/FAIL printed per goal):
- must: 1,000 series x 8,760 rows: every step under 3 GB;
- must: 10x the series costs at most 12x the time per step, 100 -> 1,000;
- goal: 10,000 series: every step under 6 GB (with --series ... 10000);
- goal: training on Ray with two workers at least 1.6x faster than local, 1,000 series.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from machine import report
from synthetic import ROOT, VARIABLES, write_fleet

RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
SKEWLESS = str(Path(sys.executable).with_name("skewless"))
GB = 1024**3


def fleet_config(folder: Path, source: Path) -> Path:
    """The shipped config, reading the fleet's Parquet file (entity column station_id)."""
    config = yaml.safe_load((ROOT / "configs" / "etth.yaml").read_text())
    config["name"] = "fleet"
    config["data"]["sources"] = [{"path": str(source)}]
    config["data"]["timestamp_column"] = "date"
    config["data"]["targets"], config["data"]["covariates"] = VARIABLES[:1], VARIABLES[1:]
    config["validation"] = {"on_gap": "warn", "on_missing": "warn"}
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def machine_cpu_seconds() -> float:
    """CPU seconds every core of this machine has been busy (user, system, ...) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def measured(command: list[str], home: Path) -> dict[str, float]:
    """Run ``command``; its seconds, the peak RSS of its whole process tree, and the machine's
    busy CPU seconds meanwhile (all processes: Ray's own included; run on an idle machine)."""
    environment = {**os.environ, "SKEWLESS_HOME": str(home)}
    busy = machine_cpu_seconds()
    began = time.perf_counter()
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - began
    cpu = machine_cpu_seconds() - busy
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr.read()[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_gb": round(peak / GB, 3), "cpu_s": round(cpu, 1)}


RAY = ["--set", "compute.engine=ray", "--set", "compute.workers=2"]


def run_fleet(series: int, hours: int, ray_sizes: list[int]) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix=f"fleet{series}-") as folder:
        base = Path(folder)
        source = base / "fleet.parquet"
        write_fleet(source, series, hours)
        config = str(fleet_config(base, source))
        home = base / "home"
        steps = {
            "ingest": [SKEWLESS, "ingest", config],
            "materialize": [SKEWLESS, "materialize", config],
            "train": [SKEWLESS, "train", config],
            "forecast_all": [
                SKEWLESS,
                "forecast",
                config,
                "--alias",
                "latest",
                "--all",
                "--out",
                str(base / "forecasts.parquet"),
            ],
        }
        record: dict[str, object] = {"series": series, "rows_per_series": hours}
        for name, command in steps.items():
            record[name] = measured(command, home)
            print(f"{series:>6} series  {name:<13} {record[name]}", flush=True)
        if series in ray_sizes:
            for name in ("train", "forecast_all"):
                record[f"{name}_ray"] = measured([*steps[name], *RAY], home)
                print(
                    f"{series:>6} series  {name + '_ray':<13} {record[name + '_ray']}", flush=True
                )
        return record


def goals(records: list[dict]) -> list[dict[str, object]]:
    by_size = {r["series"]: r for r in records}
    steps = ("ingest", "materialize", "train", "forecast_all")
    verdicts = []
    for size, limit, kind in ((1000, 3.0, "must"), (10000, 6.0, "goal")):
        if size in by_size:
            worst = max(by_size[size][s]["peak_gb"] for s in steps)
            verdicts.append(
                {
                    "goal": f"{kind}: {size} series, every step under {limit} GB",
                    "measured": worst,
                    "pass": worst < limit,
                }
            )
    if 1000 in by_size and "train_ray" in by_size[1000]:
        local, ray = by_size[1000]["train"], by_size[1000]["train_ray"]
        speedup = local["seconds"] / ray["seconds"]
        # With every core busy all the time, Ray could at best finish its CPU work in
        # cpu / cores seconds: the speed-up this machine allows at all.
        ceiling = local["seconds"] / (ray["cpu_s"] / (os.cpu_count() or 1))
        verdicts.append(
            {
                "goal": "goal: 1000 series, training on Ray (2 workers) 1.6x faster than local",
                "measured": round(speedup, 2),
                "ceiling_on_this_machine": round(ceiling, 2),
                "pass": speedup >= 1.6,
            }
        )
    if 100 in by_size and 1000 in by_size:
        ratios = {s: by_size[1000][s]["seconds"] / by_size[100][s]["seconds"] for s in steps}
        verdicts.append(
            {
                "goal": "must: 10x series costs at most 12x time per step (100 -> 1000)",
                "measured": {s: round(r, 2) for s, r in ratios.items()},
                "pass": max(ratios.values()) <= 12,
            }
        )
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--hours", type=int, default=8760)
    parser.add_argument(
        "--ray", type=int, nargs="*", default=[100, 1000], help="fleet sizes also run on Ray"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    records = [run_fleet(series, args.hours, args.ray) for series in args.series]
    verdicts = goals(records)
    report(verdicts, {"engine": "local", "fleets": records}, args.out)


if __name__ == "__main__":
    main()
