"""CPU seconds the ``skewless`` command spends before it does what it was asked, per command.

Each command runs as a fresh ``skewless`` process; its cost is the child's user + system CPU
seconds (from the kernel's accounting of finished children), best of three. Measured in one run:

- ``skewless --help``: the CLI itself (Python, Typer, rich, skewless's command modules), the unit
  every goal is a ratio of;
- ``skewless models list NAME`` and ``models describe NAME``, on an SQLite registry set up here
  under a temporary SKEWLESS_HOME with one registered version (so the list has a row);
- every verb that takes a CONFIG, run with the shipped config and an override that fails
  validation (``--set feature_store.window_size=-1``): the verb parses its arguments, reads and
  validates the whole config, and stops with exit code 1 exactly where its own work (opening the
  Feast repo, loading a model, reading history) would start. A verb's ``--help`` would not do:
  Typer answers it before the verb runs, so it costs what the top-level ``--help`` costs;
- floors: ``python -c pass``, and MLflow's own client on the same registry (``import mlflow`` and
  one ``get_registered_model``), what any registry command pays before skewless adds anything.

Goals, judged in this run (PASS/FAIL printed per goal):
- ``models list`` under 3x ``--help``;
- no verb above 5x ``--help`` before its own work starts;
- ``models list`` within 1.25x of MLflow's own floor.

    python benchmarks/cli_startup.py [--repeat 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cli_startup.json"
SKEWLESS = str(Path(sys.executable).with_name("skewless"))
CONFIG = str(ROOT / "configs" / "etth.yaml")
MODEL = "bench_forecaster"
FAILS_VALIDATION = ["--set", "feature_store.window_size=-1"]
CONFIG_VERBS = {
    "ingest": [],
    "apply": [],
    "materialize": [],
    "push": ["--file", "rows.csv"],
    "compact": [],
    "windows": [],
    "train": [],
    "backtest": [],
    "tune": [],
    "forecast": [],
    "serve": [],
    "verify-skew": [],
    "monitor": [],
    "report": [],
}
MLFLOW_FLOOR = """
import sys
from mlflow.tracking import MlflowClient
MlflowClient(tracking_uri=sys.argv[1], registry_uri=sys.argv[1]).get_registered_model(sys.argv[2])
"""


def child_cpu_seconds(command: list[str], says: str, env: dict[str, str]) -> float:
    """User + system CPU seconds of ``command`` (and any children it waited for), which must
    say ``says``: a command that failed for another reason measured something else."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    finished = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if says not in finished.stdout + finished.stderr:
        raise SystemExit(f"{command} did not say {says!r}:\n{finished.stdout}{finished.stderr}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def register_one_version(registry_uri: str, artifacts: Path) -> None:
    """A registered model with one version (a tiny logged artifact) and a backtest metric."""
    from skewless.core.library_notices import quiet_library_notices

    quiet_library_notices()  # before MLflow's import: no table-creation notices
    import mlflow

    from skewless.registry.registry import ModelRegistry

    registry = ModelRegistry(registry_uri)
    mlflow.set_tracking_uri(registry_uri)
    experiment = registry.client.create_experiment(MODEL, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    registry.client.create_registered_model(MODEL)
    with mlflow.start_run() as run:
        mlflow.log_dict({"mse": 0.4}, "model/info.json")
    version = registry.client.create_model_version(
        MODEL, f"{run.info.artifact_uri}/model", run.info.run_id
    )
    registry.record_metrics(MODEL, int(version.version), {"mse": 0.4})


def commands(registry_uri: str) -> dict[str, tuple[list[str], str]]:
    """Every measured command line, by label, with what its output must say."""
    measured = {
        "python -c pass": ([sys.executable, "-c", "pass"], ""),
        "mlflow client floor": ([sys.executable, "-c", MLFLOW_FLOOR, registry_uri, MODEL], ""),
        "--help": ([SKEWLESS, "--help"], "Usage"),
        "models list": ([SKEWLESS, "models", "list", MODEL], "0.4000"),  # the version's row
        "models describe": ([SKEWLESS, "models", "describe", MODEL], "1 version(s)"),
    }
    for verb, required in CONFIG_VERBS.items():
        command = [SKEWLESS, verb, CONFIG, *required, *FAILS_VALIDATION]
        measured[verb] = (command, "feature_store.window_size")
    return measured


def goals(best: dict[str, float]) -> list[dict[str, object]]:
    unit = best["--help"]
    verbs = {verb: round(best[verb] / unit, 2) for verb in CONFIG_VERBS}
    listed = best["models list"]
    return [
        {
            "goal": "models list under 3x --help",
            "measured": round(listed / unit, 2),
            "pass": listed < 3 * unit,
        },
        {
            "goal": "no verb above 5x --help before its own work starts",
            "measured": verbs,
            "pass": max(verbs.values()) <= 5,
        },
        {
            "goal": "models list within 1.25x of MLflow's own client (the floor)",
            "measured": round(listed / best["mlflow client floor"], 2),
            "pass": listed <= 1.25 * best["mlflow client floor"],
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per command; the best counts")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder) / "home"
        home.mkdir()
        registry_uri = f"sqlite:///{home / 'mlflow.db'}"
        register_one_version(registry_uri, Path(folder) / "artifacts")
        # Only this home and its registry: no SKEWLESS__* setting of the caller's leaks in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKEWLESS")}
        env["SKEWLESS_HOME"] = str(home)
        runs = {
            label: [round(child_cpu_seconds(command, says, env), 3) for _ in range(args.repeat)]
            for label, (command, says) in commands(registry_uri).items()
        }
    best = {label: min(seconds) for label, seconds in runs.items()}
    for label, seconds in best.items():
        print(f"{label:>20}  {seconds:6.2f} s CPU  {seconds / best['--help']:5.2f}x --help")
    verdicts = goals(best)
    report(verdicts, {"cpu_seconds_best": best, "cpu_seconds_runs": runs}, args.out)


if __name__ == "__main__":
    main()
