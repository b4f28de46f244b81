"""The hybrid: closed-form NLinear maps over several lookbacks, optionally corrected by trees.

Three choices NLinear leaves fixed are made on the validation windows instead, all from normal
equations (so each costs a solve, not a pass over the windows): the lookback (every candidate
up to the windows' length; it learns from every training window of its length and is scored on
the last ``L`` values of each validation window), one map shared by all channels or one per
channel (the shared equations are the sum of the per-channel ones), and the ridge penalty.
The forecast is the mean of the ``top`` best lookbacks' forecasts; ``"auto"`` (the default)
averages as many of the best as forecast the validation windows best together (the mean of
linear maps is a linear map, so its validation MSE comes from the equations too). On ETTh1 and
ETTh2 a fixed pair never lost to NLinear while the best one alone did; the count chosen on
validation did better than either (docs/ltsf.md).
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

from skewless.models.base import Forecaster, WindowSource, at_least_one
from skewless.models.boosting import train_trees
from skewless.models.nlinear import DEFAULT_ALPHAS
from skewless.models.normal_equations import (
    NormalEquations,
    as_series,
    normal_equations,
    ridge_path,
    series_normal_equations,
    solve_ridge,
)
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


@dataclass(frozen=True)
class _Candidate:
    """A lookback's best map on the training windows, and its validation MSE."""

    score: float
    lookback: int
    individual: bool
    alpha: float
    weight: np.ndarray  # (groups, lookback, horizon)
    bias: np.ndarray  # (groups, horizon)


class Hybrid(Forecaster):
    """NLinear over lookbacks chosen on validation, averaged, with optional residual trees."""

    fits_side_by_side = True  # no process-wide state; the trees are seeded per fit

    def __init__(
        self,
        horizon: int,
        lookbacks: tuple[int, ...] = DEFAULT_LOOKBACKS,
        top: int | Literal["auto"] = "auto",
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
        self._require(
            ("top",), lambda v: v == "auto" or (type(v) is int and v >= 1), "at least 1 or auto"
        )
        counts = ("boost_lags", "boost_components", "max_depth", "early_stopping_rounds")
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
        lookbacks are kept, or with ``"auto"`` as many of the best as forecast validation best
        together (without validation: the longest, shared, the first penalty)."""
        if halves is None:
            lookback = max(train)
            alpha = self.alphas[0]
            weight, bias = solve_ridge(_grouped(train[lookback], bool(self.individual)), alpha)
            self.maps_ = [LinearMap(lookback, weight, bias, alpha, None, False)]
            return
        val = {L: _total(parts) for L, parts in halves.items()}
        sharing = [False, True] if self.individual is None else [self.individual]
        best: list[_Candidate] = []
        for lookback, equations in train.items():
            scored = [
                _Candidate(
                    _grouped(val[lookback], individual).mse(*solved),
                    lookback,
                    individual,
                    alpha,
                    *solved,
                )
                for individual in sharing
                for alpha, solved in zip(
                    self.alphas,
                    ridge_path(_grouped(equations, individual), tuple(self.alphas)),
                    strict=True,
                )
            ]
            best.append(min(scored, key=lambda c: c.score))
        best.sort(key=lambda c: c.score)
        averaged = [_averaged_mse(best[:count], val) for count in range(1, len(best) + 1)]
        count = self.top if self.top != "auto" else 1 + int(np.argmin(averaged))
        maps = []
        for chosen in best[:count]:
            refit = self.refit
            if refit == "auto":
                refit = _newer_rows_help(
                    train[chosen.lookback], halves[chosen.lookback], chosen.individual, chosen.alpha
                )
            equations = train[chosen.lookback]
            if refit:
                equations = equations + val[chosen.lookback]
            weight, bias = solve_ridge(_grouped(equations, chosen.individual), chosen.alpha)
            maps.append(
                LinearMap(chosen.lookback, weight, bias, chosen.alpha, chosen.score, bool(refit))
            )
        logger.info(
            "Hybrid keeps lookbacks %s (validation MSE %s, refitted %s) of %s; validation MSE "
            "of the mean of the best 1, 2, ...: %s",
            [m.lookback for m in maps],
            [round(c.score, 4) for c in best[:count]],
            [m.refitted for m in maps],
            sorted(train),
            [round(a, 4) for a in averaged],
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
        params = {
            "objective": "reg:squarederror",
            "max_bin": 64,
            "max_depth": self.max_depth,
            "eta": self.learning_rate,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "min_child_weight": 20,
            "seed": self.seed,
        }
        self.trees_ = train_trees(
            *train,
            validation,
            params,
            self.boost_rounds,
            self.boost_components,
            self.early_stopping_rounds,
            self.n_jobs,
        )

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
            flat = self.trees_.predict(self._features(inputs, forecast))
            channels = inputs.shape[2]
            forecast = forecast + np.moveaxis(flat.reshape(len(inputs), channels, -1), 1, 2)
        return forecast.astype(inputs.dtype)


def _averaged_mse(chosen: list[_Candidate], val: dict[int, NormalEquations]) -> float:
    """Validation MSE of the mean of the ``chosen`` maps' forecasts, from the equations: the
    mean is one map on the longest lookback (a shorter map weighs the earlier lags by zero)."""
    longest = max(c.lookback for c in chosen)
    equations = val[longest]  # per channel
    channels, horizon = equations.cross.shape[0], equations.cross.shape[2]
    weight = np.mean(
        [
            np.broadcast_to(
                np.pad(c.weight, ((0, 0), (longest - c.lookback, 0), (0, 0))),
                (channels, longest, horizon),
            )
            for c in chosen
        ],
        axis=0,
    )
    bias = np.mean([np.broadcast_to(c.bias, (channels, horizon)) for c in chosen], axis=0)
    return equations.mse(weight, bias)


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
