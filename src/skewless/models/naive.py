"""Repeat the last value: the baseline every forecaster must beat."""

from __future__ import annotations

import numpy as np

from skewless.models.base import Forecaster


class NaiveForecaster(Forecaster):
    """Forecasts every step as the window's last observed value ("Repeat" in the LTSF papers)."""

    def validate_params(self) -> None:
        """The horizon is checked by the constructor; there is nothing else to validate."""

    def _fit(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        val_inputs: np.ndarray | None,
        val_targets: np.ndarray | None,
        future: np.ndarray,
        val_future: np.ndarray | None,
    ) -> None:
        """Nothing to learn."""

    def _predict(self, inputs: np.ndarray, future: np.ndarray) -> np.ndarray:
        return np.repeat(inputs[:, -1:, :], self.horizon, axis=1)
