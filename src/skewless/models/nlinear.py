"""NLinear (Zeng et al., "Are Transformers Effective for Time Series Forecasting?", AAAI 2023).

Subtract the window's last value, map the lookback to the horizon with one linear layer over time
(shared by all channels, or one per channel), add the last value back. With the paper's MSE loss
this is a least-squares problem, so the default solver fits it in closed form: ridge regression
with the penalty chosen on the validation windows. The gradient solver trains the same model with
Adam as the paper did, for comparison.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import numpy as np

from skewless.models.base import Forecaster

logger = logging.getLogger(__name__)

# Ridge penalties, as fractions of the mean diagonal of the Gram matrix (0 = plain least squares).
DEFAULT_ALPHAS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


class NLinear(Forecaster):
    """NLinear fitted in closed form (``solver="closed_form"``) or by Adam (``"gradient"``)."""

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

    def fit(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        val_inputs: np.ndarray | None = None,
        val_targets: np.ndarray | None = None,
    ) -> NLinear:
        self._check_windows(inputs, targets)
        if self.solver == "closed_form":
            self._fit_closed_form(inputs, targets, val_inputs, val_targets)
        elif self.solver == "gradient":
            self._fit_gradient(inputs, targets, val_inputs, val_targets)
        else:
            raise ValueError(f"unknown solver '{self.solver}'; use 'closed_form' or 'gradient'")
        return self

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        self._check_fitted("weight_")
        self._check_windows(inputs)
        last = inputs[:, -1:, :]
        centered = (inputs - last).astype(np.float64)
        # weight_: (groups, lookback, horizon); one group shared by all channels, or one each.
        weight = np.broadcast_to(self.weight_, (inputs.shape[2], *self.weight_.shape[1:]))
        bias = np.broadcast_to(self.bias_, (inputs.shape[2], self.bias_.shape[1]))
        out = np.einsum("nlv,vlh->nhv", centered, weight) + bias.T[None]
        return (out + last).astype(inputs.dtype)

    # -- closed form -------------------------------------------------------------------------

    def _fit_closed_form(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        val_inputs: np.ndarray | None,
        val_targets: np.ndarray | None,
    ) -> None:
        grams, crosses = _normal_equations(inputs, targets, self.individual)
        if val_inputs is None or val_targets is None or len(self.alphas) == 1:
            alpha = self.alphas[0]
        else:
            scores = {
                a: _mse(self._with(_solve(grams, crosses, a)).predict(val_inputs), val_targets)
                for a in self.alphas
            }
            alpha = min(scores, key=lambda a: scores[a])
            logger.info("NLinear ridge penalty %s chosen on validation (MSE %s)", alpha, scores)
        self.weight_, self.bias_ = _solve(grams, crosses, alpha)
        self.alpha_ = alpha

    def _with(self, solution: tuple[np.ndarray, np.ndarray]) -> NLinear:
        """A copy holding ``solution``, for scoring a candidate penalty."""
        candidate = NLinear(self.horizon, self.individual)
        candidate.weight_, candidate.bias_ = solution
        return candidate

    # -- gradient ----------------------------------------------------------------------------

    def _fit_gradient(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        val_inputs: np.ndarray | None,
        val_targets: np.ndarray | None,
    ) -> None:
        import torch

        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        lookback, channels = inputs.shape[1], inputs.shape[2]
        groups = channels if self.individual else 1
        weight = torch.nn.Parameter(torch.empty(groups, lookback, self.horizon))
        bias = torch.nn.Parameter(torch.empty(groups, self.horizon))
        bound = 1 / lookback**0.5  # nn.Linear's default initialisation
        torch.nn.init.uniform_(weight, -bound, bound)
        torch.nn.init.uniform_(bias, -bound, bound)
        optimizer = torch.optim.Adam([weight, bias], lr=self.learning_rate)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            last = batch[:, -1:, :]
            w = weight.expand(channels, -1, -1)
            b = bias.expand(channels, -1)
            return torch.einsum("nlv,vlh->nhv", batch - last, w) + b.T[None] + last

        x, y = (
            torch.from_numpy(inputs.astype(np.float32)),
            torch.from_numpy(targets.astype(np.float32)),
        )
        best, best_loss, waited = None, float("inf"), 0
        for epoch in range(self.epochs):
            started = time.perf_counter()
            order = torch.randperm(len(x), generator=generator)
            for begin in range(0, len(x), self.batch_size):
                index = order[begin : begin + self.batch_size]
                optimizer.zero_grad()
                loss = torch.mean((forward(x[index]) - y[index]) ** 2)
                loss.backward()
                optimizer.step()
            if val_inputs is None or val_targets is None:
                continue
            with torch.no_grad():
                val_loss = float(
                    torch.mean(
                        (
                            forward(torch.from_numpy(val_inputs.astype(np.float32)))
                            - torch.from_numpy(val_targets.astype(np.float32))
                        )
                        ** 2
                    )
                )
            logger.info(
                "NLinear epoch %d: validation MSE %.5f (%.1fs)",
                epoch + 1,
                val_loss,
                time.perf_counter() - started,
            )
            if val_loss < best_loss:
                best, best_loss, waited = (
                    (weight.detach().clone(), bias.detach().clone()),
                    val_loss,
                    0,
                )
            else:
                waited += 1
                if waited >= self.patience:
                    break
        final = best or (weight.detach(), bias.detach())
        self.weight_ = final[0].numpy().astype(np.float64)
        self.bias_ = final[1].numpy().astype(np.float64)


def _normal_equations(
    inputs: np.ndarray, targets: np.ndarray, individual: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per group, [X 1]ᵀ[X 1] and [X 1]ᵀY of the last-value-centred windows."""
    lookback, channels = inputs.shape[1], inputs.shape[2]
    groups = channels if individual else 1
    grams = np.zeros((groups, lookback + 1, lookback + 1))
    crosses = np.zeros((groups, lookback + 1, targets.shape[1]))
    for channel in range(channels):  # one channel at a time keeps memory at one design matrix
        last = inputs[:, -1:, channel].astype(np.float64)
        design = np.hstack([inputs[:, :, channel] - last, np.ones((len(inputs), 1))])
        response = targets[:, :, channel] - last
        group = channel if individual else 0
        grams[group] += design.T @ design
        crosses[group] += design.T @ response
    return grams, crosses


def _solve(grams: np.ndarray, crosses: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge solution per group; the penalty scales with the Gram diagonal and spares the bias."""
    weights, biases = [], []
    for gram, cross in zip(grams, crosses, strict=True):
        penalty = np.eye(len(gram)) * alpha * np.mean(np.diag(gram)[:-1])
        penalty[-1, -1] = 0.0
        solution = np.linalg.lstsq(gram + penalty, cross, rcond=None)[0]
        weights.append(solution[:-1])
        biases.append(solution[-1])
    return np.stack(weights), np.stack(biases)


def _mse(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.mean((predicted.astype(np.float64) - actual) ** 2))
