"""Static and label covariates from ingest to a served forecast: daily sales of five stores
whose level follows a per-store capacity and whose weekly swing follows a region label, both in
a table of their own (one store has no static row), and whose daily promotion is a label column
of the series (some days unknown). Ingested, materialized, trained (the TFT, whose static
encoders read the statics), served over HTTP and checked for skew; a changed static value
reaches the online window through an incremental materialize; bad static tables are refused
whole.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from skewless.core.config import load_config
from skewless.core.feed import Feed, feeding_problems
from skewless.features.facade import FeatureStoreFacade
from skewless.features.ingest import ingest
from skewless.features.repo import FeastRepo
from tests.test_calendar_frequencies import released_server, run

pytestmark = pytest.mark.integration  # Feast stores, MLflow and a live server

STORES = (1, 2, 3, 4, 5)
STATICS = pd.DataFrame(
    {
        "store": [1, 2, 3, 4],  # store 5 has no static row
        "capacity": [10.0, 40.0, 25.0, 55.5],
        "region": ["north", "south", "north", "east"],
    }
)


def sales() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    dates = pd.date_range("2020-01-01", periods=200, freq="D")
    swing = {"north": 5.0, "south": 20.0, "east": 10.0}
    parts = []
    for store in STORES:
        known = STATICS[STATICS.store == store]
        capacity = float(known.capacity.iloc[0]) if len(known) else 30.0
        region = str(known.region.iloc[0]) if len(known) else "east"
        weekly = swing[region] * np.sin(2 * np.pi * dates.dayofweek / 7)
        promo = rng.choice(np.array(["none", "bogo", "discount", None], dtype=object), len(dates))
        lift = np.select([promo == "bogo", promo == "discount"], [15.0, 5.0], 0.0)
        parts.append(
            pd.DataFrame(
                {
                    "date": dates.strftime("%Y-%m-%d"),
                    "store": store,
                    "sales": 3 * capacity + weekly + lift + rng.normal(0, 1, len(dates)),
                    "promo": promo,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def write_config(folder: Path, statics: pd.DataFrame = STATICS) -> Path:
    sales().to_csv(folder / "sales.csv", index=False)
    statics.to_csv(folder / "stores.csv", index=False)
    raw = {
        "name": "shops",
        "data": {
            "sources": [{"path": str(folder / "sales.csv")}],
            "entity_key": "store",
            "timestamp_column": "date",
            "timezone": "UTC",
            "frequency": "D",
            "targets": ["sales"],
            "categorical": ["promo"],
            "static": {
                "sources": [{"path": str(folder / "stores.csv")}],
                "numeric": ["capacity"],
                "categorical": ["region"],
            },
        },
        "feature_store": {"project": f"s{uuid.uuid4().hex[:10]}", "window_size": 40},
        "training": {
            "model": "tft",
            "lookback": 28,
            "horizon": 7,
            "params": {
                "hidden_size": 8,
                "attention_heads": 2,
                "epochs": 1,
                "windows_per_epoch": 256,
            },
        },
        "backtest": {"folds": 1, "test_periods": 14},
        "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}"},
        "serving": {"alias": "latest"},
    }
    path = folder / "shops.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """Sales and store statics ingested, materialized and trained; a FastAPI server on them."""
    folder = tmp_path_factory.mktemp("statics")
    config = write_config(folder)
    with released_server(config, folder / "home") as (ingested, url):
        assert "static covariates" in ingested
        yield config, url


def test_served_windows_carry_each_stores_statics(released: tuple[Path, str]) -> None:
    config_path, url = released
    config = load_config(config_path, environ={})
    home = config_path.parent / "home"
    windows = FeatureStoreFacade(config, "online", home=home).load_features(None, list(STORES))
    assert windows.windows[2].static == {"capacity": 40.0, "region": "south"}
    assert windows.windows[5].static == {"capacity": None, "region": None}
    served = windows.windows[1].to_frame("store")
    stored = sales().query("store == 1").tail(len(served))
    assert served["promo"].tolist() == [p if p else pd.NA for p in stored["promo"]]
    answer = httpx.post(
        f"{url}/predict/feast/batch",
        json={"entities": list(STORES), "time_point": "latest"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    forecasts = {item["entity"]: item["forecast"]["sales"] for item in answer.json()["predictions"]}
    assert sorted(forecasts) == list(STORES)
    assert all(len(values) == 7 and np.isfinite(values).all() for values in forecasts.values())


def test_the_skew_check_finds_no_difference(released: tuple[Path, str]) -> None:
    config_path, _ = released
    checked = run("verify-skew", str(config_path), "--alias", "latest", "--samples", "10")
    assert "10 pairs compared, 0 differ; largest absolute difference 0" in checked


def test_the_tft_reads_the_statics_through_its_static_encoders(
    released: tuple[Path, str],
) -> None:
    """The two statics join the target's location and scale as static inputs and are not past
    inputs (those are the other channels and the relative time index)."""
    from skewless.registry.registry import ModelRegistry

    config_path, _ = released
    config = load_config(config_path, environ={})
    registry = ModelRegistry(f"sqlite:///{config_path.parent / 'mlflow.db'}")
    bundle = registry.load_bundle(config.model_name, "latest")
    channels = bundle.preprocessor.output_columns
    assert channels[-2:] == ["capacity", "region"]
    network = bundle.model.network_
    assert network.statics == 2
    assert len(network.network.static_selection.variable_grns) == 2 + 2
    assert len(network.network.past_selection.variable_grns) == len(channels) - 2 + 1


def test_labels_are_stored_as_text_and_encoded_by_the_preprocessor(
    released: tuple[Path, str],
) -> None:
    from skewless.registry.registry import ModelRegistry

    config_path, _ = released
    config = load_config(config_path, environ={})
    rows = FeastRepo(config, config_path.parent / "home").offline.history([2], None, None)
    assert set(rows["promo"].dropna()) == {"none", "bogo", "discount"}
    registry = ModelRegistry(f"sqlite:///{config_path.parent / 'mlflow.db'}")
    preprocessor = registry.load_bundle(config.model_name, "latest").preprocessor
    assert preprocessor.categories_["promo"] == ["bogo", "discount", "none"]
    codes = preprocessor.transform(rows.head(50).assign(capacity=1.0, region="x"))["promo"]
    expected = rows.head(50)["promo"].map({"bogo": 1, "discount": 2, "none": 3}).fillna(0)
    assert codes.tolist() == expected.tolist()


def test_re_ingesting_the_same_labels_and_statics_adds_nothing(released: tuple[Path, str]) -> None:
    config_path, _ = released
    config = load_config(config_path, environ={})
    reports = ingest(FeastRepo(config, config_path.parent / "home"))
    counts = {r.origin.rsplit("/", 1)[-1]: (r.rows_written, r.rows_already_stored) for r in reports}
    assert counts == {"sales.csv": (0, 1000), "static covariates": (0, 4)}


def test_a_changed_static_reaches_the_online_window_incrementally(
    released: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path, _ = released
    home = config_path.parent / "home"
    monkeypatch.setenv("SKEWLESS_HOME", str(home))
    moved = STATICS.copy()
    moved.loc[moved.store == 3, "capacity"] = 99.0
    moved.to_csv(config_path.parent / "stores.csv", index=False)
    try:
        ingested = run("ingest", str(config_path))
        assert "static covariates" in ingested
        run("materialize", str(config_path), "--incremental")
        config = load_config(config_path, environ={})
        online = FeatureStoreFacade(config, "online", home=home).load_features(None, [3])
        assert online.windows[3].static == {"capacity": 99.0, "region": "north"}
        stored = FeastRepo(config, home).statics
        assert stored is not None
        assert stored.read([3]).capacity.tolist() == [99.0]
    finally:
        STATICS.to_csv(config_path.parent / "stores.csv", index=False)
        run("ingest", str(config_path))
        run("materialize", str(config_path), "--incremental")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: pd.concat([s, s.iloc[[1]]]), "entities [2] have more than one row"),
        (lambda s: s.assign(capacity=["10", "lots", "3", "4"]), "'capacity' must hold finite"),
        (lambda s: s.drop(columns="region"), "missing column(s) ['region']"),
    ],
    ids=["duplicate", "not-numeric", "missing-column"],
)
def test_a_bad_static_table_refuses_the_whole_ingest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change, message: str
) -> None:
    config = write_config(tmp_path, change(STATICS))
    monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path / "home"))
    from typer.testing import CliRunner

    from skewless.cli import app

    result = CliRunner().invoke(app, ["ingest", str(config)])
    assert result.exit_code != 0
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "home" / "offline").exists() or not any(
        (tmp_path / "home" / "offline").rglob("*.parquet")
    )


def test_a_store_without_the_statics_cannot_feed_a_version_that_reads_them() -> None:
    needed = Feed("store", "int64", "D", ("sales",), 28, "UTC", ("capacity", "region"))
    store = Feed("store", "int64", "D", ("sales",), 40, "UTC")
    assert feeding_problems(needed, store) == [
        "it reads static covariate(s) ['capacity', 'region'] that the store does not hold "
        "(data.static)"
    ]
    assert Feed.from_json(needed.to_json()) == needed
