"""Training in entity batches: the same model and the same metrics as on all rows at once."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy
import xgboost as xgb
from typer.testing import CliRunner

from skewless.bundle.bundle import future_channels
from skewless.cli import app
from skewless.core.config import SkewlessConfig
from skewless.features.repo import FeastRepo
from skewless.models.factory import create_model
from skewless.models.normal_equations import NormalEquations, solve_ridge
from skewless.preprocessing.preprocessor import Preprocessor
from skewless.registry.registry import ModelRegistry
from skewless.serving.service import load_model
from skewless.training.backtest import backtest
from skewless.training.history import FrameHistory, StoreHistory
from skewless.training.pipeline import fit, load_history, window_sets
from tests.conftest import ETTH_CONFIG, VARIABLES, etth_config

SMALL = ["training.lookback=48", "training.horizon=12", "backtest.test_periods=48"]


@pytest.fixture
def rows(fleet_rows: pd.DataFrame) -> pd.DataFrame:
    return fleet_rows


def batched(config: SkewlessConfig, rows: pd.DataFrame, size: int) -> FrameHistory:
    return replace(FrameHistory.of(config, rows), batch_entities=size)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("params", ["{}", "{individual: true}"])
def test_nlinear_in_batches_is_the_least_squares_fit_of_all_windows(
    rows: pd.DataFrame, params: str
) -> None:
    """Normal equations summed over batches and stretches equal the float64 least-squares fit
    of every window at once, whatever the batch size."""
    config = etth_config(*SMALL, f"training.params={params}")
    one_by_one = fit(config, batched(config, rows, 1)).model
    all_at_once = fit(config, batched(config, rows, 100)).model
    np.testing.assert_allclose(one_by_one.weight_, all_at_once.weight_, rtol=1e-9, atol=0)

    # The reference: every training window copied out, the equations in float64 products.
    result = fit(config, rows)
    first, last = rows["event_timestamp"].min(), rows["event_timestamp"].max()
    split = first + (last - first) * (1 - config.training.validation_fraction)
    train = next(window_sets(config, result.preprocessor, rows[rows["event_timestamp"] <= split]))
    inputs = train.inputs[:, :, 0].astype(np.float64)  # one target channel: one group
    last = inputs[:, -1:]
    design = np.hstack([inputs - last, np.ones((len(inputs), 1))])
    response = train.targets[:, :, 0].astype(np.float64) - last
    equations = NormalEquations(
        (design.T @ design)[None], (design.T @ response)[None], np.zeros(1), response.size
    )
    weight, bias = solve_ridge(equations, result.model.alpha_)
    assert relative(one_by_one.weight_, weight) < 1e-9
    assert relative(one_by_one.bias_, bias) < 1e-9


def test_backtest_metrics_do_not_depend_on_the_batch_size(rows: pd.DataFrame) -> None:
    config = etth_config(*SMALL, "backtest.folds=2")
    small, large = (backtest(config, batched(config, rows, size)) for size in (2, 100))
    for name, value in large.overall.overall.items():
        assert small.overall.overall[name] == pytest.approx(value, rel=1e-9)
    pd.testing.assert_frame_equal(
        small.overall.per_entity.sort_index(), large.overall.per_entity.sort_index(), rtol=1e-9
    )
    pd.testing.assert_frame_equal(small.overall.per_horizon, large.overall.per_horizon, rtol=1e-9)
    assert [f.windows for f in small.folds] == [f.windows for f in large.folds]
    np.testing.assert_allclose(
        np.sort(small.residuals.errors, axis=0), np.sort(large.residuals.errors, axis=0)
    )
    assert set(small.forecasts.entities) == {1, 2, 3, 4}  # the plotted few


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["preprocessing.imputation.method=median", "preprocessing.scaling.method=robust"],
        ["preprocessing.scaling.method=minmax", "preprocessing.scaling.per_entity=false"],
    ],
)
def test_preprocessor_fitted_in_batches_equals_one_fit(
    rows: pd.DataFrame, overrides: list[str]
) -> None:
    config = etth_config(*SMALL, *overrides)
    whole = Preprocessor(config).fit(rows)
    history = batched(config, rows, 2)
    parts = Preprocessor(config).fit_batches(history)
    np.testing.assert_allclose(parts.fill_values_, whole.fill_values_, rtol=1e-12)
    np.testing.assert_allclose(parts.global_stats_.center, whole.global_stats_.center, rtol=1e-12)
    np.testing.assert_allclose(parts.global_stats_.scale, whole.global_stats_.scale, rtol=1e-12)
    assert parts.entity_stats_.keys() == whole.entity_stats_.keys()
    pd.testing.assert_frame_equal(parts.transform(rows), whole.transform(rows), rtol=1e-6)


def test_history_from_the_offline_store_reads_entity_batches(etth_sqlite: FeastRepo) -> None:
    config = etth_sqlite.config
    everything = load_history(config, etth_sqlite.home)
    history = replace(StoreHistory.of(config, etth_sqlite.home), batch_entities=1)
    assert history.entities() == [1, 2]
    assert history.row_counts().to_dict() == everything.groupby("station_id").size().to_dict()
    end = pd.Timestamp("2016-07-02", tz="UTC")
    batches = list(history.between(end=end).map(lambda rows: rows))
    assert [b["station_id"].unique().tolist() for b in batches] == [[1], [2]]
    expected = everything[everything["event_timestamp"] <= end].reset_index(drop=True)
    assert history.columns == ["station_id", "event_timestamp", *VARIABLES]  # no calendar
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), expected[history.columns])
    assert history.between(end=end).bounds()[1] == end
    narrow = next(history.map(lambda rows: rows, ["station_id", "event_timestamp"]))
    assert list(narrow.columns) == ["station_id", "event_timestamp"]


@pytest.fixture
def cli_options(
    etth_release: tuple, etth_sqlite: FeastRepo, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    config = etth_release[0]
    monkeypatch.setenv("SKEWLESS_HOME", str(etth_sqlite.home))
    return [
        "--set",
        f"feature_store.project={config.project}",
        "--set",
        f"tracking.uri={config.tracking.uri}",
    ]


def test_forecast_all_writes_every_entity_in_batches_with_errors_as_rows(
    etth_release: tuple, cli_options: list[str], tmp_path: Path
) -> None:
    config, released, rows = etth_release
    out = tmp_path / "forecasts.parquet"
    command = ["forecast", str(ETTH_CONFIG), "--all", "--out", str(out), *cli_options]
    written = CliRunner().invoke(app, [*command, "--set", "serving.max_entities=1"])
    assert written.exit_code == 0, written.output
    assert "2 of 2 entities forecast" in written.output
    table = pd.read_parquet(out)
    assert len(table) == 2 * 24 and table["error"].isna().all()
    assert set(table["model_version"]) == {released.version} and set(table["alias"]) == {
        "production"
    }
    assert {"lower_80", "upper_95", "time_point"} <= set(table.columns)
    window = rows[rows["station_id"] == 2].tail(config.training.lookback)
    registry = ModelRegistry(config.tracking.uri)
    bundle = load_model(registry, config.model_name, "production", released.version).bundle
    expected = bundle.predict(window)  # the registered bundle on the same window, directly
    mine = table[table["station_id"] == 2].reset_index(drop=True)
    np.testing.assert_allclose(mine["forecast"], expected["forecast"], rtol=1e-9)

    some = ["forecast", str(ETTH_CONFIG), "--entity", "1", "--entity", "99", "--out", str(out)]
    partly = CliRunner().invoke(app, [*some, *cli_options])
    assert partly.exit_code == 0, partly.output
    assert "1 of 2 entities forecast" in partly.output
    table = pd.read_parquet(out)
    failed = table[table["error"].notna()]
    assert failed["station_id"].tolist() == [99] and "99" in failed["error"].iloc[0]
    assert failed["forecast"].isna().all() and (table["station_id"] == 1).sum() == 24


def test_forecast_out_that_cannot_be_written_is_refused_first(
    cli_options: list[str], tmp_path: Path
) -> None:
    missing = tmp_path / "no" / "such" / "folder" / "f.parquet"
    command = ["forecast", str(ETTH_CONFIG), "--out", str(missing), *cli_options]
    refused = CliRunner().invoke(app, command)
    assert refused.exit_code == 1 and "cannot write --out" in refused.output
    assert not missing.parent.exists()
    both = CliRunner().invoke(app, [*command, "--all", "--entity", "1"])
    assert both.exit_code != 0 and "not both" in both.output


@pytest.mark.postgres
def test_forecast_all_into_a_postgresql_table(etth_release: tuple, cli_options: list[str]) -> None:
    table = f"forecasts_{uuid.uuid4().hex[:8]}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/test/{table}"
    written = CliRunner().invoke(app, ["forecast", str(ETTH_CONFIG), "--out", url, *cli_options])
    assert written.exit_code == 0, written.output
    engine = sqlalchemy.create_engine(url.rsplit("/", 1)[0])
    try:
        stored = pd.read_sql_table(table, engine)
        assert len(stored) == 48 and set(stored["station_id"]) == {1, 2}
        assert stored["error"].isna().all()
    finally:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f'DROP TABLE IF EXISTS "{table}"'))
        engine.dispose()


@pytest.mark.slow
def test_xgboost_learns_from_window_tails_batch_by_batch(rows: pd.DataFrame) -> None:
    """Built batch by batch from the last rows of each window, the features are the ones of all
    windows at once, so the trees are too; ``max_windows`` keeps a uniform sample."""
    config = etth_config(*SMALL, "training.model=xgboost", "training.params={n_estimators: 20}")
    batched_fit = fit(config, batched(config, rows, 2))
    model = batched_fit.model
    first, last = rows["event_timestamp"].min(), rows["event_timestamp"].max()
    split = first + (last - first) * (1 - config.training.validation_fraction)
    train = next(
        window_sets(config, batched_fit.preprocessor, rows[rows["event_timestamp"] <= split])
    )
    gathered = create_model("xgboost", 12, {"n_estimators": 20}).fit(train.inputs, train.targets)
    assert model.trees_.rounds <= 20
    np.testing.assert_allclose(
        model.trees_.booster.predict(
            xgb.DMatrix(model._features(train.inputs[:50], train.future[:50])),
            iteration_range=(0, 1),
        ),
        gathered.trees_.booster.predict(
            xgb.DMatrix(gathered._features(train.inputs[:50], train.future[:50])),
            iteration_range=(0, 1),
        ),
        rtol=1e-6,
    )
    sampled = etth_config(
        *SMALL, "training.model=xgboost", "training.params={n_estimators: 5, max_windows: 500}"
    )
    assert fit(sampled, batched(sampled, rows, 2)).validation.overall["mse"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("tft", "{epochs: 1, hidden_size: 8, attention_heads: 1, windows_per_epoch: 256}"),
        ("nlinear", "{solver: gradient, epochs: 2}"),
    ],
)
def test_gradient_models_draw_windows_from_rows_as_from_a_tensor_of_windows(
    rows: pd.DataFrame, model: str, params: str
) -> None:
    """Mini-batches cut from the rows when drawn are the mini-batches of the copied windows
    (and of what the model reads ahead: the TFT, the calendar of the forecast steps): the same
    weights, with memory O(rows) instead of O(windows x lookback)."""
    config = etth_config(*SMALL, f"training.model={model}", f"training.params={params}")
    from_rows = fit(config, batched(config, rows, 3))
    first, last = rows["event_timestamp"].min(), rows["event_timestamp"].max()
    split = first + (last - first) * (1 - config.training.validation_fraction)
    pre = from_rows.preprocessor
    ahead = {"ahead_channels": future_channels(pre, from_rows.model)}
    train = next(window_sets(config, pre, rows[rows["event_timestamp"] <= split], **ahead))
    val = next(window_sets(config, pre, rows, split + pd.Timedelta(hours=1), **ahead))
    channels = None if from_rows.model.uses_covariates else 1
    same = {k: v for k, v in from_rows.model.get_params().items() if k != "horizon"}
    gathered = create_model(model, 12, same)
    gathered.fit(
        train.inputs[:, :, :channels],
        train.targets,
        val.inputs[:, :, :channels],
        val.targets,
        train.future,
        val.future,
    )
    probe, future = val.inputs[:64, :, :channels], val.future[:64]
    np.testing.assert_allclose(
        from_rows.model.predict(probe, future), gathered.predict(probe, future), rtol=1e-5
    )


@pytest.mark.postgres
def test_a_postgresql_table_that_refuses_the_rows_is_an_output_error_with_nothing_written(
    etth_release: tuple, cli_options: list[str]
) -> None:
    table = f"forecasts_{uuid.uuid4().hex[:8]}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/test/{table}"
    engine = sqlalchemy.create_engine(url.rsplit("/", 1)[0])
    with engine.begin() as connection:  # a table of the name whose columns clash with ours
        connection.execute(sqlalchemy.text(f'CREATE TABLE "{table}" (required int NOT NULL)'))
    try:
        refused = CliRunner().invoke(
            app, ["forecast", str(ETTH_CONFIG), "--out", url, *cli_options]
        )
        assert refused.exit_code == 1 and "writing table" in refused.output
        assert "Traceback" not in refused.output
        assert pd.read_sql_table(table, engine).empty  # rolled back: nothing half-written
    finally:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f'DROP TABLE IF EXISTS "{table}"'))
        engine.dispose()
