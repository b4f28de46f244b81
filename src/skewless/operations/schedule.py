"""``skewless schedule``: the jobs under ``schedule:`` in the config, each on its cron expression.

APScheduler 3 fires them, with its jobs in a SQLAlchemy job store (a table per config in the
monitoring database by default, or ``schedule.job_store``), so that each job's next run time
outlives the process. APScheduler does not keep two schedulers on one store from running the
same job, so every run is claimed in the monitoring database before it starts, in one
transaction:

1. the job's lease row is taken with a conditional UPDATE (free, or its holder stopped renewing
   it: a dead scheduler); if another run holds it, this run is **skipped** and counted (a job
   never runs twice at once, in one process or across several);
2. a ``job_runs`` row is inserted for (config, job, cron time), which a unique constraint allows
   once: a second scheduler that fires the same cron time finds it taken and does nothing.

The run renews its lease while it works (every third of ``schedule.lease_seconds``), then
records its end and outcome and frees the lease. A failing job is logged, counted and tried
again up to ``retries`` times; it never stops the scheduler or the other jobs.

Missed runs (the scheduler was down or busy): with ``coalesce`` (the default) all the missed
cron times of a job are run once, at the latest of them, if that is within the job's misfire
grace; a run later than its grace is recorded as **missed** and not run. A job whose cron
expression changed starts afresh from the next time of the new expression.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from sqlalchemy import and_, insert, make_url, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from skewless.core.config import ScheduledJob, SkewlessConfig
from skewless.core.cron import cron_trigger
from skewless.core.errors import ConfigError, JobError, SkewlessError, StoreUnavailableError
from skewless.core.monitoring_db import (
    JOB_LEASES,
    JOB_RUNS,
    create_racing,
    monitoring_engine,
    writer_engine,
)
from skewless.core.stores import request_log_url

logger = logging.getLogger(__name__)

Outcome = Literal["succeeded", "failed", "skipped", "missed"]
OUTCOMES: tuple[Outcome, ...] = ("succeeded", "failed", "skipped", "missed")
# Runs a job's action once and returns what it did, in words; sets the metrics it owns.
Action = Callable[[SkewlessConfig, Path, ScheduledJob, "JobMetrics"], str]
# The rules of skewless monitor (monitoring/alerts.py), each a series of the alerts gauge.
MONITOR_RULES = ("drift_psi", "drift_ks", "accuracy", "coverage", "latency_p99", "error_rate")
_DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600)
_COMMAND_OUTPUT_CHARS = 2000


def _now() -> datetime:
    """The tables' time: naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def describe_url(url: str) -> str:
    """A database URL as logs may show it: without its password."""
    return make_url(url).render_as_string(hide_password=True)


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


# -- the actions ---------------------------------------------------------------------------------


def run_action(config: SkewlessConfig, home: Path, job: ScheduledJob, metrics: JobMetrics) -> str:
    """Run one job's action once; what it did, in words. Raises on failure. A monitor run
    sets the alerts gauge: the alerts it raised, by rule."""
    if job.action == "command":
        return _command(job.command or [])
    if job.action == "monitor":
        from skewless.monitoring.monitor import monitor

        result = monitor(config, home, retrain=job.retrain)
        alerts = result.assessment.alerts
        for rule in {*MONITOR_RULES, *(alert.rule for alert in alerts)}:
            metrics.monitor_alerts.labels(rule).set(sum(a.rule == rule for a in alerts))
        said = f"{len(alerts)} alert(s)"
        if result.retraining is not None:
            staged = "staged" if result.retraining.staged else "not staged"
            said += f"; retrained version {result.retraining.version} ({staged})"
        return said
    from skewless.core.library_notices import quiet_feast_deprecations
    from skewless.features.repo import FeastRepo

    quiet_feast_deprecations()
    repo = FeastRepo(config, home)
    if job.action == "ingest":
        from skewless.features.ingest import ingest

        reports = ingest(repo)
        written = sum(r.rows_written for r in reports)
        return f"{written} new row(s) from {len(reports)} source(s)"
    if job.action == "materialize":
        from skewless.features.materialize import materialize

        report = materialize(repo, incremental=True)
        kind = "incremental" if report.incremental else "full"
        return f"{kind}: windows of {report.entities_updated} entities written"
    with repo.offline.write_lock():
        merged = repo.offline.compact()
    return f"merged {merged} part(s)" if merged else "nothing to compact"


def _command(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    output = (done.stdout + done.stderr).strip()[-_COMMAND_OUTPUT_CHARS:]
    if done.returncode != 0:
        raise JobError(f"{command[0]} exited with {done.returncode}: {output}")
    return f"{command[0]} exited with 0" + (f": {output[-200:]}" if output else "")


# -- claims, leases and the record of runs -------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A run that holds its job's lease and has its row in ``job_runs``."""

    run_id: int
    holder: str


class RunLedger:
    """The runs of one config's jobs in the monitoring database, and the leases that keep each
    job to one run at a time across every scheduler on that database."""

    def __init__(self, engine: Engine, config_name: str, lease_seconds: float) -> None:
        self.engine, self.config_name = engine, config_name
        self.lease = timedelta(seconds=lease_seconds)
        self.runner = f"{socket.gethostname()}:{os.getpid()}"

    def claim(
        self, job: str, action: str, scheduled_for: datetime
    ) -> Claim | Literal["running", "taken"]:
        """Take the job's lease and insert the run's row, in one transaction. "running": another
        run of the job holds the lease; "taken": this cron time has a run already (another
        scheduler fired it)."""
        self._ensure_lease(job)
        holder, now = f"{self.runner}:{uuid.uuid4().hex[:8]}", _now()
        lease = self._lease(job)
        try:
            with self.engine.begin() as connection:
                took = connection.execute(
                    update(JOB_LEASES)
                    .where(lease, or_(JOB_LEASES.c.holder.is_(None), JOB_LEASES.c.expires_at < now))
                    .values(holder=holder, expires_at=now + self.lease, run_id=None)
                ).rowcount
                if not took:
                    return "running"
                # Holding the lease, any run still marked running lost its scheduler.
                connection.execute(
                    update(JOB_RUNS)
                    .where(self._runs(job), JOB_RUNS.c.outcome == "running")
                    .values(
                        outcome="abandoned",
                        finished_at=now,
                        detail="its scheduler stopped renewing the lease (killed or hung)",
                    )
                )
                inserted = connection.execute(
                    insert(JOB_RUNS).values(
                        config=self.config_name,
                        job=job,
                        action=action,
                        scheduled_for=_naive_utc(scheduled_for),
                        started_at=now,
                        outcome="running",
                        attempts=0,
                        runner=self.runner,
                    )
                )
                key = inserted.inserted_primary_key
                assert key is not None
                run_id = int(key[0])
                connection.execute(update(JOB_LEASES).where(lease).values(run_id=run_id))
        except IntegrityError:  # the transaction, lease included, is rolled back
            return "taken"
        return Claim(run_id, holder)

    def renew(self, job: str, claim: Claim) -> bool:
        """Push the lease's expiry on; False if the run no longer holds it."""
        with self.engine.begin() as connection:
            renewed = connection.execute(
                update(JOB_LEASES)
                .where(self._lease(job), JOB_LEASES.c.holder == claim.holder)
                .values(expires_at=_now() + self.lease)
            ).rowcount
        return bool(renewed)

    def finish(self, job: str, claim: Claim, outcome: str, attempts: int, detail: str) -> None:
        """Record the run's end and free the job."""
        with self.engine.begin() as connection:
            connection.execute(
                update(JOB_RUNS)
                .where(JOB_RUNS.c.id == claim.run_id)
                .values(finished_at=_now(), outcome=outcome, attempts=attempts, detail=detail)
            )
            connection.execute(
                update(JOB_LEASES)
                .where(self._lease(job), JOB_LEASES.c.holder == claim.holder)
                .values(holder=None, expires_at=None, run_id=None)
            )

    def record(
        self, job: str, action: str, scheduled_for: datetime, outcome: str, detail: str
    ) -> bool:
        """A run that did not start (skipped, missed); False when that cron time already has a
        row (another scheduler ran or recorded it), so that each is counted once."""
        now = _now()
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    insert(JOB_RUNS).values(
                        config=self.config_name,
                        job=job,
                        action=action,
                        scheduled_for=_naive_utc(scheduled_for),
                        started_at=now,
                        finished_at=now,
                        outcome=outcome,
                        attempts=0,
                        detail=detail,
                        runner=self.runner,
                    )
                )
        except IntegrityError:
            return False
        return True

    def _ensure_lease(self, job: str) -> None:
        try:
            with self.engine.begin() as connection:
                exists = connection.execute(JOB_LEASES.select().where(self._lease(job))).first()
                if exists is None:
                    connection.execute(insert(JOB_LEASES).values(config=self.config_name, job=job))
        except IntegrityError:  # another scheduler inserted it first
            pass

    def _lease(self, job: str) -> Any:
        return and_(JOB_LEASES.c.config == self.config_name, JOB_LEASES.c.job == job)

    def _runs(self, job: str) -> Any:
        return and_(JOB_RUNS.c.config == self.config_name, JOB_RUNS.c.job == job)


# -- metrics -------------------------------------------------------------------------------------


class JobMetrics:
    """Prometheus metrics of one scheduler process (its own registry). Jobs are labelled
    ``job_name``: Prometheus keeps ``job`` for the scrape job."""

    def __init__(self, jobs: list[str]) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "skewless_job_runs",
            "Scheduled runs by job and outcome: succeeded, failed (every attempt failed), "
            "skipped (the job's previous run still ran), missed (later than its misfire grace)",
            ["job_name", "outcome"],
            registry=self.registry,
        )
        self.attempt_failures = Counter(
            "skewless_job_attempt_failures",
            "Failed attempts of scheduled runs, retried ones included",
            ["job_name"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "skewless_job_duration_seconds",
            "Wall time of scheduled runs that started, retries and their waits included",
            ["job_name"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.running = Gauge(
            "skewless_job_running",
            "Runs of the job this scheduler process is running now (0 or 1)",
            ["job_name"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "skewless_job_last_success_timestamp_seconds",
            "Unix time the job last succeeded in this scheduler process",
            ["job_name"],
            registry=self.registry,
        )
        self.next_run = Gauge(
            "skewless_job_next_run_timestamp_seconds",
            "Unix time of the job's next cron time",
            ["job_name"],
            registry=self.registry,
        )
        self.monitor_alerts = Gauge(
            "skewless_monitor_alerts",
            "Alerts the last scheduled monitor run raised, by rule of monitoring.rules",
            ["rule"],
            registry=self.registry,
        )
        for job in jobs:  # every series exists from the start, so rates and alerts see zeros
            for outcome in OUTCOMES:
                self.runs.labels(job, outcome)
            self.attempt_failures.labels(job)
            self.running.labels(job).set(0)


# -- the scheduler -------------------------------------------------------------------------------


def _fire(job: str) -> None:
    """The job's callable as APScheduler stores it. Runs go through :class:`_ClaimingExecutor`,
    which calls the scheduler with each run's cron time instead."""
    raise JobError(f"job '{job}' runs only inside 'skewless schedule'")


class _ClaimingExecutor(ThreadPoolExecutor):
    """A thread pool that hands each run's cron time to the scheduler (APScheduler 3's own
    ``run_job`` calls the job without it): the time names the run in ``job_runs``."""

    def __init__(
        self,
        fire: Callable[[str, datetime], None],
        missed: Callable[[str, datetime, timedelta], None],
        workers: int,
    ) -> None:
        super().__init__(max_workers=workers)
        self._fire_run, self._missed = fire, missed

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        def runs() -> list[JobExecutionEvent]:
            events = []
            for run_time in run_times:
                late = datetime.now(UTC) - run_time
                grace = job.misfire_grace_time
                if grace is not None and late > timedelta(seconds=grace):
                    self._missed(job.id, run_time, late)
                    kind = EVENT_JOB_MISSED
                else:
                    self._fire_run(job.id, run_time)
                    kind = EVENT_JOB_EXECUTED
                events.append(JobExecutionEvent(kind, job.id, job._jobstore_alias, run_time))
            return events

        def done(future: Future[list[JobExecutionEvent]]) -> None:
            error = future.exception()
            if error is None:
                self._run_job_success(job.id, future.result())
            else:
                self._run_job_error(job.id, error, error.__traceback__)

        try:
            future = self._pool.submit(runs)
        except RuntimeError:  # the pool shut down while APScheduler's loop waited to submit
            logger.info("job %s not started: the scheduler is stopping", job.id)
            return
        future.add_done_callback(done)


class Scheduler:
    """The config's jobs on their cron expressions; one run per job and cron time across every
    scheduler sharing the monitoring database."""

    def __init__(self, config: SkewlessConfig, home: Path, action: Action = run_action) -> None:
        self.config, self.home, self.action = config, home, action
        self.settings = config.schedule
        if not self.settings.jobs:
            raise ConfigError(
                "no jobs under schedule.jobs; declare some, e.g. "
                "schedule: {jobs: {materialize: {action: materialize, cron: '*/15 * * * *'}}}"
            )
        self.triggers = {}
        for name, job in self.settings.jobs.items():  # the config checked them; say which
            try:
                self.triggers[name] = cron_trigger(job.cron, self.settings.timezone)
            except ValueError as exc:
                raise ConfigError(f"schedule.jobs.{name}.cron: {exc}") from None
        ingesting = [n for n, j in self.settings.jobs.items() if j.action == "ingest"]
        if ingesting and not config.data.sources:
            raise ConfigError(
                f"schedule.jobs.{ingesting[0]} ingests data.sources, but the config lists none"
            )
        url = request_log_url(config, home)
        try:
            engine = monitoring_engine(url)
        except SQLAlchemyError as exc:
            raise StoreUnavailableError(
                f"the monitoring database ({describe_url(url)}) does not answer, and every run "
                f"is claimed and recorded there: {type(exc).__name__}: {str(exc)[:200]}"
            ) from None
        self.ledger = RunLedger(engine, config.name, self.settings.lease_seconds)
        self.metrics = JobMetrics(list(self.settings.jobs))
        self._stopping = threading.Event()
        self._scheduler: BackgroundScheduler | None = None
        self._metrics_server: Any = None

    # -- one run ---------------------------------------------------------------------------------

    def run(self, name: str, scheduled_for: datetime) -> str:
        """One run of job ``name`` for its cron time ``scheduled_for``, claimed first; never
        raises. Returns the outcome: succeeded, failed, skipped, or taken (another scheduler
        has this cron time)."""
        job = self.settings.jobs[name]
        try:
            claim = self.ledger.claim(name, job.action, scheduled_for)
        except Exception as exc:  # the monitoring database is down: no claim, no run
            logger.error(
                "job %s: could not claim its run (%s), not run: %s", name, type(exc).__name__, exc
            )
            self.metrics.attempt_failures.labels(name).inc()
            self.metrics.runs.labels(name, "failed").inc()
            return "failed"
        if claim == "taken":
            logger.info("job %s at %s: run by another scheduler", name, scheduled_for.isoformat())
            return "taken"
        if claim == "running":
            detail = "the job's previous run was still running"
            try:
                recorded = self.ledger.record(name, job.action, scheduled_for, "skipped", detail)
            except Exception as exc:  # the database went between the claim and the record
                logger.error("job %s: could not record a skipped run: %s", name, exc)
                recorded = True
            if recorded:
                self.metrics.runs.labels(name, "skipped").inc()
                logger.warning("job %s at %s skipped: %s", name, scheduled_for.isoformat(), detail)
            return "skipped"
        return self._run_claimed(name, job, claim)

    def run_now(self, name: str) -> str:
        """Run job ``name`` at once, through the same claim and record as scheduled runs."""
        if name not in self.settings.jobs:
            raise ConfigError(
                f"no job '{name}' under schedule.jobs; the jobs are {sorted(self.settings.jobs)}"
            )
        return self.run(name, datetime.now(UTC).replace(microsecond=0))

    def _run_claimed(self, name: str, job: ScheduledJob, claim: Claim) -> str:
        started = time.monotonic()
        self.metrics.running.labels(name).inc()
        logger.info("job %s (%s) started, run %d", name, job.action, claim.run_id)
        outcome: Outcome = "failed"
        attempts, detail = 0, ""
        try:
            with self._renewing(name, claim):
                outcome, attempts, detail = self._attempts(name, job)
        finally:
            self.metrics.running.labels(name).dec()
            took = time.monotonic() - started
            self.metrics.duration.labels(name).observe(took)
            self.metrics.runs.labels(name, outcome).inc()
            if outcome == "succeeded":
                self.metrics.last_success.labels(name).set(time.time())
            try:
                self.ledger.finish(name, claim, outcome, attempts, detail[:4000])
            except Exception as exc:  # the lease lapses by itself; the row stays 'running'
                logger.error("job %s: could not record its end: %s", name, exc)
        log = logger.info if outcome == "succeeded" else logger.error
        log("job %s %s after %d attempt(s) in %.1f s: %s", name, outcome, attempts, took, detail)
        return outcome

    def _attempts(self, name: str, job: ScheduledJob) -> tuple[Outcome, int, str]:
        tries = job.retries + 1
        for attempt in range(1, tries + 1):
            try:
                said = self.action(self.config, self.home, job, self.metrics)
                return "succeeded", attempt, said
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}"
                self.metrics.attempt_failures.labels(name).inc()
                if isinstance(exc, SkewlessError):
                    logger.warning(
                        "job %s attempt %d of %d failed: %s", name, attempt, tries, detail
                    )
                else:  # not one of ours: the traceback helps
                    logger.warning(
                        "job %s attempt %d of %d failed", name, attempt, tries, exc_info=True
                    )
                if attempt == tries:
                    return "failed", attempt, detail
                if self._stopping.wait(job.retry_delay_seconds):
                    return "failed", attempt, f"{detail} (stopped before the next attempt)"
        raise AssertionError("unreachable")

    @contextmanager
    def _renewing(self, name: str, claim: Claim) -> Iterator[None]:
        """Renew the run's lease every third of it until the block ends."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.ledger.lease.total_seconds() / 3):
                try:
                    if not self.ledger.renew(name, claim):
                        logger.error(
                            "job %s lost its lease while running (too slow to renew)", name
                        )
                except Exception as exc:  # the database away a moment: try at the next beat
                    logger.warning("job %s could not renew its lease: %s", name, exc)

        beat = threading.Thread(target=renew, daemon=True, name=f"lease-{name}")
        beat.start()
        try:
            yield
        finally:
            done.set()
            beat.join()

    def _missed(self, name: str, run_time: datetime, late: timedelta) -> None:
        job = self.settings.jobs[name]
        detail = f"{late.total_seconds():.0f} s late, past its misfire grace"
        try:
            recorded = self.ledger.record(name, job.action, run_time, "missed", detail)
        except Exception as exc:
            logger.error("job %s: could not record a missed run: %s", name, exc)
            recorded = True
        if recorded:
            self.metrics.runs.labels(name, "missed").inc()
            logger.warning("job %s at %s missed: %s", name, run_time.isoformat(), detail)

    def _fire(self, name: str, run_time: datetime) -> None:
        self._publish_next(name)  # the time after this one: a run still going then is late
        self.run(name, run_time)

    # -- the loop --------------------------------------------------------------------------------

    def start(self) -> dict[str, datetime | None]:
        """Start firing jobs in background threads; the next run time of each job."""
        settings = self.settings
        url = settings.job_store or request_log_url(self.config, self.home)
        engine = writer_engine(url)
        store = SQLAlchemyJobStore(engine=engine, tablename=f"skewless_jobs_{self.config.name}")
        create_racing(lambda: store.jobs_t.create(engine, checkfirst=True))
        executor = _ClaimingExecutor(self._fire, self._missed, max(len(settings.jobs) * 2, 4))
        scheduler = BackgroundScheduler(
            jobstores={"default": store},
            executors={"default": executor},
            timezone=settings.timezone,
        )
        scheduler.start(paused=True)
        self._scheduler = scheduler
        kept = {job.id: job for job in scheduler.get_jobs()}
        for name, job in settings.jobs.items():
            grace = job.misfire_grace_seconds or settings.misfire_grace_seconds
            trigger, old = self.triggers[name], kept.pop(name, None)
            unchanged = (
                old is not None
                and repr(old.trigger) == repr(trigger)
                and old.misfire_grace_time == grace
                and old.coalesce == settings.coalesce
            )
            if unchanged:
                continue  # its next run time stands: missed runs follow the policy
            scheduler.add_job(
                _fire,
                trigger,
                args=[name],
                id=name,
                name=name,
                replace_existing=True,
                misfire_grace_time=grace,
                coalesce=settings.coalesce,
                max_instances=1000,  # overlaps are refused by the lease, once for every scheduler
            )
        for stale in kept:  # jobs no longer in the config
            scheduler.remove_job(stale)
        if settings.metrics_port is not None:
            try:
                self._metrics_server, _ = start_http_server(
                    settings.metrics_port, settings.metrics_host, registry=self.metrics.registry
                )
            except OSError as exc:
                scheduler.shutdown(wait=False)
                raise ConfigError(
                    f"schedule.metrics_port {settings.metrics_port} on {settings.metrics_host} "
                    f"cannot be used ({exc}); pick another port, or null to serve no metrics"
                ) from None
        scheduler.resume()
        for name in settings.jobs:
            self._publish_next(name)
        return {name: self.next_run(name) for name in settings.jobs}

    def next_run(self, name: str) -> datetime | None:
        job = self._scheduler.get_job(name) if self._scheduler is not None else None
        return None if job is None else job.next_run_time

    def _publish_next(self, name: str) -> None:
        """The job's next cron time in the gauge, from its trigger (never from the scheduler:
        a job thread asking it can deadlock with its shutdown)."""
        upcoming = self.triggers[name].get_next_fire_time(None, datetime.now(UTC))
        if upcoming is not None:
            self.metrics.next_run.labels(name).set(upcoming.timestamp())

    def stop(self) -> None:
        """Fire nothing more; wait for the runs in progress (a retry wait ends at once)."""
        self._stopping.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None
