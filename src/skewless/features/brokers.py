"""Message brokers behind one small interface: NATS JetStream and RabbitMQ.

A :class:`Broker` connects (as a consumer or only to publish), fetches up to N messages within a
timeout, acknowledges one message, publishes, and says how many messages wait (the consumer's
lag). Everything else :mod:`skewless.features.stream` does is broker-free.

- NATS: the subject lives in a JetStream stream (found, or made and named after the subject);
  consumers pull through one durable consumer (``streaming.group``), so every process of a group
  shares the work; a message not acknowledged within ``ack_wait_seconds`` is delivered again.
- RabbitMQ: the subject is a durable queue; consumers share it round robin, and the broker
  delivers again every message a consumer held unacknowledged when its connection went.

Dead letters go to ``streaming.dead_letter_subject``, a stream subject or durable queue of its
own. The client libraries are imported when a broker connects, never at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse, urlunparse

import pandas as pd

from skewless.core.config import StreamingConfig
from skewless.core.errors import BrokerError, BrokerUnavailableError
from skewless.features.validation import SOURCE_ROW

logger = logging.getLogger(__name__)

PUBLISHED_HEADER = "skewless-published"  # seconds since the epoch when the publisher sent it
REASON_HEADER = "skewless-reason"  # on a dead letter: why it was refused (the first reason)
_CONNECT_TIMEOUT = 3
_PUBLISH_CONCURRENCY = 256


@dataclass
class Delivery:
    """One message as a consumer received it."""

    data: bytes
    published: float | None  # seconds since the epoch, as the publisher stamped it
    handle: Any  # the client library's own message, to acknowledge it


class Broker(ABC):
    """One connection to a broker, for one subject and its dead-letter subject."""

    def __init__(self, config: StreamingConfig) -> None:
        self.config = config

    @property
    def where(self) -> str:
        """The broker's URL without its password, for messages."""
        return shown_url(self.config.url)

    @abstractmethod
    async def connect(self, consume: bool) -> None:
        """Connect, make the subject and dead-letter subject if missing, and (``consume``)
        start consuming. Raises :class:`BrokerUnavailableError` if the broker does not answer."""

    @abstractmethod
    async def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Up to ``max_messages`` messages; as soon as some arrived, or [] after ``timeout``."""

    @abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """Acknowledge ``delivery``: the broker will not deliver it again."""

    @abstractmethod
    async def publish(
        self, subject: str, payloads: Sequence[bytes], headers: Mapping[str, str] | None = None
    ) -> None:
        """Publish every payload to ``subject``, durably (confirmed by the broker)."""

    @abstractmethod
    async def lag(self) -> int | None:
        """Messages waiting for the group, not yet delivered; None if the broker cannot say."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def delete(self) -> None:
        """Remove the subject's and dead-letter subject's storage (tests and benchmarks)."""


def make_broker(config: StreamingConfig) -> Broker:
    """The broker ``config`` names."""
    return NatsBroker(config) if config.broker == "nats" else RabbitBroker(config)


def shown_url(url: str) -> str:
    """``url`` with its password replaced by ***."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = f"{parsed.username}:***@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
    return urlunparse(parsed._replace(netloc=netloc))


def stamp() -> dict[str, str]:
    """The headers a publisher puts on each message."""
    return {PUBLISHED_HEADER: f"{time.time():.6f}"}


def _published(headers: Mapping[str, Any] | None) -> float | None:
    value = (headers or {}).get(PUBLISHED_HEADER)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


async def connect(
    broker: Broker, consume: bool = True, on_failure: Callable[[], object] | None = None
) -> None:
    """Connect, retrying with a doubling wait and one warning per failed try; after
    ``streaming.connect_attempts`` tries (if set) give up with BrokerUnavailableError."""
    streaming = broker.config
    wait, attempt = streaming.retry_seconds, 0
    while True:
        attempt += 1
        try:
            await broker.connect(consume)
        except BrokerUnavailableError as exc:
            if on_failure is not None:
                on_failure()
            limit = streaming.connect_attempts
            if limit is not None and attempt >= limit:
                raise BrokerUnavailableError(
                    f"{exc}; gave up after {attempt} tries. Start the broker or fix streaming.url"
                ) from exc
            of = f"/{limit}" if limit is not None else ""
            logger.warning("try %d%s: %s; trying again in %.1f s", attempt, of, exc, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, streaming.retry_max_seconds)
            continue
        if attempt > 1:
            logger.warning("reached %s after %d tries", broker.where, attempt)
        return


# -- publishing ------------------------------------------------------------------------------


def payloads(rows: pd.DataFrame, rows_per_message: int) -> list[bytes]:
    """``rows`` as JSON messages of ``rows_per_message`` rows each, in their own column names;
    timestamps as ISO 8601 text, missing values as null."""
    frame = rows.drop(columns=[SOURCE_ROW], errors="ignore")
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = frame[column].map(lambda t: None if pd.isna(t) else t.isoformat())
    out = []
    for first in range(0, len(frame), rows_per_message):
        chunk = frame.iloc[first : first + rows_per_message]
        out.append(chunk.to_json(orient="records", double_precision=15).encode())
    return out


async def publish_rows(
    streaming: StreamingConfig, rows: pd.DataFrame, rows_per_message: int
) -> int:
    """Publish ``rows`` to the configured subject; returns how many messages went."""
    broker = make_broker(streaming)
    await connect(broker, consume=False)
    try:
        messages = payloads(rows, rows_per_message)
        await broker.publish(streaming.subject, messages)
    finally:
        await broker.close()
    return len(messages)


class NatsBroker(Broker):
    """A JetStream stream and a durable pull consumer."""

    def __init__(self, config: StreamingConfig) -> None:
        super().__init__(config)
        self._client: Any = None
        self._jetstream: Any = None
        self._subscription: Any = None
        self._stream = ""
        self._disconnected = True  # quiet until connected: the caller reports failed attempts

    async def connect(self, consume: bool) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig

        try:
            self._client = await nats.connect(
                self.config.url,
                connect_timeout=_CONNECT_TIMEOUT,
                allow_reconnect=True,
                # One more try, then NoServersError: the caller's backoff says each attempt.
                max_reconnect_attempts=1,
                reconnect_time_wait=1,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnect,
                reconnected_cb=self._on_reconnect,
            )
        except Exception as exc:  # NoServersError, OSError, TimeoutError: all mean "not there"
            raise BrokerUnavailableError(
                f"NATS at {self.where} did not answer ({type(exc).__name__}: {exc})"
            ) from exc
        # Connected: from now on a lost server is reconnected to, without end.
        self._client.options["max_reconnect_attempts"] = -1
        self._disconnected = False
        self._jetstream = self._client.jetstream()
        self._stream = await self._ensure_stream(self.config.subject, self.config.stream)
        await self._ensure_stream(self.config.dead_letter_target, None)
        if consume:
            self._subscription = await self._jetstream.pull_subscribe(
                self.config.subject,
                durable=self.config.group,
                stream=self._stream,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self.config.ack_wait_seconds,
                    max_deliver=-1,
                    max_ack_pending=max(1000, 8 * self.config.batch_messages),
                ),
            )

    async def _ensure_stream(self, subject: str, name: str | None) -> str:
        """The stream that holds ``subject``: the one named, else the one found, else made."""
        from nats.js.errors import NotFoundError

        if name is None:
            try:
                found: str = await self._jetstream.find_stream_name_by_subject(subject)
                return found
            except NotFoundError:
                name = "skewless_" + re.sub(r"[^A-Za-z0-9_-]", "_", subject)
        try:
            await self._jetstream.stream_info(name)
        except NotFoundError:
            try:
                await self._jetstream.add_stream(name=name, subjects=[subject])
            except Exception as exc:
                raise BrokerError(
                    f"cannot make JetStream stream '{name}' for subject '{subject}' on "
                    f"{self.where}: {exc}; name an existing stream in streaming.stream"
                ) from exc
            logger.info("made JetStream stream %s for subject %s", name, subject)
        return name

    async def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        import nats.errors

        try:
            messages = await self._subscription.fetch(max_messages, timeout=max(timeout, 0.01))
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except nats.errors.Error as exc:  # a fetch cut by a reconnect: the next one resumes
            logger.debug("NATS fetch interrupted: %s", exc)
            await asyncio.sleep(min(timeout, 0.5))
            return []
        out = []
        for message in messages:
            published = _published(message.headers)
            if published is None:
                published = message.metadata.timestamp.timestamp()
            out.append(Delivery(message.data, published, message))
        return out

    async def ack(self, delivery: Delivery) -> None:
        await delivery.handle.ack()

    async def publish(
        self, subject: str, payloads: Sequence[bytes], headers: Mapping[str, str] | None = None
    ) -> None:
        for first in range(0, len(payloads), _PUBLISH_CONCURRENCY):
            chunk = payloads[first : first + _PUBLISH_CONCURRENCY]
            await asyncio.gather(
                *(
                    self._jetstream.publish(subject, payload, headers=dict(headers or stamp()))
                    for payload in chunk
                )
            )

    async def lag(self) -> int | None:
        if self._subscription is None:
            return None
        try:
            info = await asyncio.wait_for(self._subscription.consumer_info(), timeout=1)
        except Exception:  # not connected just now: no lag to report this time
            return None
        return int(info.num_pending)

    async def close(self) -> None:
        if self._client is not None and not self._client.is_closed:
            self._disconnected = True  # closing is not losing the server
            if self._client.is_connected:
                with contextlib.suppress(Exception):
                    await self._client.flush(timeout=2)  # the acknowledgements sent last
            await self._client.close()

    async def delete(self) -> None:
        from nats.js.errors import NotFoundError

        for subject in (self.config.subject, self.config.dead_letter_target):
            try:
                name = await self._jetstream.find_stream_name_by_subject(subject)
                await self._jetstream.delete_stream(name)
            except NotFoundError:
                pass

    async def _on_error(self, exc: Exception) -> None:
        if not self._disconnected:
            logger.warning("NATS at %s: %s", self.where, exc or type(exc).__name__)

    async def _on_disconnect(self) -> None:
        if not self._disconnected:
            logger.warning("lost NATS at %s; reconnecting", self.where)
        self._disconnected = True

    async def _on_reconnect(self) -> None:
        self._disconnected = False
        logger.warning("reconnected to NATS at %s", self.where)


class RabbitBroker(Broker):
    """A durable queue, consumed with a prefetch of one micro-batch."""

    def __init__(self, config: StreamingConfig) -> None:
        super().__init__(config)
        self._connection: Any = None
        self._channel: Any = None
        self._queue: Any = None
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._ack_failing = False
        self._closing = False
        self._lost = False

    async def connect(self, consume: bool) -> None:
        import aio_pika

        try:
            self._connection = await aio_pika.connect_robust(
                self.config.url, timeout=_CONNECT_TIMEOUT, reconnect_interval=1
            )
        except Exception as exc:  # AMQPConnectionError, OSError, TimeoutError
            raise BrokerUnavailableError(
                f"RabbitMQ at {self.where} did not answer ({type(exc).__name__}: {exc})"
            ) from exc
        # One line per outage of our own instead of aiormq's error on every reconnect try.
        logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
        self._connection.close_callbacks.add(self._on_close)
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        self._channel = await self._connection.channel(publisher_confirms=True)
        await self._channel.set_qos(prefetch_count=self.config.batch_messages)
        self._queue = await self._channel.declare_queue(self.config.subject, durable=True)
        await self._channel.declare_queue(self.config.dead_letter_target, durable=True)
        if consume:
            await self._queue.consume(self._inbox.put, no_ack=False)

    async def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        try:
            first = await asyncio.wait_for(self._inbox.get(), timeout=max(timeout, 0.01))
        except TimeoutError:
            return []
        messages = [first]
        while len(messages) < max_messages and not self._inbox.empty():
            messages.append(self._inbox.get_nowait())
        return [Delivery(m.body, _published(m.headers), m) for m in messages]

    async def ack(self, delivery: Delivery) -> None:
        try:
            await delivery.handle.ack()
        except Exception as exc:  # its channel closed: the broker delivers it again
            if not self._ack_failing:
                logger.warning(
                    "could not acknowledge messages received before the connection was lost "
                    "(%s); they will come again and add nothing",
                    type(exc).__name__,
                )
            self._ack_failing = True
        else:
            self._ack_failing = False

    async def publish(
        self, subject: str, payloads: Sequence[bytes], headers: Mapping[str, str] | None = None
    ) -> None:
        import aio_pika

        exchange = self._channel.default_exchange
        for first in range(0, len(payloads), _PUBLISH_CONCURRENCY):
            chunk = payloads[first : first + _PUBLISH_CONCURRENCY]
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            payload,
                            headers=dict(headers or stamp()),
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            content_type="application/json",
                        ),
                        routing_key=subject,
                    )
                    for payload in chunk
                )
            )

    async def lag(self) -> int | None:
        try:
            result = await asyncio.wait_for(
                self._channel.declare_queue(self.config.subject, passive=True), timeout=1
            )
        except Exception:
            return None
        count = result.declaration_result.message_count
        return None if count is None else int(count)

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            self._closing = True
            await self._connection.close()

    async def delete(self) -> None:
        for queue in (self.config.subject, self.config.dead_letter_target):
            await self._channel.queue_delete(queue)

    def _on_close(self, *_: object) -> None:
        if not self._closing and not self._lost:  # called again on every failed try
            logger.warning("lost RabbitMQ at %s; reconnecting", self.where)
        self._lost = True

    def _on_reconnect(self, *_: object) -> None:
        # Messages received on the lost channel stay in the inbox: written again they add
        # nothing, and their acknowledgement fails; the broker delivers them again on the new
        # channel (it may already have, so nothing in the inbox is dropped).
        self._lost = False
        logger.warning("reconnected to RabbitMQ at %s", self.where)
