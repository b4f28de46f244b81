"""``skewless schedule``: real APScheduler schedulers (in-process and as `skewless schedule`
processes) on a real SQLite monitoring database: one run per job and cron time across two
processes, never two runs of a job at once, skipped and missed runs recorded and counted,
failing jobs retried without stopping the others, the real actions, and the report."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest
import yaml

from skewless.core.config import SkewlessConfig
from skewless.core.errors import ConfigError, StoreUnavailableError
from skewless.core.monitoring_db import monitoring_engine
from skewless.core.stores import request_log_url
from skewless.features.repo import FeastRepo
from skewless.monitoring.monitor import assess
from skewless.monitoring.report import job_summary, render
from skewless.monitoring.store import read_job_runs
from skewless.operations.schedule import Scheduler
from tests.conftest import ETTH_CONFIG, etth_config, free_port, raw_rows, wait_for

SKEWLESS = str(Path(sys.executable).parent / "skewless")


def scheduled(config: SkewlessConfig, jobs: dict, **settings: object) -> SkewlessConfig:
    """``config`` with these jobs (and schedule settings), validated as a config file is."""
    raw = config.model_dump(mode="json", exclude_none=True)
    raw["schedule"] = {"jobs": jobs, "metrics_port": None, **settings}
    return SkewlessConfig.model_validate(raw)


def runs(config: SkewlessConfig, home: Path) -> pd.DataFrame:
    engine = monitoring_engine(request_log_url(config, home))
    return read_job_runs(engine, config.name)


def stamp_command(log: Path, seconds: float) -> list[str]:
    """A job that appends its start and end (unix time, pid) to ``log``: evidence of every
    run, kept apart from the scheduler's own record."""
    code = (
        "import json, os, sys, time\n"
        f"log = open({str(log)!r}, 'a')\n"
        "start = time.time()\n"
        f"time.sleep({seconds})\n"
        "log.write(json.dumps([start, time.time(), os.getppid()]) + '\\n')\n"
    )
    return [sys.executable, "-c", code]


def test_a_cron_expression_that_does_not_parse_is_refused_naming_the_job(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"schedule\.jobs\.nightly\.cron: '61 \* \* \* \*'"):
        etth_config("schedule.jobs.nightly={action: compact, cron: '61 * * * *'}")
    with pytest.raises(ConfigError, match=r"schedule\.jobs\.weekly\.cron: '0 3 \* \*' has 4"):
        etth_config("schedule.jobs.weekly={action: compact, cron: '0 3 * *'}")
    with pytest.raises(ConfigError, match=r"schedule\.jobs\.odd: 'command' is given"):
        etth_config("schedule.jobs.odd={action: compact, cron: '0 3 * * *', command: [ls]}")
    started = subprocess.run(
        [
            *(SKEWLESS, "schedule", str(ETTH_CONFIG)),
            *("--set", "schedule.jobs.hourly.action=ingest"),
            *("--set", "schedule.jobs.hourly.cron=every hour"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "SKEWLESS_HOME": str(tmp_path)},
        timeout=120,
    )
    assert started.returncode == 1
    assert "schedule.jobs.hourly.cron" in started.stderr and "every hour" in started.stderr
    assert not (tmp_path / "monitoring.db").exists()  # refused before anything started
    no_sources = scheduled(
        etth_config("data.sources=[]"), {"hourly": {"action": "ingest", "cron": "5 * * * *"}}
    )
    with pytest.raises(ConfigError, match=r"schedule\.jobs\.hourly ingests data\.sources"):
        Scheduler(no_sources, tmp_path)
    with pytest.raises(ConfigError, match="no jobs under schedule.jobs"):
        Scheduler(scheduled(etth_config(), {}), tmp_path)
    unreachable = scheduled(
        etth_config("monitoring.request_log.url=postgresql+psycopg://u:secret@127.0.0.1:1/x"),
        {"nightly": {"action": "compact", "cron": "0 3 * * *"}},
    )
    with pytest.raises(StoreUnavailableError, match=r"monitoring database \(.*u:\*\*\*@") as caught:
        Scheduler(unreachable, tmp_path)
    assert "secret" not in str(caught.value)


def test_crontab_weekday_numbers_mean_what_crontab_says() -> None:
    from skewless.core.cron import cron_trigger

    wednesday = datetime(2026, 12, 2, tzinfo=UTC)
    for expression, day in [("0 3 * * 0", 6), ("0 3 * * 7", 6), ("0 3 * * 1-5", 2)]:
        fires = cron_trigger(expression).get_next_fire_time(None, wednesday)
        assert fires is not None and fires.day == day, expression
    every_day = cron_trigger("0 3 * * 0-6").get_next_fire_time(None, wednesday)
    assert every_day == datetime(2026, 12, 2, 3, tzinfo=UTC)


@pytest.mark.slow  # real schedulers, seconds of cron times
def test_two_scheduler_processes_run_each_cron_time_once_and_a_job_never_twice_at_once(
    tmp_path: Path,
) -> None:
    """Two `skewless schedule` processes on one monitoring database and job store. ``slow``
    fires every 2 s and runs 3 s: every other time finds the previous run still running and is
    skipped; ``quick`` fires every second. The jobs' own logs are the ground truth."""
    slow_log, quick_log = tmp_path / "slow.jsonl", tmp_path / "quick.jsonl"
    jobs = {
        "slow": {
            "action": "command",
            "cron": "*/2 * * * * *",
            "command": stamp_command(slow_log, 3),
        },
        "quick": {
            "action": "command",
            "cron": "* * * * * *",
            "command": stamp_command(quick_log, 0.2),
        },
    }
    config_file = tmp_path / "scheduled.yaml"
    raw = yaml.safe_load(ETTH_CONFIG.read_text())
    raw["data"]["sources"] = []
    raw["schedule"] = {"jobs": jobs, "lease_seconds": 6}
    config_file.write_text(yaml.safe_dump(raw))
    ports = [free_port(), free_port()]
    env = {**os.environ, "SKEWLESS_HOME": str(tmp_path / "home")}
    processes = [
        subprocess.Popen(
            [SKEWLESS, "schedule", str(config_file), "--set", f"schedule.metrics_port={port}"],
            env=env,
            stdout=(tmp_path / f"scheduler-{port}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for port in ports
    ]
    try:
        for port in ports:
            wait_for(lambda p=port: _metrics(p), f"scheduler metrics on {port}", 120)
        time.sleep(14)
        scraping = datetime.now(UTC).replace(tzinfo=None)
        metrics = [_metrics(port) for port in ports]
        scraped = datetime.now(UTC).replace(tzinfo=None)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [_stopped(process) for process in processes]
    logs = "".join((tmp_path / f"scheduler-{port}.log").read_text() for port in ports)
    assert codes == [0, 0], logs
    assert "Traceback" not in logs, logs
    recorded = runs(etth_config(), tmp_path / "home")  # the config's name: etth
    for job, log in (("slow", slow_log), ("quick", quick_log)):
        ran = [json.loads(line) for line in log.read_text().splitlines()]
        mine = recorded[recorded["job"] == job]
        succeeded = mine[mine["outcome"] == "succeeded"]
        assert len(ran) == len(succeeded) >= 4, (job, ran, mine)  # each run ran once
        assert mine["scheduled_for"].is_unique
        ran.sort()
        for before, after in itertools.pairwise(ran):
            assert before[1] <= after[0], f"two runs of {job} at once: {before} {after}"
        for outcome in ("succeeded", "skipped"):  # the counters agree with the record
            ended = mine.loc[mine["outcome"] == outcome, "finished_at"]
            counted = sum(_sample(m, "skewless_job_runs_total", job, outcome) for m in metrics)
            assert (ended < scraping).sum() <= counted <= (ended < scraped).sum(), (job, outcome)
    slow = recorded[recorded["job"] == "slow"]
    assert (slow["outcome"] == "skipped").sum() >= 2, slow
    quick_runners = set(recorded.loc[recorded["job"] == "quick", "runner"])
    started = recorded[recorded["outcome"] == "succeeded"]
    delay = (started["started_at"] - started["scheduled_for"]).dt.total_seconds() * 1000
    print(
        f"quick ran in {len(quick_runners)} scheduler(s); from cron time to a claimed start: "
        f"p50 {delay.median():.0f} ms, max {delay.max():.0f} ms over {len(delay)} runs"
    )


def _stopped(process: subprocess.Popen) -> int | None:
    """The exit code of a process sent SIGTERM; None (and killed) if it hangs."""
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def _metrics(port: int) -> str | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.TransportError:
        return None


def _sample(metrics: str | None, name: str, job: str, outcome: str) -> float:
    pattern = rf'{name}\{{job_name="{job}",outcome="{outcome}"\}} (\S+)'
    found = re.search(pattern, metrics or "")
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow  # real schedulers, seconds of cron times
def test_a_failing_job_is_retried_counted_and_the_others_keep_running(tmp_path: Path) -> None:
    config = scheduled(
        etth_config(),
        {
            "broken": {
                "action": "command",
                "cron": "*/2 * * * * *",
                "command": [sys.executable, "-c", "raise SystemExit('disk full')"],
                "retries": 2,
                "retry_delay_seconds": 0.1,
            },
            "fine": {"action": "command", "cron": "* * * * * *", "command": ["true"]},
        },
    )
    scheduler = Scheduler(config, tmp_path)
    scheduler.start()
    try:
        wait_for(lambda: (runs(config, tmp_path)["outcome"] == "failed").sum() >= 2, "failures", 30)
        wait_for(
            lambda: (
                (runs(config, tmp_path).query("job == 'fine'")["outcome"] == "succeeded").sum() >= 3
            ),
            "the healthy job",
            30,
        )
    finally:
        scheduler.stop()
    recorded = runs(config, tmp_path)
    broken = recorded[(recorded["job"] == "broken") & recorded["finished_at"].notna()]
    assert set(broken["outcome"]) == {"failed"} and set(broken["attempts"]) == {3}
    assert broken["detail"].str.contains("disk full").all()
    failed_runs = scheduler.metrics.runs.labels("broken", "failed")._value.get()
    assert failed_runs == len(broken)
    assert scheduler.metrics.attempt_failures.labels("broken")._value.get() == 3 * len(broken)


@pytest.mark.slow  # real schedulers, seconds of cron times
def test_missed_runs_follow_the_misfire_grace_and_coalesce(tmp_path: Path) -> None:
    """A scheduler stopped while its job's cron times pass: a new one finds the job (its next
    run time kept in the job store) late; past the grace it is recorded as missed, once for all
    the coalesced times; within the grace it runs once."""
    jobs = {"tick": {"action": "command", "cron": "*/2 * * * * *", "command": ["true"]}}
    strict = scheduled(etth_config(), jobs, misfire_grace_seconds=1)
    first = Scheduler(strict, tmp_path)
    first.start()
    wait_for(lambda: len(runs(strict, tmp_path)) >= 1, "a first run", 30)
    first.stop()
    time.sleep(5)  # two or three cron times pass with no scheduler
    second = Scheduler(strict, tmp_path)
    second.start()
    wait_for(lambda: (runs(strict, tmp_path)["outcome"] == "missed").any(), "the missed run", 30)
    second.stop()
    recorded = runs(strict, tmp_path)
    missed = recorded[recorded["outcome"] == "missed"]
    assert len(missed) == 1 and "past its misfire grace" in missed["detail"].iloc[0]
    assert second.metrics.runs.labels("tick", "missed")._value.get() == 1
    # Within the grace: the times missed while stopped are run once, at the latest of them.
    lenient = scheduled(etth_config(), jobs, misfire_grace_seconds=60)
    third = Scheduler(lenient, tmp_path)
    third.start()  # the grace changed: the job is rescheduled; stop and come back
    wait_for(lambda: len(runs(lenient, tmp_path)) > len(recorded), "a run", 30)
    third.stop()
    before = runs(lenient, tmp_path)
    time.sleep(5)
    fourth = Scheduler(lenient, tmp_path)
    restarted_at = datetime.now(UTC).replace(tzinfo=None)  # every cron time before it was missed
    fourth.start()
    wait_for(lambda: len(runs(lenient, tmp_path)) > len(before), "the coalesced run", 30)
    time.sleep(0.5)
    fourth.stop()
    caught_up = runs(lenient, tmp_path).iloc[len(before) :]
    late = caught_up[caught_up["scheduled_for"] < pd.Timestamp(restarted_at)]
    assert len(late) == 1 and late["outcome"].iloc[0] == "succeeded", caught_up


def test_the_real_jobs_ingest_materialize_compact_monitor_and_show_in_the_report(
    tmp_path: Path, own_release: SkewlessConfig, etth_sqlite: FeastRepo
) -> None:
    source = tmp_path / "station.csv"
    rows = raw_rows(None, "2024-01-01", 424)
    rows.head(400).to_csv(source, index=False)
    home = tmp_path / "home"
    base = etth_config(
        "data.sources=[]",
        f"tracking.uri={own_release.tracking.uri}",
        f"registry.model_name={own_release.model_name}",
    )
    raw = base.model_dump(mode="json", exclude_none=True)
    raw["data"]["sources"] = [{"path": str(source), "entity": 7}]
    raw["schedule"] = {
        "metrics_port": None,
        "jobs": {
            "ingest": {"action": "ingest", "cron": "5 * * * *"},
            "materialize": {"action": "materialize", "cron": "10 * * * *"},
            "compact": {"action": "compact", "cron": "0 3 * * *"},
            "monitor": {"action": "monitor", "cron": "0 6 * * *"},
        },
    }
    config = SkewlessConfig.model_validate(raw)
    scheduler = Scheduler(config, home)
    assert scheduler.run_now("ingest") == "succeeded"
    rows.to_csv(source, index=False)  # a day more
    assert scheduler.run_now("materialize") == "succeeded"
    time.sleep(1.1)  # run_now names runs by the second
    assert scheduler.run_now("ingest") == "succeeded"
    time.sleep(1.1)
    assert scheduler.run_now("materialize") == "succeeded"
    assert scheduler.run_now("compact") == "succeeded"
    assert scheduler.run_now("monitor") == "succeeded"
    recorded = runs(config, home)
    details = list(zip(recorded["job"], recorded["detail"], strict=True))
    assert list(recorded["outcome"]) == ["succeeded"] * 6, recorded
    assert recorded["detail"].iloc[0] == "400 new row(s) from 1 source(s)", details
    assert recorded["detail"].iloc[2] == "24 new row(s) from 1 source(s)", details
    assert "windows of 1 entities written" in recorded["detail"].iloc[3], details
    assert recorded["detail"].iloc[4] == "merged 2 part(s)", details
    assert "alert(s)" in recorded["detail"].iloc[5], details
    alerts = scheduler.metrics.monitor_alerts  # by rule, for Prometheus's rules to read
    assert alerts.labels("drift_psi")._value.get() >= 0 and len(alerts._metrics) >= 6
    repo = FeastRepo(config, home)
    january = pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-02-01", tz="UTC")
    assert len(repo.offline.rows_between([7], *january)) == 424
    summary = job_summary(recorded)
    assert set(summary["job"]) == {"ingest", "materialize", "compact", "monitor"}
    page = render(config, assess(config, home), recorded)
    assert "Scheduled jobs" in page and "merged 2 part(s)" in page
    config_file, out = tmp_path / "scheduled.yaml", tmp_path / "report.html"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    reported = subprocess.run(
        [SKEWLESS, "report", str(config_file), "--out", str(out)],
        env={**os.environ, "SKEWLESS_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reported.returncode == 0, reported.stderr
    written = out.read_text()
    assert "Last 20 runs, newest first" in written and "400 new row(s) from 1 source(s)" in written
    with pytest.raises(ConfigError, match="no job 'nightly'"):
        scheduler.run_now("nightly")


@pytest.mark.slow  # real schedulers, seconds of cron times
def test_a_run_whose_scheduler_was_killed_is_abandoned_once_its_lease_lapses(
    tmp_path: Path,
) -> None:
    """`skewless schedule --run` killed (SIGKILL) mid-run: its lease keeps the job taken until
    it lapses (a run in that time is skipped), then the next run takes the job and records the
    dead one as abandoned."""
    jobs = {"slow": {"action": "command", "cron": "0 3 * * *", "command": ["sleep", "30"]}}
    config_file = tmp_path / "scheduled.yaml"
    raw = yaml.safe_load(ETTH_CONFIG.read_text())
    raw["schedule"] = {"jobs": jobs, "lease_seconds": 8, "metrics_port": None}
    config_file.write_text(yaml.safe_dump(raw))
    config = scheduled(etth_config(), jobs, lease_seconds=8)
    home = tmp_path / "home"
    killed = subprocess.Popen(
        [SKEWLESS, "schedule", str(config_file), "--run", "slow"],
        env={**os.environ, "SKEWLESS_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: home.exists() and len(runs(config, home)) == 1, "the run to start", 120)
    children = psutil.Process(killed.pid).children(recursive=True)  # the job's sleep
    killed.kill()
    killed.wait()
    for child in children:
        child.kill()
    scheduler = Scheduler(
        scheduled(
            etth_config(), {**jobs, "slow": {**jobs["slow"], "command": ["true"]}}, lease_seconds=8
        ),
        home,
    )
    time.sleep(1.1)  # run_now names runs by the second
    assert scheduler.run_now("slow") == "skipped"  # the lease has not lapsed yet
    time.sleep(8.5)
    assert scheduler.run_now("slow") == "succeeded"
    assert list(runs(config, home)["outcome"]) == ["abandoned", "skipped", "succeeded"]


@pytest.mark.postgres
def test_two_schedulers_on_postgresql_run_each_cron_time_once(tmp_path: Path) -> None:
    """The same claims on a PostgreSQL monitoring database (and job store), with two
    schedulers firing the same jobs."""
    import psycopg

    schema = f"sched_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {schema}")
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    slow_log, quick_log = tmp_path / "slow.jsonl", tmp_path / "quick.jsonl"
    jobs = {
        "slow": {
            "action": "command",
            "cron": "*/2 * * * * *",
            "command": stamp_command(slow_log, 3),
        },
        "quick": {
            "action": "command",
            "cron": "* * * * * *",
            "command": stamp_command(quick_log, 0.2),
        },
    }
    config = scheduled(etth_config(f"monitoring.request_log.url={url}"), jobs, lease_seconds=6)
    schedulers = [Scheduler(config, tmp_path / f"home{i}") for i in range(2)]
    try:
        for scheduler in schedulers:
            scheduler.start()
        time.sleep(12)
    finally:
        for scheduler in schedulers:
            scheduler.stop()
    recorded = runs(config, tmp_path)
    for job, log in (("slow", slow_log), ("quick", quick_log)):
        ran = sorted(json.loads(line) for line in log.read_text().splitlines())
        mine = recorded[recorded["job"] == job]
        assert len(ran) == (mine["outcome"] == "succeeded").sum() >= 3, (job, mine)
        assert mine["scheduled_for"].is_unique
        for before, after in itertools.pairwise(ran):
            assert before[1] <= after[0], f"two runs of {job} at once: {before} {after}"
    assert (recorded.loc[recorded["job"] == "slow", "outcome"] == "skipped").sum() >= 2
