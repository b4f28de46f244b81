"""The hybrid: closed-form NLinear maps over several lookbacks, optionally corrected by trees.

Three choices NLinear leaves fixed are made on the validation windows instead, all from normal
equations (so each costs a solve, not a pass over the windows): the lookback (every candidate
up to the windows' length; it learns from every training window of its length and is scored on
the last ``L`` values of each validation window), one map shared by all channels or one per
channel (the shared equations are the sum of the per-channel ones), and the ridge penalty.
The forecast is the mean of the ``top`` best lookbacks' forecasts (two by default: on ETTh1
and ETTh2 the pair never lost to NLinear, the best one alone did).
With ``refit`` the chosen maps are solved again on training and validation windows together
(least squares is additive): on ETTh1 the largest gain, on ETTh2 a loss. ``"auto"`` (the
default) refits a map when, fitted on the training windows and the first half of the
validation windows, it forecasts the second half better than from the training windows alone:
whether newer rows help, asked of the newest rows (docs/ltsf.md).

With ``boost_rounds`` > 0, gradient-boosted trees learn what the linear forecast misses (the
LTBoost idea): one row per (window, channel) with the last ``boost_lags`` values and the linear
forecast (both relative to the last value) as inputs, and the residual over the horizon,
compressed to ``boost_components`` principal components, as label.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import xgboost as xgb

from skewless.compute import threads
from skewless.models.base import Forecaster, WindowSource, at_least_one
from skewless.models.nlinear import DEFAULT_ALPHAS
from skewless.models.normal_equations import (
    NormalEquations,
    as_series,
    normal_equations,
    ridge_path,
    series_normal_equations,
    solve_ridge,
)
from skewless.models.xgboost import _LabelBasis, _Rounds
from skewless.preprocessing.running_stats import RowSample
from skewless.preprocessing.windows import WindowBatch

logger = logging.getLogger(__name__)

# At least NLinear's 336: shorter ones won validation on ETTh2 by < 2 % and lost its test by
# 5-15 % (docs/ltsf.md).
DEFAULT_LOOKBACKS = (336, 512, 720)

# Linear forecast steps the trees see: at most this many, evenly spaced over the horizon.
_FORECAST_POINTS = 12

# How many window values (float32) the tree stage copies out at once: about 100 MB.
_WINDOW_VALUES = 25_000_000

# Training rows per thread when ``n_jobs`` is not set (as XGBoost's: below this a second
# thread costs more in waits than it saves).
_ROWS_PER_THREAD = 20_000

# Equations per candidate lookback: keyed by lookback, one group per channel.
Equations = dict[int, NormalEquations]
# Validation equations per candidate lookback: of the first and the second half of each run of
# windows (None where a half has none).
Halves = dict[int, list[NormalEquations | None]]


@dataclass(frozen=True)
class LinearMap:
    """One NLinear map: the last ``lookback`` values, centred on the last, to the horizon."""

    lookback: int
    weight: np.ndarray  # (groups, lookback, horizon); one group shared, or one per channel
    bias: np.ndarray  # (groups, horizon)
    alpha: float
    validation_mse: float | None  # of the map fitted on training windows (before any refit)
    refitted: bool  # solved again on training and validation windows

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """(windows, horizon, channels) in float64."""
        last = inputs[:, -1:, :].astype(np.float64)
        centred = np.moveaxis(inputs[:, -self.lookback :] - last, 2, 0)  # (channels, n, L)
        out = np.matmul(centred, self.weight) + self.bias[:, None, :]
        return np.moveaxis(out, 0, 2) + last


class Hybrid(Forecaster):
    """NLinear over lookbacks chosen on validation, averaged, with optional residual trees."""

    fits_side_by_side = True  # no process-wide state; the trees are seeded per fit

    def __init__(
        self,
        horizon: int,
        lookbacks: tuple[int, ...] = DEFAULT_LOOKBACKS,
        top: int = 2,
        individual: bool | None = False,
        alphas: tuple[float, ...] = DEFAULT_ALPHAS,
        refit: bool | Literal["auto"] = "auto",
        boost_rounds: int = 0,
        boost_lags: int = 48,
        boost_components: int = 8,
        max_depth: int = 4,
        learning_rate: float = 0.05,
        early_stopping_rounds: int = 30,
        max_windows: int = 200_000,
        seed: int = 0,
        n_jobs: int | None = None,
    ) -> None:
        super().__init__(horizon)
        self.lookbacks = lookbacks
        self.top = top
        self.individual = individual
        self.alphas = alphas
        self.refit = refit
        self.boost_rounds = boost_rounds
        self.boost_lags = boost_lags
        self.boost_components = boost_components
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.early_stopping_rounds = early_stopping_rounds
        self.max_windows = max_windows
        self.seed = seed
        self.n_jobs = n_jobs

    def validate_params(self) -> None:
        if not self.lookbacks or min(self.lookbacks) < 1:
            raise ValueError(
                f"lookbacks must be a non-empty list of counts >= 1, got {self.lookbacks}"
            )
        if not self.alphas or min(self.alphas) < 0:
            raise ValueError(
                f"alphas must be a non-empty list of penalties >= 0, got {self.alphas}"
            )
        self._require(("individual",), lambda v: isinstance(v, bool), "true or false", True)
        self._require(
            ("refit",), lambda v: v == "auto" or isinstance(v, bool), "true, false or auto"
        )
        self._require(("boost_rounds",), lambda v: v >= 0, "at least 0")
        counts = ("top", "boost_lags", "boost_components", "max_depth", "early_stopping_rounds")
        self._require((*counts, "max_windows"), at_least_one, "at least 1")
        self._require(("n_jobs",), at_least_one, "at least 1", nullable=True)
        self._require(("learning_rate",), lambda v: 0 < v <= 1, "in (0, 1]")

    # -- fitting -----------------------------------------------------------------------------

    def _fit(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        val_inputs: np.ndarray | None,
        val_targets: np.ndarray | None,
        future: np.ndarray,
        val_future: np.ndarray | None,
    ) -> None:
        candidates = self._candidates(inputs.shape[1])
        series = as_series(inputs, targets)
        if series is not None:  # one series: every window of each candidate length in it
            horizon = targets.shape[1]
            train = {L: series_normal_equations(series, L, horizon, True) for L in candidates}
        else:
            train = _window_equations(inputs, targets, candidates)
        val = None
        if val_inputs is not None and val_targets is not None:
            parts = [  # one run of windows, halved as a batch's runs are
                _window_equations(val_inputs[at], val_targets[at], candidates) if len(at) else None
                for at in np.array_split(np.arange(len(val_inputs)), 2)
            ]
            val = {L: [None if p is None else p[L] for p in parts] for L in candidates}
        self._choose(train, val)
        if self.boost_rounds:
            validation = None
            if val_inputs is not None and val_targets is not None:
                validation = self._tree_rows(val_inputs, val_targets)
            self._boost(self._tree_rows(inputs, targets), validation)

    def _fit_batches(self, train: WindowSource, val: WindowSource | None) -> None:
        """The linear stage adds up each batch's normal equations (no window is copied); the
        tree stage walks the batches again for a bounded sample of residual rows."""
        learned = self._equations(train, whole=True)
        self._choose(
            {L: equations[0] for L, equations in learned.items() if equations[0] is not None},
            None if val is None else self._equations(val, whole=False),
        )
        if self.boost_rounds:
            self._boost(self._sampled(train), None if val is None else self._sampled(val))

    def _candidates(self, lookback: int) -> list[int]:
        """Candidate lookbacks the windows are long enough for (their own length if none)."""
        return sorted({min(c, lookback) for c in self.lookbacks})

    def _equations(self, source: WindowSource, whole: bool) -> Halves:
        total: Halves | None = None
        learn = partial(_batch_equations, lookbacks=tuple(self.lookbacks), whole=whole)
        for part in source.map(learn):
            if part is not None:
                total = part if total is None else _add(total, part)
        if total is None:
            raise ValueError("no windows to learn from")
        return total

    def _choose(self, train: Equations, halves: Halves | None) -> None:
        """Per candidate lookback the best sharing and penalty on validation; the ``top``
        lookbacks are kept (without validation: the longest, shared, the first penalty)."""
        if halves is None:
            lookback = max(train)
            alpha = self.alphas[0]
            weight, bias = solve_ridge(_grouped(train[lookback], bool(self.individual)), alpha)
            self.maps_ = [LinearMap(lookback, weight, bias, alpha, None, False)]
            return
        val = {L: _total(parts) for L, parts in halves.items()}
        sharing = [False, True] if self.individual is None else [self.individual]
        best: list[tuple[float, int, bool, float]] = []
        for lookback, equations in train.items():
            scores = [
                (_grouped(val[lookback], individual).mse(*solved), lookback, individual, alpha)
                for individual in sharing
                for alpha, solved in zip(
                    self.alphas,
                    ridge_path(_grouped(equations, individual), tuple(self.alphas)),
                    strict=True,
                )
            ]
            best.append(min(scores))
        best.sort()
        maps = []
        for score, lookback, individual, alpha in best[: self.top]:
            refit = self.refit
            if refit == "auto":
                refit = _newer_rows_help(train[lookback], halves[lookback], individual, alpha)
            equations = train[lookback] + val[lookback] if refit else train[lookback]
            weight, bias = solve_ridge(_grouped(equations, individual), alpha)
            maps.append(LinearMap(lookback, weight, bias, alpha, score, bool(refit)))
        logger.info(
            "Hybrid keeps lookbacks %s (validation MSE %s, refitted %s) of %s",
            [m.lookback for m in maps],
            [round(s[0], 4) for s in best[: self.top]],
            [m.refitted for m in maps],
            sorted(train),
        )
        self.maps_ = maps

    # -- trees on residuals ------------------------------------------------------------------

    def _tree_rows(self, inputs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features and residual labels, one row per (window, channel)."""
        linear = self._linear(inputs)
        residual = np.moveaxis(targets - linear, 2, 1).reshape(-1, self.horizon)
        return self._features(inputs, linear), residual

    def _sampled(self, source: WindowSource) -> tuple[np.ndarray, np.ndarray]:
        sample: RowSample | None = None
        for part in source.map(self._batch_sample):
            if sample is None:
                sample = part
            elif part is not None:
                sample.merge(part)
        if sample is None or not len(sample.rows):
            raise ValueError("no windows to learn from")
        width = sample.rows.shape[1] - self.horizon
        return sample.rows[:, :width].astype(np.float32), sample.rows[:, width:]

    def _batch_sample(self, batch: WindowBatch) -> RowSample | None:
        """Tree rows of a batch's windows, at most ``max_windows`` of them, built a bounded
        number of windows at a time; seeded by the batch's content (the same wherever it runs)."""
        size = max(1, _WINDOW_VALUES // ((batch.lookback + batch.horizon) * batch.values.shape[1]))
        sample = None
        for chunk in batch.chunks(size):
            features, labels = self._tree_rows(*chunk.windows())
            if sample is None:
                seed = [self.seed, zlib.crc32(batch.values[:1].tobytes())]
                sample = RowSample(features.shape[1] + self.horizon, self.max_windows, seed)
            sample.add(np.hstack([features, labels]))
        return sample

    def _boost(
        self,
        train: tuple[np.ndarray, np.ndarray],
        validation: tuple[np.ndarray, np.ndarray] | None,
    ) -> None:
        features, labels = train
        self.basis_ = _LabelBasis.fit(labels, self.boost_components)
        matrix = xgb.DMatrix(features, label=self._encode(labels))
        evals, stopping = [], None
        if validation is not None:
            evals = [(xgb.DMatrix(validation[0], label=self._encode(validation[1])), "validation")]
            stopping = self.early_stopping_rounds
        params = {
            "objective": "reg:squarederror",
            "tree_method": "hist",
            "multi_strategy": "one_output_per_tree",
            "max_bin": 64,
            "max_depth": self.max_depth,
            "eta": self.learning_rate,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "min_child_weight": 20,
            "seed": self.seed,
        }
        most = self.n_jobs or max(1, len(features) // _ROWS_PER_THREAD)
        with threads.sharing_cores():
            self.booster_ = xgb.train(
                params | {"nthread": min(most, threads.share())},
                matrix,
                num_boost_round=self.boost_rounds,
                evals=evals,
                early_stopping_rounds=stopping,
                verbose_eval=False,
                callbacks=[_Rounds(self.boost_rounds, lambda: min(most, threads.share()))],
            )
        self.rounds_ = self.booster_.best_iteration + 1 if stopping else self.boost_rounds

    def _encode(self, labels: np.ndarray) -> np.ndarray:
        return labels if self.basis_ is None else self.basis_.encode(labels)

    def _features(self, inputs: np.ndarray, linear: np.ndarray) -> np.ndarray:
        """Per (window, channel): the last lags and a few linear forecast steps, both minus
        the last value. Levels and calendar features are left out: they moved the trees away
        from the test period on ETTh1 (docs/ltsf.md)."""
        last = inputs[:, -1:, :]
        lags = inputs[:, -min(self.boost_lags, inputs.shape[1]) :] - last
        steps = np.unique(np.linspace(0, self.horizon - 1, _FORECAST_POINTS).astype(int))
        ahead = linear[:, steps] - last
        rows = [np.moveaxis(part, 2, 1).reshape(-1, part.shape[1]) for part in (lags, ahead)]
        return np.hstack(rows).astype(np.float32)

    # -- prediction --------------------------------------------------------------------------

    def _linear(self, inputs: np.ndarray) -> np.ndarray:
        return np.mean([m.predict(inputs) for m in self.maps_], axis=0)

    def _predict(self, inputs: np.ndarray, future: np.ndarray) -> np.ndarray:
        if inputs.shape[1] < max(m.lookback for m in self.maps_):
            raise ValueError(
                f"inputs have lookback {inputs.shape[1]}, but the model was fitted on "
                f"{max(m.lookback for m in self.maps_)}"
            )
        forecast = self._linear(inputs)
        if self.boost_rounds:
            flat = self.booster_.predict(
                xgb.DMatrix(self._features(inputs, forecast)), iteration_range=(0, self.rounds_)
            )
            if self.basis_ is not None:
                flat = self.basis_.decode(flat.reshape(len(flat), -1))
            channels = inputs.shape[2]
            forecast = forecast + np.moveaxis(flat.reshape(len(inputs), channels, -1), 1, 2)
        return forecast.astype(inputs.dtype)


def _newer_rows_help(
    train: NormalEquations, halves: list[NormalEquations | None], individual: bool, alpha: float
) -> bool:
    """Does the map fitted on training and the first validation half forecast the second half
    better than the map fitted on training alone? (No when a half has no windows.)"""
    first, second = halves
    if first is None or second is None:
        return False
    later = _grouped(second, individual)
    alone = later.mse(*solve_ridge(_grouped(train, individual), alpha))
    return later.mse(*solve_ridge(_grouped(train + first, individual), alpha)) < alone


def _total(parts: list[NormalEquations | None]) -> NormalEquations:
    present = [p for p in parts if p is not None]
    total = present[0]
    for part in present[1:]:
        total = total + part
    return total


def _add(a: Halves, b: Halves) -> Halves:
    """Two batches' equations together, part by part."""
    return {
        L: [x if y is None else y if x is None else x + y for x, y in zip(a[L], b[L], strict=True)]
        for L in a
    }


def _grouped(equations: NormalEquations, individual: bool) -> NormalEquations:
    """Per-channel equations as they are, or summed into one shared map's."""
    if individual:
        return equations
    return NormalEquations(
        equations.gram.sum(axis=0, keepdims=True),
        equations.cross.sum(axis=0, keepdims=True),
        equations.squares.sum(keepdims=True),
        equations.count,
    )


def _window_equations(inputs: np.ndarray, targets: np.ndarray, lookbacks: list[int]) -> Equations:
    """Per-channel equations of every candidate lookback: the windows' last ``L`` values."""
    return {L: normal_equations(inputs[:, -L:], targets, individual=True) for L in lookbacks}


def _batch_equations(batch: WindowBatch, lookbacks: tuple[int, ...], whole: bool) -> Halves | None:
    """A batch's per-channel equations per candidate lookback, from its runs of consecutive
    windows. Without ``whole`` (validation), a candidate sees exactly the last ``L`` values of
    each window (no window forecasts a step before the validation period), in two parts: the
    first and the second half of each run. With ``whole`` (training; one part), also the
    shorter windows that start before a run's first one, inside its rows (a shorter lookback
    has more windows; ETTh1 at H = 720 with L = 336 of 720: MSE 0.441 from the tails, 0.431
    from every window), after the last one the run before counted."""
    if not len(batch.starts):
        return None
    candidates = sorted({min(c, batch.lookback) for c in lookbacks})
    length = batch.lookback + batch.horizon
    breaks = np.flatnonzero(np.diff(batch.starts) != 1) + 1
    total: Halves | None = None
    before: int | None = None  # the last window start of the run before
    for run in np.split(batch.starts, breaks):
        pieces = [run] if whole else np.array_split(run, 2)
        part: Halves = {}
        for L in candidates:
            part[L] = []
            for piece in pieces:
                if not len(piece):
                    part[L].append(None)
                    continue
                first = int(piece[0]) + batch.lookback - L  # the first window's last L values
                if whole:  # back to the run's first row, past the last L-window counted
                    first = (
                        int(piece[0])
                        if before is None
                        else max(int(piece[0]), before + batch.lookback - L + 1)
                    )
                rows = batch.values[first : piece[-1] + length]
                part[L].append(series_normal_equations(rows, L, batch.horizon, True))
        before = int(run[-1])
        total = part if total is None else _add(total, part)
    return total
