"""The Forecaster contract: windows in, windows out, scikit-learn style.

``fit(inputs, targets)`` learns from windows of shape (windows, lookback, variables) and their
futures (windows, horizon, variables), optionally watching validation windows for model selection
or early stopping, and returns ``self``. ``predict(inputs)`` returns (windows, horizon, variables)
and never changes the fitted state. Constructors only store parameters; fitted attributes end in
``_``. The base class owns the checks (parameters, shapes, fitted or not); a model implements
``validate_params``, ``_fit`` and ``_predict``.

A model may also read values known ahead over the horizon (``future``: (windows, horizon,
channels)), as its ``future_inputs`` says: "known" for known-future covariates (planned prices,
promotions: ``data.known``), "known+calendar" for those and the calendar features of the
forecast steps. The width it was fitted with is the width ``predict`` needs.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, Self

import numpy as np

from skewless.compute.batches import Batches
from skewless.core.errors import NotFittedError
from skewless.preprocessing.windows import FutureInputs, WindowBatch

# Window batches, each made (and a function of it run) where the compute engine puts it.
WindowSource = Batches[WindowBatch]


class Forecaster(ABC):
    """A multi-horizon forecaster over fixed-length windows.

    ``uses_covariates``: False means the model sees only the target channels (and forecasts each
    channel it sees); True means it sees every channel (targets first, then covariates and
    calendar features) and forecasts the first ``targets.shape[2]`` of them.

    ``fits_side_by_side``: True when several instances may fit at once in threads of one
    process with the same results (no process-wide random state, as torch's seed is).
    """

    uses_covariates = False
    fits_side_by_side = False
    future_inputs: FutureInputs = "none"

    def __init__(self, horizon: int) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be at least 1 (got {horizon})")
        self.horizon = horizon

    def fit(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        val_inputs: np.ndarray | None = None,
        val_targets: np.ndarray | None = None,
        future: np.ndarray | None = None,
        val_future: np.ndarray | None = None,
    ) -> Self:
        """Check parameters and shapes, learn, and mark the model fitted."""
        self.validate_params()
        future = self._future_for(inputs, future, fitting=True)
        self._check_windows(inputs, targets)
        if val_inputs is not None and val_targets is not None:
            self._check_windows(val_inputs, val_targets)
            val_future = self._future_for(val_inputs, val_future)
        else:
            val_inputs = val_targets = val_future = None
        self._fit(inputs, targets, val_inputs, val_targets, future, val_future)
        self.fitted_ = True
        return self

    def fit_batches(self, train: WindowSource, val: WindowSource | None = None) -> Self:
        """Learn from windows handed out a batch at a time (a source can be walked again).

        A model that learns from sums of its batches (NLinear in closed form) or from a bounded
        sample (XGBoost) never holds more than that; the others gather every window first
        (``_fit_batches``'s default).
        """
        self.validate_params()
        self._fit_batches(train, val)
        self.fitted_ = True
        return self

    def _fit_batches(self, train: WindowSource, val: WindowSource | None) -> None:
        inputs, targets, future = gather(train)
        val_inputs, val_targets, val_future = gather(val) if val is not None else (None,) * 3
        self.fit(inputs, targets, val_inputs, val_targets, future, val_future)

    def predict(self, inputs: np.ndarray, future: np.ndarray | None = None) -> np.ndarray:
        """(windows, horizon, channels) forecasts; never changes the fitted state."""
        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit first")
        self._check_windows(inputs)
        return self._predict(inputs, self._future_for(inputs, future))

    @abstractmethod
    def _fit(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        val_inputs: np.ndarray | None,
        val_targets: np.ndarray | None,
        future: np.ndarray,
        val_future: np.ndarray | None,
    ) -> None:
        """Learn from checked windows; validation windows are both given or both None, and
        ``future`` is (windows, horizon, 0) for a model that reads nothing ahead."""

    @abstractmethod
    def _predict(self, inputs: np.ndarray, future: np.ndarray) -> np.ndarray: ...

    def _future_for(
        self, inputs: np.ndarray, future: np.ndarray | None, fitting: bool = False
    ) -> np.ndarray:
        """``future`` checked against ``inputs`` and the width fitted with; empty for a model
        that reads nothing ahead."""
        if self.future_inputs == "none" or future is None:
            future = np.empty((len(inputs), self.horizon, 0), dtype=np.float32)
        if fitting:
            self.future_width_ = future.shape[2]
        width = getattr(self, "future_width_", 0)
        if future.shape != (len(inputs), self.horizon, width):
            raise ValueError(
                f"future must be (windows, {self.horizon}, {width}): the values known over the "
                f"horizon that {type(self).__name__} was fitted with; got {future.shape}"
            )
        return future

    @abstractmethod
    def validate_params(self) -> None:
        """Raise ValueError for a parameter value that cannot work (called before fitting)."""

    def _require(
        self, names: Iterable[str], holds: Callable[[Any], bool], must: str, nullable: bool = False
    ) -> None:
        """Raise a ValueError naming the first parameter in ``names`` whose value fails
        ``holds`` ("{name} must be {must}"); None passes where ``nullable``."""
        for name in names:
            value = getattr(self, name)
            if value is None and nullable:
                continue
            if value is None or not holds(value):
                allowed = f"{must} or null" if nullable else must
                raise ValueError(f"{name} must be {allowed}, got {value}")

    def get_params(self) -> dict[str, object]:
        """The constructor's arguments as stored (scikit-learn's convention)."""
        names = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name in names if name != "self"}

    def _check_windows(self, inputs: np.ndarray, targets: np.ndarray | None = None) -> None:
        if inputs.ndim != 3:
            raise ValueError(
                f"inputs must be (windows, lookback, variables), got shape {inputs.shape}"
            )
        if targets is None:
            return
        channels = targets.shape[2] if self.uses_covariates else inputs.shape[2]
        if targets.shape != (inputs.shape[0], self.horizon, channels) or channels > inputs.shape[2]:
            raise ValueError(
                f"targets must be (windows, {self.horizon}, {channels}) for inputs of shape "
                f"{inputs.shape}, got {targets.shape}"
            )


def at_least_one(value: Any) -> bool:
    return bool(value >= 1)


def positive(value: Any) -> bool:
    return bool(value > 0)


def gather(source: WindowSource) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every window of ``source`` in three arrays (inputs, targets, future)."""
    parts = list(source.map(lambda batch: (*batch.windows(), batch.future())))
    if not parts:
        raise ValueError("no windows to learn from")
    inputs, targets, future = zip(*parts, strict=True)
    return np.concatenate(inputs), np.concatenate(targets), np.concatenate(future)
