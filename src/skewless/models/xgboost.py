"""XGBoost: gradient-boosted trees on lagged window values, covariates and calendar features.

Each window becomes one row of features: the last ``lags`` target values relative to the window's
last target value, that last value itself (the level), and the last ``covariate_lags`` values of
every other channel (covariates and calendar features). The label is the whole future relative to
the last value, one output per (horizon step, target), compressed to its leading
``horizon_components`` principal components (learned from the training futures); each round grows
one tree per component (``one_output_per_tree``), stopped early on the validation windows, and
the forecast is rebuilt from the predicted components.

A tree's cost grows with its outputs times its histogram bins: one tree for all 168 outputs of 7
targets x 24 steps over 256 bins took 7 s or more per round on ILI-shaped data; 8 components over
64 bins fit the whole model in seconds, the fastest form at equal accuracy
(benchmarks/xgboost_formulations.py, docs/training.md). Threads come from the fit's share of the
cores and rounds are reported and logged as they happen (:mod:`skewless.models.boosting`).
"""

from __future__ import annotations

import zlib
from typing import Literal

import numpy as np

from skewless.models.base import Forecaster, WindowSource, at_least_one
from skewless.models.boosting import train_trees
from skewless.preprocessing.running_stats import RowSample
from skewless.preprocessing.windows import FutureInputs, WindowBatch

# How many window-tail values (float32) are copied out at once: about 100 MB.
_TAIL_VALUES = 25_000_000


class XGBoostForecaster(Forecaster):
    """Multi-horizon XGBoost over windows of every channel."""

    uses_covariates = True
    future_inputs: FutureInputs = "known"
    fits_side_by_side = True  # seeded per booster and per batch sample

    def __init__(
        self,
        horizon: int,
        lags: int = 24,
        covariate_lags: int = 3,
        n_estimators: int = 300,
        max_depth: int = 5,
        learning_rate: float = 0.05,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        early_stopping_rounds: int = 30,
        horizon_components: int | None = 8,
        multi_strategy: Literal["one_output_per_tree", "multi_output_tree"] = "one_output_per_tree",
        max_bin: int = 64,
        max_windows: int = 200_000,
        seed: int = 0,
        n_jobs: int | None = None,
    ) -> None:
        super().__init__(horizon)
        self.lags = lags
        self.covariate_lags = covariate_lags
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.early_stopping_rounds = early_stopping_rounds
        self.horizon_components = horizon_components
        self.multi_strategy = multi_strategy
        self.max_bin = max_bin
        self.max_windows = max_windows
        self.seed = seed
        self.n_jobs = n_jobs

    def validate_params(self) -> None:
        counts = ("lags", "covariate_lags", "n_estimators", "max_depth", "early_stopping_rounds")
        self._require((*counts, "max_windows"), at_least_one, "at least 1")
        self._require(("horizon_components", "n_jobs"), at_least_one, "at least 1", nullable=True)
        self._require(("max_bin",), lambda value: value >= 2, "at least 2")
        strategies = ("one_output_per_tree", "multi_output_tree")
        self._require(
            ("multi_strategy",), lambda value: value in strategies, f"one of {strategies}"
        )
        fractions = ("learning_rate", "subsample", "colsample_bytree")
        self._require(fractions, lambda value: 0 < value <= 1, "in (0, 1]")

    def _fit(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        val_inputs: np.ndarray | None,
        val_targets: np.ndarray | None,
        future: np.ndarray,
        val_future: np.ndarray | None,
    ) -> None:
        self.targets_ = targets.shape[2]
        validation = None
        if val_inputs is not None and val_targets is not None and val_future is not None:
            validation = (
                self._features(val_inputs, val_future),
                self._labels(val_inputs, val_targets),
            )
        self._train(self._features(inputs, future), self._labels(inputs, targets), validation)

    def _fit_batches(self, train: WindowSource, val: WindowSource | None) -> None:
        """Features are the last few rows of each window, so they are built batch by batch
        from those rows alone; at most ``max_windows`` of them are kept (a uniform sample,
        which is every window up to that many)."""
        features, labels = self._sampled(train)
        self._train(features, labels, None if val is None else self._sampled(val))

    def _sampled(self, source: WindowSource) -> tuple[np.ndarray, np.ndarray]:
        sample: RowSample | None = None
        for (targets, future_width), part in source.map(self._batch_sample):
            self.targets_, self.future_width_ = targets, future_width
            if sample is None:
                sample = part
            elif part is not None:
                sample.merge(part)
        if sample is None or not len(sample.rows):
            raise ValueError("no windows to learn from")
        width = sample.rows.shape[1] - self.horizon * self.targets_
        return sample.rows[:, :width].astype(np.float32), sample.rows[:, width:]

    def _batch_sample(self, batch: WindowBatch) -> tuple[tuple[int, int], RowSample | None]:
        """Features and labels of a batch's windows, at most ``max_windows`` of them, built a
        bounded number of window tails at a time. The sample's seed comes from the batch's
        content, so it is the same wherever the batch runs."""
        self.targets_ = batch.targets
        span = max(self.lags, self.covariate_lags)
        size = max(1, _TAIL_VALUES // (span * batch.values.shape[1]))
        sample = None
        for chunk in batch.chunks(size):
            inputs, targets = chunk.tails(span)
            features = self._features(inputs, chunk.future())
            rows = np.hstack([features, self._labels(inputs, targets)])
            if sample is None:
                seed = [self.seed, zlib.crc32(batch.values[:1].tobytes())]
                sample = RowSample(rows.shape[1], self.max_windows, seed)
            sample.add(rows)
        return (batch.targets, batch.future_width), sample

    def _train(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        validation: tuple[np.ndarray, np.ndarray] | None,
    ) -> None:
        params = {
            "objective": "reg:squarederror",
            "multi_strategy": self.multi_strategy,
            "max_bin": self.max_bin,
            "max_depth": self.max_depth,
            "eta": self.learning_rate,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "seed": self.seed,
        }
        self.trees_ = train_trees(
            features,
            labels,
            validation,
            params,
            self.n_estimators,
            self.horizon_components,
            self.early_stopping_rounds,
            self.n_jobs,
        )

    def _predict(self, inputs: np.ndarray, future: np.ndarray) -> np.ndarray:
        flat = self.trees_.predict(self._features(inputs, future))
        flat = flat.reshape(len(inputs), self.horizon, self.targets_)
        return (flat + self._last(inputs)).astype(inputs.dtype)

    def _last(self, inputs: np.ndarray) -> np.ndarray:
        """(windows, 1, targets): the last observed target values."""
        return inputs[:, -1:, : self.targets_]

    def _features(self, inputs: np.ndarray, future: np.ndarray) -> np.ndarray:
        """Target lags relative to the level, the level, short lags of the other channels, and
        the known-future covariates of every forecast step."""
        last = self._last(inputs)
        targets = inputs[:, -min(self.lags, inputs.shape[1]) :, : self.targets_] - last
        others = inputs[:, -min(self.covariate_lags, inputs.shape[1]) :, self.targets_ :]
        parts = [targets, last, others, future]
        return np.concatenate([p.reshape(len(inputs), -1) for p in parts], axis=1).astype(
            np.float32
        )

    def _labels(self, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return (targets - self._last(inputs)).reshape(len(inputs), -1)
