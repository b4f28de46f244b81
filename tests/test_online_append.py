"""Pushed and streamed rows are appended to the online windows, not rebuilt from the offline
store: the windows after any sequence of pushes (in order, late, repeated, new entities, two
writers at once, a writer that failed half way) are the bytes a full materialize writes, on
SQLite and on Redis, with static covariates or known-future plans riding in the blobs' extras."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from skewless.core.errors import DataValidationError
from skewless.core.schema import SERIES_VIEW
from skewless.features import materialize as materializing
from skewless.features.ingest import ingest
from skewless.features.materialize import materialize, push
from skewless.features.online import WindowReader, window_reader
from skewless.features.repo import FeastRepo
from skewless.features.window_view import pack_windows
from tests.conftest import VARIABLES, MakeRepo, raw_rows
from tests.services import REDIS_URL

WINDOW = 8
ENTITIES = [1, 2, 3, 4]
REDIS = ["feature_store.online_store.type=redis", f"feature_store.online_store.url={REDIS_URL}"]
STORES = [
    pytest.param([], id="sqlite"),
    pytest.param(REDIS, id="redis", marks=pytest.mark.redis),
]


def rows(entity: int, first_hour: int, hours: int) -> pd.DataFrame:
    """Raw rows of ``entity`` from 2020-01-01 plus ``first_hour``, the same for the same call."""
    start = pd.Timestamp("2020-01-01") + pd.Timedelta(hours=first_hour)
    return raw_rows(entity, str(start), hours, seed=entity * 1000 + first_hour)


def expected_windows(repo: FeastRepo) -> list[bytes]:
    """The blobs a full materialize writes, packed here from the offline store."""
    data = repo.config.data
    tails = repo.offline.tail(repo.config.feature_store.window_size, ENTITIES)
    statics = None if repo.statics is None else repo.statics.read(ENTITIES)
    plans = None if repo.plans is None else repo.plans.read(ENTITIES)
    key = data.entity_key
    packed = pack_windows(tails, key, data.variables, statics, data.categorical, plans)
    found = dict(zip(packed[key], packed["window"], strict=True))
    return [found.get(e) for e in ENTITIES]


def latest_rows(repo: FeastRepo) -> dict[str, list[Any]]:
    features = [f"{SERIES_VIEW}:{v}" for v in VARIABLES]
    rows = [{repo.config.data.entity_key: e} for e in ENTITIES]
    return repo.store.get_online_features(features=features, entity_rows=rows).to_dict()


@pytest.fixture
def rebuilt(monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """The entities of each rebuild from the offline store (appends are not listed)."""
    calls: list[list[Any]] = []
    original = materializing.write_windows

    def spy(repo: FeastRepo, entities: list[Any], progress: Any = None) -> None:
        calls.append(sorted(entities))
        original(repo, entities, progress)

    monkeypatch.setattr(materializing, "write_windows", spy)
    return calls


def make(make_repo: MakeRepo, store: list[str], *extra: str, window: int = WINDOW) -> FeastRepo:
    return make_repo(f"feature_store.window_size={window}", *store, *extra)


def with_extras(make_repo: MakeRepo, store: list[str], folder: Path, extras: str) -> FeastRepo:
    """A repo whose entities 1..3 are ingested from a file and materialized, with static
    covariates of 1 and 2 or a plan of HUFL ahead for 1 and 3 (``extras``)."""
    source, table = folder / "rows.csv", folder / f"{extras}.csv"
    pd.concat([rows(e, 0, 6) for e in (1, 2, 3)]).to_csv(source, index=False)
    if extras == "statics":
        stations = {"station_id": [1, 2], "capacity": [5.5, 9.0], "kind": ["a", "b"]}
        pd.DataFrame(stations).to_csv(table, index=False)
        settings = [
            f"data.static.sources=[{{path: {table}}}]",
            "data.static.numeric=[capacity]",
            "data.static.categorical=[kind]",
        ]
    else:
        pd.concat([rows(e, 8, 30)[["station_id", "date", "HUFL"]] for e in (1, 3)]).to_csv(
            table, index=False
        )
        settings = ["data.known.columns=[HUFL]", f"data.known.sources=[{{path: {table}}}]"]
    repo = make(make_repo, store, f"data.sources=[{{path: {source}}}]", *settings)
    ingest(repo)
    materialize(repo)
    return repo


# (what the batch is, its rows, the entities rebuilt from the offline store)
BATCHES: list[tuple[str, Callable[[], pd.DataFrame], list[list[int]]]] = [
    ("in order, past the window", lambda: pd.concat([rows(e, 6, 4) for e in (1, 2, 3)]), []),
    ("more rows than the window", lambda: rows(3, 10, 20), []),
    ("a new entity", lambda: rows(4, 0, 4), [[4]]),
    ("after a gap", lambda: rows(2, 12, 2), []),
    ("late rows of one entity", lambda: pd.concat([rows(2, 10, 2), rows(1, 10, 4)[:2]]), [[2]]),
    ("already stored and new", lambda: rows(1, 10, 4), []),
]


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("extras", ["plain", "statics", "plans"])
def test_pushed_windows_are_the_bytes_of_a_full_materialize(
    make_repo: MakeRepo,
    store: list[str],
    extras: str,
    tmp_path: Path,
    rebuilt: list[list[Any]],
) -> None:
    if extras == "plain":
        repo = make(make_repo, store)
        push(repo, pd.concat([rows(e, 0, 6) for e in (1, 2, 3)]))
    else:
        repo = with_extras(make_repo, store, tmp_path, extras)
    assert rebuilt == [[1, 2, 3]]  # no windows yet: built from the offline store
    reader = window_reader(repo)
    for what, batch, rebuilds in BATCHES:
        rebuilt.clear()
        pushed = batch()
        push(repo, pushed)
        if extras == "plans":  # a plan starts at the window's end: rebuilt with the rows
            rebuilds = [sorted(pushed["station_id"].unique().tolist())]
        assert rebuilt == rebuilds, what
        assert reader.read(ENTITIES) == expected_windows(repo), what
    pushed, latest = reader.read(ENTITIES), latest_rows(repo)
    materialize(repo)
    assert reader.read(ENTITIES) == pushed
    assert latest_rows(repo) == latest


class SlowReader:
    """A window reader that dawdles after reading, as a loaded machine does."""

    def __init__(self, reader: WindowReader) -> None:
        self.reader = reader

    def read(self, entities: Sequence[Any]) -> list[bytes | None]:
        blobs = self.reader.read(entities)
        time.sleep(0.05)
        return blobs


@pytest.mark.parametrize("store", STORES)
def test_two_writers_of_the_same_entities_lose_nothing(
    make_repo: MakeRepo, store: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pushers (each its own repo object, as two processes would be) interleave hours of
    the same entities, each slow between reading the windows and writing them back: without
    the online lock one would write windows read before the other's append, dropping its rows."""
    reader = materializing._reader
    monkeypatch.setattr(materializing, "_reader", lambda repo: SlowReader(reader(repo)))
    first = make(make_repo, store, window=64)  # every row stays in the windows
    push(first, pd.concat([rows(e, 0, 2) for e in (1, 2)]))
    second = FeastRepo(first.config, first.home)
    errors: list[BaseException] = []

    def writer(repo: FeastRepo, offset: int) -> None:
        try:
            for hour in range(2 + offset, 42, 4):
                push(repo, pd.concat([rows(e, hour, 2) for e in (1, 2)]))
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(r, o)) for r, o in ((first, 0), (second, 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    online = window_reader(first).read(ENTITIES)
    assert online == expected_windows(first)
    assert len(first.offline.history([1, 2], None, None)) == 2 * 42


def test_a_writer_that_failed_after_its_offline_append_is_caught_up(
    make_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make(make_repo, [])
    push(repo, pd.concat([rows(e, 0, 6) for e in (1, 2)]))

    def fail(*_: Any) -> None:
        raise ConnectionError("the online store went away")

    with monkeypatch.context() as patched:
        patched.setattr(materializing, "_update_windows", fail)
        with pytest.raises(ConnectionError):
            push(repo, rows(1, 6, 2))
    assert len(repo.offline.history([1], None, None)) == 8  # stored, not online
    push(repo, rows(2, 6, 2))  # catches up entity 1 before appending entity 2's rows
    assert window_reader(repo).read(ENTITIES) == expected_windows(repo)


def test_a_refused_push_leaves_nothing_to_catch_up(make_repo: MakeRepo) -> None:
    repo = make(make_repo, [])
    push(repo, rows(1, 0, 6))
    bad = rows(1, 6, 2).assign(OT="not a number")
    with pytest.raises(DataValidationError):
        push(repo, bad)
    assert not list(repo.folder.glob("online_pending_*"))
