"""``skewless stream`` and ``skewless publish`` against the real brokers of this machine (NATS
JetStream at 127.0.0.1:4222, RabbitMQ at 127.0.0.1:5672) and a NATS server of the test's own
for the broker lost mid-stream. Every test uses subjects / queues / streams of its own and
deletes them afterwards; the machine's servers are never stopped. Tests that reach a broker are
marked ``integration`` by hand (their fixtures are not in conftest's list)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from skewless.core.config import SkewlessConfig, StreamingConfig
from skewless.core.errors import BrokerUnavailableError
from skewless.core.schema import EVENT_TS
from skewless.features.brokers import REASON_HEADER, Delivery, make_broker, publish_rows
from skewless.features.materialize import push
from skewless.features.online import window_reader
from skewless.features.repo import FeastRepo
from skewless.features.stream import (
    BadMessage,
    BatchWriter,
    Decoded,
    decode,
    run_stream,
)
from skewless.features.window_view import unpack_window
from tests.conftest import ETTH_CONFIG, VARIABLES, etth_config, free_port, raw_rows, wait_for

BROKERS = {
    "nats": "nats://127.0.0.1:4222",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
}
SKEWLESS = Path(sys.executable).parent / "skewless"
START = "2018-01-01"  # seeded hours 0..23 of entities 1 and 2; the stream brings later ones


@dataclass
class Streamed:
    """A seeded store and the settings of a stream into it."""

    home: Path
    overrides: list[str]
    repo: FeastRepo

    @property
    def config(self) -> SkewlessConfig:
        return self.repo.config

    @property
    def streaming(self) -> StreamingConfig:
        assert self.repo.config.streaming is not None
        return self.repo.config.streaming

    def command(self, verb: str, *extra: str) -> list[str]:
        sets = [f"--set={o}" for o in [*self.overrides, *extra]]
        return [str(SKEWLESS), verb, str(ETTH_CONFIG), *sets]

    def launch(self, log: Path, *extra: str) -> subprocess.Popen[bytes]:
        """``skewless stream`` in a process of its own, its output in ``log`` (a new file)."""
        env = {**os.environ, "SKEWLESS_HOME": str(self.home)}
        with log.open("xb") as out:
            return subprocess.Popen(
                self.command("stream", *extra), env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def start(self, log: Path, *extra: str) -> subprocess.Popen[bytes]:
        """:meth:`launch`, returning once the consumer consumes."""
        process = self.launch(log, *extra)
        consuming(process, log)
        return process

    def undelivered(self) -> int:
        """Messages the broker holds that no consumer has been given yet."""
        return asyncio.run(_undelivered(self.streaming))

    def stored(self) -> pd.DataFrame:
        return self.repo.offline.history(None, None, None)

    def window_ends(self) -> dict[int, pd.Timestamp]:
        blobs = window_reader(self.repo).read([1, 2])
        variables = tuple(self.config.data.variables)
        return {
            entity: unpack_window(blob, entity, variables).end
            for entity, blob in zip([1, 2], blobs, strict=True)
            if blob is not None
        }


def consuming(process: subprocess.Popen[bytes], log: Path) -> None:
    """Returns once the consumer writing ``log`` consumes (importing Feast takes a minute on a
    loaded 2-core machine); fails if it stopped."""
    wait_for(lambda: "consuming" in log.read_text() or process.poll() is not None, "start", 180)
    assert process.poll() is None, log.read_text()


async def _undelivered(streaming: StreamingConfig) -> int:
    if streaming.broker == "nats":
        import nats

        client = await nats.connect(streaming.url)
        jetstream = client.jetstream()
        stream = await jetstream.find_stream_name_by_subject(streaming.subject)
        info = await jetstream.consumer_info(stream, streaming.group)
        await client.close()
        return int(info.num_pending)
    import aio_pika

    connection = await aio_pika.connect(streaming.url)
    queue = await (await connection.channel()).declare_queue(streaming.subject, passive=True)
    await connection.close()
    return int(queue.declaration_result.message_count or 0)


def rows(start: str, hours: int, entities: tuple[int, ...] = (1, 2), seed: int = 1) -> pd.DataFrame:
    """Long rows of ``entities`` in the source's column names."""
    return pd.concat(
        [raw_rows(e, start, hours, seed=seed + e) for e in entities], ignore_index=True
    )


def streamed_repo(
    home: Path, broker: str, url: str | None = None, store: Sequence[str] = (), **settings: Any
) -> Streamed:
    name = uuid.uuid4().hex[:10]
    overrides = [
        *store,
        f"feature_store.project=t{name}",
        f"streaming.broker={broker}",
        f"streaming.url={url or BROKERS[broker]}",
        f"streaming.subject=skewless_test_{name}",
        "streaming.batch_seconds=0.3",
        "streaming.metrics_port=null",
        "streaming.max_future=1h",
        *(f"streaming.{k}={v}" for k, v in settings.items()),
    ]
    repo = FeastRepo(etth_config(*overrides), home)
    push(repo, rows(START, 24))
    return Streamed(home, overrides, repo)


@pytest.fixture(params=sorted(BROKERS))
def streamed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Streamed]:
    setup = streamed_repo(tmp_path / "home", request.param)
    yield setup
    asyncio.run(delete(setup.streaming))
    setup.repo.store.teardown()


@pytest.fixture(params=sorted(BROKERS))
def redelivering(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Streamed]:
    """A stream whose unacknowledged messages come again soon: NATS after 1 s, RabbitMQ when
    the consumer's connection drops."""
    setup = streamed_repo(tmp_path / "home", request.param, ack_wait_seconds=1)
    yield setup
    asyncio.run(delete(setup.streaming))
    setup.repo.store.teardown()


async def delete(streaming: StreamingConfig) -> None:
    broker = make_broker(streaming)
    await broker.connect(consume=False)
    await broker.delete()
    await broker.close()


async def send(streaming: StreamingConfig, payloads: list[bytes]) -> None:
    broker = make_broker(streaming)
    await broker.connect(consume=False)
    await broker.publish(streaming.subject, payloads)
    await broker.close()


async def read_dead_letters(streaming: StreamingConfig, count: int) -> list[tuple[str, dict]]:
    """(reason header, body) of ``count`` dead letters, read with the broker's own client."""
    subject, found = streaming.dead_letter_target, []
    deadline = time.monotonic() + 30
    if streaming.broker == "nats":
        import nats

        client = await nats.connect(streaming.url)
        subscription = await client.jetstream().pull_subscribe(subject)
        while len(found) < count and time.monotonic() < deadline:
            try:
                for message in await subscription.fetch(count - len(found), timeout=1):
                    found.append((message.headers[REASON_HEADER], json.loads(message.data)))
                    await message.ack()
            except TimeoutError:
                pass
        await client.close()
    else:
        import aio_pika

        connection = await aio_pika.connect(streaming.url)
        channel = await connection.channel()
        queue = await channel.declare_queue(subject, durable=True)
        while len(found) < count and time.monotonic() < deadline:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.2)
                continue
            found.append((str(message.headers[REASON_HEADER]), json.loads(message.body)))
        await connection.close()
    return found


def row(hour: str, entity: int = 1, **values: Any) -> dict[str, Any]:
    return {"station_id": entity, "date": hour, **{v: 1.5 for v in VARIABLES}, **values}


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples in a Prometheus exposition."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def no_duplicates(stored: pd.DataFrame) -> None:
    assert not stored.duplicated(["station_id", EVENT_TS]).any()


# -- messages and micro-batches, no broker ---------------------------------------------------


def test_messages_are_an_object_or_an_array_of_objects() -> None:
    assert decode(b'{"a": 1}') == [{"a": 1}]
    assert decode(b'[{"a": 1}, {"a": null}]') == [{"a": 1}, {"a": None}]
    for payload, reason in [
        (b"not json", "not JSON"),
        (b"[]", "non-empty array"),
        (b"[1]", "row 1 is a JSON int"),
        (b'{"a": [1]}', "'a' holds a JSON list"),
        (b"\xff", "not JSON"),
    ]:
        with pytest.raises(BadMessage, match=reason):
            decode(payload)


def message(payload: bytes) -> Decoded:
    delivery = Delivery(payload, None, None)
    try:
        return Decoded(delivery, rows=decode(payload))
    except BadMessage as exc:
        return Decoded(delivery, error=str(exc))


def test_a_batch_keeps_its_good_rows_and_refuses_each_bad_one_with_its_reason(
    tmp_path: Path,
) -> None:
    setup = streamed_repo(tmp_path / "home", "nats", entities="closed", max_age="3650D")
    writer = BatchWriter(setup.repo, setup.streaming)
    good = rows("2018-01-02", 3)  # hours 24..26 of both entities
    stored = setup.stored()
    first = stored[stored["station_id"] == 1].iloc[0]
    batch = [
        message(good.to_json(orient="records").encode()),
        message(b"{not json"),
        message(
            json.dumps(
                [
                    row("2018-01-02 03:00:00", OT="abc"),  # not a number
                    row("2018-01-02 03:00:00", entity=2),  # good
                    row("2018-01-02 03:00:00", entity=99),  # an entity never seen: closed
                    row("2018-01-01 00:00:00", OT=float(first["OT"]) + 1),  # conflicts
                    row("2099-01-01 00:00:00", entity=2),  # far future
                    row("2000-01-01 00:00:00", entity=2),  # stale
                    row("2018-01-02 04:00:00", entity=1.5),  # not an integer id
                    {**row("x", entity=2), "date": 1514851200},  # a number, not ISO text
                    row("2018-01-02 05:00:00", entity=2, OT=True),  # a boolean, not a number
                ]
            ).encode()
        ),
    ]
    result = writer.write(batch)
    assert result.rows_in == 6 + 9
    assert result.rows_written == 7
    reasons = {
        (r.message, None if r.row is None else r.row["station_id"], r.row and r.row["date"]): (
            r.reason
        )
        for r in result.rejected
    }
    assert reasons[(1, None, None)].startswith("not JSON")
    assert "'OT' must be numeric but has 'abc'" in reasons[(2, 1, "2018-01-02 03:00:00")]
    assert "unknown station_id 99" in reasons[(2, 99, "2018-01-02 03:00:00")]
    assert "ingested before with different values" in reasons[(2, 1, "2018-01-01 00:00:00")]
    assert "in the future" in reasons[(2, 2, "2099-01-01 00:00:00")]
    assert "stale" in reasons[(2, 2, "2000-01-01 00:00:00")]
    assert "must hold 64-bit integers" in reasons[(2, 1.5, "2018-01-02 04:00:00")]
    assert "'date' must be ISO 8601 text" in reasons[(2, 2, 1514851200)]
    assert "'OT' must be numeric but has 'true'" in reasons[(2, 2, "2018-01-02 05:00:00")]
    assert len(result.rejected) == 9
    after = setup.stored()
    assert len(after) == 48 + 7
    no_duplicates(after)
    assert setup.window_ends() == {
        1: pd.Timestamp("2018-01-02 02:00", tz="UTC"),
        2: pd.Timestamp("2018-01-02 03:00", tz="UTC"),
    }
    # Delivered again (at least once): nothing new, nothing refused but what was bad.
    again = writer.write(batch)
    assert (again.rows_written, again.rows_already_stored) == (0, 7)
    assert len(again.rejected) == 9
    assert len(setup.stored()) == 48 + 7
    setup.repo.store.teardown()


# -- through the brokers ---------------------------------------------------------------------


@pytest.mark.integration
def test_stream_writes_both_stores_sends_dead_letters_and_counts(
    streamed: Streamed, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "stream.log"
    consumer = streamed.start(log, f"streaming.metrics_port={port}")
    try:
        new = tmp_path / "new.csv"
        rows("2018-01-02", 6).to_csv(new, index=False)
        env = {**os.environ, "SKEWLESS_HOME": str(streamed.home)}
        published = subprocess.run(
            [*streamed.command("publish"), "--file", str(new), "--rows-per-message", "5"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert published.returncode == 0, published.stderr
        assert "published 12 rows" in published.stdout and "in 3 messages" in published.stdout
        asyncio.run(
            send(
                streamed.streaming,
                [b"\x00 not json", json.dumps([row("2018-01-02 06:00:00", OT="x")]).encode()],
            )
        )
        wait_for(lambda: len(streamed.stored()) == 48 + 12, "the published rows", 60)
        wait_for(
            lambda: set(streamed.window_ends().values()) == {pd.Timestamp("2018-01-02 05:00Z")},
            "the online windows",
            30,
        )
        letters = asyncio.run(read_dead_letters(streamed.streaming, 2))
        assert sorted(reason.split(":")[0] for reason, _ in letters) == [
            "'OT' must be numeric but has 'x' at row 1",
            "not JSON",
        ]
        by_reason = {reason.split(":")[0]: body for reason, body in letters}
        assert by_reason["not JSON"]["payload"] == "\x00 not json"
        assert by_reason["'OT' must be numeric but has 'x' at row 1"]["rows"][0]["row"]["OT"] == "x"
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert metric(text, "skewless_stream_rows_in_total") == 13
        assert metric(text, "skewless_stream_rows_written_total") == 12
        assert metric(text, "skewless_stream_dead_letters_total") == 2
        assert metric(text, "skewless_stream_batch_seconds_count") >= 1
        assert metric(text, "skewless_stream_publish_to_online_seconds_count") >= 1
        assert "skewless_stream_consumer_lag_messages 0.0" in text
    finally:
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(60) == 0, log.read_text()
    no_duplicates(streamed.stored())


@pytest.mark.integration
def test_a_consumer_killed_mid_batch_loses_and_duplicates_nothing(
    redelivering: Streamed, tmp_path: Path
) -> None:
    setup = redelivering
    # A long micro-batch: killed while it holds every message, delivered and unacknowledged.
    consumer = setup.start(tmp_path / "stream1.log", "streaming.batch_seconds=30")
    asyncio.run(publish_rows(setup.streaming, rows("2018-01-02", 10), 4))
    wait_for(lambda: setup.undelivered() == 0, "every message delivered", 30)
    consumer.kill()
    consumer.wait()
    assert len(setup.stored()) == 48
    # Small micro-batches, killed again at some moment of its writing, then left to finish.
    small = ("streaming.batch_messages=1", "streaming.batch_seconds=0.1")
    consumer = setup.launch(tmp_path / "stream2.log", *small)
    asyncio.run(publish_rows(setup.streaming, rows("2018-01-02 10:00", 20), 2))
    wait_for(lambda: len(setup.stored()) > 48 + 4, "a first write", 60)
    consumer.kill()
    consumer.wait()
    log = tmp_path / "stream3.log"
    consumer = setup.launch(log)
    try:
        wait_for(lambda: len(setup.stored()) == 48 + 60, "every row", 90)
        wait_for(
            lambda: set(setup.window_ends().values()) == {pd.Timestamp("2018-01-03 05:00Z")},
            "the online windows",
            30,
        )
        time.sleep(setup.streaming.ack_wait_seconds + 1)  # anything delivered again lands now
    finally:
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(60) == 0, log.read_text()
    stored = setup.stored()
    assert len(stored) == 48 + 60
    no_duplicates(stored)


@pytest.mark.integration
def test_two_consumers_share_the_work_without_double_writes(
    redelivering: Streamed, tmp_path: Path
) -> None:
    setup = redelivering
    ports = [free_port(), free_port()]
    small = ("streaming.batch_messages=2", "streaming.batch_seconds=0.2")
    logs = [tmp_path / f"stream{i}.log" for i in range(len(ports))]
    consumers = [  # started side by side: each start imports Feast
        setup.launch(log, f"streaming.metrics_port={port}", *small)
        for log, port in zip(logs, ports, strict=True)
    ]
    try:
        for consumer, log in zip(consumers, logs, strict=True):
            consuming(consumer, log)
        asyncio.run(publish_rows(setup.streaming, rows("2018-01-02", 40), 2))
        wait_for(lambda: len(setup.stored()) == 48 + 80, "every row", 120)

        def written() -> list[float]:
            return [
                metric(
                    httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=5).text,
                    "skewless_stream_rows_written_total",
                )
                for p in ports
            ]

        # Counted once acknowledged, a moment after the write.
        wait_for(lambda: sum(written()) >= 80, "the counts", 30)
        time.sleep(1)
        assert sum(written()) == 80, written()
        assert all(w > 0 for w in written()), written()  # both worked
    finally:
        for consumer in consumers:
            consumer.send_signal(signal.SIGTERM)
        for consumer in consumers:
            consumer.wait(60)
    no_duplicates(setup.stored())


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_broker_down_at_start_is_retried_with_a_message_per_try(
    broker: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens here
    url = f"nats://127.0.0.1:{port}" if broker == "nats" else f"amqp://u:secret@127.0.0.1:{port}/"
    setup = streamed_repo(tmp_path / "home", broker, url, connect_attempts=3, retry_seconds=0.1)
    caplog.set_level(logging.WARNING, logger="skewless")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match="gave up after 3 tries"):
        asyncio.run(run_stream(setup.repo))
    tries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("try ")]
    assert [t.split(":")[0] for t in tries] == ["try 1/3", "try 2/3"]
    assert "trying again in 0.1 s" in tries[0] and "trying again in 0.2 s" in tries[1]
    assert "secret" not in caplog.text
    assert time.monotonic() - started >= 0.3
    setup.repo.store.teardown()


@pytest.mark.slow  # a CLI process of its own, importing Feast
def test_the_cli_says_why_it_stops_when_the_broker_never_comes(tmp_path: Path) -> None:
    setup = streamed_repo(
        tmp_path / "home",
        "nats",
        f"nats://127.0.0.1:{free_port()}",
        connect_attempts=2,
        retry_seconds=0.1,
    )
    env = {**os.environ, "SKEWLESS_HOME": str(setup.home)}
    done = subprocess.run(
        setup.command("stream"), env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "try 1/2" in done.stderr
    assert "error:" in done.stderr and "gave up after 2 tries" in done.stderr
    setup.repo.store.teardown()


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("nats-server") is None, reason="no nats-server binary")
def test_a_nats_server_lost_mid_stream_is_reconnected_to_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    port, store = free_port(), tmp_path / "jetstream"

    def nats_server() -> subprocess.Popen[bytes]:
        server = subprocess.Popen(
            ["nats-server", "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _listens(port), "our nats-server", 20)
        return server

    server = nats_server()
    setup = streamed_repo(tmp_path / "home", "nats", f"nats://127.0.0.1:{port}")
    log = tmp_path / "stream.log"
    consumer = setup.start(log)
    try:
        asyncio.run(publish_rows(setup.streaming, rows("2018-01-02", 5), 2))
        wait_for(lambda: len(setup.stored()) == 48 + 10, "the first rows", 60)
        server.kill()
        server.wait()
        wait_for(lambda: "lost NATS" in log.read_text(), "the loss noticed", 30)
        assert consumer.poll() is None
        server = nats_server()
        asyncio.run(publish_rows(setup.streaming, rows("2018-01-02 05:00", 5), 2))
        wait_for(lambda: len(setup.stored()) == 48 + 20, "the rows after the loss", 60)
        assert "lost NATS" in log.read_text() and "reconnected to NATS" in log.read_text()
    finally:
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(60)
        server.kill()
        server.wait()
        setup.repo.store.teardown()
    no_duplicates(setup.stored())


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server binary")
def test_an_online_store_lost_mid_stream_is_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    """A Redis online store of the test's own, killed while rows arrive: the micro-batch is not
    acknowledged but tried again until Redis is back (empty: every window is rewritten)."""
    port, folder = free_port(), tmp_path / "redis"
    folder.mkdir()

    def redis_server() -> subprocess.Popen[bytes]:
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        command += ["--dir", str(folder), "--save", "", "--appendonly", "no"]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_for(lambda: _listens(port), "our redis-server", 20)
        return server

    server = redis_server()
    store = ["feature_store.online_store.type=redis"]
    store.append(f"feature_store.online_store.url=redis://127.0.0.1:{port}/0")
    setup = streamed_repo(tmp_path / "home", "nats", store=store, retry_seconds=0.5)
    metrics = free_port()
    log = tmp_path / "stream.log"
    consumer = setup.start(log, f"streaming.metrics_port={metrics}")
    try:
        asyncio.run(publish_rows(setup.streaming, rows("2018-01-02", 2), 2))
        wait_for(lambda: len(setup.stored()) == 48 + 4, "the first rows", 60)
        server.kill()
        server.wait()
        asyncio.run(publish_rows(setup.streaming, rows("2018-01-02 02:00", 3), 2))
        wait_for(lambda: "writing a micro-batch failed" in log.read_text(), "a failed write", 60)
        assert consumer.poll() is None
        server = redis_server()
        wait_for(
            lambda: set(setup.window_ends().values()) == {pd.Timestamp("2018-01-02 04:00Z")},
            "the online windows, rewritten",
            60,
        )
        text = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text
        assert metric(text, "skewless_stream_write_failures_total") >= 1
    finally:
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(60)
        asyncio.run(delete(setup.streaming))
        server.kill()
        server.wait()
    stored = setup.stored()
    assert len(stored) == 48 + 10
    no_duplicates(stored)


RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


@pytest.mark.integration
@pytest.mark.skipif(not RABBITMQ_SERVER.exists(), reason="no rabbitmq-server to start")
def test_a_rabbitmq_server_lost_mid_stream_is_reconnected_to_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    """A RabbitMQ node of the test's own (its name, ports, data and logs under tmp_path, no
    plugins), killed and started again on the same data."""
    port, data = free_port(), tmp_path / "rabbitmq"
    (data / "logs").mkdir(parents=True)
    (data / "plugins").write_text("[].")
    (data / "env").write_text("")
    (data / "rabbitmq.conf").write_text("")
    environment = {
        **os.environ,
        "HOME": str(data),
        "RABBITMQ_NODENAME": f"skewless_test_{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_MNESIA_BASE": str(data / "mnesia"),
        "RABBITMQ_LOG_BASE": str(data / "logs"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(data / "plugins"),
        "RABBITMQ_CONF_ENV_FILE": str(data / "env"),
        "RABBITMQ_CONFIG_FILE": str(data / "rabbitmq.conf"),
        "RABBITMQ_PID_FILE": str(data / "pid"),
    }

    def rabbitmq_server() -> subprocess.Popen[bytes]:
        server = subprocess.Popen(
            [str(RABBITMQ_SERVER)],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: _listens(port), "our RabbitMQ node", 120)
        return server

    def kill(server: subprocess.Popen[bytes]) -> None:
        os.killpg(server.pid, signal.SIGKILL)  # the node and its helpers, nothing else
        server.wait()

    server = rabbitmq_server()
    setup = streamed_repo(tmp_path / "home", "rabbitmq", f"amqp://guest:guest@127.0.0.1:{port}/")
    log = tmp_path / "stream.log"
    consumer = setup.start(log)
    try:
        asyncio.run(publish_rows(setup.streaming, rows("2018-01-02", 5), 2))
        wait_for(lambda: len(setup.stored()) == 48 + 10, "the first rows", 60)
        kill(server)
        wait_for(lambda: "lost RabbitMQ" in log.read_text(), "the loss noticed", 30)
        assert consumer.poll() is None
        server = rabbitmq_server()
        asyncio.run(publish_rows(setup.streaming, rows("2018-01-02 05:00", 5), 2))
        wait_for(lambda: len(setup.stored()) == 48 + 20, "the rows after the loss", 90)
        said = log.read_text()
        assert said.count("lost RabbitMQ") == 1 and "reconnected to RabbitMQ" in said
        assert "error when creating transport" not in said  # one line per outage
    finally:
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(60)
        kill(server)
        setup.repo.store.teardown()
    no_duplicates(setup.stored())


def _listens(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
