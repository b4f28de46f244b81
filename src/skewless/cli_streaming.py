"""``skewless stream`` and ``skewless publish``: rows through a message broker
(docs/streaming.md). Broker clients, pandas and Feast are imported when a verb runs."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from skewless.cli_output import console, user_errors
from skewless.core.errors import ConfigError
from skewless.core.library_notices import quiet_feast_deprecations

if TYPE_CHECKING:
    from skewless.core.config import SkewlessConfig, SourceConfig, StreamingConfig

FileOpt = Annotated[Path, typer.Option(help="CSV or Parquet file whose rows to publish")]
RowsPerMessageOpt = Annotated[
    int, typer.Option(help="rows in each JSON message (an array of rows)", min=1)
]


def streaming_of(config: SkewlessConfig) -> StreamingConfig:
    if config.streaming is None:
        raise ConfigError(
            "the config has no 'streaming' section: add one such as "
            "{broker: nats, url: 'nats://127.0.0.1:4222', subject: rows} (docs/streaming.md)"
        )
    return config.streaming


def run_stream_command(config: SkewlessConfig) -> None:
    """Consume until SIGINT or SIGTERM; the micro-batch in hand is finished first."""
    from skewless.core.config import skewless_home
    from skewless.features.brokers import shown_url

    with user_errors():
        streaming = streaming_of(config)
        quiet_feast_deprecations()
        from skewless.features.repo import FeastRepo
        from skewless.features.stream import StreamMetrics, run_stream

        repo = FeastRepo(config, skewless_home())
        metrics = StreamMetrics()
        if streaming.metrics_port is not None:
            metrics.serve(streaming.metrics_host, streaming.metrics_port)
        where = (
            f"; metrics on http://{streaming.metrics_host}:{streaming.metrics_port}/metrics"
            if streaming.metrics_port is not None
            else ""
        )
        console.print(
            f"streaming {streaming.broker} {shown_url(streaming.url)} subject "
            f"'{streaming.subject}' into project '{config.project}'{where}",
            highlight=False,
        )

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            await run_stream(repo, metrics, stop)

        asyncio.run(main())
        console.print("stopped")


def run_publish_command(
    config: SkewlessConfig, file: Path, entity: str | None, rows_per_message: int
) -> None:
    with user_errors():
        streaming = streaming_of(config)
        from skewless.features.brokers import publish_rows
        from skewless.features.sources import read_source

        rows = read_source(_source(file, _entity(entity, config), config), config.data)
        sent = asyncio.run(publish_rows(streaming, rows, rows_per_message))
        console.print(
            f"published {len(rows)} rows of {file} in {sent} messages to '{streaming.subject}'",
            highlight=False,
        )


def _source(file: Path, entity: int | str | None, config: SkewlessConfig) -> SourceConfig:
    """The file as ``ingest --source`` reads it (a wide file melts as the config's sources
    do), without importing Feast as ``features.ingest`` does: publishing needs no store."""
    from skewless.core.config import SourceConfig
    from skewless.features.sources import file_columns

    path = file.resolve()
    melts = [source.melt for source in config.data.sources]
    melt = melts[0] if melts and all(m == melts[0] for m in melts) else None
    wide = melt is not None and path.is_file() and config.data.entity_key not in file_columns(path)
    if entity is None and wide:
        return SourceConfig(path=path, melt=melt)
    return SourceConfig(path=path, entity=entity)


def _entity(value: str | None, config: SkewlessConfig) -> int | str | None:
    if value is None or config.data.entity_type == "string":
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--entity {value!r} must be an integer (data.entity_type)") from None
