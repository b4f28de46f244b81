"""One mini-batch training loop for the gradient-trained models: Adam, optional learning-rate
decay and gradient clipping, early stopping on validation loss, progress per epoch, and the best
epoch's weights restored at the end."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from skewless.core.progress import report

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainingLoop:
    """``windows_per_epoch`` draws a fresh random subset each epoch (None: every window)."""

    label: str
    epochs: int
    batch_size: int
    learning_rate: float
    patience: int
    seed: int
    lr_decay: float | None = None
    gradient_clip: float | None = None
    windows_per_epoch: int | None = None
    evaluation_batch_size: int = 256  # windows per validation forward pass

    def run(
        self,
        module: torch.nn.Module,
        loss: LossFunction,
        train: Batch,
        validation: Batch | None,
    ) -> None:
        """Train ``module`` in place; with validation, keep the weights of its best epoch."""
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.Adam(module.parameters(), lr=self.learning_rate)
        schedule = (
            torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.lr_decay)
            if self.lr_decay
            else None
        )
        x, y = train
        best_state, best_loss, waited = None, float("inf"), 0
        for epoch in range(self.epochs):
            started = time.perf_counter()
            module.train()
            order = torch.randperm(len(x), generator=generator)[: self.windows_per_epoch]
            for begin in range(0, len(order), self.batch_size):
                index = order[begin : begin + self.batch_size]
                optimizer.zero_grad()
                loss(module(x[index]), y[index]).backward()
                if self.gradient_clip:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), self.gradient_clip)
                optimizer.step()
            if schedule is not None:
                schedule.step()
            report(f"{self.label} epochs", epoch + 1, self.epochs)
            if validation is None:
                continue
            val_loss = self.evaluate(module, loss, validation)
            logger.info(
                "%s epoch %d: validation loss %.5f (%.1fs)",
                self.label,
                epoch + 1,
                val_loss,
                time.perf_counter() - started,
            )
            if val_loss < best_loss:
                best_state, best_loss, waited = copy.deepcopy(module.state_dict()), val_loss, 0
            else:
                waited += 1
                if waited >= self.patience:
                    break
        if best_state is not None:
            module.load_state_dict(best_state)
        module.eval()

    def evaluate(self, module: torch.nn.Module, loss: LossFunction, data: Batch) -> float:
        """Mean loss over ``data``, batched so that memory stays bounded."""
        module.eval()
        x, y = data
        total = 0.0
        with torch.no_grad():
            for begin in range(0, len(x), self.evaluation_batch_size):
                part = slice(begin, begin + self.evaluation_batch_size)
                total += float(loss(module(x[part]), y[part])) * len(x[part])
        return total / len(x)
