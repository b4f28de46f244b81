"""The long-horizon protocol on a small CSV, through the library and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from skewless.cli import app
from skewless.core.errors import ConfigError
from skewless.training.ltsf import (
    as_records,
    load_split,
    paper_table,
    published,
    run_protocol,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(1000)
    frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=1000, freq="h").astype(str)})
    for k in range(3):
        frame[f"c{k}"] = np.sin(2 * np.pi * t / 24 + k) * (k + 1) + rng.normal(0, 0.1, 1000) + 5 * k
    path = tmp_path / "small.csv"
    frame.to_csv(path, index=False)
    return path


def test_split_uses_row_fractions_and_training_statistics(small_csv: Path) -> None:
    split = load_split(small_csv, lookback=48)
    assert (len(split.train), len(split.val), len(split.test)) == (700, 100 + 48, 200 + 48)
    np.testing.assert_allclose(split.train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(split.train.std(axis=0), 1, atol=1e-5)


def test_ett_split_uses_month_borders() -> None:
    split = load_split(ROOT / "data" / "ETTh1.csv", lookback=336)
    assert (len(split.train), len(split.val), len(split.test)) == (8640, 2880 + 336, 2880 + 336)


def test_protocol_scores_every_test_window_and_nlinear_beats_naive(small_csv: Path) -> None:
    results = run_protocol(small_csv, 48, [12, 24], ["naive", "nlinear"])
    by = {(r.model, r.horizon): r for r in results}
    assert by[("naive", 12)].test_windows == 248 - 48 - 12 + 1
    assert all(by[("nlinear", h)].mse < by[("naive", h)].mse for h in (12, 24))
    dropped = run_protocol(small_csv, 48, [12], ["naive"], drop_last_batch=32)
    assert dropped[0].test_windows == 189 - 189 % 32


def test_intervals_add_test_coverage_and_width_calibrated_on_validation(
    small_csv: Path,
) -> None:
    (plain,) = as_records(run_protocol(small_csv, 48, [12], ["nlinear"]))
    assert "coverage_80" not in plain
    (result,) = run_protocol(small_csv, 48, [12], ["nlinear"], intervals=True)
    (record,) = as_records([result])
    assert record["coverage_80"] == result.coverage_80
    assert 0.6 < result.coverage_80 < result.coverage_95 <= 1
    assert 0 < result.width_80 < result.width_95
    assert "cover 80%" in paper_table([result]).columns


@pytest.mark.slow
def test_xgboost_and_tft_rows_run_with_their_budgets(small_csv: Path) -> None:
    results = run_protocol(small_csv, 48, [12], ["naive", "xgboost", "tft"])
    by = {r.model: r for r in results}
    assert by["xgboost"].mse < by["naive"].mse
    assert np.isfinite(by["tft"].mse) and by["tft"].train_seconds > 0
    assert by["tft"].test_windows == by["naive"].test_windows


@pytest.mark.slow
def test_naive_reproduces_the_published_repeat_column_on_etth1() -> None:
    results = run_protocol(ROOT / "data" / "ETTh1.csv", 336, [96, 192, 336, 720], ["naive"], 32)
    assert [round(r.mse, 3) for r in results] == [1.295, 1.325, 1.323, 1.339]
    assert published("ETTh1", 96)["Repeat"] == 1.295


def test_bad_requests_fail_before_any_work(small_csv: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown model\(s\) \['prophet'\]"):
        run_protocol(small_csv, 48, [12], ["prophet"])
    with pytest.raises(ConfigError, match="horizons must be at least 1"):
        run_protocol(small_csv, 48, [0], ["naive"])
    with pytest.raises(ConfigError, match="too few for lookback"):
        run_protocol(small_csv, 5000, [12], ["naive"])


def test_cli_prints_and_writes_the_table(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "table.json"
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "ltsf",
            "--data",
            str(small_csv),
            "--lookback",
            "48",
            "--horizons",
            "12",
            "--models",
            "naive,nlinear",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "nlinear" in result.output and "MSE" in result.output
    records = json.loads(out.read_text())
    assert {r["model"] for r in records} == {"naive", "nlinear"}
    assert set(records[0]) >= {
        "dataset",
        "model",
        "lookback",
        "horizon",
        "mse",
        "mae",
        "train_seconds",
    }
