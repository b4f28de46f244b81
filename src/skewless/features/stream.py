"""``skewless stream``: rows from a message broker into both stores, in micro-batches.

A micro-batch is what arrives within ``streaming.batch_seconds`` of its first message, up to
``batch_rows`` rows or ``batch_messages`` messages. Each one is

1. decoded: a message is a JSON object (one row) or a JSON array of objects (many rows), keyed
   by the source's column names (docs/streaming.md); a message that is not is a dead letter;
2. validated exactly as ``ingest`` and ``push`` validate (:func:`validate_frame`), plus the
   stream's own limits (stale or far-future timestamps, entities the store has never held when
   ``streaming.entities`` is closed). Rows that fail are split out, each with its reasons, and
   the good rows go on: a bad row never holds back the rest of its batch;
3. written by :func:`skewless.features.materialize.push`: appended to the offline store, then the
   online windows updated;
4. and only then acknowledged, dead letters first published.

Delivery is at least once and writes are idempotent: a row already stored with the same values
adds nothing (a redelivered message, a consumer killed after its write but before its
acknowledgement), while a row stored with other values is a conflict and a dead letter.
Several consumers (one durable group on NATS, one queue on RabbitMQ) share the work; writes are
serialised by the offline store's lock and the online update by the online windows' lock, which
``materialize`` and POST /push take too (:func:`skewless.features.materialize.online_lock`), so
that no two writers interleave one entity's window. A consumer killed between its offline
append and its online update leaves a pending mark: the next write catches up first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from skewless.core.config import StreamingConfig
from skewless.core.errors import (
    ConfigError,
    DataValidationError,
    SkewlessError,
)
from skewless.core.schema import EVENT_TS
from skewless.features.brokers import REASON_HEADER, Broker, Delivery, connect, make_broker
from skewless.features.ingest import IngestReport, validate_frame
from skewless.features.materialize import materialize, push
from skewless.features.validation import ENTITY_ROW, SOURCE_ROW, Findings, parse_rows, rows_text

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from skewless.features.repo import FeastRepo

logger = logging.getLogger(__name__)

MESSAGE = "__message"  # the column of each row's message (its place in the micro-batch)
_WRITE_RETRIES = 3  # validations of a batch when another consumer wrote meanwhile
_KNOWN_SECONDS = 10.0  # closed entities: how often an unknown one makes the store be asked again


class BadMessage(ValueError):
    """A message that is not rows: its reason goes with it to the dead letters."""


@dataclass
class Decoded:
    """One delivered message: its rows, or why it has none."""

    delivery: Delivery
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


@dataclass
class Rejection:
    """A row (or, with ``row`` None, a whole message) refused, and why."""

    message: int
    row: dict[str, Any] | None
    reason: str


@dataclass
class BatchResult:
    rows_in: int
    rows_written: int = 0
    rows_already_stored: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def decode(payload: bytes) -> list[dict[str, Any]]:
    """The rows of one message; :class:`BadMessage` says why it has none."""
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    rows = [value] if isinstance(value, dict) else value
    if not isinstance(rows, list) or not rows:
        raise BadMessage(
            f"a message must be a JSON object (one row) or a non-empty array of objects, not "
            f"{type(value).__name__}{' (empty)' if rows == [] else ''}"
        )
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise BadMessage(f"row {number} is a JSON {type(row).__name__}, not an object")
        for key, item in row.items():
            if isinstance(item, dict | list):
                raise BadMessage(f"row {number}: '{key}' holds a JSON {type(item).__name__}")
            if isinstance(item, bool):  # not a number: validation refuses it as the text it is
                row[key] = json.dumps(item)
    return rows


class BatchWriter:
    """Validates, splits and writes micro-batches for one repo (no broker in sight)."""

    def __init__(self, repo: FeastRepo, streaming: StreamingConfig) -> None:
        self.repo, self.streaming = repo, streaming
        data = repo.config.data
        self.required = [data.entity_key, data.timestamp_column, *data.window_columns]
        self._known: set[Any] | None = None  # entities the offline store holds
        self._known_at = -np.inf

    def catch_up(self) -> None:
        """Bring the online windows up to the offline store: a consumer killed between its
        offline append and its online update left rows only offline."""
        if not self.repo.offline.is_empty():
            materialize(self.repo, incremental=True)

    def write(self, messages: Sequence[Decoded]) -> BatchResult:
        """Validate every row of ``messages``, write the good ones to both stores, and return
        what was written and what was refused."""
        result = BatchResult(rows_in=sum(len(m.rows) for m in messages))
        for index, message in enumerate(messages):
            if message.error is not None:
                result.rejected.append(Rejection(index, None, message.error))
        raw = self._frame(messages)
        if raw.empty:
            return result
        # The same row twice in one batch (a message delivered again before it was
        # acknowledged) is one row; two different rows of one (entity, time) stay, and the
        # second is refused below.
        unique = raw.drop_duplicates(subset=self.required)
        result.rows_already_stored += len(raw) - len(unique)
        good, refused = self._split_local(unique)
        for attempt in range(_WRITE_RETRIES):
            if attempt:  # push refused the batch: split what it refused from the rest
                good, more = self._split_contextual(good)
                refused += more
            if good.empty:
                break
            try:
                report = push(self.repo, good, origin=f"stream {self.streaming.subject}")
            except DataValidationError:
                if attempt == _WRITE_RETRIES - 1:
                    raise
                continue
            self._count(report, result)
            break
        result.rejected += [
            Rejection(int(row[MESSAGE]), self._original(row), reason) for row, reason in refused
        ]
        return result

    def _count(self, report: IngestReport, result: BatchResult) -> None:
        result.rows_written += report.rows_written
        result.rows_already_stored += report.rows_already_stored
        result.warnings += report.warnings
        if self._known is not None:
            self._known.update(report.entities)

    def _frame(self, messages: Sequence[Decoded]) -> pd.DataFrame:
        """Every row of the batch in one frame of raw columns, with its message and its row
        number in that message (validation's messages name that row)."""
        every = [row for m in messages for row in m.rows]
        if not every:
            return pd.DataFrame()
        frame = pd.DataFrame.from_records(every)
        counts = [len(m.rows) for m in messages]
        frame[MESSAGE] = np.repeat(np.arange(len(messages)), counts)
        frame[SOURCE_ROW] = np.concatenate([np.arange(1, n + 1) for n in counts])
        for column in self.required:  # an absent key is a null: validation names it
            if column not in frame.columns:
                frame[column] = None
        return frame

    def _original(self, row: pd.Series) -> dict[str, Any]:
        return {
            str(k): (None if _missing(v) else _plain(v))
            for k, v in row.items()
            if k not in (MESSAGE, SOURCE_ROW)
        }

    # -- splitting bad rows from good ones ------------------------------------------------

    def _split_local(self, raw: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[pd.Series, str]]]:
        """Rows whose own values are wrong (parse errors, stream limits), by halving: a half
        that passes is good whole; a single row that fails is refused with its reasons.
        Messages are halved first, as bad rows come in bad messages."""
        problems = self._local_problems(raw)
        if not problems:
            return raw, []
        if len(raw) == 1:
            return raw.iloc[0:0], [(raw.iloc[0], "; ".join(problems))]
        messages = raw[MESSAGE].unique()
        if len(messages) > 1:
            half = raw[MESSAGE].isin(messages[: len(messages) // 2])
            left, right = raw[half], raw[~half]
        else:
            left, right = raw.iloc[: len(raw) // 2], raw.iloc[len(raw) // 2 :]
        good_left, bad_left = self._split_local(left)
        good_right, bad_right = self._split_local(right)
        return pd.concat([good_left, good_right]), bad_left + bad_right

    def _split_contextual(
        self, raw: pd.DataFrame
    ) -> tuple[pd.DataFrame, list[tuple[pd.Series, str]]]:
        """Rows wrong beside the others or the stored ones (conflicts, duplicates, gaps when
        they are errors, grids): in entity and time order, the longest prefix that validates
        is kept and the row after it refused, again until the rest validates. A row is
        refused for what it does to the good rows before it, as if they had come one by one."""
        if raw.empty or not self._problems(raw):
            return raw, []
        ordered = self._in_order(raw)
        refused: list[tuple[pd.Series, str]] = []
        good = 0  # ordered[:good] validates
        while True:
            low, high = good, len(ordered)  # ordered[:low] passes, ordered[:high] does not
            while high - low > 1:
                middle = (low + high) // 2
                if self._problems(ordered.iloc[:middle]):
                    high = middle
                else:
                    low = middle
            reasons = self._problems(ordered.iloc[:high])
            refused.append((ordered.iloc[high - 1], "; ".join(reasons)))
            ordered = pd.concat([ordered.iloc[: high - 1], ordered.iloc[high:]])
            good = high - 1
            if ordered.empty or not self._problems(ordered):
                return ordered, refused

    def _in_order(self, raw: pd.DataFrame) -> pd.DataFrame:
        data = self.repo.config.data
        try:
            times = pd.to_datetime(
                raw[data.timestamp_column], errors="coerce", utc=True, format="mixed"
            )
        except (ValueError, TypeError):  # unsortable times: arrival order will do
            return raw
        keys = pd.DataFrame(
            {"entity": raw[data.entity_key].astype(str).to_numpy(), "time": times.to_numpy()}
        )
        order = keys.sort_values(["entity", "time"], kind="stable").index
        return raw.iloc[order.to_numpy()]

    def _problems(self, raw: pd.DataFrame) -> list[str]:
        """Everything ingest would refuse in ``raw``, and the stream's own limits."""
        problems = self._local_problems(raw)
        if problems:
            return problems
        try:
            validate_frame(self.repo, "rows", raw)
        except DataValidationError as exc:
            return exc.problems
        return []

    def _local_problems(self, raw: pd.DataFrame) -> list[str]:
        """Validation's parse of the rows, then the stream's limits on what it parsed. A row
        that makes the parse itself fail is a problem of that row, never the stream's end."""
        findings = Findings()
        self._check_timestamp_text(raw, findings)
        if findings.errors:
            return findings.errors
        try:
            parsed = parse_rows(raw, self.repo.config, findings)
        except (TypeError, ValueError, OverflowError) as exc:
            return [f"could not be validated ({type(exc).__name__}: {exc})"]
        if findings.errors:
            return findings.errors
        self._check_times(parsed, findings)
        self._check_entities(parsed, findings)
        return findings.errors

    def _check_timestamp_text(self, raw: pd.DataFrame, findings: Findings) -> None:
        """JSON has no time type: a number would be read as nanoseconds since 1970."""
        column = self.repo.config.data.timestamp_column
        values = raw[column]
        bad = values.map(lambda v: not isinstance(v, str) and not _missing(v)).to_numpy(bool)
        if bad.any():
            findings.errors.append(
                f"'{column}' must be ISO 8601 text such as 2024-01-31T13:00:00+00:00, not "
                f"{_plain(values[bad].iloc[0])!r}, at {rows_text(raw.loc[bad, SOURCE_ROW])}"
            )

    def _check_times(self, parsed: pd.DataFrame, findings: Findings) -> None:
        now = pd.Timestamp.now(tz="UTC")
        times = parsed[EVENT_TS]
        if self.streaming.max_age is not None:
            stale = times < now - pd.Timedelta(self.streaming.max_age)
            if stale.any():
                findings.errors.append(
                    f"stale: timestamps more than {self.streaming.max_age} before now at "
                    f"{rows_text(parsed.loc[stale, ENTITY_ROW])} (streaming.max_age)"
                )
        if self.streaming.max_future is not None:
            future = times > now + pd.Timedelta(self.streaming.max_future)
            if future.any():
                findings.errors.append(
                    f"in the future: timestamps more than {self.streaming.max_future} after now "
                    f"at {rows_text(parsed.loc[future, ENTITY_ROW])} (streaming.max_future)"
                )

    def _check_entities(self, parsed: pd.DataFrame, findings: Findings) -> None:
        if self.streaming.entities != "closed":
            return
        key = self.repo.config.data.entity_key
        unknown = ~parsed[key].isin(self._known or ())
        if unknown.any() and time.monotonic() - self._known_at > _KNOWN_SECONDS:
            # Entities another consumer or an ingest added since: read them again, not often.
            self._known = set(self.repo.offline.entities())
            self._known_at = time.monotonic()
            unknown = ~parsed[key].isin(self._known)
        if unknown.any():
            findings.errors.append(
                f"unknown {key} {_plain(parsed.loc[unknown, key].iloc[0])!r} at "
                f"{rows_text(parsed.loc[unknown, ENTITY_ROW])}: streaming.entities is closed, "
                "so only entities already in the store are accepted"
            )


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _plain(value: Any) -> Any:
    """A JSON-ready value (numpy scalars as Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


def dead_letters(messages: Sequence[Decoded], rejected: Sequence[Rejection]) -> list[bytes]:
    """One dead letter per message with refused rows: the rows and why (docs/streaming.md)."""
    by_message: dict[int, list[Rejection]] = {}
    for rejection in rejected:
        by_message.setdefault(rejection.message, []).append(rejection)
    letters = []
    for index, rejections in sorted(by_message.items()):
        whole = [r for r in rejections if r.row is None]
        body: dict[str, Any] = {"reason": rejections[0].reason}
        if whole:
            body["payload"] = messages[index].delivery.data.decode(errors="replace")
        else:
            body["rows"] = [{"row": r.row, "reason": r.reason} for r in rejections]
        letters.append(json.dumps(body, default=str).encode())
    return letters


class StreamMetrics:
    """The consumer's Prometheus metrics, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rows_in = Counter("skewless_stream_rows_in", "rows received", registry=r)
        self.rows_written = Counter(
            "skewless_stream_rows_written", "new rows written to both stores", registry=r
        )
        self.rows_already_stored = Counter(
            "skewless_stream_rows_already_stored",
            "rows received again (redelivered or republished), written before",
            registry=r,
        )
        self.dead_letters = Counter(
            "skewless_stream_dead_letters", "dead letters sent", ["kind"], registry=r
        )
        self.dead_letter_rows = Counter(
            "skewless_stream_dead_letter_rows", "rows refused into dead letters", registry=r
        )
        self.messages = Counter("skewless_stream_messages", "messages acknowledged", registry=r)
        self.batch_seconds = Histogram(
            "skewless_stream_batch_seconds",
            "from the start of a micro-batch's write to its acknowledgement",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.publish_to_online = Histogram(
            "skewless_stream_publish_to_online_seconds",
            "from publication to the row being in the online window",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.lag = Gauge(
            "skewless_stream_consumer_lag_messages",
            "messages waiting in the broker for this consumer group",
            registry=r,
        )
        self.connect_failures = Counter(
            "skewless_stream_broker_connect_failures",
            "failed tries to reach the broker",
            registry=r,
        )
        self.write_failures = Counter(
            "skewless_stream_write_failures",
            "micro-batches whose write failed and was retried",
            registry=r,
        )

    def serve(self, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve stream metrics on {host}:{port}: {exc}; choose another "
                "streaming.metrics_port (or null for none)"
            ) from exc


async def collect(
    broker: Broker, streaming: StreamingConfig, writing: asyncio.Event | None = None
) -> list[Decoded]:
    """One micro-batch: waits up to batch_seconds for a first message, then gathers until
    batch_seconds after it (longer while the previous batch is still ``writing``), batch_rows
    rows or batch_messages messages; [] when idle."""
    batch: list[Decoded] = []
    rows, deadline = 0, time.monotonic() + streaming.batch_seconds
    while len(batch) < streaming.batch_messages and rows < streaming.batch_rows:
        remaining = deadline - time.monotonic()
        busy = bool(batch) and writing is not None and writing.is_set()
        if remaining <= 0:
            if not busy:
                break
            remaining = 0.05
        deliveries = await broker.fetch(streaming.batch_messages - len(batch), remaining)
        if not deliveries:
            if busy:
                continue
            break
        if not batch:
            deadline = time.monotonic() + streaming.batch_seconds
        for delivery in deliveries:
            try:
                decoded = Decoded(delivery, rows=decode(delivery.data))
            except BadMessage as exc:
                decoded = Decoded(delivery, error=str(exc))
            batch.append(decoded)
            rows += len(decoded.rows)
    return batch


async def run_stream(
    repo: FeastRepo,
    metrics: StreamMetrics | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Consume ``repo.config.streaming`` until ``stop`` is set (or forever)."""
    streaming = repo.config.streaming
    if streaming is None:
        raise ConfigError("the config has no 'streaming' section; see docs/streaming.md")
    metrics = metrics or StreamMetrics()
    stop = stop or asyncio.Event()
    broker = make_broker(streaming)
    await connect(broker, on_failure=metrics.connect_failures.inc)
    writer = BatchWriter(repo, streaming)
    try:
        await asyncio.to_thread(writer.catch_up)
    except Exception as exc:  # the next micro-batch's write catches up instead
        logger.warning("could not bring the online windows up to date at start: %s", exc)
    logger.info(
        "consuming %s on %s (group %s); dead letters to %s",
        streaming.subject,
        broker.where,
        streaming.group,
        streaming.dead_letter_target,
    )
    idle_ticks = 0
    # The next micro-batch gathers while this one is written.
    writing = asyncio.Event()
    upcoming = asyncio.create_task(collect(broker, streaming, writing))
    try:
        while not stop.is_set():
            batch = await upcoming
            upcoming = asyncio.create_task(collect(broker, streaming, writing))
            if not batch:
                idle_ticks += 1
                if idle_ticks % 5 == 1:
                    await _update_lag(broker, metrics)
                continue
            idle_ticks = 0
            writing.set()
            try:
                await _handle(broker, writer, batch, metrics, stop)
            finally:
                writing.clear()
            await _update_lag(broker, metrics)
    finally:
        upcoming.cancel()  # unacknowledged: delivered again, to this group's next consumer
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await upcoming
        await broker.close()


async def _handle(
    broker: Broker,
    writer: BatchWriter,
    batch: list[Decoded],
    metrics: StreamMetrics,
    stop: asyncio.Event,
) -> None:
    """Write one micro-batch (retrying while the stores fail), send its dead letters, then
    acknowledge every message of it."""
    started = time.monotonic()
    wait = writer.streaming.retry_seconds
    while True:
        try:
            result = await asyncio.to_thread(writer.write, batch)
            break
        except Exception as exc:  # a store down, or worse: said, counted, tried again
            metrics.write_failures.inc()
            shown = exc if isinstance(exc, SkewlessError) else f"{type(exc).__name__}: {exc}"
            logger.error("writing a micro-batch failed: %s; trying again in %.1f s", shown, wait)
            if stop.is_set():
                return  # not acknowledged: the broker delivers it again
            await asyncio.sleep(wait)
            wait = min(wait * 2, writer.streaming.retry_max_seconds)
    written = time.time()
    letters = dead_letters(batch, result.rejected)
    try:
        for letter, reason in zip(letters, _first_reasons(result.rejected), strict=True):
            await broker.publish(
                writer.streaming.dead_letter_target, [letter], {REASON_HEADER: reason[:1000]}
            )
        for decoded in batch:
            await broker.ack(decoded.delivery)
    except Exception as exc:  # the broker went away: what is not acknowledged comes again
        logger.warning(
            "could not send the dead letters or acknowledgements of a written micro-batch "
            "(%s: %s); its messages will come again and add nothing",
            type(exc).__name__,
            exc,
        )
        return
    rows_refused = sum(1 for r in result.rejected if r.row is not None)
    whole = sum(len(batch[r.message].rows) or 1 for r in result.rejected if r.row is None)
    metrics.rows_in.inc(result.rows_in)
    metrics.rows_written.inc(result.rows_written)
    metrics.rows_already_stored.inc(result.rows_already_stored)
    metrics.messages.inc(len(batch))
    metrics.dead_letter_rows.inc(rows_refused + whole)
    for rejection in result.rejected:
        if rejection.row is None:
            metrics.dead_letters.labels(kind="message").inc()
    row_letters = len({r.message for r in result.rejected if r.row is not None})
    metrics.dead_letters.labels(kind="rows").inc(row_letters)
    metrics.batch_seconds.observe(time.monotonic() - started)
    if result.rows_written:
        for decoded in batch:
            if decoded.rows and decoded.delivery.published is not None:
                metrics.publish_to_online.observe(max(0.0, written - decoded.delivery.published))
    logger.info(
        "micro-batch of %d messages, %d rows: %d written, %d already stored, %d refused "
        "(%d dead letters) in %.2f s",
        len(batch),
        result.rows_in,
        result.rows_written,
        result.rows_already_stored,
        rows_refused + whole,
        len(letters),
        time.monotonic() - started,
    )


def _first_reasons(rejected: Sequence[Rejection]) -> list[str]:
    """The first reason of each message with refusals, in the order of :func:`dead_letters`."""
    first: dict[int, str] = {}
    for rejection in rejected:
        first.setdefault(rejection.message, rejection.reason)
    return [first[index] for index in sorted(first)]


async def _update_lag(broker: Broker, metrics: StreamMetrics) -> None:
    lag = await broker.lag()
    if lag is not None:
        metrics.lag.set(lag)
