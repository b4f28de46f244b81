"""The Temporal Fusion Transformer as a Forecaster over windows.

What the network sees for one window (the paper's three kinds of input):

- static: each target's location and scale over the lookback (the window is normalised by them,
  and they tell the network what level it is forecasting at, as pytorch-forecasting's
  ``add_target_scales`` does), and the entity's static covariates (``data.static``: the last
  channels of a window, taken from its last step and kept out of the past inputs);
- past (observed): every channel of the last ``encoder_length`` steps, targets normalised, plus
  the known input below;
- known (past and future): the relative time index, and over the horizon the values known ahead
  (``data.known`` covariates and the calendar features of each forecast step); their past
  values are among the observed inputs.

It forecasts ``quantiles`` of every target for every horizon step, trained with the quantile
(pinball) loss; ``predict`` returns the median, ``predict_quantiles`` all of them. Neuralforecast
has a TFT, but predicting through it needs a Lightning trainer per call; this one predicts a batch
of windows with one forward pass.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from skewless.models.base import Forecaster, WindowSource, at_least_one, positive
from skewless.models.tft_layers import TemporalFusionNetwork
from skewless.models.torch_training import RowWindows, TensorWindows, TrainingLoop, WindowData
from skewless.preprocessing.windows import FutureInputs

_EPSILON = 1e-5


class TemporalFusionTransformer(Forecaster):
    """TFT with quantile outputs; the median is the point forecast."""

    uses_covariates = True
    future_inputs: FutureInputs = "known+calendar"

    def __init__(
        self,
        horizon: int,
        hidden_size: int = 32,
        attention_heads: int = 4,
        dropout: float = 0.1,
        quantiles: tuple[float, ...] = (0.1, 0.5, 0.9),
        encoder_length: int | None = None,
        epochs: int = 20,
        batch_size: int = 64,
        learning_rate: float = 0.001,
        patience: int = 3,
        gradient_clip: float = 1.0,
        windows_per_epoch: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(horizon)
        self.hidden_size = hidden_size
        self.attention_heads = attention_heads
        self.dropout = dropout
        self.quantiles = tuple(quantiles)
        self.encoder_length = encoder_length
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.patience = patience
        self.gradient_clip = gradient_clip
        self.windows_per_epoch = windows_per_epoch
        self.seed = seed

    def validate_params(self) -> None:
        sizes = ("hidden_size", "attention_heads", "epochs", "batch_size", "patience")
        self._require(sizes, at_least_one, "at least 1")
        optional = ("encoder_length", "windows_per_epoch")
        self._require(optional, at_least_one, "at least 1", nullable=True)
        if self.hidden_size % self.attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by attention_heads "
                f"{self.attention_heads}"
            )
        self._require(("dropout",), lambda value: 0 <= value < 1, "in [0, 1)")
        if 0.5 not in self.quantiles or not all(0 < q < 1 for q in self.quantiles):
            raise ValueError(
                f"quantiles must lie in (0, 1) and include 0.5 (the point forecast), "
                f"got {list(self.quantiles)}"
            )
        self._require(("learning_rate", "gradient_clip"), positive, "positive")

    def _fit(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        val_inputs: np.ndarray | None,
        val_targets: np.ndarray | None,
        future: np.ndarray,
        val_future: np.ndarray | None,
    ) -> None:
        validation = TensorWindows.optional(val_inputs, val_targets, val_future)
        train = TensorWindows.of(inputs, targets, future)
        self._train(train, validation, inputs.shape[1], inputs.shape[2], targets.shape[2], 0)

    def _fit_batches(self, train: WindowSource, val: WindowSource | None) -> None:
        """Mini-batches are drawn from the rows by window index (a Dataset over rows), never
        from a tensor of every window: memory is O(rows)."""
        rows = RowWindows.gather(train, future=True)
        validation = None if val is None else RowWindows.gather(val, future=True)
        self.future_width_ = 0 if rows.ahead is None else rows.ahead.shape[1]
        self._train(rows, validation, rows.lookback, rows.channels, rows.targets, rows.statics)

    def _train(
        self,
        train: WindowData,
        validation: WindowData | None,
        lookback: int,
        channels: int,
        targets: int,
        statics: int,
    ) -> None:
        """``statics``: how many of the last channels are static covariates."""
        torch.manual_seed(self.seed)
        self.targets_ = targets
        encoder = min(self.encoder_length or lookback, lookback)
        self.network_ = _WindowTFT(
            TemporalFusionNetwork(
                statics=2 * self.targets_ + statics,
                past_variables=channels - statics + 1,
                future_variables=1 + self.future_width_,
                outputs=self.targets_,
                quantiles=len(self.quantiles),
                hidden_size=self.hidden_size,
                heads=self.attention_heads,
                dropout=self.dropout,
            ),
            targets=self.targets_,
            encoder_length=encoder,
            horizon=self.horizon,
            statics=statics,
        )
        loop = TrainingLoop(
            label="TFT",
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            patience=self.patience,
            seed=self.seed,
            gradient_clip=self.gradient_clip,
            windows_per_epoch=self.windows_per_epoch,
            evaluation_batch_size=self._chunk_size(),
        )
        loop.run(self.network_, self._loss, train, validation)

    def _predict(self, inputs: np.ndarray, future: np.ndarray) -> np.ndarray:
        median = self.quantiles.index(0.5)
        return self.predict_quantiles(inputs, future)[..., median]

    def predict_quantiles(self, inputs: np.ndarray, future: np.ndarray | None = None) -> np.ndarray:
        """(windows, horizon, targets, quantiles), in the order of ``quantiles``."""
        self._check_windows(inputs)
        future = self._future_for(inputs, future)
        self.network_.eval()
        x, ahead = (
            torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (inputs, future)
        )
        chunk = self._chunk_size()
        with torch.no_grad():
            parts = [
                self.network_(x[i : i + chunk], ahead[i : i + chunk])
                for i in range(0, len(x), chunk)
            ]
        return torch.cat(parts).numpy().astype(inputs.dtype)

    def _chunk_size(self) -> int:
        """Windows per forward pass without gradients, so that the attention weights
        (heads x horizon x (encoder + horizon) per window) stay near 256 MB."""
        positions = self.network_.encoder_length + self.horizon
        per_window = self.attention_heads * self.horizon * positions * 4  # float32 bytes
        return max(1, min(1024, 2**28 // per_window))

    def _loss(self, predicted: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
        """Quantile (pinball) loss, summed over quantiles and averaged over everything else."""
        levels = torch.tensor(self.quantiles, dtype=predicted.dtype)
        error = actual.unsqueeze(-1) - predicted
        return torch.maximum(levels * error, (levels - 1) * error).sum(-1).mean()


class _WindowTFT(nn.Module):
    """From a raw window (batch, lookback, channels) to quantiles (batch, horizon, targets, q)."""

    time_index: torch.Tensor

    def __init__(
        self,
        network: TemporalFusionNetwork,
        targets: int,
        encoder_length: int,
        horizon: int,
        statics: int = 0,
    ) -> None:
        super().__init__()
        self.network = network
        self.targets = targets
        self.encoder_length = encoder_length
        self.statics = statics
        time_index = torch.arange(-encoder_length + 1, horizon + 1, dtype=torch.float32)
        self.register_buffer("time_index", time_index / (encoder_length + horizon))

    def __setstate__(self, state: dict[str, object]) -> None:
        state.setdefault("statics", 0)  # pickled before static covariates existed
        super().__setstate__(state)

    def forward(self, window: torch.Tensor, ahead: torch.Tensor | None = None) -> torch.Tensor:
        """``ahead``: (batch, horizon, channels) known over the horizon, if the model reads any."""
        observed = window.shape[-1] - self.statics
        covariates = window[:, -1, observed:]  # constant over the window: its last step
        window = window[..., :observed]
        target_history = window[..., : self.targets]
        location = target_history[:, -1:]
        scale = target_history.std(dim=1, keepdim=True) + _EPSILON
        recent = window[:, -self.encoder_length :]
        normalised = torch.cat(
            [(recent[..., : self.targets] - location) / scale, recent[..., self.targets :]], dim=-1
        )
        batch = window.shape[0]
        known = self.time_index.expand(batch, -1).unsqueeze(-1)
        past = torch.cat([normalised, known[:, : self.encoder_length]], dim=-1)
        future = known[:, self.encoder_length :]
        if ahead is not None:
            future = torch.cat([future, ahead], dim=-1)
        static = torch.cat([location.squeeze(1), torch.log(scale).squeeze(1), covariates], dim=-1)
        quantiles = self.network(static, past, future)
        return quantiles * scale.unsqueeze(-1) + location.unsqueeze(-1)
