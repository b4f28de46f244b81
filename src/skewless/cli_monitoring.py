"""``skewless monitor`` and ``skewless report``: the closed loop from the request log back to
training."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from skewless.cli_output import console, errors, number, user_errors
from skewless.core.library_notices import quiet_feast_deprecations

if TYPE_CHECKING:
    import pandas as pd

    from skewless.core.config import SkewlessConfig
    from skewless.monitoring.monitor import MonitorResult

RetrainOpt = Annotated[
    bool,
    typer.Option(
        help="on an alert, train and register a new version (staged per monitoring.retrain)"
    ),
]
EveryOpt = Annotated[
    float | None,
    typer.Option(help="repeat every this many seconds until interrupted", min=1),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(help="where to write the HTML (default: SKEWLESS_HOME/reports/<name>.html)"),
]


def run_monitor(config: SkewlessConfig, retrain: bool, every: float | None) -> None:
    """Assess once, or every ``every`` seconds; exit code 2 when the last pass raised alerts."""
    from skewless.core.config import skewless_home
    from skewless.monitoring.monitor import monitor

    quiet_feast_deprecations()
    with user_errors():
        while True:
            result = monitor(config, skewless_home(), retrain=retrain)
            _print(result)
            if every is None:
                break
            time.sleep(every)
    if result.assessment.alerts:
        raise typer.Exit(2)


def run_report(config: SkewlessConfig, out: Path | None) -> None:
    from skewless.core.config import skewless_home
    from skewless.core.monitoring_db import monitoring_engine
    from skewless.core.stores import request_log_url
    from skewless.monitoring.monitor import assess
    from skewless.monitoring.report import render
    from skewless.monitoring.store import read_job_runs

    quiet_feast_deprecations()
    with user_errors():
        path = out or skewless_home() / "reports" / f"{config.name}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        assessment = assess(config, skewless_home())
        engine = monitoring_engine(request_log_url(config, skewless_home()))
        runs = read_job_runs(engine, config.name, assessment.observations.since)
        path.write_text(render(config, assessment, runs))
    console.print(f"report written to {path.resolve()}")


def _print(result: MonitorResult) -> None:
    assessment = result.assessment
    observed = assessment.observations
    console.print(
        f"{observed.served['request_id'].nunique()} requests, {len(observed.outcomes)} forecast "
        f"steps with actuals since {observed.since:%Y-%m-%d %H:%M} UTC"
    )
    gaps = observed.gaps
    if len(gaps):
        errors.print(
            f"[bold yellow]request log gaps:[/] {int(gaps['records'].sum())} records not logged "
            f"in {len(gaps)} gap(s) between {gaps['since'].min():%Y-%m-%d %H:%M} and "
            f"{gaps['until'].max():%Y-%m-%d %H:%M} UTC ({', '.join(sorted(set(gaps['reason'])))}); "
            "drift and accuracy miss those requests",
            soft_wrap=True,
        )
    console.print(_table(f"drift (against version {assessment.version})", assessment.drift))
    console.print(_entity_drift_table(assessment.entity_drift))
    console.print(_table("accuracy per version", assessment.accuracy))
    for alert in assessment.alerts:
        errors.print(f"[bold red]alert[/] {escape(alert.message)}", soft_wrap=True)
    if not assessment.alerts:
        console.print("[green]no alerts[/]")
    if result.webhook_error:
        errors.print(f"[red]webhook failed:[/] {escape(result.webhook_error)}", soft_wrap=True)
    retraining = result.retraining
    if retraining is not None:
        staged = "and staged" if retraining.staged else "not staged"
        score, production = retraining.score, retraining.production_score
        console.print(
            f"retrained: version {retraining.version} registered {staged} "
            f"(backtest {retraining.metric} {'-' if score is None else number(score)}; "
            f"production {'-' if production is None else number(production)})"
        )


def _entity_drift_table(entity_drift: pd.DataFrame) -> Table:
    from skewless.monitoring.drift import SHOWN, most_moved

    return _table(
        f"drift per entity, largest PSI first ({min(SHOWN, len(entity_drift))} of "
        f"{len(entity_drift)}; against each entity's own training rows)",
        most_moved(entity_drift),
    )


def _table(title: str, frame: pd.DataFrame) -> Table:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for row in frame.itertuples(index=False):
        table.add_row(*(number(v) if isinstance(v, float) else str(v) for v in row))
    return table
