"""The request log's writer: a process that inserts queued records, restarted when it dies; and
the records of an answered request (the tables are in :mod:`skewless.core.monitoring_db`).

Requests only put their records on a queue; the writer process inserts them in batches, so the
request path pays for building and pickling a few dicts, and the JSON encoding and inserts never
hold the server's GIL. Serving never waits on its log:

- the database down or slower than the traffic: the queue fills to ``max_pending`` requests,
  further records are dropped and counted;
- the writer killed: a supervisor thread starts a new one (after 1 s, doubling to 30 s while it
  keeps dying); records that arrive meanwhile wait, up to the same bound, and go to the new one.
  The records the dead writer held are lost and counted.

Every loss is counted in ``skewless_request_log_records_total{outcome="dropped"|"failed"}``,
and recorded as a gap (when, how many, why) in the log database once a writer can write it,
so that ``skewless monitor`` reports what the log is missing.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Engine

from skewless.core.config import SkewlessConfig
from skewless.core.monitoring_db import GAPS, SERVED, monitoring_engine, naive_utc, writer_engine
from skewless.core.stores import request_log_url
from skewless.serving.schemas import FailedPrediction, Prediction

logger = logging.getLogger(__name__)

Records = list[dict[str, Any]]
_STOP = None  # on the queue: write what came before, then exit
_ORPHAN_SECONDS = 5.0  # how long a writer whose server died goes on writing what it has
_FIRST_RESTART_S, _LAST_RESTART_S = 1.0, 30.0
_STEADY_S = 60.0  # a writer that lived this long resets the restart delay
_DEGRADED_S = 300.0  # how long after a loss /ready still says degraded
_TICK_S = 0.2


@dataclass
class Gap:
    """Records the log lost between two moments, and why."""

    since: datetime
    until: datetime
    records: int
    reason: str

    def row(self) -> dict[str, Any]:
        return {
            "since": naive_utc(self.since),
            "until": naive_utc(self.until),
            "records": self.records,
            "reason": self.reason,
        }


def served_records(
    request_id: str,
    endpoint: str,
    model: dict[str, Any],
    items: Sequence[Prediction],
    time_point: datetime | None,
    latency_s: float,
) -> Records:
    """The log rows of one answered request, one per item; an error is logged with its class."""
    common = {
        "request_id": request_id,
        "served_at": naive_utc(datetime.now(UTC)),
        "endpoint": endpoint,
        "model_name": model["name"],
        "model_version": model["version"],
        "alias": model["alias"],
        "time_point": None if time_point is None else naive_utc(time_point),
        "latency_ms": 1000 * latency_s,
    }
    records = []
    for item in items:
        stamps = item.timestamps
        records.append(
            {
                **common,
                "entity": str(item.entity),
                "first_step": naive_utc(datetime.fromisoformat(stamps[0])) if stamps else None,
                "forecast": item.forecast,
                "lower": item.lower,
                "upper": item.upper,
                "error": (
                    f"{item.kind}: {item.error}" if isinstance(item, FailedPrediction) else None
                ),
            }
        )
    return records


class _Writer:
    """One writer process with queues of its own: a process killed while it waited on a queue
    holds that queue's lock forever, so a new writer never reuses an old one's."""

    def __init__(self, url: str, max_pending: int) -> None:
        context = multiprocessing.get_context("spawn")  # forking uvicorn's or Ray's threads: no
        self.pending: Queue[Records | Gap | None] = context.Queue(maxsize=max_pending)
        # Counted by the writer alone, read here: a killed writer can hold no lock of ours.
        self.written: Synchronized[int] = context.RawValue("q", 0)
        self.failed: Synchronized[int] = context.RawValue("q", 0)
        self.sent = 0
        self._sent_lock = threading.Lock()
        self.reported = {"written": 0, "failed": 0}
        self.abandoned = False
        self.started = time.monotonic()
        self.process = context.Process(
            target=_write_forever,
            args=(url, self.pending, self.written, self.failed),
            name="skewless-request-log",
            daemon=True,
        )
        with _importable_from_here():
            self.process.start()

    def alive(self) -> bool:
        return not self.abandoned and self.process.is_alive()

    def put(self, item: Records | Gap) -> bool:
        if not self.alive():
            return False
        try:
            self.pending.put_nowait(item)
        except queue.Full:
            return False
        if isinstance(item, list):
            with self._sent_lock:  # requests append from many threads
                self.sent += len(item)
        return True

    def new_outcomes(self) -> dict[str, int]:
        """Records written and failed since the last call."""
        news = {}
        for outcome, counter in (("written", self.written), ("failed", self.failed)):
            total = counter.value
            news[outcome] = total - self.reported[outcome]
            self.reported[outcome] = total
        return news

    def lost(self) -> int:
        """Records sent to a dead writer that it never wrote nor failed."""
        return max(0, self.sent - self.written.value - self.failed.value)

    def abandon(self) -> None:
        """Let go of a dead writer and its queue (what is in it is lost, counted by the
        caller), so that their semaphores are freed."""
        self.abandoned = True
        self.pending.cancel_join_thread()
        self.pending.close()
        self.process.join()
        self.process.close()


class RequestLog:
    """Appends records from any thread; a writer process inserts them, a supervisor thread
    passes its outcomes on to ``on_outcome`` and restarts it when it dies."""

    def __init__(
        self,
        url: str,
        max_pending: int = 100_000,
        on_outcome: Callable[[str, int], None] | None = None,
    ) -> None:
        monitoring_engine(url).dispose()  # tables now, and a bad URL fails the server's start
        self._url, self._max_pending = url, max_pending
        self._on_outcome = on_outcome or (lambda outcome, count: None)
        self._lock = threading.Lock()
        self._writer = _Writer(url, max_pending)
        self._backlog: deque[Records] = deque()  # while no writer runs
        self._backlog_records = 0
        self._gap: Gap | None = None  # losses not yet recorded in the database
        self.restarts = 0
        self.dropped = 0
        self._last_loss: float | None = None
        self._closing = threading.Event()
        self._supervisor = threading.Thread(
            target=self._supervise, daemon=True, name="request-log-supervisor"
        )
        self._supervisor.start()

    def append(self, records: Records) -> None:
        """Queue one request's records; never blocks (beyond the bound they are dropped,
        counted)."""
        if self._writer.put(records):
            return
        with self._lock:
            restarting = not self._writer.alive()
            if restarting and self._backlog_records < self._max_pending:
                self._backlog.append(records)
                self._backlog_records += len(records)
                return
        self._lose(len(records), "writer down" if restarting else "queue full")

    def status(self) -> dict[str, Any]:
        """What /ready shows: whether the writer runs, its restarts, the records lost."""
        recent = self._last_loss is not None and time.monotonic() - self._last_loss < _DEGRADED_S
        return {
            "writer": "running" if self._writer.alive() else "restarting",
            "restarts": self.restarts,
            "dropped": self.dropped,
            "degraded": recent or not self._writer.alive(),
        }

    @property
    def pending(self) -> int:
        """Requests queued and not yet taken by the writer (not available on macOS)."""
        return self._writer.pending.qsize()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer."""
        self._closing.set()
        self._supervisor.join(timeout)
        writer = self._writer
        if writer.alive():
            self._hand_over(writer)
            with suppress(queue.Full):
                writer.pending.put(_STOP, timeout=timeout)
            writer.process.join(timeout)
            if writer.process.is_alive():
                logger.error("request log: the writer did not finish within %.0f s", timeout)
                writer.process.terminate()
                writer.process.join()
        self._report(writer)
        unwritten = self._backlog_records  # what never reached a writer
        if not writer.abandoned and writer.process.exitcode != 0:
            writer.pending.cancel_join_thread()  # records nobody will read must not hold us up
            unwritten += writer.lost()
        self._lose(unwritten, "writer died")

    def _supervise(self) -> None:
        delay = _FIRST_RESTART_S
        while not self._closing.wait(_TICK_S):
            writer = self._writer
            self._report(writer)
            if writer.alive():
                self._hand_over(writer)
                if time.monotonic() - writer.started > _STEADY_S:
                    delay = _FIRST_RESTART_S
                continue
            lost = writer.lost()
            logger.error(
                "request log: the writer exited (code %s) with %d records unwritten; "
                "restarting it in %.0f s",
                writer.process.exitcode,
                lost,
                delay,
            )
            self._lose(lost, "writer died")
            writer.abandon()
            if self._closing.wait(delay):
                return
            delay = min(2 * delay, _LAST_RESTART_S)
            self._writer = _Writer(self._url, self._max_pending)
            self.restarts += 1

    def _report(self, writer: _Writer) -> None:
        for outcome, count in writer.new_outcomes().items():
            if count:
                self._on_outcome(outcome, count)

    def _hand_over(self, writer: _Writer) -> None:
        """Give a running writer the records that waited for it, and the gap to record."""
        with self._lock:
            while self._backlog and writer.put(self._backlog[0]):
                self._backlog_records -= len(self._backlog.popleft())
            if self._gap is not None and writer.put(self._gap):
                self._gap = None

    def _lose(self, count: int, reason: str) -> None:
        if not count:
            return
        self._on_outcome("dropped", count)
        now = datetime.now(UTC)
        with self._lock:
            self.dropped += count
            self._last_loss = time.monotonic()
            if self._gap is None:
                self._gap = Gap(now, now, 0, reason)
            self._gap.until, self._gap.records = now, self._gap.records + count
            if reason not in self._gap.reason.split(", "):
                self._gap.reason += f", {reason}"


@contextmanager
def _importable_from_here() -> Iterator[None]:
    """Have a spawned process import skewless from where this one did: spawn hands the child
    this process's sys.path, and a loaded model has put first on it the copy of skewless it was
    saved with (its MLflow code path), which may be another version."""
    here = str(Path(__file__).parents[2])
    sys.path.insert(0, here)
    try:
        yield
    finally:
        sys.path.remove(here)


def _write_forever(
    url: str,
    pending: Queue[Records | Gap | None],
    written: Synchronized[int],
    failed: Synchronized[int],
) -> None:
    """The writer process: insert batches until told to stop, or soon after the server is
    gone. Failed inserts (the database down) are recorded as a gap once one succeeds."""
    # Ctrl-C or a stop signal to the whole process group must not lose queued records: the
    # server's close() stops the writer after the last request.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_after_server, daemon=True).start()
    engine = writer_engine(url)
    unwritten: Gap | None = None
    stop = False
    while not stop:
        batch, gaps, stop = _drain(pending, pending.get())
        if unwritten is not None:
            gaps.append(unwritten)
        if not batch and not gaps:
            continue
        try:
            _insert(engine, batch, gaps, written)
        except Exception as exc:  # a log outage must not stop the writer, nor serving
            logger.error("request log: %d records not written: %s", len(batch), exc)
            failed.value += len(batch)
            now = datetime.now(UTC)
            if unwritten is None:
                unwritten = Gap(now, now, 0, "database unavailable")
            unwritten.until, unwritten.records = now, unwritten.records + len(batch)
            continue
        unwritten = None
    engine.dispose()


def _exit_after_server() -> None:
    """Exit a while after the server has gone without stopping the writer: killed in the middle
    of sending records, it leaves half a message in the pipe, on which the writer would wait
    forever. The while is for inserting what did arrive whole."""
    server = multiprocessing.parent_process()
    assert server is not None, "the writer runs in a process of its own"
    server.join()
    time.sleep(_ORPHAN_SECONDS)
    os._exit(0)


def _drain(
    pending: Queue[Records | Gap | None], first: Records | Gap | None
) -> tuple[Records, list[Gap], bool]:
    """Everything queued now: the records as one batch, the gaps; and whether the stop marker
    was among it."""
    batch: Records = []
    gaps: list[Gap] = []
    item = first
    while True:
        if item is _STOP:
            return batch, gaps, True
        if isinstance(item, Gap):
            gaps.append(item)
        else:
            batch.extend(item)
        try:
            item = pending.get_nowait()
        except queue.Empty:
            return batch, gaps, False


def _insert(engine: Engine, batch: Records, gaps: list[Gap], written: Synchronized[int]) -> None:
    """Insert in one transaction and count the records written the moment it commits: not
    after the connection goes back to the pool (a rollback on the way), where a writer killed
    in between had written records that the server then counted as lost too."""
    with engine.connect() as connection:
        if batch:
            connection.execute(insert(SERVED), batch)
        if gaps:
            connection.execute(insert(GAPS), [gap.row() for gap in gaps])
        connection.commit()
        written.value += len(batch)


def open_request_log(
    config: SkewlessConfig, home: Path, on_outcome: Callable[[str, int], None]
) -> RequestLog | None:
    """The configured request log, or None when ``monitoring.request_log.enabled`` is false."""
    settings = config.monitoring.request_log
    if not settings.enabled:
        return None
    return RequestLog(request_log_url(config, home), settings.max_pending, on_outcome)
