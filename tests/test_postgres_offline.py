"""The PostgreSQL offline store: the same guarantees as the Parquet default, on a real server."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import psycopg
import pytest

from skewless.core.errors import DataValidationError, FeatureStoreError
from skewless.features.ingest import ingest_frames
from skewless.features.materialize import materialize
from skewless.features.offline import PostgresOfflineTable
from skewless.features.repo import FeastRepo
from tests.checks import (
    assert_point_in_time_equals_merge_asof,
    assert_windows_equal_offline_tail,
    incremental_cycle,
)
from tests.conftest import VARIABLES, MakeRepo, raw_rows
from tests.services import POSTGRES_DSN

pytestmark = pytest.mark.postgres

PG_OFFLINE = [
    "feature_store.offline_store.type=postgres",
    f"feature_store.offline_store.dsn={POSTGRES_DSN}",
    "feature_store.offline_store.sslmode=disable",
    "feature_store.window_size=24",
]


@pytest.fixture
def pg_repo(make_repo: MakeRepo) -> Iterator[FeastRepo]:
    repo = make_repo(*PG_OFFLINE)
    assert isinstance(repo.offline, PostgresOfflineTable)
    yield repo
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{repo.offline.table}"')


def test_ingest_reingest_and_conflicts(pg_repo: FeastRepo) -> None:
    rows = raw_rows(1, "2020-01-01", 30)
    (first,) = ingest_frames(pg_repo, [("first", rows)])
    (again,) = ingest_frames(pg_repo, [("again", rows)])
    assert (first.rows_written, again.rows_written, again.rows_already_stored) == (30, 0, 30)
    stored = pg_repo.offline.history(None, None, None)
    assert str(stored["event_timestamp"].dt.tz) == "UTC"
    np.testing.assert_array_equal(stored["OT"].to_numpy(), rows["OT"].to_numpy(dtype=np.float32))

    changed = rows.copy()
    changed.loc[0, "OT"] += 1
    with pytest.raises(DataValidationError, match="ingested before with different values"):
        ingest_frames(pg_repo, [("changed", changed)])
    (later,) = ingest_frames(pg_repo, [("later", raw_rows(1, "2020-01-02 09:00", 3))])
    assert any("gap" in w for w in later.warnings)


def test_windows_point_in_time_and_incremental_cycle(pg_repo: FeastRepo) -> None:
    incremental_cycle(pg_repo)
    rng = np.random.default_rng(1)
    stamps = pd.Timestamp("2019-12-31 20:00", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 50 * 60, 200), "min"
    )
    entity_rows = pd.DataFrame({"station_id": rng.integers(1, 3, 200), "event_timestamp": stamps})
    assert_point_in_time_equals_merge_asof(pg_repo, entity_rows)
    assert pg_repo.store.config.offline_store.type == "postgres"


def test_missing_values_round_trip_as_nan(pg_repo: FeastRepo) -> None:
    rows = raw_rows(3, "2020-01-01", 10)
    rows.loc[4, "HULL"] = None
    ingest_frames(pg_repo, [("holes", rows)])
    materialize(pg_repo)
    stored = pg_repo.offline.history([3], None, None)
    assert stored["HULL"].isna().sum() == 1 and stored[VARIABLES].dtypes.eq(np.float32).all()
    assert_windows_equal_offline_tail(pg_repo, [3])


def test_unreachable_server_is_explained(make_repo: MakeRepo) -> None:
    repo = make_repo(
        "feature_store.offline_store.type=postgres",
        "feature_store.offline_store.dsn=postgresql://postgres@127.0.0.1:1/none",
    )
    with pytest.raises(FeatureStoreError, match="cannot reach the PostgreSQL offline store"):
        repo.offline.is_empty()


def test_static_covariates_and_labels_in_postgresql(make_repo: MakeRepo, tmp_path) -> None:
    """Statics in a table of their own (upsert: a new row replaces the old), labels as text in
    the series table, both read back and packed into the online windows."""
    from skewless.features.ingest import ingest
    from skewless.features.keyed_table import PostgresKeyedTable
    from skewless.features.online import window_reader
    from skewless.features.window_view import unpack_window

    stations, source = tmp_path / "stations.csv", tmp_path / "rows.csv"
    pd.DataFrame({"station_id": [1, 2], "capacity": [5.5, 9.0], "kind": ["a", "b"]}).to_csv(
        stations, index=False
    )
    rows = raw_rows(1, "2020-01-01", 30).assign(mode=["x", "y", None] * 10)
    rows.to_csv(source, index=False)
    repo = make_repo(
        *PG_OFFLINE,
        f"data.sources=[{{path: {source}}}]",
        "data.categorical=[mode]",
        f"data.static.sources=[{{path: {stations}}}]",
        "data.static.numeric=[capacity]",
        "data.static.categorical=[kind]",
    )
    statics = repo.statics
    assert isinstance(statics.table, PostgresKeyedTable)
    try:
        reports = ingest(repo)
        assert [r.rows_written for r in reports] == [30, 2]
        stored = repo.offline.history([1], None, None)
        assert stored["mode"].fillna("-").tolist() == rows["mode"].fillna("-").tolist()
        assert statics.read().sort_values("station_id").to_dict("list") == {
            "station_id": [1, 2],
            "capacity": [5.5, 9.0],
            "kind": ["a", "b"],
        }
        statics.upsert(pd.DataFrame({"station_id": [2], "capacity": [1.0], "kind": ["c"]}))
        assert statics.read([2]).to_dict("list") == {
            "station_id": [2],
            "capacity": [1.0],
            "kind": ["c"],
        }
        materialize(repo)
        (blob,) = window_reader(repo).read([1])
        window = unpack_window(blob, 1, tuple(repo.config.data.window_columns))
        assert window.static == {"capacity": 5.5, "kind": "a"}
        assert window.to_frame("station_id")["mode"].fillna("-").tolist()[-3:] == ["x", "y", "-"]
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{repo.offline.table}"')
            conn.execute(psycopg.sql.SQL("DROP TABLE IF EXISTS {}").format(statics.table.ident))
