"""The ``skewless`` command: each verb is a thin call into a layer below.

Each verb imports what it uses when it runs: Feast, MLflow, torch and Ray cost seconds, even
pandas (the config's import) a few tenths, and ``skewless --help`` needs none of them
(``make bench-cli`` measures it).
"""

from __future__ import annotations

import logging
import os
import signal
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from skewless.cli_models import models_app
from skewless.cli_monitoring import EveryOpt, OutOpt, RetrainOpt, run_monitor, run_report
from skewless.cli_output import console, errors, number, user_errors
from skewless.cli_schedule import RunOpt, run_schedule
from skewless.cli_streaming import (
    FileOpt,
    RowsPerMessageOpt,
    run_publish_command,
    run_stream_command,
)
from skewless.core.errors import ConfigError
from skewless.core.library_notices import quiet_feast_deprecations, quiet_library_notices

if TYPE_CHECKING:
    import pandas as pd

    from skewless.core.config import SkewlessConfig
    from skewless.features.ingest import IngestReport
    from skewless.features.repo import FeastRepo
    from skewless.serving.service import LoadedModel
    from skewless.training.history import History
    from skewless.training.packaging import HeldOutCoverage

app = typer.Typer(
    name="skewless",
    help="Production time-series forecasting where training and serving cannot drift apart.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ConfigArg = Annotated[Path, typer.Argument(help="experiment config (YAML)", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a config key: --set feature_store.window_size=336"),
]
EntityOpt = Annotated[
    str | None,
    typer.Option(help="entity id for every row, when the file has no entity column"),
]


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR,
        format="%(message)s",
        handlers=[_log_handler()],
    )
    if not errors.is_terminal:  # a batch job's log: skewless's progress lines as they happen
        logging.getLogger("skewless").setLevel(logging.INFO)
    quiet_library_notices()
    if not verbose:  # MLflow's own progress bars, hints and warnings: the CLI says what matters
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        warnings.filterwarnings("ignore", module=r"mlflow(\..*)?")


def _log_handler() -> logging.Handler:
    """Rich lines on a terminal; plain, unwrapped, timestamped lines in a batch job's log."""
    if errors.is_terminal:
        return RichHandler(console=errors, show_path=False)
    plain = logging.StreamHandler()
    plain.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return plain


def _repo(config: Path, overrides: list[str] | None) -> FeastRepo:
    """The Feast repo of the config, read first: a bad config fails before Feast's import."""
    from skewless.core.config import skewless_home

    loaded = _config(config, overrides)
    from skewless.features.repo import FeastRepo

    quiet_feast_deprecations()
    return FeastRepo(loaded, skewless_home())


def _config(path: Path, overrides: list[str] | None) -> SkewlessConfig:
    from skewless.core.config import load_config

    return load_config(path, overrides or [])


@app.command()
def ingest(
    config: ConfigArg,
    source: Annotated[
        Path | None, typer.Option(help="ingest this CSV/Parquet file instead of data.sources")
    ] = None,
    entity: EntityOpt = None,
    set_: SetOpt = None,
) -> None:
    """Validate raw data and append new rows to the offline store."""
    with user_errors():
        repo = _repo(config, set_)
        from skewless.features.ingest import ingest as run_ingest
        from skewless.features.ingest import source_from_path

        sources = None if source is None else [source_from_path(source, entity, repo.config.data)]
        with _counter("entities ingested") as count:
            reports = run_ingest(repo, sources, count)
        _print_ingest(reports)


@app.command()
def apply(config: ConfigArg, set_: SetOpt = None) -> None:
    """Generate the Feast repo from the config and register it."""
    with user_errors():
        repo = _repo(config, set_)
        repo.apply()
        console.print(f"Feast repo [bold]{repo.folder}[/] applied")


@app.command()
def materialize(
    config: ConfigArg,
    incremental: Annotated[bool, typer.Option(help="only what is new since the last run")] = False,
    set_: SetOpt = None,
) -> None:
    """Copy the latest rows and the lookback windows from the offline to the online store."""
    with user_errors():
        repo = _repo(config, set_)
        from skewless.features.materialize import materialize as run_materialize

        with _counter("windows") as count:
            report = run_materialize(repo, incremental, count)
        kind = "incremental" if report.incremental else "full"
        console.print(
            f"{kind} materialization up to {report.end.isoformat()}: "
            f"windows of {report.entities_updated} entities written"
        )


@app.command()
def push(
    config: ConfigArg,
    file: Annotated[Path, typer.Option(help="CSV or Parquet file of new rows")],
    entity: EntityOpt = None,
    set_: SetOpt = None,
) -> None:
    """Push new rows into the offline and online stores (the streaming path)."""
    with user_errors():
        repo = _repo(config, set_)
        from skewless.features.ingest import source_from_path
        from skewless.features.materialize import push as run_push
        from skewless.features.sources import read_source

        source = source_from_path(file, entity, repo.config.data)
        report = run_push(repo, read_source(source, repo.config.data), origin=str(file))
        _print_ingest([report])


@app.command()
def stream(config: ConfigArg, set_: SetOpt = None) -> None:
    """Consume rows from the broker under 'streaming:' into both stores, until stopped."""
    with user_errors():
        loaded = _config(config, set_)
    run_stream_command(loaded)


@app.command()
def publish(
    config: ConfigArg,
    file: FileOpt,
    entity: EntityOpt = None,
    rows_per_message: RowsPerMessageOpt = 100,
    set_: SetOpt = None,
) -> None:
    """Publish a CSV or Parquet file's rows to the broker subject under 'streaming:'."""
    with user_errors():
        loaded = _config(config, set_)
    run_publish_command(loaded, file, entity, rows_per_message)


@app.command()
def schedule(config: ConfigArg, run: RunOpt = None, set_: SetOpt = None) -> None:
    """Run the jobs under 'schedule:' on their cron expressions (ingest, materialize,
    compact, monitor), until stopped; with --run JOB, that job once now."""
    with user_errors():
        loaded = _config(config, set_)
    run_schedule(loaded, run)


@app.command()
def compact(config: ConfigArg, set_: SetOpt = None) -> None:
    """Merge the offline store's Parquet parts (one per ingest or push) into one."""
    with user_errors():
        repo = _repo(config, set_)
        with console.status("compacting"), repo.offline.write_lock():
            merged = repo.offline.compact()
        if merged:
            console.print(f"merged {merged} parts into one, sorted by entity and time")
        else:
            console.print("nothing to compact")


@app.command()
def windows(
    config: ConfigArg,
    entity: Annotated[
        list[str] | None, typer.Option(help="entity id; repeat for several (default: all)")
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(help="time point: 'now', 'latest' or ISO timestamp (default: latest)"),
    ] = None,
    tail: Annotated[int, typer.Option(min=1, help="rows to show per entity")] = 3,
    set_: SetOpt = None,
) -> None:
    """Read the latest windows from the online store (one call) and show their last rows."""
    with user_errors():
        repo = _repo(config, set_)
        from skewless.features.facade import FeatureStoreFacade

        cfg = repo.config
        facade = FeatureStoreFacade(cfg, mode="online", home=repo.home)
        chosen = _entity_ids(entity, cfg) if entity else repo.offline.entities()
        result = facade.load_features(at, chosen)
        table = Table(title=f"online windows of '{cfg.project}' (last {tail} rows each)")
        for column in [cfg.data.entity_key, "timestamp", *cfg.data.variables]:
            table.add_column(column, justify="right")
        for key in chosen:
            window = result.windows[key]
            numbers = window.values[-tail:, : len(cfg.data.variables)]  # labels are codes
            for stamp, row in zip(window.timestamps[-tail:], numbers, strict=True):
                table.add_row(str(key), f"{stamp:%Y-%m-%d %H:%M}", *(f"{v:.3f}" for v in row))
        console.print(table)
        for key in chosen:
            window = result.windows[key]
            console.print(
                f"{cfg.data.entity_key} {key}: {len(window)} points, "
                f"ending {window.end.isoformat()}"
            )


CsvOpt = Annotated[
    Path | None,
    typer.Option("--csv", help="train from this CSV instead of the offline store"),
]


@app.command()
def train(config: ConfigArg, csv: CsvOpt = None, set_: SetOpt = None) -> None:
    """Backtest, fit on all history, and register the bundle as a new model version."""
    with user_errors():
        repo, history = _history(config, set_, csv)
        from skewless.training.release import train_and_register

        _warn_if_unservable(repo.config)
        with _progress() as progress:
            task = progress.add_task("backtest folds", total=repo.config.backtest.folds)
            release = train_and_register(
                repo.config, history, repo.home, on_fold=lambda _: progress.advance(task)
            )
        backtested, naive = release.report.overall.overall, release.report.naive.overall
        _print_metrics(
            "backtest (all folds) and validation",
            [
                *_beside_naive("backtest", backtested, naive),
                ("validation", release.fitted.validation.overall),
            ],
        )
        _print_verdict(backtested, naive)
        _print_coverage(release.coverage)
        console.print(
            f"registered [bold]{repo.config.model_name}[/] version {release.version} "
            f"(alias latest), MLflow run {release.run_id}"
        )


def _print_coverage(coverage: HeldOutCoverage) -> None:
    """Each level's coverage of the last fold, overall and of its worst and best entity."""
    for level, covered in coverage.overall.items():
        by_entity = coverage.per_entity[level]
        console.print(
            f"interval {level:.0%}: {covered:.1%} of the last fold covered, mean width "
            f"{number(coverage.mean_widths[level])} (calibrated without it); per entity from "
            f"{by_entity.min():.1%} ({by_entity.idxmin()}) to {by_entity.max():.1%} "
            f"({by_entity.idxmax()})"
        )


def _warn_if_unservable(config: SkewlessConfig) -> None:
    """A model the online store cannot feed trains, but will not be served or promoted."""
    from skewless.bundle.bundle import FeatureSpec
    from skewless.core.feed import Feed, feeding_problems

    for problem in feeding_problems(FeatureSpec.from_config(config).feed, Feed.of_store(config)):
        errors.print(
            f"[bold yellow]warning:[/] the online store cannot feed this model: {problem}; "
            "servers and promotions will refuse it",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def forecast(
    config: ConfigArg,
    alias: Annotated[str, typer.Option(help="registry alias to load")] = "production",
    entity: Annotated[
        list[str] | None, typer.Option(help="entity id (repeat for several); default: all")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="every entity in the store (the default without --entity)")
    ] = False,
    out: Annotated[
        str | None,
        typer.Option(
            help="write every forecast here in batches: a Parquet file, or "
            "postgresql+psycopg://user@host/database/table",
            show_default=False,
        ),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Forecast from the online store's latest windows with the model version behind ALIAS:
    printed, or with --out written for the whole fleet a batch at a time."""
    with user_errors():
        if all_ and entity:
            raise typer.BadParameter("give --all or --entity, not both", param_hint="--all")
        repo = _repo(config, set_)
        from skewless.serving.batch import latest_forecasts, load_alias

        entities = _entity_ids(entity, repo.config) if entity else repo.offline.entities()
        if out is None and len(entities) > repo.config.serving.max_entities:
            raise ConfigError(
                f"{len(entities)} entities are too many to print (serving.max_entities is "
                f"{repo.config.serving.max_entities}); write them with --out FILE"
            )
        model = load_alias(repo.config, repo.home, alias)
        if out is None:
            table = _frame_table(latest_forecasts(repo.config, repo.home, model, entities))
            table.title = f"{model.name}@{model.alias} (version {model.version}), times in UTC"
            console.print(table)
        else:
            _write_forecasts(repo, model, entities, out)


def _write_forecasts(repo: FeastRepo, model: LoadedModel, entities: list, out: str) -> None:
    from skewless.serving.batch import forecast_fleet, open_sink, output_schema

    sink = open_sink(out, output_schema(repo.config, model))  # refused before any work
    with _progress() as progress:
        task = progress.add_task("entities", total=len(entities))
        summary = forecast_fleet(
            repo.config,
            repo.home,
            model,
            entities,
            sink,
            on_batch=lambda done: progress.advance(task, done),
        )
    console.print(
        f"{summary.forecast} of {summary.entities} entities forecast by {model.name} "
        f"version {model.version} (@{model.alias}), written to {out}"
    )
    for entity, error in list(summary.failed.items())[:10]:
        console.print(f"[yellow]entity {entity}[/]: {error}")
    if len(summary.failed) > 10:
        console.print(f"... and {len(summary.failed) - 10} more; see the error column")


class Engine(StrEnum):
    fastapi = "fastapi"
    ray = "ray"


@app.command()
def serve(
    config: ConfigArg,
    engine: Annotated[Engine, typer.Option(help="HTTP server")] = Engine.fastapi,
    alias: Annotated[str | None, typer.Option(help="default: serving.alias")] = None,
    host: Annotated[str | None, typer.Option(help="default: serving.host")] = None,
    port: Annotated[int | None, typer.Option(help="default: serving.port")] = None,
    address: Annotated[
        str | None, typer.Option(help="ray: an existing cluster's address (default: a local one)")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="fastapi: processes on the one port, each with its own model (Ray: "
            "serving.ray replicas)",
        ),
    ] = 1,
    set_: SetOpt = None,
) -> None:
    """Serve forecasts over HTTP from the model version behind ALIAS, following the alias."""
    # A server's own events (a store outage and its end, a swap, a refused version) are what
    # its operator reads; libraries stay at errors only.
    logging.getLogger("skewless").setLevel(min(logging.getLogger().level, logging.INFO))
    with user_errors():
        repo = _repo(config, set_)
        settings = repo.config.serving
        host, port = host or settings.host, port or settings.port
        if engine is Engine.ray:
            if workers > 1:
                raise ConfigError(
                    "--workers is for the FastAPI server; Ray Serve scales with the replicas "
                    "under serving.ray"
                )
            _serve_ray(repo, alias, host, port, address)
            return
        if workers > 1:
            _serve_workers(repo, alias, host, port, workers)
            return
        import uvicorn

        from skewless.serving.fastapi_app import create_app
        from skewless.serving.service import ForecastService

        with console.status("loading the model and warming the online store"):
            service = ForecastService(repo.config, repo.home, alias)
        console.print(
            f"serving {service.current.name} version {service.current.version} "
            f"(@{service.alias}) on http://{host}:{port} (FastAPI)"
        )
        # uvicorn re-raises SIGTERM after its graceful shutdown; leave through Python's normal
        # exit then, so that exit handlers run (they release the request log's queues).
        signal.signal(signal.SIGTERM, _exit_on_signal)
        uvicorn.run(
            create_app(service),
            host=host,
            port=port,
            log_level="warning",
            timeout_keep_alive=settings.keep_alive_seconds,
        )


def _serve_workers(repo: FeastRepo, alias: str | None, host: str, port: int, workers: int) -> None:
    """Run ``workers`` FastAPI processes on one port until SIGINT or SIGTERM."""
    import uvicorn

    from skewless.serving.service import ForecastService
    from skewless.serving.workers import shared_folder

    with console.status("checking the model and the online store"):  # not N failing workers
        ForecastService(repo.config, repo.home, alias).close()
    console.print(f"serving with {workers} workers on http://{host}:{port} (FastAPI)")
    with shared_folder(repo.config, repo.home, alias):
        uvicorn.run(
            "skewless.serving.workers:worker_app",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level="warning",
            timeout_keep_alive=repo.config.serving.keep_alive_seconds,
        )


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _serve_ray(
    repo: FeastRepo, alias: str | None, host: str, port: int, address: str | None
) -> None:
    """Run the Ray Serve application until SIGINT or SIGTERM."""
    from skewless.serving.ray_launch import deploy, ray_cluster

    with ray_cluster(address) as stop:
        with console.status("starting Ray Serve: ingress, features, preprocessing, model"):
            name = deploy(repo.config, repo.home, alias, host, port)
        console.print(f"serving on http://{host}:{port} (Ray Serve, app '{name}')")
        stop.wait()


@app.command("verify-skew")
def verify_skew(
    config: ConfigArg,
    alias: Annotated[str, typer.Option(help="registry alias to check")] = "production",
    samples: Annotated[int, typer.Option(min=1, help="(entity, time) pairs to compare")] = 50,
    set_: SetOpt = None,
) -> None:
    """Forecast sampled (entity, time) pairs from offline and online inputs; exit 1 on skew."""
    with user_errors():
        repo = _repo(config, set_)
        from skewless.training.skew_check import verify_skew as check

        with console.status(f"comparing {samples} (entity, time) pairs"):
            report = check(repo.config, repo.home, alias, samples)
        for pair in report.differing[:20]:
            console.print(
                f"[red]differs[/]: entity {pair.entity!r} at {pair.time.isoformat()}: "
                f"largest difference {pair.max_abs_difference:.3g}"
            )
        console.print(
            f"{len(report.pairs)} pairs compared, {len(report.differing)} differ; "
            f"largest absolute difference {report.largest:.3g}"
        )
        if report.differing:
            raise typer.Exit(1)


@app.command()
def monitor(
    config: ConfigArg, retrain: RetrainOpt = False, every: EveryOpt = None, set_: SetOpt = None
) -> None:
    """Drift, accuracy, latency and errors of the recent period against the alert rules;
    alerts go to the alert log and the webhook. Exit code 2 when an alert fired."""
    run_monitor(_config(config, set_), retrain, every)


@app.command()
def report(config: ConfigArg, out: OutOpt = None, set_: SetOpt = None) -> None:
    """One self-contained HTML page: forecasts against actuals, drift, latency, versions."""
    run_report(_config(config, set_), out)


def _frame_table(frame: pd.DataFrame) -> Table:
    table = Table()
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for row in frame.itertuples(index=False):
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    return table


@app.command()
def backtest(config: ConfigArg, csv: CsvOpt = None, set_: SetOpt = None) -> None:
    """Rolling-origin backtest: refit per fold, score every window of each test period."""
    with user_errors():
        repo, history = _history(config, set_, csv)
        from skewless.training.backtest import backtest as run_backtest
        from skewless.training.backtest import fold_bounds
        from skewless.training.tracking import log_backtest, tracked_run

        fold_bounds(repo.config, history)  # refuse impossible fold layouts before any work
        with tracked_run(repo.config, repo.home, "backtest") as run_id, _progress() as progress:
            task = progress.add_task("folds", total=repo.config.backtest.folds)
            report = run_backtest(repo.config, history, on_fold=lambda _: progress.advance(task))
            log_backtest(report, repo.config)
        _print_metrics(
            "backtest folds",
            [
                *(
                    row
                    for f in report.folds
                    for row in _beside_naive(
                        f"{f.number}: {f.test_start:%Y-%m-%d %H:%M} .. "
                        f"{f.test_end:%Y-%m-%d %H:%M} ({f.windows} windows)",
                        f.evaluation.overall,
                        f.naive.overall,
                    )
                ),
                *_beside_naive("all folds", report.overall.overall, report.naive.overall),
            ],
        )
        _print_verdict(report.overall.overall, report.naive.overall)
        per_entity = report.overall.per_entity.to_dict("index")
        _print_metrics("all folds, per entity", list(per_entity.items()))
        steps = report.overall.per_horizon
        shown = sorted({1, len(steps) // 2 or 1, len(steps)})
        _print_metrics(
            "all folds, per horizon step", [(f"step {s}", steps.loc[s].to_dict()) for s in shown]
        )
        console.print(f"MLflow run {run_id}")


@app.command()
def tune(
    config: ConfigArg,
    csv: CsvOpt = None,
    trials: Annotated[int | None, typer.Option(min=1, help="overrides tuning.trials")] = None,
    set_: SetOpt = None,
) -> None:
    """Optuna search over tuning.space; each trial is a rolling-origin backtest."""
    with user_errors():
        overrides = [*(set_ or []), *([f"tuning.trials={trials}"] if trials else [])]
        repo, history = _history(config, overrides, csv)
        import optuna

        from skewless.core.stores import tuning_storage
        from skewless.training.tuning import tune as run_tune

        if not logging.getLogger().isEnabledFor(logging.INFO):  # the table below says it all
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        with _progress() as progress:
            task = progress.add_task("trials", total=repo.config.tuning.trials)
            report = run_tune(
                repo.config, history, repo.home, on_trial=lambda _: progress.advance(task)
            )
            progress.update(task, total=report.trials)  # fewer once the space is all scored
        table = Table(
            title=f"study '{report.study.study_name}' in {tuning_storage(repo.config, repo.home)}"
        )
        for column in ("trial", "state", repo.config.tuning.metric.upper(), "values"):
            table.add_column(column)
        for trial in report.study.trials:
            value = "" if trial.value is None else number(trial.value)
            table.add_row(str(trial.number), trial.state.name, value, str(trial.params))
        console.print(table)
        ran = f"this run: {report.trials} trials, {report.backtests} backtested"
        if report.exhausted:
            ran += f"; all {report.space_size} configurations of tuning.space are scored"
        console.print(ran)
        metric = repo.config.tuning.metric
        console.print(f"best {metric} {number(report.best_value)} with {report.study.best_params}")
        _print_metrics(
            "best configuration refitted on all rows: validation",
            [("all", report.refit.validation.overall)],
        )


def _history(
    config: Path, overrides: list[str] | None, csv: Path | None
) -> tuple[FeastRepo, History]:
    """The repo and its training rows (read in entity batches), with the request checked before
    and after opening them."""
    repo = _repo(config, overrides)
    from skewless.training.pipeline import check_request, open_history

    check_request(repo.config)  # model and parameters, before the (slow) open
    with console.status("opening history"):
        history = open_history(repo.config, repo.home, csv)
        check_request(repo.config, history)
    return repo, history


def _print_metrics(title: str, rows: Sequence[tuple[object, Mapping[Any, float]]]) -> None:
    from skewless.training.metrics import METRICS

    table = Table(title=title)
    table.add_column("", justify="left")
    for metric in METRICS:
        table.add_column(metric.upper(), justify="right")
    for label, values in rows:
        table.add_row(str(label), *(number(values[m]) for m in METRICS))
    console.print(table)


def _beside_naive(
    label: str, model: dict[str, float], naive: dict[str, float]
) -> list[tuple[object, dict[str, float]]]:
    """Metrics table rows: the model's, the naive forecast's (the last value repeated) on the
    same windows, and the skill against it (1 - model / naive, above 0 beats naive)."""
    from skewless.training.backtest import skill

    return [
        (label, model),
        ("  naive, same windows", naive),
        ("  skill vs naive", skill(model, naive)),
    ]


def _print_verdict(model: dict[str, float], naive: dict[str, float]) -> None:
    """Whether the model beats naive on the metric promotions compare by default, in a line."""
    from skewless.training.backtest import skill

    ours, theirs = model["mse"], naive["mse"]
    if ours < theirs:
        verdict = "[green]beats naive[/]"
    elif ours == theirs:
        verdict = "no better than naive"
    else:
        verdict = "[bold red]loses to naive[/]: promote refuses such a version without --force"
    console.print(
        f"backtest MSE {number(ours)}, naive {number(theirs)} on the same windows: skill "
        f"{number(skill(model, naive)['mse'])}, {verdict}"
    )


benchmark_app = typer.Typer(
    help="Reproducible comparisons with published results.", no_args_is_help=True
)
app.add_typer(benchmark_app, name="benchmark")
app.add_typer(models_app, name="models")


@benchmark_app.command("ltsf")
def benchmark_ltsf(
    data: Annotated[Path, typer.Option(help="CSV with a 'date' column and one column per channel")],
    lookback: Annotated[int, typer.Option(min=1, help="input length L")] = 336,
    horizons: Annotated[
        str, typer.Option(help="comma-separated forecast lengths")
    ] = "96,192,336,720",
    models: Annotated[
        str, typer.Option(help="comma-separated, as in docs/ltsf.md: naive, nlinear, hybrid...")
    ] = "naive,nlinear",
    drop_last_batch: Annotated[
        int | None,
        typer.Option(
            help="drop the last incomplete test batch of this size, as published tables did"
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="also write the table as JSON")] = None,
    intervals: Annotated[
        bool,
        typer.Option(
            "--intervals",
            help="also score 80 and 95 % conformal intervals calibrated on the validation "
            "split: test coverage and mean width",
        ),
    ] = False,
) -> None:
    """The standard long-horizon protocol (train/val/test borders, standardised MSE/MAE)."""
    with user_errors():
        from skewless.training.ltsf import (
            Result,
            paper_table,
            paper_title,
            run_protocol,
            save_records,
        )

        try:
            horizon_list = [int(h) for h in horizons.split(",")]
        except ValueError:
            raise typer.BadParameter(
                f"'{horizons}' is not a list of integers", param_hint="--horizons"
            ) from None
        model_list = [m.strip() for m in models.split(",") if m.strip()]
        finished: list[Result] = []

        def record(result: Result) -> None:
            finished.append(result)
            progress.advance(task)
            if out is not None:
                save_records(out, finished)

        with _progress() as progress:
            task = progress.add_task("fitting", total=len(horizon_list) * len(model_list))
            results = run_protocol(
                data,
                lookback,
                horizon_list,
                model_list,
                drop_last_batch,
                on_result=record,
                intervals=intervals,
            )
        table = _frame_table(paper_table(results))
        table.title = paper_title(data.stem, lookback, drop_last_batch)
        console.print(table)
        if out is not None:
            console.print(f"wrote {out}")


def _entity_ids(values: list[str], config: SkewlessConfig) -> list[int | str]:
    if config.data.entity_type == "string":
        return list(values)
    try:
        return [int(v) for v in values]
    except ValueError:
        raise typer.BadParameter(
            f"{values} must be integer ids, because data.entity_type is int64",
            param_hint="--entity",
        ) from None


@contextmanager
def _progress() -> Iterator[Progress]:
    """Rich progress bars, which also show what the library reports (epochs, rounds)."""
    from skewless.core.progress import listening

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    reported: dict[str, TaskID] = {}

    def show(what: str, done: int, total: int) -> None:
        if what not in reported:
            reported[what] = bars.add_task(what, total=total)
        bars.update(reported[what], completed=done, total=total)

    with bars, listening(show):
        yield bars


@contextmanager
def _counter(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar fed with (done, total) by the library."""
    with _progress() as progress:
        task = progress.add_task(label, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def _print_ingest(reports: list[IngestReport]) -> None:
    table = Table(title="ingest")
    for column in ("source", "rows read", "new rows", "already stored", "entities"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for report in reports:
        table.add_row(
            report.origin,
            str(report.rows_read),
            str(report.rows_written),
            str(report.rows_already_stored),
            _few(report.entities),
        )
    console.print(table)
    for report in reports:
        for warning in report.warnings[:SHOWN_WARNINGS]:
            console.print(f"[yellow]warning[/] {report.origin}: {warning}", highlight=False)
        if len(report.warnings) > SHOWN_WARNINGS:
            console.print(
                f"[yellow]warning[/] {report.origin}: ... and "
                f"{len(report.warnings) - SHOWN_WARNINGS} more (the log has them all)"
            )


# A fleet's worth of entities or warnings helps no one on a terminal.
SHOWN_WARNINGS = 20


def _few(entities: list) -> str:
    shown = ", ".join(str(e) for e in entities[:8])
    return shown if len(entities) <= 8 else f"{shown}, ... ({len(entities)} entities)"
