"""``skewless report``: one self-contained HTML page (plots inlined as PNG) of an assessment:
forecast against actual with intervals, accuracy per version against its backtest and per day,
drift per variable and the entities that moved most, latency over time, the version history,
the period's alerts, and the runs of scheduled jobs."""

from __future__ import annotations

import base64
import html
import io
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure  # the object API: no pyplot state, no display needed

from skewless.core.config import SkewlessConfig
from skewless.core.schema import EVENT_TS
from skewless.monitoring.alerts import Alert
from skewless.monitoring.drift import most_moved
from skewless.monitoring.monitor import Assessment
from skewless.monitoring.observations import ENTITY, TARGET, VERSION

_ENTITIES_PLOTTED = 4
_RUNS_SHOWN = 20
_OUTCOMES = ("succeeded", "failed", "skipped", "missed", "abandoned", "running")
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0; } .sub { color: #666; margin-top: .2rem; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }
th { background: #f3f3f3; } img { max-width: 100%; }
.alert { background: #fde8e8; border-left: 4px solid #c81e1e; padding: .4rem .8rem; }
.ok { background: #e8f5e9; border-left: 4px solid #2e7d32; padding: .4rem .8rem; }
"""


def render(
    config: SkewlessConfig, assessment: Assessment, job_runs: pd.DataFrame | None = None
) -> str:
    """The page, as one string of HTML with every image inlined; ``job_runs`` (the period's
    runs of scheduled jobs, from ``read_job_runs``) adds their section."""
    observations = assessment.observations
    sections = [
        ("Alerts", _alerts(assessment.alerts)),
        ("Forecast against actual", _image(_forecast_figure(assessment))),
        ("Accuracy per version, against its backtest", _table(assessment.accuracy)),
        ("", _image(_daily_figure(assessment))),
        ("Input drift per variable", _image(_drift_figure(assessment, config))),
        ("", _table(assessment.drift)),
        (
            "Input drift per entity, largest PSI first (against its own training rows)",
            _table(most_moved(assessment.entity_drift)),
        ),
        ("Serving latency", _image(_latency_figure(observations.served, config))),
        ("Model versions", _table(_versions(assessment)) + _alias_history(assessment)),
    ]
    if job_runs is not None:
        sections += [
            ("Scheduled jobs", _table(job_summary(job_runs))),
            (f"Last {_RUNS_SHOWN} runs, newest first", _table(_last_runs(job_runs))),
        ]
    body = "\n".join(
        (f"<h2>{html.escape(title)}</h2>" if title else "") + content for title, content in sections
    )
    period = f"{observations.since:%Y-%m-%d %H:%M} to {observations.until:%Y-%m-%d %H:%M} UTC"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>skewless report: "
        f"{html.escape(config.name)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(config.model_name)}</h1>"
        f"<p class='sub'>period {period}; {observations.served['request_id'].nunique()} requests, "
        f"{len(observations.outcomes)} forecast steps with actuals; drift against version "
        f"{assessment.version}; written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>"
        f"{body}</body></html>"
    )


def job_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per job: its runs by outcome, its last run and how it ended, and its last success."""
    if runs.empty:
        return pd.DataFrame()
    rows = []
    for job, mine in runs.groupby("job", sort=True):
        last = mine.sort_values("started_at").iloc[-1]
        succeeded = mine[mine["outcome"] == "succeeded"]
        counts = mine["outcome"].value_counts()
        rows.append(
            {
                "job": job,
                "action": last["action"],
                **{o: int(counts.get(o, 0)) for o in _OUTCOMES},
                "last run (UTC)": f"{last['started_at']:%Y-%m-%d %H:%M:%S}",
                "last outcome": last["outcome"],
                "last success (UTC)": (
                    f"{succeeded['finished_at'].max():%Y-%m-%d %H:%M:%S}"
                    if len(succeeded)
                    else "never"
                ),
            }
        )
    return pd.DataFrame(rows)


def _last_runs(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty:
        return pd.DataFrame()
    shown = runs.sort_values("started_at", ascending=False).head(_RUNS_SHOWN)
    seconds = (shown["finished_at"] - shown["started_at"]).dt.total_seconds()
    return pd.DataFrame(
        {
            "job": shown["job"],
            "scheduled for (UTC)": shown["scheduled_for"].dt.strftime("%Y-%m-%d %H:%M:%S"),
            "started (UTC)": shown["started_at"].dt.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": seconds.round(1),
            "outcome": shown["outcome"],
            "attempts": shown["attempts"],
            "runner": shown["runner"],
            "detail": shown["detail"].fillna("").str.slice(0, 200),
        }
    )


def _image(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"<img alt='plot' src='data:image/png;base64,{encoded}'>"


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p>nothing in this period</p>"
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0)


def _alerts(alerts: list[Alert]) -> str:
    if not alerts:
        return "<p class='ok'>no rule fired in this period</p>"
    return "".join(f"<p class='alert'>{html.escape(a.message)}</p>" for a in alerts)


def _empty(figure: Figure, message: str) -> Figure:
    figure.text(0.5, 0.5, message, ha="center", va="center", color="#666")
    return figure


def _forecast_figure(assessment: Assessment) -> Figure:
    """Per entity, its latest forecast with the most steps that have actuals: forecast, widest
    interval, and actual."""
    outcomes = assessment.observations.outcomes
    entities = list(pd.unique(outcomes[ENTITY]))[:_ENTITIES_PLOTTED] if len(outcomes) else []
    figure = Figure(figsize=(11, 2.8 * max(len(entities), 1)))
    if not entities:
        return _empty(figure, "no logged forecast has actuals yet")
    levels = assessment.observations.levels
    for index, entity in enumerate(entities, start=1):
        axes = figure.add_subplot(len(entities), 1, index)
        mine = outcomes[outcomes[ENTITY] == entity]
        target = mine[TARGET].iloc[0]
        mine = mine[mine[TARGET] == target]
        steps = mine.groupby("request_id", sort=False).size()
        latest = mine[mine["request_id"] == steps[steps == steps.max()].index[-1]]
        times = pd.to_datetime(latest[EVENT_TS])
        if levels:
            widest = levels[-1]
            axes.fill_between(
                times,
                latest[f"lower_{widest}"],
                latest[f"upper_{widest}"],
                alpha=0.25,
                label=f"{widest}% interval",
            )
        axes.plot(times, latest["forecast"], label="forecast")
        axes.plot(times, latest["actual"], color="black", label="actual")
        axes.set_title(f"entity {entity}, {target}, version {latest[VERSION].iloc[0]}", fontsize=10)
        axes.legend(loc="upper left", fontsize=8)
        _dates(axes)
    figure.tight_layout()
    return figure


def _daily_figure(assessment: Assessment) -> Figure:
    """Live MAE per day of the forecast timestamps, one line per version and entity, each
    version's backtest MAE dashed in the same colour."""
    daily = assessment.daily
    figure = Figure(figsize=(11, 3))
    if daily.empty:
        return _empty(figure, "no forecast step has an actual yet")
    axes = figure.add_subplot(1, 1, 1)
    backtest = {v.version: v.metrics.get("mae") for v in assessment.versions}
    for index, (version, rows) in enumerate(daily.groupby(VERSION)):
        colour = f"C{index}"
        for entity, series in rows.groupby(ENTITY):
            axes.plot(
                series["day"],
                series["mae"],
                marker="o",
                color=colour,
                alpha=0.8,
                label=f"version {version}, entity {entity}",
            )
        expected = backtest.get(int(rows[VERSION].iloc[0]))
        if expected is not None:
            axes.axhline(
                expected, color=colour, linestyle="--", label=f"version {version} backtest"
            )
    axes.set_ylabel("MAE per day")
    axes.legend(fontsize=8)
    _dates(axes)
    figure.tight_layout()
    return figure


def _drift_figure(assessment: Assessment, config: SkewlessConfig) -> Figure:
    drift = assessment.drift
    figure = Figure(figsize=(11, 3))
    if drift.empty:
        return _empty(figure, "no served inputs in this period")
    rules = config.monitoring.rules
    for index, (statistic, threshold) in enumerate(
        (("psi", rules.drift_psi), ("ks", rules.drift_ks)), start=1
    ):
        axes = figure.add_subplot(1, 2, index)
        axes.bar(drift["variable"], drift[statistic], color="#4c72b0")
        if threshold is not None:
            axes.axhline(threshold, color="#c81e1e", linestyle="--", label="alert threshold")
            axes.legend(fontsize=8)
        axes.set_title(statistic.upper(), fontsize=10)
        axes.tick_params(axis="x", labelrotation=45, labelsize=8)
    figure.tight_layout()
    return figure


def _latency_figure(served: pd.DataFrame, config: SkewlessConfig) -> Figure:
    requests = served.drop_duplicates("request_id")
    figure = Figure(figsize=(11, 3))
    if requests.empty:
        return _empty(figure, "no requests in this period")
    axes = figure.add_subplot(1, 1, 1)
    times = pd.to_datetime(requests["served_at"])
    axes.scatter(times, requests["latency_ms"], s=6, alpha=0.6, label="request")
    rolling = requests.set_index(times)["latency_ms"].rolling(max(len(requests) // 20, 1))
    axes.plot(times, rolling.quantile(0.99).to_numpy(), color="#dd8452", label="rolling p99")
    threshold = config.monitoring.rules.latency_p99_ms
    if threshold is not None:
        axes.axhline(threshold, color="#c81e1e", linestyle="--", label="alert threshold")
    _dates(axes)
    axes.set_ylabel("ms (inside the server)")
    axes.set_yscale("log")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _alias_history(assessment: Assessment) -> str:
    moves = [
        f"<li>{html.escape(alias)}: {' → '.join(str(v) for v in versions)}</li>"
        for alias, versions in assessment.alias_history.items()
        if versions
    ]
    return f"<ul>{''.join(moves)}</ul>" if moves else ""


def _dates(axes: Axes) -> None:
    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _versions(assessment: Assessment) -> pd.DataFrame:
    served = assessment.observations.served
    requests = served.drop_duplicates("request_id").groupby(VERSION).size()
    rows = []
    for info in assessment.versions:
        created = datetime.fromtimestamp(info.created / 1000, UTC)
        rows.append(
            {
                "version": info.version,
                "aliases": ", ".join(info.aliases),
                "created (UTC)": f"{created:%Y-%m-%d %H:%M}",
                "requests in period": int(requests.get(info.version, 0)),
                **{f"backtest {k}": v for k, v in sorted(info.metrics.items()) if np.isfinite(v)},
            }
        )
    return pd.DataFrame(rows)
