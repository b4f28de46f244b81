"""Checks shared by the store tests: the same assertions for every backend."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skewless.core.calendar import engineered_columns
from skewless.features.ingest import ingest_frames
from skewless.features.materialize import materialize, push
from skewless.features.online import window_reader
from skewless.features.repo import FeastRepo
from skewless.features.strategies import OnlineRetrievalStrategy, TabularRetrievalStrategy
from tests.conftest import VARIABLES, raw_rows


def assert_windows_equal_offline_tail(
    repo: FeastRepo, entities: list, method: str | None = None
) -> None:
    size = repo.config.feature_store.window_size
    strategy = OnlineRetrievalStrategy(repo, None, window_reader(repo, method))
    windows = strategy.retrieve(entities).windows
    for entity in entities:
        expected = repo.offline.tail(size, [entity])
        window = windows[entity]
        assert len(window) == min(size, len(expected))
        np.testing.assert_array_equal(
            window.timestamps, pd.DatetimeIndex(expected["event_timestamp"])
        )
        np.testing.assert_array_equal(window.values, expected[VARIABLES].to_numpy())


def assert_point_in_time_equals_merge_asof(repo: FeastRepo, entity_rows: pd.DataFrame) -> None:
    """Feast's point-in-time join through the tabular strategy equals pandas merge_asof."""
    joined = TabularRetrievalStrategy(repo, None).retrieve(entity_rows)
    columns = [*VARIABLES, *engineered_columns(repo.config)]
    stored = repo.offline.history(None, None, None)
    stored["event_timestamp"] = stored["event_timestamp"].astype("datetime64[ns, UTC]")
    reference = pd.merge_asof(
        entity_rows.sort_values("event_timestamp"),
        stored[["station_id", "event_timestamp", *columns]].sort_values("event_timestamp"),
        on="event_timestamp",
        by="station_id",
        direction="backward",
    )
    key = ["station_id", "event_timestamp"]
    got = joined.sort_values(key).reset_index(drop=True)
    want = reference.sort_values(key).reset_index(drop=True)
    assert len(got) == len(entity_rows)
    missing = want[columns].isna().sum().sum()
    assert got[columns].isna().sum().sum() == missing > 0  # some rows ask before the data
    pd.testing.assert_frame_equal(got[key + columns], want[key + columns], check_dtype=False)


def incremental_cycle(repo: FeastRepo) -> None:
    """Full materialize, then incremental after new rows, then push; windows follow each step."""
    ingest_frames(
        repo, [("a", raw_rows(1, "2020-01-01", 40)), ("b", raw_rows(2, "2020-01-01", 40, seed=2))]
    )
    full = materialize(repo)
    assert not full.incremental and full.entities_updated == 2
    assert_windows_equal_offline_tail(repo, [1, 2])

    ingest_frames(repo, [("a2", raw_rows(1, "2020-01-02 16:00", 5, seed=4))])
    step = materialize(repo, incremental=True)
    assert step.incremental and step.entities_updated == 1
    assert_windows_equal_offline_tail(repo, [1, 2])

    pushed = raw_rows(2, "2020-01-02 16:00", 3, seed=5)
    report = push(repo, pushed)
    assert report.rows_written == 3
    assert_windows_equal_offline_tail(repo, [1, 2])
    stored = repo.offline.history([2], None, None)
    assert stored["event_timestamp"].iloc[-1] == pd.Timestamp("2020-01-02 18:00", tz="UTC")
    latest = repo.store.get_online_features(
        features=["series:OT"], entity_rows=[{"station_id": 2}]
    ).to_dict()["OT"][0]
    assert latest == pytest.approx(float(np.float32(pushed["OT"].iloc[-1])))
    assert push(repo, pushed).rows_written == 0  # pushing the same rows again adds nothing
