"""The standard long-horizon forecasting protocol ("the paper table").

As in the LTSF literature (Informer, Autoformer, DLinear/NLinear, PatchTST): ETT hourly files are
split 12/4/4 months, any other file 70/10/20 % of rows; every column but ``date`` is a channel
(multivariate); values are standardised with the training rows; MSE and MAE are computed on the
standardised values over every test window (stride 1). The published tables came from a test
loader that dropped its last incomplete batch: ``drop_last_batch`` reproduces that. With
``intervals``, conformal intervals calibrated on every validation window (per step and channel)
are scored on the test windows: coverage and mean width (standardised units) at 80 and 95 %,
as calibrated and as adapted while the test errors become known (:class:`AdaptiveScale`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from skewless.bundle.intervals import AdaptiveScale, ConformalIntervals, lookback_spread
from skewless.core.errors import ConfigError
from skewless.models.base import Forecaster
from skewless.models.factory import create_model
from skewless.preprocessing.windows import Windows, cut_windows

logger = logging.getLogger(__name__)

HOURS_PER_MONTH = 30 * 24
INTERVAL_LEVELS = (0.8, 0.95)
ETT_HOURLY = ("ETTh1", "ETTh2")

# Table rows: a registered model with fixed parameters. XGBoost and the TFT get budgets that a
# 2-core machine fits in minutes per horizon: the multivariate label compressed to 16 principal
# components, and the TFT's encoder, windows per epoch and epochs capped (docs/ltsf.md).
MODELS: dict[str, tuple[str, dict[str, object]]] = {
    "naive": ("naive", {}),
    "nlinear": ("nlinear", {}),
    "nlinear_gd": ("nlinear", {"solver": "gradient"}),
    "xgboost": (
        "xgboost",
        {
            "lags": 48,
            "n_estimators": 300,
            "max_depth": 4,
            "learning_rate": 0.1,
            "horizon_components": 16,
        },
    ),
    "xgboost_defaults": ("xgboost", {}),  # the model's own defaults (docs/training.md)
    # The hybrid with its defaults, then its routes one at a time (docs/ltsf.md).
    "hybrid": ("hybrid", {}),
    "hybrid_pair": ("hybrid", {"top": 2}),  # the default until 2026-12-02
    "hybrid_no_refit": ("hybrid", {"refit": False}),
    "hybrid_refit": ("hybrid", {"top": 1, "refit": True}),
    "hybrid_top1": ("hybrid", {"top": 1, "refit": False}),
    "hybrid_short": (
        "hybrid",
        {"lookbacks": (96, 192, 336, 512, 720), "top": 1, "refit": False},
    ),
    "hybrid_sharing": ("hybrid", {"individual": None, "refit": False}),
    "hybrid_boost": ("hybrid", {"boost_rounds": 300, "refit": False}),
    "tft": (
        "tft",
        {
            "encoder_length": 96,
            "windows_per_epoch": 4096,
            "epochs": 10,
            "batch_size": 128,
            "learning_rate": 0.003,
        },
    ),
}

# Published MSE, lookback 336 (Repeat: any lookback; PatchTST/64: 512), horizons 96/192/336/720.
PUBLISHED_MSE: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("ETTh1", "Repeat"): (1.295, 1.325, 1.323, 1.339),
    ("ETTh1", "NLinear"): (0.374, 0.408, 0.429, 0.440),
    ("ETTh1", "DLinear"): (0.375, 0.405, 0.439, 0.472),
    ("ETTh1", "PatchTST/64"): (0.370, 0.413, 0.422, 0.447),
    ("ETTh1", "LTBoost"): (0.357, 0.396, 0.424, 0.435),
    ("ETTh1", "best published"): (0.357, 0.396, 0.422, 0.435),
    ("ETTh2", "NLinear"): (0.277, 0.344, 0.357, 0.394),
    ("ETTh2", "PatchTST/64"): (0.274, 0.341, 0.329, 0.379),
}
PUBLISHED_HORIZONS = (96, 192, 336, 720)


@dataclass(frozen=True)
class Split:
    """Standardised train / validation / test rows, each starting ``lookback`` rows early."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class Result:
    dataset: str
    model: str
    lookback: int
    horizon: int
    mse: float
    mae: float
    train_seconds: float
    test_windows: int
    # With intervals: their test coverage and mean width (upper - lower), per level in percent.
    coverage_80: float | None = None
    coverage_95: float | None = None
    width_80: float | None = None
    width_95: float | None = None
    # The same intervals adapted as the test windows' errors become known (AdaptiveScale).
    adaptive_coverage_80: float | None = None
    adaptive_coverage_95: float | None = None
    adaptive_width_80: float | None = None
    adaptive_width_95: float | None = None


def load_split(path: Path, lookback: int) -> Split:
    """The protocol's borders and standardisation for one CSV with a ``date`` column."""
    frame = pd.read_csv(path)
    if "date" not in frame.columns:
        raise ConfigError(f"{path} has no 'date' column; the LTSF protocol needs one")
    values = frame.drop(columns="date").to_numpy(np.float64)
    if path.stem in ETT_HOURLY:
        train_end, val_end = 12 * HOURS_PER_MONTH, 16 * HOURS_PER_MONTH
        test_end = 20 * HOURS_PER_MONTH
    else:
        train_end = int(len(values) * 0.7)
        test_start = len(values) - int(len(values) * 0.2)
        val_end, test_end = test_start, len(values)
    if train_end - lookback <= 0 or test_end > len(values):
        raise ConfigError(f"{path} has {len(values)} rows: too few for lookback {lookback}")
    mean = values[:train_end].mean(axis=0)
    std = values[:train_end].std(axis=0)
    scaled = ((values - mean) / np.where(std == 0, 1, std)).astype(np.float32)
    return Split(
        train=scaled[:train_end],
        val=scaled[train_end - lookback : val_end],
        test=scaled[val_end - lookback : test_end],
    )


def run_protocol(
    path: Path,
    lookback: int,
    horizons: Sequence[int],
    models: Sequence[str],
    drop_last_batch: int | None = None,
    on_result: Callable[[Result], None] | None = None,
    intervals: bool = False,
) -> list[Result]:
    """Fit and score every model at every horizon; results in (horizon, model) order, with
    interval coverage and width when ``intervals``."""
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; available: {sorted(MODELS)}")
    if any(h < 1 for h in horizons):
        raise ConfigError(f"horizons must be at least 1 (got {list(horizons)})")
    split = load_split(path, lookback)
    results = []
    for horizon in horizons:
        train, val, test = (
            cut_windows(part, lookback, horizon) for part in (split.train, split.val, split.test)
        )
        if min(len(train), len(val), len(test)) == 0:
            raise ConfigError(f"horizon {horizon} leaves no complete window in {path}")
        test = _drop_last_batch(test, drop_last_batch)
        for name in models:
            started = time.perf_counter()
            model = create_model(MODELS[name][0], horizon, MODELS[name][1])
            model.fit(train.inputs, train.targets, val.inputs, val.targets)
            seconds = time.perf_counter() - started
            predicted = model.predict(test.inputs).astype(np.float64)
            error = predicted - test.targets
            result = Result(
                dataset=path.stem,
                model=name,
                lookback=lookback,
                horizon=horizon,
                mse=float(np.mean(error**2)),
                mae=float(np.mean(np.abs(error))),
                train_seconds=seconds,
                test_windows=len(test),
                **(interval_scores(model, val, test, np.abs(error)) if intervals else {}),
            )
            logger.info("%s", result)
            if on_result is not None:
                on_result(result)
            results.append(result)
    return results


def interval_scores(
    model: Forecaster, val: Windows, test: Windows, test_errors: np.ndarray
) -> dict[str, float]:
    """Coverage of the ``test`` windows' errors and mean width of intervals calibrated on the
    validation windows' errors, as the bundle's are (scaled by each window's spread)."""
    val_errors = np.abs(model.predict(val.inputs) - val.targets).astype(np.float32)
    spreads = lookback_spread(val.inputs)
    calibrated = ConformalIntervals.calibrate(val_errors, INTERVAL_LEVELS, spreads)
    test_spreads = lookback_spread(test.inputs)
    coverage = calibrated.coverage(test_errors, test_spreads)
    widths = calibrated.mean_widths(test_spreads)
    scores = {
        f"{measure}_{level * 100:g}": value[level]
        for measure, value in (("coverage", coverage), ("width", widths))
        for level in INTERVAL_LEVELS
    }
    tested = calibrated.in_spread_units(test_errors, test_spreads)
    scale = calibrated.window_scale(test_spreads)[:, None, :]
    for level, calibrated_widths in zip(INTERVAL_LEVELS, calibrated.half_widths, strict=True):
        covered, half_widths = AdaptiveScale().run(calibrated_widths, tested, level)
        scores[f"adaptive_coverage_{level * 100:g}"] = float(covered.mean())
        scores[f"adaptive_width_{level * 100:g}"] = float(2 * np.mean(half_widths * scale))
    return scores


def published(dataset: str, horizon: int) -> dict[str, float]:
    """Published MSEs known for (dataset, horizon), by method."""
    if horizon not in PUBLISHED_HORIZONS:
        return {}
    column = PUBLISHED_HORIZONS.index(horizon)
    return {m: v[column] for (d, m), v in PUBLISHED_MSE.items() if d == dataset}


def as_records(results: Sequence[Result]) -> list[dict[str, object]]:
    """Each result as JSON, without the interval fields of a run without intervals."""
    return [
        {k: v for k, v in asdict(r).items() if v is not None}
        | {"published_mse": published(r.dataset, r.horizon)}
        for r in results
    ]


def save_records(path: Path, results: Sequence[Result]) -> None:
    """Write the results as JSON (rewritten after each one, so a run cut short keeps them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(as_records(results), indent=2) + "\n")


def paper_title(dataset: str, lookback: int, drop_last_batch: int | None) -> str:
    dropped = (
        f", last incomplete test batch of {drop_last_batch} dropped" if drop_last_batch else ""
    )
    return f"{dataset}, lookback {lookback}{dropped}"


def paper_table(results: Sequence[Result]) -> pd.DataFrame:
    """The results as the paper table shows them, beside the published MSEs of each horizon
    (and interval coverage and width where they were measured)."""
    table = pd.DataFrame(
        {
            "horizon": [r.horizon for r in results],
            "model": [r.model for r in results],
            "MSE": [f"{r.mse:.4f}" for r in results],
            "MAE": [f"{r.mae:.4f}" for r in results],
            "train s": [f"{r.train_seconds:.2f}" for r in results],
            "test windows": [r.test_windows for r in results],
            "published MSE": [
                ", ".join(f"{k} {v:.3f}" for k, v in published(r.dataset, r.horizon).items())
                for r in results
            ],
        }
    )
    for level in ("80", "95"):
        coverage = [getattr(r, f"coverage_{level}") for r in results]
        if any(c is not None for c in coverage):
            table[f"cover {level}%"] = [_percent(c) for c in coverage]
            table[f"width {level}%"] = [_fixed(getattr(r, f"width_{level}")) for r in results]
            table[f"adaptive {level}%"] = [
                _percent(getattr(r, f"adaptive_coverage_{level}")) for r in results
            ]
    return table


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _fixed(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _drop_last_batch(windows: Windows, batch: int | None) -> Windows:
    if not batch:
        return windows
    keep = len(windows) - len(windows) % batch
    return Windows(windows.inputs[:keep], windows.targets[:keep], windows.starts[:keep])
