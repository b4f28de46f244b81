"""Wide tables whose columns are series (``melt``): read as they are, one entity per column.

Daily rates of five currencies beside a shared temperature column, as CSV, Parquet and a
PostgreSQL table: what lands in the offline store is the hand-melted long frame, and every
ambiguous or broken wide table is refused before anything is written.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from skewless.cli import app
from skewless.core.config import load_config
from skewless.core.errors import DataValidationError, SourceError
from skewless.features.ingest import ingest, source_from_path
from skewless.features.repo import FeastRepo
from skewless.training.pipeline import load_history
from tests.conftest import ETTH_CONFIG
from tests.services import POSTGRES_DSN

CURRENCIES = ["EUR", "GBP", "JPY", "CHF", "AUD"]
METERS = ["101", "102", "103"]
DAYS = 20
LONG_COLUMNS = ["event_timestamp", "rate", "temperature"]


def wide_table(series: list[str], seed: int = 0) -> pd.DataFrame:
    """A day per row, a column per series, and a temperature shared by all of them; one rate
    is missing (a melted missing value must stay visible to validation)."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2021-01-01", periods=DAYS, freq="D")
    frame = pd.DataFrame({"date": dates.strftime("%Y-%m-%d")})
    for column in series:
        frame[column] = rng.normal(1, 0.1, DAYS).astype(np.float32).astype(np.float64)
    frame["temperature"] = rng.normal(15, 5, DAYS).astype(np.float32).astype(np.float64)
    frame.loc[4, series[-1]] = np.nan
    return frame


def hand_melted(wide: pd.DataFrame, key: str, series: list[str], ids: Any = str) -> pd.DataFrame:
    """The long frame a user would have written by hand, in the offline store's terms."""
    long = wide.melt(
        id_vars=["date", "temperature"], value_vars=series, var_name=key, value_name="rate"
    )
    long[key] = long[key].map(ids)
    long["event_timestamp"] = pd.to_datetime(long["date"], utc=True)
    return _ordered(long[[key, *LONG_COLUMNS]], key)


def _ordered(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    frame = frame.sort_values([key, "event_timestamp"]).reset_index(drop=True)
    return frame.astype(
        {"event_timestamp": "datetime64[ns, UTC]", "rate": np.float32, "temperature": np.float32}
    )


def stored(repo: FeastRepo) -> pd.DataFrame:
    key = repo.config.data.entity_key
    rows = repo.offline.history(None, None, None)
    return _ordered(rows[[key, *LONG_COLUMNS]], key)


def write_config(
    tmp_path: Path, sources: list[dict[str, Any]], key: str = "currency", kind: str = "string"
) -> Path:
    """The shipped config with the data section of a daily wide table."""
    raw = yaml.safe_load(ETTH_CONFIG.read_text())
    raw["data"] = {
        "sources": sources,
        "entity_key": key,
        "entity_type": kind,
        "timestamp_column": "date",
        "timezone": "UTC",
        "frequency": "D",
        "targets": ["rate"],
        "covariates": ["temperature"],
    }
    raw["features"] = {"calendar": ["day_of_week"]}
    raw["feature_store"]["project"] = f"t{uuid.uuid4().hex[:10]}"
    path = tmp_path / "wide.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def wide_repo(
    folder: Path, sources: list[dict[str, Any]], overrides: list[str] | None = None, **data: str
) -> FeastRepo:
    folder.mkdir(exist_ok=True)
    config = load_config(write_config(folder, sources, **data), overrides or [], environ={})
    return FeastRepo(config, folder / "home")


def melt_of(columns: list[str] | str) -> dict[str, Any]:
    return {"melt": {"columns": columns, "value": "rate"}}


def melted(path: Path, columns: list[str] | str = "all") -> dict[str, Any]:
    return {"path": str(path)} | melt_of(columns)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_skewless_ingest_reads_a_wide_file_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """Two entities a batch: each batch reads its own columns, and the store ends up with
    exactly the hand-melted rows, the missing rate included and warned about."""
    wide = wide_table(CURRENCIES)
    path = tmp_path / f"rates{suffix}"
    wide.to_csv(path, index=False) if suffix == ".csv" else wide.to_parquet(path)
    config = write_config(tmp_path, [melted(path, CURRENCIES)])
    monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path / "home"))

    result = CliRunner().invoke(
        app, ["ingest", str(config), "--set", "feature_store.ingest_batch_entities=2"]
    )
    assert result.exit_code == 0, result.output
    assert "'rate' is missing at row 5" in result.output  # the wide row of the missing rate

    repo = FeastRepo(load_config(config, environ={}), tmp_path / "home")
    pd.testing.assert_frame_equal(stored(repo), hand_melted(wide, "currency", CURRENCIES))


def test_training_from_a_wide_csv_reads_it_as_the_sources_are(tmp_path: Path) -> None:
    wide = wide_table(CURRENCIES)
    wide.dropna().to_csv(tmp_path / "rates.csv", index=False)
    repo = wide_repo(tmp_path, [melted(tmp_path / "rates.csv", CURRENCIES)])
    rows = load_history(repo.config, csv=tmp_path / "rates.csv")
    expected = hand_melted(wide.dropna(), "currency", CURRENCIES)
    read = rows[["currency", *LONG_COLUMNS]].astype({"currency": object})
    pd.testing.assert_frame_equal(_ordered(read, "currency"), expected)


def test_wide_files_named_on_the_command_line_melt_like_the_config_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ingest --source` and `push --file` take a wide file as the config's sources are (all
    melt alike and the file has no entity column); new days of a wide table come wide."""
    wide = wide_table(CURRENCIES)
    wide.iloc[:15].to_csv(tmp_path / "first.csv", index=False)
    wide.iloc[15:].to_csv(tmp_path / "later.csv", index=False)
    config = str(write_config(tmp_path, [melted(tmp_path / "declared.csv")]))
    monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path / "home"))
    for command in (
        ["ingest", config, "--source", str(tmp_path / "first.csv")],
        ["materialize", config],
        ["push", config, "--file", str(tmp_path / "later.csv")],
    ):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
    repo = FeastRepo(load_config(config, environ={}), tmp_path / "home")
    pd.testing.assert_frame_equal(stored(repo), hand_melted(wide, "currency", CURRENCIES))


def test_a_command_line_file_is_long_unless_every_source_melts_alike(tmp_path: Path) -> None:
    wide_table(CURRENCIES).to_csv(tmp_path / "rates.csv", index=False)
    long = hand_melted(wide_table(["EUR"]), "currency", ["EUR"])
    long.to_csv(tmp_path / "long.csv", index=False)
    data = wide_repo(tmp_path, [melted(tmp_path / "a.csv")]).config.data
    assert source_from_path(tmp_path / "rates.csv", None, data).melt == data.sources[0].melt
    assert source_from_path(tmp_path / "long.csv", None, data).melt is None
    assert source_from_path(tmp_path / "rates.csv", "EUR", data).entity == "EUR"
    mixed = [melted(tmp_path / "a.csv"), {"path": str(tmp_path / "b.csv"), "entity": "GBP"}]
    data = wide_repo(tmp_path / "mixed", mixed).config.data
    assert source_from_path(tmp_path / "rates.csv", None, data).melt is None


def test_columns_all_melts_every_column_but_time_and_variables_into_integer_ids(
    tmp_path: Path,
) -> None:
    wide = wide_table(METERS)
    wide.to_parquet(tmp_path / "meters.parquet")
    repo = wide_repo(tmp_path, [melted(tmp_path / "meters.parquet")], key="meter_id", kind="int64")
    (report,) = ingest(repo)
    assert sorted(report.entities) == [101, 102, 103]
    pd.testing.assert_frame_equal(stored(repo), hand_melted(wide, "meter_id", METERS, ids=int))


def test_a_listed_subset_leaves_the_other_columns_alone(tmp_path: Path) -> None:
    wide = wide_table(CURRENCIES)
    wide.to_csv(tmp_path / "rates.csv", index=False)
    repo = wide_repo(tmp_path, [melted(tmp_path / "rates.csv", ["JPY", "EUR"])])
    (report,) = ingest(repo)
    assert sorted(report.entities) == ["EUR", "JPY"]
    pd.testing.assert_frame_equal(stored(repo), hand_melted(wide, "currency", ["EUR", "JPY"]))


@pytest.mark.parametrize(
    ("change", "columns", "kind", "message"),
    [
        (
            None,
            ["EUR", "USD"],
            "string",
            r"has no column\(s\) \['USD'\] to melt; the source has \['date', 'EUR'",
        ),
        ("n/a in GBP", "all", "string", "must hold numbers, but 'GBP' has 'n/a' at row 3"),
        ("only time and variables", "all", "string", "'melt.columns: all' finds no columns"),
        ("entity key column", "all", "string", "already has a 'currency' column"),
        ("rate column", ["EUR"], "string", "already has a 'rate' column"),
        (None, ["EUR", "temperature"], "string", r"lists \['temperature'\]"),
        (None, "all", "int64", "melted column 'EUR' must be named by an integer entity id"),
    ],
)
def test_an_ambiguous_or_broken_wide_table_is_refused_before_anything_is_written(
    tmp_path: Path, change: str | None, columns: list[str] | str, kind: str, message: str
) -> None:
    wide = wide_table(CURRENCIES).astype({"GBP": object})
    if change == "n/a in GBP":
        wide.loc[2, "GBP"] = "n/a"
    elif change == "only time and variables":
        wide = wide[["date", "temperature"]]
    elif change == "entity key column":
        wide["currency"] = "EUR"
    elif change == "rate column":
        wide["rate"] = 1.0
    wide.to_csv(tmp_path / "rates.csv", index=False)
    repo = wide_repo(tmp_path, [melted(tmp_path / "rates.csv", columns)], kind=kind)
    with pytest.raises(SourceError, match=message):
        ingest(repo)
    assert repo.offline.entities() == []


def test_two_columns_naming_one_integer_entity_are_refused(tmp_path: Path) -> None:
    wide = wide_table(["7", "007"])
    wide.to_parquet(tmp_path / "meters.parquet")
    repo = wide_repo(tmp_path, [melted(tmp_path / "meters.parquet")], key="meter_id", kind="int64")
    with pytest.raises(SourceError, match="'7' and '007' both name entity 7"):
        ingest(repo)


def test_validation_names_the_wide_row(tmp_path: Path) -> None:
    wide = wide_table(CURRENCIES)
    wide.loc[6, "date"] = "someday"
    wide.to_csv(tmp_path / "rates.csv", index=False)
    repo = wide_repo(tmp_path, [melted(tmp_path / "rates.csv")])
    with pytest.raises(DataValidationError, match=r"not a timestamp at row 7 \(first: 'someday'"):
        ingest(repo)
    assert repo.offline.entities() == []


def test_a_melted_entity_meets_the_same_entity_of_a_long_source(tmp_path: Path) -> None:
    """Rows of one entity in two sources are compared whatever their shape: a long file may
    carry EUR's later days, not the same days again."""
    wide = wide_table(CURRENCIES)
    wide.to_csv(tmp_path / "rates.csv", index=False)
    later = hand_melted(wide_table(["EUR"], seed=1), "currency", ["EUR"])
    later = later.assign(date=later.event_timestamp + pd.Timedelta(days=DAYS))
    later.drop(columns="event_timestamp").to_csv(tmp_path / "eur_later.csv", index=False)
    sources = [melted(tmp_path / "rates.csv"), {"path": str(tmp_path / "eur_later.csv")}]
    (wide_report, long_report) = ingest(wide_repo(tmp_path, sources))
    assert (wide_report.rows_written, long_report.rows_written) == (DAYS * 5, DAYS)

    overlapping = later.assign(date=later.event_timestamp)
    overlapping.drop(columns="event_timestamp").to_csv(tmp_path / "eur_again.csv", index=False)
    sources[1] = {"path": str(tmp_path / "eur_again.csv")}
    with pytest.raises(DataValidationError, match="together"):
        ingest(wide_repo(tmp_path / "clash", sources))


@pytest.mark.postgres
def test_a_wide_postgres_table_is_melted_batch_by_batch(tmp_path: Path) -> None:
    schema = f"skewless_melt_{uuid.uuid4().hex[:8]}"
    wide = wide_table(CURRENCIES)
    columns = ", ".join(f'"{c}" double precision' for c in CURRENCIES)
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.rates (date timestamptz, {columns}, "
            "temperature numeric, comment text)"
        )
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {schema}.rates VALUES ({', '.join(['%s'] * 8)})",
                [
                    (f"{date}T00:00:00+00", *values, "fine")
                    for date, *values in wide.replace({np.nan: None}).itertuples(index=False)
                ],
            )
    try:
        table = {"postgres": {"dsn": POSTGRES_DSN, "table": f"{schema}.rates"}}
        everything = wide_repo(tmp_path / "all", [table | melt_of("all")])
        with pytest.raises(SourceError, match="but 'comment' is text"):
            ingest(everything)
        repo = wide_repo(
            tmp_path / "listed",
            [table | melt_of(CURRENCIES)],
            overrides=["feature_store.ingest_batch_entities=2"],
        )
        (report,) = ingest(repo)
        assert report.rows_written == DAYS * len(CURRENCIES)
        pd.testing.assert_frame_equal(stored(repo), hand_melted(wide, "currency", CURRENCIES))
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
