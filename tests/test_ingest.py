"""Ingestion against real Parquet files: every bad input gets its error and writes nothing."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest

from skewless.core.calendar import engineered_columns
from skewless.core.config import PostgresQuery, SourceConfig
from skewless.core.errors import DataValidationError, SourceError
from skewless.features.ingest import ingest, ingest_frames, source_from_path
from skewless.features.materialize import materialize, push
from tests.conftest import VARIABLES, MakeRepo, raw_rows
from tests.services import POSTGRES_DSN


def stored_rows(repo) -> pd.DataFrame:
    return repo.offline.history(None, None, None)


def test_ingest_appends_new_rows_and_reingest_adds_nothing(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    repo = make_repo()
    first = raw_rows(1, "2020-01-01", 48)
    path = tmp_path / "first.csv"
    first.to_csv(path, index=False)
    (report,) = ingest(repo, [source_from_path(path, None)])
    assert (report.rows_written, report.rows_already_stored) == (48, 0)

    (again,) = ingest(repo, [source_from_path(path, None)])
    assert (again.rows_written, again.rows_already_stored) == (0, 48)
    assert len(stored_rows(repo)) == 48

    newer = pd.concat([first.tail(10), raw_rows(1, "2020-01-03", 24, seed=1)])
    (more,) = ingest_frames(repo, [("newer", newer)])
    assert (more.rows_written, more.rows_already_stored) == (24, 10)
    rows = stored_rows(repo)
    assert len(rows) == 72 and rows["event_timestamp"].is_monotonic_increasing


def test_stored_rows_are_typed_and_carry_calendar_features(make_repo: MakeRepo) -> None:
    repo = make_repo()
    raw = raw_rows(7, "2021-03-01 22:00", 5)
    ingest_frames(repo, [("raw", raw)])
    rows = stored_rows(repo)
    assert str(rows["event_timestamp"].dt.tz) == "UTC"
    assert rows["station_id"].tolist() == [7] * 5
    for column in [*VARIABLES, *engineered_columns(repo.config)]:
        assert rows[column].dtype == np.float32, column
    np.testing.assert_array_equal(rows["OT"].to_numpy(), raw["OT"].to_numpy(dtype=np.float32))
    # 22:00 and 02:00 sit symmetric around midnight: same cos, opposite sin.
    assert rows["hour_cos"].iloc[0] == pytest.approx(rows["hour_cos"].iloc[4], abs=1e-6)
    assert rows["hour_sin"].iloc[0] == pytest.approx(-rows["hour_sin"].iloc[4], abs=1e-6)


def test_parquet_and_csv_sources(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo()
    raw = raw_rows(None, "2020-01-01", 12)
    raw.to_parquet(tmp_path / "one.parquet")
    raw.to_csv(tmp_path / "two.csv", index=False)
    reports = ingest(
        repo,
        [source_from_path(tmp_path / "one.parquet", 1), source_from_path(tmp_path / "two.csv", 2)],
    )
    assert [r.rows_written for r in reports] == [12, 12]
    assert sorted(repo.offline.entities()) == [1, 2]


def _bad(frame: pd.DataFrame, row: int, column: str, value: object) -> pd.DataFrame:
    frame = frame.copy().astype({column: object})
    frame.loc[row, column] = value
    return frame


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda f: f.drop(columns=["HULL"]), ["missing column(s) ['HULL']"]),
        (
            lambda f: _bad(f, 3, "date", "yesterday-ish"),
            ["'date' is empty or not a timestamp", "row 4", "yesterday-ish"],
        ),
        (lambda f: _bad(f, 5, "MUFL", "n/a?"), ["'MUFL' must be numeric", "'n/a?'", "row 6"]),
        (lambda f: _bad(f, 2, "OT", float("inf")), ["'OT' is infinite at row 3"]),
        (lambda f: _bad(f, 1, "station_id", None), ["'station_id' is empty at row 2"]),
        (
            lambda f: _bad(f, 1, "station_id", "north"),
            ["'station_id' must hold 64-bit integers", "'north'"],
        ),
        (
            lambda f: _bad(f, 1, "station_id", 1.5),
            ["(data.entity_type is int64) but has 1.5 at row 2"],
        ),
        (lambda f: _bad(f, 1, "station_id", 2**70), ["but has 1180591620717411303424 at row 2"]),
        (
            lambda f: _bad(f, 2, "OT", 1e300),
            ["'OT' has 1e+300, beyond what float32 holds, at row 3"],
        ),
        (
            lambda f: pd.concat([f, f.iloc[[4]]], ignore_index=True),
            ["share an (station_id, timestamp) pair", "rows 5, 13"],
        ),
        (lambda f: _bad(f, 6, "date", "2020-01-01 06:30:00"), ["off the 'h' grid", "row 7"]),
        (lambda f: f.iloc[0:0], ["the source has no rows"]),
    ],
)
def test_bad_rows_are_refused_with_reasons_and_nothing_is_written(
    make_repo: MakeRepo, mutate, expected: list[str]
) -> None:
    repo = make_repo()
    with pytest.raises(DataValidationError) as error:
        ingest_frames(repo, [("bad.csv", mutate(raw_rows(1, "2020-01-01", 12)))])
    message = str(error.value)
    assert "bad.csv was refused; nothing was written" in message
    for text in expected:
        assert text in message
    assert repo.offline.is_empty()


def test_iso_shapes_mix_but_timestamps_with_and_without_a_zone_do_not(
    make_repo: MakeRepo,
) -> None:
    repo = make_repo()
    rows = raw_rows(1, "2020-01-01", 6)
    stamps = pd.to_datetime(rows["date"]).dt.tz_localize("UTC")
    rows["date"] = stamps.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    rows.loc[::2, "date"] = stamps[::2].dt.strftime("%Y-%m-%d %H:%M:%S+00:00")
    ingest_frames(repo, [("mixed shapes", rows)])
    assert list(stored_rows(repo)["event_timestamp"]) == list(stamps)
    later = raw_rows(1, "2020-01-01 06:00", 3)  # naive: read in data.timezone ...
    later.loc[1, "date"] = "2020-01-01T07:00:00+00:00"  # ... but one row has an offset
    with pytest.raises(DataValidationError, match=r"mixes timestamps with and without a time zone"):
        ingest_frames(repo, [("mixed zones", later)])


def test_naive_timestamps_need_a_time_zone(make_repo: MakeRepo) -> None:
    repo = make_repo("data.timezone=null")
    with pytest.raises(DataValidationError, match="has no time zone; .* set data.timezone"):
        ingest_frames(repo, [("naive", raw_rows(1, "2020-01-01", 5))])
    aware = raw_rows(1, "2020-01-01", 5)
    aware["date"] = pd.to_datetime(aware["date"]).dt.tz_localize("Europe/Berlin").astype(str)
    ingest_frames(repo, [("aware", aware)])
    assert stored_rows(repo)["event_timestamp"].iloc[0] == pd.Timestamp(
        "2019-12-31 23:00", tz="UTC"
    )


def test_one_bad_source_blocks_the_whole_ingest(make_repo: MakeRepo) -> None:
    repo = make_repo()
    good, bad = raw_rows(1, "2020-01-01", 6), _bad(raw_rows(2, "2020-01-01", 6), 0, "OT", "x")
    with pytest.raises(DataValidationError):
        ingest_frames(repo, [("good", good), ("bad", bad)])
    assert repo.offline.is_empty()


def test_changed_values_of_stored_rows_are_refused(make_repo: MakeRepo) -> None:
    repo = make_repo()
    rows = raw_rows(1, "2020-01-01", 12)
    ingest_frames(repo, [("first", rows)])
    changed = rows.copy()
    changed.loc[3, "OT"] += 1.0
    with pytest.raises(
        DataValidationError, match="1 rows were ingested before with different values: row 4"
    ):
        ingest_frames(repo, [("second", changed)])
    assert len(stored_rows(repo)) == 12


def test_gaps_warn_by_default_and_block_when_configured(make_repo: MakeRepo) -> None:
    rows = raw_rows(1, "2020-01-01", 12).drop(index=[4, 5, 6])
    (report,) = ingest_frames(make_repo(), [("gappy", rows)])
    assert report.rows_written == 9
    assert any("1 gap(s)" in w and "3 missing points" in w for w in report.warnings)

    strict = make_repo("validation.on_gap=error")
    with pytest.raises(DataValidationError, match="validation.on_gap is 'error'"):
        ingest_frames(strict, [("gappy", rows)])


def test_gap_at_the_seam_with_stored_rows_is_found(make_repo: MakeRepo) -> None:
    repo = make_repo()
    ingest_frames(repo, [("old", raw_rows(1, "2020-01-01", 10))])
    (report,) = ingest_frames(repo, [("new", raw_rows(1, "2020-01-01 15:00", 5))])
    assert any(
        "after 2020-01-01T09:00:00+00:00 until 2020-01-01T15:00:00+00:00" in w
        for w in report.warnings
    )


def test_missing_values_warn_or_block(make_repo: MakeRepo) -> None:
    rows = _bad(raw_rows(1, "2020-01-01", 8), 2, "LULL", None)
    (report,) = ingest_frames(make_repo(), [("holes", rows)])
    assert any("'LULL' is missing at row 3" in w for w in report.warnings)
    with pytest.raises(DataValidationError, match="validation.on_missing is 'error'"):
        ingest_frames(make_repo("validation.on_missing=error"), [("holes", rows)])


def test_missing_source_file_is_a_clear_error(make_repo: MakeRepo, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        ingest(make_repo(), [source_from_path(tmp_path / "absent.csv", 1)])


@pytest.mark.postgres
def test_postgres_table_and_query_sources(make_repo: MakeRepo) -> None:
    table = "skewless_raw_test"
    rows = raw_rows(None, "2020-01-01", 24)
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(
            f"CREATE TABLE {table} (station_id bigint, date timestamptz, "
            + ", ".join(f'"{c}" double precision' for c in VARIABLES)
            + ")"
        )
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {table} VALUES (%s, %s, {', '.join(['%s'] * len(VARIABLES))})",
                [
                    (station, f"{d}+00", *values)
                    for station in (1, 2)
                    for d, *values in rows[["date", *VARIABLES]].itertuples(index=False)
                ],
            )
    try:
        repo = make_repo()
        from_table = SourceConfig(postgres=PostgresQuery(dsn=POSTGRES_DSN, table=f"public.{table}"))
        from_query = SourceConfig(
            postgres=PostgresQuery(
                dsn=POSTGRES_DSN, query=f"SELECT * FROM {table} WHERE station_id = 2"
            )
        )
        (report,) = ingest(repo, [from_table])
        assert report.rows_written == 48 and sorted(report.entities) == [1, 2]
        (again,) = ingest(repo, [from_query])
        assert (again.rows_written, again.rows_already_stored) == (0, 24)
        stored = stored_rows(repo)
        np.testing.assert_array_equal(
            stored.loc[stored.station_id == 1, "OT"].to_numpy(),
            rows["OT"].to_numpy(dtype=np.float32),
        )
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.mark.postgres
def test_postgres_errors_are_explained(make_repo: MakeRepo) -> None:
    source = SourceConfig(postgres=PostgresQuery(dsn=POSTGRES_DSN, table="no_such_table"))
    with pytest.raises(SourceError, match="cannot read from PostgreSQL"):
        ingest(make_repo(), [source])


def test_a_fleet_is_ingested_in_entity_batches_all_or_nothing(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    """Seven entities, two at a time: one bad value in the last batch leaves nothing written,
    and the message names its row in the file; a clean file lands whole, in one part."""
    repo = make_repo("feature_store.ingest_batch_entities=2")
    fleet = pd.concat([raw_rows(e, "2020-01-01", 30, seed=e) for e in range(1, 8)])
    fleet = fleet.sample(frac=1, random_state=0).reset_index(drop=True)  # entities interleaved
    bad = fleet.copy()
    bad["OT"] = bad["OT"].astype(object)
    wrong_row = int(np.flatnonzero(bad["station_id"] == 7)[3])
    bad.loc[wrong_row, "OT"] = "n/a"
    path = tmp_path / "fleet.csv"
    bad.to_csv(path, index=False)
    seen: list[tuple[int, int]] = []
    with pytest.raises(DataValidationError, match=f"'OT' must be numeric.* row {wrong_row + 1}\\b"):
        ingest(repo, [source_from_path(path, None)], progress=lambda *p: seen.append(p))
    assert stored_rows(repo).empty and seen == [(2, 7), (4, 7), (6, 7)]
    assert not list(repo.offline.folder.glob(".part-*"))  # the pending part is gone too

    fleet.to_parquet(tmp_path / "fleet.parquet")
    (report,) = ingest(repo, [source_from_path(tmp_path / "fleet.parquet", None)])
    assert (report.rows_read, report.rows_written) == (210, 210)
    assert sorted(report.entities) == list(range(1, 8))
    rows = stored_rows(repo)
    assert len(rows) == 210 and len(list(repo.offline.folder.glob("part-*.parquet"))) == 1


def test_rows_of_one_entity_in_two_sources_are_compared_across_batches(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    repo = make_repo("feature_store.ingest_batch_entities=1")
    raw_rows(1, "2020-01-01", 10).to_csv(tmp_path / "a.csv", index=False)
    pd.concat([raw_rows(2, "2020-01-01", 10), raw_rows(1, "2020-01-01 05:00", 2, seed=9)]).to_csv(
        tmp_path / "b.csv", index=False
    )
    sources = [source_from_path(tmp_path / name, None) for name in ("a.csv", "b.csv")]
    with pytest.raises(DataValidationError, match="together"):
        ingest(repo, sources)
    assert stored_rows(repo).empty


def test_pushed_parts_are_compacted_on_demand_and_after_too_many(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    repo = make_repo("feature_store.compact_after_parts=3")
    ingest_frames(repo, [("first", raw_rows(1, "2020-01-01", 24))])
    ingest_frames(repo, [("second", raw_rows(2, "2020-01-01", 24, seed=2))])
    before = stored_rows(repo)
    with repo.offline.write_lock():
        assert repo.offline.compact() == 2
    assert repo.offline.parts() == 1
    pd.testing.assert_frame_equal(stored_rows(repo), before)
    with repo.offline.write_lock():
        assert repo.offline.compact() == 0  # one part: nothing to do

    materialize(repo)
    for day in range(2, 6):  # each push adds a part; the third makes four, over three: merged
        push(repo, raw_rows(1, f"2020-01-0{day}", 24, seed=day))
    assert repo.offline.parts() == 2 and len(stored_rows(repo)) == 48 + 4 * 24


def test_a_file_without_the_timestamp_column_names_what_is_missing(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    path = tmp_path / "no_time.csv"
    raw_rows(1, "2020-01-01", 3).drop(columns="date").to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['date'\]") as refused:
        ingest(make_repo(), [source_from_path(path, None)])
    assert "__source_row" not in str(refused.value)


def _listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.parametrize("stored_first", [False, True], ids=["fresh store", "store with data"])
def test_a_refused_ingest_leaves_the_home_as_it_found_it(
    make_repo: MakeRepo, tmp_path: Path, stored_first: bool
) -> None:
    """No lock file, no empty view folder, no pending part: entity 2's rows are written to the
    pending part before entity 3's bad timestamp refuses the whole file."""
    repo = make_repo("feature_store.ingest_batch_entities=1")
    if stored_first:
        ingest_frames(repo, [("first", raw_rows(1, "2020-01-01", 24))])
    bad = pd.concat(
        [raw_rows(2, "2020-01-01", 6), _bad(raw_rows(3, "2020-01-01", 6), 2, "date", "never")]
    )
    bad.to_csv(tmp_path / "bad.csv", index=False)
    before = _listing(tmp_path)
    with pytest.raises(DataValidationError, match="'date' is empty or not a timestamp"):
        ingest(repo, [source_from_path(tmp_path / "bad.csv", None)])
    assert _listing(tmp_path) == before
    assert len(stored_rows(repo)) == 24 * stored_first


def test_a_writer_that_waited_on_a_removed_folder_locks_the_new_one(make_repo: MakeRepo) -> None:
    """The first writer of a fresh store writes nothing and removes the folder it made while
    the second waits on it: the second must lock the folder that exists, not the removed one."""
    offline = make_repo().offline
    locked_elsewhere: list[bool] = []

    def second_writer() -> None:
        with offline.write_lock():
            probe = os.open(offline.folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked_elsewhere.append(False)
            except BlockingIOError:
                locked_elsewhere.append(True)
            finally:
                os.close(probe)

    with offline.write_lock():
        second = threading.Thread(target=second_writer)
        second.start()
        time.sleep(0.2)  # lets the second writer reach the lock (the test holds either way)
    second.join(timeout=30)
    assert locked_elsewhere == [True]
    assert not offline.folder.exists()  # the second made it again, wrote nothing, removed it
