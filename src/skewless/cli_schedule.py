"""``skewless schedule``: the config's recurring jobs on their cron expressions, until stopped."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from skewless.cli_output import console, user_errors

if TYPE_CHECKING:
    from skewless.core.config import SkewlessConfig

RunOpt = Annotated[
    str | None,
    typer.Option(
        "--run",
        help="run this job once now (claimed and recorded as scheduled runs are), then exit",
    ),
]


def run_schedule(config: SkewlessConfig, run: str | None) -> None:
    """Run the jobs until SIGTERM or Ctrl-C (runs in progress finish first), or one job now
    (exit code 1 when it fails, 3 when another run of it holds the job)."""
    from skewless.core.config import skewless_home
    from skewless.core.library_notices import quiet_feast_deprecations
    from skewless.operations.schedule import Scheduler

    quiet_feast_deprecations()
    with user_errors():
        scheduler = Scheduler(config, skewless_home())
        if run is not None:
            outcome = scheduler.run_now(run)
            console.print(f"job {run}: {outcome}")
            if outcome != "succeeded":
                raise typer.Exit(1 if outcome == "failed" else 3)
            return
        stop = threading.Event()

        def stopping(signum: int, _: FrameType | None) -> None:
            console.print(f"{signal.Signals(signum).name}: finishing the runs in progress")
            stop.set()

        signal.signal(signal.SIGTERM, stopping)
        signal.signal(signal.SIGINT, stopping)
        upcoming = scheduler.start()
    try:
        table = Table(title=f"scheduled jobs of '{config.name}'")
        for column in ("job", "action", "cron", "next run"):
            table.add_column(column)
        for name, job in config.schedule.jobs.items():
            after = upcoming[name]
            table.add_row(name, job.action, job.cron, after.isoformat() if after else "-")
        console.print(table)
        settings = config.schedule
        if settings.metrics_port is not None:
            where = f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"
            console.print(f"metrics at {where}")
        while not stop.wait(1):
            pass
    finally:
        scheduler.stop()
    console.print("scheduler stopped")
