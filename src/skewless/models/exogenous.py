"""Known-future covariates as exogenous terms of a linear forecaster: per forecast step, its
residual regressed on the values known for that step ("NLinear with exogenous terms").

Fitted after the forecaster's own map, on that map's residuals, from normal equations that add
up over batches: memory is O(horizon x known²), whatever the number of windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Ridge penalty, as a fraction of the mean diagonal of each step's Gram matrix: enough to keep a
# covariate that never varies (a promotion not seen in training) from making it singular.
_ALPHA = 1e-6


@dataclass(frozen=True)
class StepEquations:
    """Per step h: gram = [K 1]ᵀ[K 1] and cross = [K 1]ᵀR over windows (K: the known values of
    step h, R: the residuals of step h)."""

    gram: np.ndarray  # (horizon, known + 1, known + 1)
    cross: np.ndarray  # (horizon, known + 1, channels)

    @classmethod
    def of(cls, future: np.ndarray, residuals: np.ndarray) -> StepEquations:
        """From (windows, horizon, known) values and (windows, horizon, channels) residuals."""
        design = np.concatenate(
            [future.astype(np.float64), np.ones((*future.shape[:2], 1))], axis=2
        )
        return cls(
            np.einsum("nhk,nhj->hkj", design, design),
            np.einsum("nhk,nhc->hkc", design, residuals.astype(np.float64)),
        )

    def __add__(self, other: StepEquations) -> StepEquations:
        return StepEquations(self.gram + other.gram, self.cross + other.cross)

    def solve(self) -> np.ndarray:
        """(horizon, known + 1, channels) coefficients, the intercept last."""
        scale = np.mean(np.diagonal(self.gram, axis1=1, axis2=2), axis=1)
        penalty = _ALPHA * scale[:, None, None] * np.eye(self.gram.shape[1])[None]
        return np.linalg.solve(self.gram + penalty, self.cross)


def exogenous_terms(coefficients: np.ndarray, future: np.ndarray) -> np.ndarray:
    """(windows, horizon, channels): what the known values of each step add to the forecast."""
    return np.einsum("nhk,hkc->nhc", future, coefficients[:, :-1]) + coefficients[None, :, -1]
