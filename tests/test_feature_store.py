"""The online and offline stores against real Feast: windows, point-in-time joins, push."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis

from skewless.core.config import ENV_PREFIX, HOME_ENV
from skewless.core.errors import FeatureStoreError, StaleFeaturesError, UnknownEntityError
from skewless.features.facade import FeatureStoreFacade
from skewless.features.ingest import ingest_frames
from skewless.features.materialize import materialize
from skewless.features.online import readers_for, window_reader
from skewless.features.repo import FeastRepo
from skewless.features.strategies import (
    OnlineRetrievalStrategy,
    StrategyFactory,
    TabularRetrievalStrategy,
    TimeseriesRetrievalStrategy,
)
from tests.checks import (
    assert_point_in_time_equals_merge_asof,
    assert_windows_equal_offline_tail,
    incremental_cycle,
)
from tests.conftest import ROOT, MakeRepo, raw_rows
from tests.services import REDIS_URL


def test_online_windows_equal_the_last_rows_offline(etth_sqlite: FeastRepo) -> None:
    assert_windows_equal_offline_tail(etth_sqlite, [1, 2])
    window = OnlineRetrievalStrategy(etth_sqlite, None).retrieve([2]).windows[2]
    rows = window.to_frame("station_id")  # back in the shape ingestion stored
    expected = etth_sqlite.offline.tail(512, [2])[rows.columns]
    pd.testing.assert_frame_equal(rows, expected.reset_index(drop=True), check_dtype=False)


def test_point_in_time_join_equals_merge_asof(etth_sqlite: FeastRepo) -> None:
    assert isinstance(
        StrategyFactory(etth_sqlite).create("tabular", "offline", None), TabularRetrievalStrategy
    )
    rng = np.random.default_rng(3)
    stamps = pd.Timestamp("2016-06-30", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 720 * 24 * 60, 400), "min"
    )
    entity_rows = pd.DataFrame({"station_id": rng.integers(1, 3, 400), "event_timestamp": stamps})
    assert_point_in_time_equals_merge_asof(etth_sqlite, entity_rows)


def test_timeseries_strategy_returns_history_up_to_the_time_point(etth_sqlite: FeastRepo) -> None:
    facade = FeatureStoreFacade(etth_sqlite.config, mode="offline", home=etth_sqlite.home)
    history = facade.load_features("2016-07-02T05:00:00Z", [2])
    assert isinstance(
        facade._factory.create("timeseries", "offline", None), TimeseriesRetrievalStrategy
    )
    assert len(history) == 30 and set(history["station_id"]) == {2}
    assert history["event_timestamp"].iloc[-1] == pd.Timestamp("2016-07-02 05:00", tz="UTC")


def test_online_facade_cuts_windows_at_the_time_point(etth_sqlite: FeastRepo) -> None:
    facade = FeatureStoreFacade(etth_sqlite.config, mode="online", home=etth_sqlite.home)
    latest = facade.load_features(None, [1, 2]).windows
    point = latest[1].timestamps[-10]
    cut = facade.load_features(point.isoformat(), [1, 2]).windows
    assert cut[1].end == point and len(cut[1]) == len(latest[1]) - 9
    np.testing.assert_array_equal(cut[2].values, latest[2].values[:-9])


def test_unknown_entities_are_listed(etth_sqlite: FeastRepo) -> None:
    facade = FeatureStoreFacade(etth_sqlite.config, mode="online", home=etth_sqlite.home)
    with pytest.raises(UnknownEntityError, match=r"unknown station_id value\(s\): 3, 99") as error:
        facade.load_features(None, [1, 3, 99])
    assert error.value.entities == [3, 99]
    offline = FeatureStoreFacade(etth_sqlite.config, mode="offline", home=etth_sqlite.home)
    with pytest.raises(UnknownEntityError, match="7"):
        offline.load_features(None, [7])


def test_stale_windows_are_reported_not_used(etth_sqlite: FeastRepo) -> None:
    facade = FeatureStoreFacade(etth_sqlite.config, mode="online", home=etth_sqlite.home)
    with pytest.raises(
        StaleFeaturesError, match="stale online windows for 1 .*ends 2018-06-26T19:00:00"
    ) as error:
        facade.load_features("now", [1, 2])
    assert set(error.value.window_ends) == {1, 2}  # every stale entity, in one error
    # One period late is within the default tolerance; two are not.
    assert facade.load_features("2018-06-26T20:59:00Z", [1]).windows[1].end.hour == 19
    with pytest.raises(StaleFeaturesError):
        facade.load_features("2018-06-26T21:00:00Z", [1])
    strategy = OnlineRetrievalStrategy(
        etth_sqlite, pd.Timestamp("2018-06-27", tz="UTC").to_pydatetime()
    )
    result = strategy.retrieve([1, 2, 5])
    assert set(result.problems) == {1, 2, 5} and not result.windows


def test_latest_takes_each_newest_window_whatever_its_age(etth_sqlite: FeastRepo) -> None:
    """On the 2018 data "now" is stale; "latest" is every station's newest window, and offline
    every stored row."""
    online = FeatureStoreFacade(etth_sqlite.config, mode="online", home=etth_sqlite.home)
    windows = online.load_features("latest", [1, 2]).windows
    offline = FeatureStoreFacade(etth_sqlite.config, mode="offline", home=etth_sqlite.home)
    history = offline.load_features("latest", [1, 2])
    pd.testing.assert_frame_equal(history, offline.load_features(None, [1, 2]))
    newest = history.groupby("station_id")["event_timestamp"].max()
    assert {e: w.end for e, w in windows.items()} == newest.to_dict()
    tabular = FeatureStoreFacade(
        etth_sqlite.config, mode="offline", data_type="tabular", home=etth_sqlite.home
    )
    with pytest.raises(FeatureStoreError, match="needs a time point"):
        tabular.load_features("latest", [1])


def readme_python_example() -> str:
    """The README's Python block that reads features, as a reader copies it."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    return next(block for block in blocks if "load_features" in block)


def test_the_readme_python_example_runs_on_the_shipped_data(
    etth_sqlite: FeastRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As written, from the repository root, over a home where the shipped data was ingested and
    materialized; the one override names the fixture's own Feast project."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.setenv(f"{ENV_PREFIX}FEATURE_STORE__PROJECT", etth_sqlite.config.project)
    monkeypatch.setenv(HOME_ENV, str(etth_sqlite.home))
    monkeypatch.chdir(ROOT)
    example: dict[str, Any] = {}
    exec(readme_python_example(), example)
    assert set(example["windows"].windows) == {1, 2}
    assert set(example["history"]["station_id"]) == {1}


def test_time_point_before_the_window_is_refused(etth_sqlite: FeastRepo) -> None:
    facade = FeatureStoreFacade(etth_sqlite.config, mode="online", home=etth_sqlite.home)
    with pytest.raises(FeatureStoreError, match="use the offline store for older points"):
        facade.load_features("2017-01-01T00:00:00Z", [1])


def test_factory_refuses_unknown_combinations(etth_sqlite: FeastRepo) -> None:
    with pytest.raises(
        FeatureStoreError, match="timeseries/offline, tabular/offline, timeseries/online"
    ):
        StrategyFactory(etth_sqlite).create("tabular", "online", None)  # type: ignore[arg-type]


def test_generated_repo_works_with_the_feast_cli(etth_sqlite: FeastRepo) -> None:
    feast = [sys.executable, "-c", "from feast.cli.cli import cli; cli()"]
    listed = subprocess.run(
        [*feast, "feature-views", "list"],
        cwd=etth_sqlite.folder,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "series_window" in listed.stdout and "series " in listed.stdout
    planned = subprocess.run(
        [*feast, "plan"], cwd=etth_sqlite.folder, capture_output=True, text=True
    )
    assert planned.returncode == 0, planned.stderr
    assert "series_window" in planned.stdout  # repo.py was imported and rebuilt the objects


def test_materialize_before_ingest_is_explained(make_repo: MakeRepo) -> None:
    with pytest.raises(FeatureStoreError, match="run 'skewless ingest CONFIG' first"):
        materialize(make_repo())


def test_incremental_materialize_and_push_on_sqlite(make_repo: MakeRepo) -> None:
    incremental_cycle(make_repo("feature_store.window_size=24"))


@pytest.mark.redis
def test_incremental_materialize_and_push_on_redis(make_repo: MakeRepo) -> None:
    incremental_cycle(
        make_repo(
            "feature_store.window_size=24",
            "feature_store.online_store.type=redis",
            f"feature_store.online_store.url={REDIS_URL}",
        )
    )


def test_every_reader_returns_the_same_windows_on_sqlite(make_repo: MakeRepo) -> None:
    repo = make_repo()
    ingest_frames(repo, [(str(e), raw_rows(e, "2020-01-01", 30 + e, seed=e)) for e in (1, 2, 3)])
    materialize(repo)
    readers = readers_for("sqlite")
    assert readers == ["get_online_features", "online_read", "sqlite_table"]
    blobs = {method: window_reader(repo, method).read([3, 1, 42, 2]) for method in readers}
    assert blobs["sqlite_table"][2] is None
    assert blobs["sqlite_table"] == blobs["online_read"] == blobs["get_online_features"]
    for method in readers:
        assert_windows_equal_offline_tail(repo, [1, 2, 3], method)


@pytest.mark.redis
def test_every_reader_returns_the_same_windows_on_redis(make_repo: MakeRepo) -> None:
    repo = make_repo(
        "feature_store.online_store.type=redis", f"feature_store.online_store.url={REDIS_URL}"
    )
    ingest_frames(repo, [(str(e), raw_rows(e, "2020-01-01", 30 + e, seed=e)) for e in (1, 2, 3)])
    materialize(repo)
    readers = readers_for("redis")
    blobs = {method: window_reader(repo, method).read([3, 1, 42, 2]) for method in readers}
    assert blobs["redis_hash"][2] is None
    assert blobs["redis_hash"] == blobs["online_read"] == blobs["get_online_features"]
    for method in readers:
        assert_windows_equal_offline_tail(repo, [1, 2, 3], method)

    reader = window_reader(repo, "redis_hash")
    before = reader.read([1, 2])
    redis.Redis.from_url(REDIS_URL).client_kill_filter(_type="normal", skipme=True)
    assert reader.read([1, 2]) == before  # a connection killed by the server is replaced


def test_redis_reader_needs_redis(etth_sqlite: FeastRepo) -> None:
    with pytest.raises(ValueError, match="needs feature_store.online_store.type: redis"):
        window_reader(etth_sqlite, "redis_hash")


@pytest.mark.redis
def test_sqlite_reader_needs_sqlite(make_repo: MakeRepo) -> None:
    repo = make_repo(
        "feature_store.online_store.type=redis", f"feature_store.online_store.url={REDIS_URL}"
    )
    with pytest.raises(ValueError, match="needs feature_store.online_store.type: sqlite"):
        window_reader(repo, "sqlite_table")


def test_window_end_is_stored_beside_the_window(etth_sqlite: FeastRepo) -> None:
    response = etth_sqlite.store.get_online_features(
        features=["series_window:window_end"], entity_rows=[{"station_id": 1}, {"station_id": 2}]
    ).to_dict()
    ends = [pd.Timestamp(t) for t in response["window_end"]]
    assert ends == [pd.Timestamp("2018-06-26 19:00", tz="UTC")] * 2
