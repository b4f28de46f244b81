"""Offline → online: the latest rows and the windows, written a batch of entities at a time.

Per batch of ``feature_store.materialize_batch_entities`` entities, skewless reads each entity's
last W rows (one offline query) and writes, with Feast's own online write, both views: the
window (all W rows, packed) and the latest row (the window's last). Feast's ``materialize``
is not used: its local engine reads every row of the range at once (3.3 GB for 1,000 year-long
hourly series, against 0.85 GB for this path), and a killed run leaves its view marked as
materializing. Incremental runs rewrite only entities that received rows since the last run (by
ingestion time, so late rows count), unless the online store has lost its marker (see
:mod:`skewless.features.online_marker`): then every window is rewritten.

Pushed and streamed rows (:func:`push`) take a shorter way: after the offline append, the
touched entities' windows are read (one online read), the new rows appended to them and the
oldest dropped, and written back (one online write), with no offline read. An entity whose new
rows do not all come after its window's end (late rows), or that has no window yet, is rebuilt
from the offline store as materialize does, so the windows are the same bytes either way; so
are all windows that carry labels or known-future plans, which change with the window's rows.

Every writer of the online windows (materialize, push, ``skewless stream``, POST /push) holds
one lock per home (:func:`online_lock`), across processes: two read-append-write cycles at once
would lose one another's rows. A writer that stored rows offline and then failed or died before
its online write leaves a pending mark; the next one catches up (an incremental materialize)
before it writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skewless.core.errors import FeatureStoreError
from skewless.core.schema import CREATED_TS, EVENT_TS, SERIES_VIEW
from skewless.features.atomic_file import write_atomically
from skewless.features.ingest import IngestReport, ingest_batch
from skewless.features.keyed_table import KeyedTable
from skewless.features.online import WindowReader, window_reader
from skewless.features.online_marker import online_marker
from skewless.features.repo import WINDOW_VIEW, FeastRepo
from skewless.features.statics import StaticTable
from skewless.features.window_view import (
    append_to_window,
    pack_windows,
    window_end_us,
    window_records,
)

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (entities done, entities in total)
_STATE_FILE = "materialize_state.json"
_LOCK_FILE = "online_windows.lock"
# Per repo object: its window reader, made once the Feast objects were applied.
_readers: dict[int, tuple[weakref.ref[FeastRepo], WindowReader]] = {}


@dataclass
class MaterializeReport:
    incremental: bool
    entities_updated: int
    start: datetime | None
    end: datetime


@contextlib.contextmanager
def online_lock(repo: FeastRepo) -> Iterator[None]:
    """Hold the one lock of this home's online windows (every writer takes it; not reentrant)."""
    repo.folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(repo.folder / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def materialize(
    repo: FeastRepo, incremental: bool = False, progress: Progress | None = None
) -> MaterializeReport:
    """Bring the online store up to date with the offline store."""
    with online_lock(repo):
        return _materialize(repo, incremental, progress)


def _materialize(
    repo: FeastRepo, incremental: bool, progress: Progress | None
) -> MaterializeReport:
    if repo.offline.is_empty():
        raise FeatureStoreError(
            f"nothing has been ingested into project '{repo.config.project}' under {repo.home}; "
            "run 'skewless ingest CONFIG' first"
        )
    repo.apply()
    first, last, ingested_until = repo.offline.bounds()
    end = last + timedelta(seconds=1)
    watermark = _read_watermark(repo)
    marker = online_marker(repo)
    if incremental and watermark is not None and marker.read() is None:
        logger.warning(
            "the online store has lost its windows (no materialization marker: restarted "
            "without its data?); rewriting every entity's window"
        )
        watermark = None
    if incremental and watermark is not None and _written_since(repo.statics, watermark):
        logger.info("static covariates changed since the last run; rewriting every window")
        watermark = None
    if incremental and watermark is not None:
        # By ingestion time, not event time: late rows older than the last run still count.
        entities, start = repo.offline.changed_since(watermark)
        entities += _replanned_since(repo, watermark, entities)
    else:
        incremental, entities, start = False, repo.offline.entities(), first
    write_windows(repo, entities, progress)
    for table in (repo.statics, repo.plans):
        updated = None if table is None else table.updated_at()
        if updated is not None:
            ingested_until = max(pd.Timestamp(ingested_until), pd.Timestamp(updated))
    marker.write(ingested_until)
    _write_watermark(repo, ingested_until)
    _pending(repo).unlink(missing_ok=True)
    return MaterializeReport(incremental, len(entities), start, end)


def write_windows(repo: FeastRepo, entities: list[Any], progress: Progress | None = None) -> None:
    """Rebuild and write the online windows and latest rows of ``entities``, a bounded batch
    at a time."""
    config = repo.config
    key, size = config.data.entity_key, config.feature_store.materialize_batch_entities
    for begin in range(0, len(entities), size):
        batch = entities[begin : begin + size]
        tails = repo.offline.tail(config.feature_store.window_size, batch)
        statics = None if repo.statics is None else repo.statics.read(batch)
        plans = None if repo.plans is None else repo.plans.read(batch)
        windows = pack_windows(
            tails, key, config.data.variables, statics, config.data.categorical, plans
        )
        _write_online(repo, tails.groupby(key, sort=False).tail(1), windows)
        if progress is not None:
            progress(begin + len(batch), len(entities))
    logger.info("wrote online windows of %d entities", len(entities))


def _write_online(repo: FeastRepo, latest: pd.DataFrame, windows: pd.DataFrame) -> None:
    """Both online views of some entities: their latest rows and their packed windows. A
    window's event time is when it was written, not its end: Feast's Redis store skips a write
    no newer than the stored one, and late rows or new static covariates rewrite a window
    without moving its end."""
    repo.store.write_to_online_store(SERIES_VIEW, latest)
    now = pd.Timestamp.now(tz="UTC")
    repo.store.write_to_online_store(
        WINDOW_VIEW, windows.assign(**{EVENT_TS: now, CREATED_TS: now})
    )


def push(repo: FeastRepo, rows: pd.DataFrame, origin: str = "pushed rows") -> IngestReport:
    """The streaming path: validate and store new rows, then update both online views of
    their entities, under the online lock."""
    with online_lock(repo):
        behind = _behind(repo)
        if behind is not None:
            logger.warning("%s: bringing the online windows up to date first", behind)
            _materialize(repo, incremental=True, progress=None)
        report, written = _store(repo, rows, origin)
        if not written.empty:
            _update_windows(repo, written)
            _pending(repo).unlink(missing_ok=True)
    if report.rows_written and repo.offline.parts() > repo.config.feature_store.compact_after_parts:
        with repo.offline.write_lock():
            merged = repo.offline.compact()
        logger.info("compacted %d offline parts into one", merged)
    return report


def _store(repo: FeastRepo, rows: pd.DataFrame, origin: str) -> tuple[IngestReport, pd.DataFrame]:
    """Validate and append ``rows`` as ingest does; returns the new rows as stored. The pending
    mark is made before they can reach the offline store."""
    written: list[pd.DataFrame] = []
    with repo.offline.write_lock(), repo.offline.appender() as part:

        def write(frame: pd.DataFrame) -> None:
            _pending(repo).touch()
            part.write(frame)
            written.append(frame.assign(**{CREATED_TS: part.created}))

        (report,) = ingest_batch(repo, [(origin, rows)], write)
    return report, pd.concat(written, ignore_index=True) if written else pd.DataFrame()


def _update_windows(repo: FeastRepo, written: pd.DataFrame) -> None:
    """Append the ``written`` rows to their entities' windows where every one of them comes
    after the window's end, and rebuild the other entities' windows from the offline store."""
    data, size = repo.config.data, repo.config.feature_store.window_size
    key = data.entity_key
    rows = written.sort_values([key, EVENT_TS], kind="stable", ignore_index=True)
    keys = rows[key].to_numpy()
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    bounds = np.r_[starts, len(rows)]
    entities = keys[starts].tolist()
    times = pd.DatetimeIndex(rows[EVENT_TS]).as_unit("us").asi8
    values = rows[data.variables].to_numpy(np.float32)
    width = len(data.window_columns)
    blobs = _reader(repo).read(entities)
    # Label codes index the labels of the window's own rows, and a plan is packed from the
    # window's end on: both change with the rows, so such windows are always rebuilt.
    rebuilt_whole = bool(data.categorical) or repo.plans is not None
    appended: dict[int, bytes] = {}  # row index of the entity's latest row -> its new window
    rebuild = []
    for first, last, entity, blob in zip(bounds[:-1], bounds[1:], entities, blobs, strict=True):
        end = None if blob is None or rebuilt_whole else window_end_us(blob, width)
        if blob is None or end is None or times[first] <= end:
            rebuild.append(entity)
        else:
            appended[last - 1] = append_to_window(blob, times[first:last], values[first:last], size)
    if appended:
        latest = rows.iloc[list(appended)]
        windows = window_records(
            key, latest[key].tolist(), list(appended.values()), latest[EVENT_TS].tolist()
        )
        _write_online(
            repo, latest[[key, EVENT_TS, *repo.offline.value_columns, CREATED_TS]], windows
        )
    if rebuild:
        write_windows(repo, rebuild)


def _reader(repo: FeastRepo) -> WindowReader:
    """The window reader of ``repo``, made (after applying the Feast objects) once per repo
    object: applying per micro-batch would cost more than the batch's own write."""
    key = id(repo)
    known = _readers.get(key)
    if known is None or known[0]() is not repo:
        repo.apply()
        reference = weakref.ref(repo, lambda _: _readers.pop(key, None))
        known = _readers[key] = (reference, window_reader(repo))
    return known[1]


def _pending(repo: FeastRepo) -> Path:
    """The mark of rows stored offline whose online write has not finished, per online store."""
    return repo.folder / f"online_pending_{_store_identity(repo).replace(':', '_')}"


def _behind(repo: FeastRepo) -> str | None:
    """Why the online windows may lack what the stores hold, which an append cannot mend."""
    if _pending(repo).exists():
        return "a writer stored rows offline but not online (it failed or was killed)"
    watermark = _read_watermark(repo)
    if _written_since(repo.statics, watermark):
        return "static covariates changed since the windows were materialized"
    if _written_since(repo.plans, watermark):
        return "known-future plans changed since the windows were materialized"
    return None


def _replanned_since(repo: FeastRepo, watermark: datetime, already: list[Any]) -> list[Any]:
    """Entities not in ``already`` whose plans were written after ``watermark`` (plans ride in
    their windows)."""
    if repo.plans is None:
        return []
    chosen = set(already)
    return [e for e in repo.plans.changed_since(watermark) if e not in chosen]


def _written_since(table: StaticTable | KeyedTable | None, watermark: datetime | None) -> bool:
    """Whether ``table`` (static covariates or plans: they ride in the windows) was written
    after ``watermark`` (None: never materialized)."""
    updated = None if table is None else table.updated_at()
    if updated is None:
        return False
    return watermark is None or pd.Timestamp(updated) > pd.Timestamp(watermark)


def _read_watermark(repo: FeastRepo) -> datetime | None:
    path = repo.folder / _STATE_FILE
    marks = json.loads(path.read_text()) if path.exists() else {}
    mark = marks.get(_store_identity(repo))
    return None if mark is None else datetime.fromisoformat(mark)


def _write_watermark(repo: FeastRepo, ingested_until: datetime) -> None:
    path = repo.folder / _STATE_FILE
    marks = json.loads(path.read_text()) if path.exists() else {}
    marks[_store_identity(repo)] = ingested_until.isoformat()
    write_atomically(path, json.dumps(marks, indent=2))


def _store_identity(repo: FeastRepo) -> str:
    """A stable name of the online store that does not spell out its credentials."""
    online = repo.store.config.online_store
    where = getattr(online, "path", None) or getattr(online, "connection_string", "")
    return f"{online.type}:{hashlib.sha256(str(where).encode()).hexdigest()[:16]}"
