"""NLinear (Zeng et al., "Are Transformers Effective for Time Series Forecasting?", AAAI 2023).

Subtract the window's last value, map the lookback to the horizon with one linear layer over time
(shared by all channels, or one per channel), add the last value back. With the paper's MSE loss
this is a least-squares problem, so the default solver fits it in closed form: ridge regression
with the penalty chosen on the validation windows. The gradient solver trains the same model with
Adam as the paper did, for comparison.

With known-future covariates (``data.known``), each forecast step adds a linear term of the
values known for that step, fitted on the map's residuals (see ``exogenous``).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Literal

import numpy as np
import torch

from skewless.models.base import Forecaster, WindowSource, at_least_one, positive
from skewless.models.exogenous import StepEquations, exogenous_terms
from skewless.models.normal_equations import (
    NormalEquations,
    normal_equations,
    series_normal_equations,
    solve_ridge,
)
from skewless.models.torch_training import RowWindows, TensorWindows, TrainingLoop, WindowData
from skewless.preprocessing.windows import FutureInputs, WindowBatch

logger = logging.getLogger(__name__)

# Ridge penalties, as fractions of the mean diagonal of the Gram matrix. The smallest is plain
# least squares in all but name, without its singular corner cases.
DEFAULT_ALPHAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# Windows copied at a time to take the residuals the known covariates' terms are fitted on.
_RESIDUAL_WINDOWS = 4096


class NLinear(Forecaster):
    """NLinear fitted in closed form (``solver="closed_form"``) or by Adam (``"gradient"``)."""

    future_inputs: FutureInputs = "known"

    def __init__(
        self,
        horizon: int,
        individual: bool = False,
        solver: Literal["closed_form", "gradient"] = "closed_form",
        alphas: tuple[float, ...] = DEFAULT_ALPHAS,
        epochs: int = 10,
        learning_rate: float = 0.005,
        batch_size: int = 32,
        patience: int = 3,
        seed: int = 0,
    ) -> None:
        super().__init__(horizon)
        self.individual = individual
        self.solver = solver
        self.alphas = alphas
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.patience = patience
        self.seed = seed

    @property
    def fits_side_by_side(self) -> bool:  # type: ignore[override]
        return self.solver == "closed_form"  # the gradient solver seeds torch process-wide

    def _fit(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        val_inputs: np.ndarray | None,
        val_targets: np.ndarray | None,
        future: np.ndarray,
        val_future: np.ndarray | None,
    ) -> None:
        if self.solver == "closed_form":
            self._fit_closed_form(inputs, targets, val_inputs, val_targets)
        else:
            self._fit_gradient(inputs, targets, val_inputs, val_targets)
        self.exogenous_ = None
        if future.shape[2]:
            residuals = targets - self._map(inputs)
            self.exogenous_ = StepEquations.of(future, residuals).solve()

    def _fit_batches(self, train: WindowSource, val: WindowSource | None) -> None:
        """Closed form: the normal equations of each batch add up, so no window is copied and
        memory stays O((L + H)² + one batch). The gradient solver keeps the rows and cuts each
        mini-batch's windows when it draws them: O(rows)."""
        if self.solver == "closed_form":
            self._solve(self._equations(train), None if val is None else self._equations(val))
        else:
            rows = RowWindows.gather(train)
            validation = None if val is None else RowWindows.gather(val)
            self._descend(rows, validation, rows.lookback, rows.channels)
        self._fit_exogenous(train)

    def _fit_exogenous(self, train: WindowSource) -> None:
        """The known covariates' terms, on the fitted map's residuals, a batch at a time."""
        self.exogenous_, self.future_width_, total = None, 0, None
        for width, part in train.map(self._residual_equations):
            self.future_width_ = width
            if part is not None:
                total = part if total is None else total + part
        if total is not None:
            self.exogenous_ = total.solve()

    def _residual_equations(self, batch: WindowBatch) -> tuple[int, StepEquations | None]:
        if not batch.future_width or not len(batch):
            return batch.future_width, None
        total = None
        for chunk in batch.chunks(_RESIDUAL_WINDOWS):
            inputs, targets = chunk.windows()
            part = StepEquations.of(chunk.future(), targets - self._map(inputs))
            total = part if total is None else total + part
        return batch.future_width, total

    def _equations(self, source: WindowSource) -> NormalEquations:
        total = None
        for part in source.map(partial(batch_equations, individual=self.individual)):
            if part is not None:
                total = part if total is None else total + part
        if total is None:
            raise ValueError("no windows to learn from")
        return total

    def validate_params(self) -> None:
        if self.solver not in ("closed_form", "gradient"):
            raise ValueError(f"unknown solver '{self.solver}'; use 'closed_form' or 'gradient'")
        if not self.alphas or min(self.alphas) < 0:
            raise ValueError(
                f"alphas must be a non-empty list of penalties >= 0, got {self.alphas}"
            )
        self._require(("epochs", "batch_size", "patience"), at_least_one, "at least 1")
        self._require(("learning_rate",), positive, "positive")

    def _predict(self, inputs: np.ndarray, future: np.ndarray) -> np.ndarray:
        forecast = self._map(inputs)
        exogenous = getattr(self, "exogenous_", None)  # absent from models pickled before it
        if exogenous is not None:
            forecast += exogenous_terms(exogenous, future).astype(inputs.dtype)
        return forecast

    def _map(self, inputs: np.ndarray) -> np.ndarray:
        """The lookback mapped to the horizon, per channel."""
        last = inputs[:, -1:, :]
        centered = np.moveaxis(inputs - last, 2, 0).astype(np.float64)  # (channels, n, lookback)
        # weight_: (groups, lookback, horizon); one group shared by all channels, or one each.
        out = np.matmul(centered, self.weight_) + self.bias_[:, None, :]  # (channels, n, horizon)
        return (np.moveaxis(out, 0, 2) + last).astype(inputs.dtype)

    # -- closed form -------------------------------------------------------------------------

    def _fit_closed_form(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        val_inputs: np.ndarray | None,
        val_targets: np.ndarray | None,
    ) -> None:
        val = None
        if val_inputs is not None and val_targets is not None:
            val = normal_equations(val_inputs, val_targets, self.individual)
        self._solve(normal_equations(inputs, targets, self.individual), val)

    def _solve(self, train: NormalEquations, val: NormalEquations | None) -> None:
        alpha = self.alphas[0]
        if val is not None and len(self.alphas) > 1:
            # Validation error from the validation set's own normal equations: O(L²H) per
            # penalty instead of a prediction pass over every validation window.
            scores = {a: val.mse(*solve_ridge(train, a)) for a in self.alphas}
            alpha = min(scores, key=lambda a: scores[a])
            logger.info("NLinear ridge penalty %s chosen on validation (MSE %s)", alpha, scores)
        self.weight_, self.bias_ = solve_ridge(train, alpha)
        self.alpha_ = alpha

    # -- gradient ----------------------------------------------------------------------------

    def _fit_gradient(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        val_inputs: np.ndarray | None,
        val_targets: np.ndarray | None,
    ) -> None:
        validation = TensorWindows.optional(val_inputs, val_targets)
        self._descend(TensorWindows.of(inputs, targets), validation, *inputs.shape[1:])

    def _descend(
        self, train: WindowData, validation: WindowData | None, lookback: int, channels: int
    ) -> None:
        torch.manual_seed(self.seed)
        network = _NLinearNetwork(channels if self.individual else 1, lookback, self.horizon)
        loop = TrainingLoop(
            label="NLinear",
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            patience=self.patience,
            seed=self.seed,
            lr_decay=0.5,  # the paper's schedule ("type1"): halve the rate after every epoch
        )
        loop.run(network, torch.nn.functional.mse_loss, train, validation)
        self.weight_ = network.weight.detach().numpy().astype(np.float64)
        self.bias_ = network.bias.detach().numpy().astype(np.float64)


class _NLinearNetwork(torch.nn.Module):
    """The gradient solver's parameters: one (lookback → horizon) map per group of channels."""

    def __init__(self, groups: int, lookback: int, horizon: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(groups, lookback, horizon))
        self.bias = torch.nn.Parameter(torch.empty(groups, horizon))
        bound = 1 / lookback**0.5  # nn.Linear's default initialisation
        torch.nn.init.uniform_(self.weight, -bound, bound)
        torch.nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        last = batch[:, -1:, :]
        channels = batch.shape[2]
        weight = self.weight.expand(channels, -1, -1)
        bias = self.bias.expand(channels, -1)
        return torch.einsum("nlv,vlh->nhv", batch - last, weight) + bias.T[None] + last


def batch_equations(batch: WindowBatch, individual: bool) -> NormalEquations | None:
    """The normal equations of one batch's windows (None if it has none), from its stretches
    of consecutive windows: no window is copied."""
    total = None
    for stretch in batch.stretches():
        part = series_normal_equations(stretch, batch.lookback, batch.horizon, individual)
        total = part if total is None else total + part
    return total
