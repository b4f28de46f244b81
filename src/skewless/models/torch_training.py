"""One mini-batch training loop for the gradient-trained models: Adam, optional learning-rate
decay and gradient clipping, early stopping on validation loss, progress per epoch, and the best
epoch's weights restored at the end.

The loop draws mini-batches by window index from ``WindowData``: windows already in tensors
(``TensorWindows``), or ``RowWindows``, which keeps only the rows and cuts each mini-batch's
windows when it is drawn, so memory is O(rows), never O(windows x lookback).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from skewless.compute import threads
from skewless.core.progress import report
from skewless.models.base import WindowSource
from skewless.preprocessing.windows import WindowBatch, future_values, windows_at

logger = logging.getLogger(__name__)

# (what the module is called with: the inputs, and the known future where the model reads it;
# the targets)
Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class WindowData(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: torch.Tensor | slice) -> Batch:
        """((inputs[, future]), targets) of the chosen windows."""
        ...


@dataclass(frozen=True)
class TensorWindows:
    """Windows already cut, as tensors (``future`` only for a model that reads it)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    future: torch.Tensor | None = None

    @classmethod
    def of(
        cls, inputs: np.ndarray, targets: np.ndarray, future: np.ndarray | None = None
    ) -> TensorWindows:
        return cls(_tensor(inputs), _tensor(targets), None if future is None else _tensor(future))

    @classmethod
    def optional(
        cls,
        inputs: np.ndarray | None,
        targets: np.ndarray | None,
        future: np.ndarray | None = None,
    ) -> TensorWindows | None:
        """Validation windows, when both halves were given."""
        return None if inputs is None or targets is None else cls.of(inputs, targets, future)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: torch.Tensor | slice) -> Batch:
        if self.future is None:
            return (self.inputs[index],), self.targets[index]
        return (self.inputs[index], self.future[index]), self.targets[index]


@dataclass(frozen=True)
class RowWindows:
    """Every window of a source as rows and start indices; a mini-batch's windows are cut
    when it is drawn."""

    values: np.ndarray  # (rows, channels) float32
    starts: np.ndarray
    lookback: int
    horizon: int
    targets: int
    statics: int
    ahead: np.ndarray | None = None  # (rows, channels) read over each horizon; None: nothing

    @classmethod
    def gather(cls, source: WindowSource, future: bool = False) -> RowWindows:
        """The rows of every batch of ``source`` end to end, starts shifted to match."""
        batches: list[WindowBatch] = [b for b in source.map(_trimmed) if len(b)]
        if not batches:
            raise ValueError("no windows to learn from")
        offsets = np.cumsum([0] + [len(b.values) for b in batches[:-1]])
        first = batches[0]
        return cls(
            np.concatenate([b.values for b in batches]),
            np.concatenate([b.starts + offset for b, offset in zip(batches, offsets, strict=True)]),
            first.lookback,
            first.horizon,
            first.targets,
            first.statics,
            np.concatenate([_ahead(b) for b in batches]) if future else None,
        )

    @property
    def channels(self) -> int:
        return int(self.values.shape[1])

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: torch.Tensor | slice) -> Batch:
        chosen = self.starts[index.numpy() if isinstance(index, torch.Tensor) else index]
        cut = windows_at(self.values, chosen, self.lookback, self.horizon)
        inputs, targets = _tensor(cut.inputs), _tensor(cut.targets[:, :, : self.targets])
        if self.ahead is None:
            return (inputs,), targets
        future = future_values(self.ahead, chosen, self.lookback, self.horizon)
        return (inputs, _tensor(future)), targets


def _trimmed(batch: WindowBatch) -> WindowBatch:
    """Only the rows the batch's windows touch, in float32, to send back from where it ran."""
    if not len(batch):
        return batch
    first, last = batch.starts[0], batch.starts[-1] + batch.lookback + batch.horizon
    return WindowBatch(
        np.ascontiguousarray(batch.values[first:last], dtype=np.float32),
        batch.starts - first,
        batch.lookback,
        batch.horizon,
        batch.targets,
        batch.statics,
        None if batch.ahead is None else np.ascontiguousarray(batch.ahead[first:last]),
    )


def _ahead(batch: WindowBatch) -> np.ndarray:
    """The batch's rows known ahead, no columns where it has none."""
    return np.empty((len(batch.values), 0), np.float32) if batch.ahead is None else batch.ahead


def _tensor(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


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
        train: WindowData,
        validation: WindowData | None,
    ) -> None:
        """Train ``module`` in place; with validation, keep the weights of its best epoch."""
        with threads.sharing_cores(), torch_threads(threads.share()):
            self._train(module, loss, train, validation)

    def _train(
        self,
        module: torch.nn.Module,
        loss: LossFunction,
        train: WindowData,
        validation: WindowData | None,
    ) -> None:
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.Adam(module.parameters(), lr=self.learning_rate)
        schedule = (
            torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.lr_decay)
            if self.lr_decay
            else None
        )
        best_state, best_loss, waited = None, float("inf"), 0
        for epoch in range(self.epochs):
            started = time.perf_counter()
            module.train()
            order = torch.randperm(len(train), generator=generator)[: self.windows_per_epoch]
            for begin in range(0, len(order), self.batch_size):
                x, y = train[order[begin : begin + self.batch_size]]
                optimizer.zero_grad()
                loss(module(*x), y).backward()
                if self.gradient_clip:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), self.gradient_clip)
                optimizer.step()
            if schedule is not None:
                schedule.step()
            report(f"{self.label} epochs", epoch + 1, self.epochs)
            val_loss = None if validation is None else self.evaluate(module, loss, validation)
            self._log_epoch(epoch + 1, val_loss, time.perf_counter() - started)
            if val_loss is None:
                continue
            if val_loss < best_loss:
                best_state, best_loss, waited = copy.deepcopy(module.state_dict()), val_loss, 0
            else:
                waited += 1
                if waited >= self.patience:
                    break
        if best_state is not None:
            module.load_state_dict(best_state)
        module.eval()

    def _log_epoch(self, epoch: int, val_loss: float | None, seconds: float) -> None:
        """One line per epoch, so that a batch job's log shows the fit moving."""
        scored = "" if val_loss is None else f": validation loss {val_loss:.5f}"
        logger.info(
            "%s epoch %d/%d%s (%.1fs, %d threads)",
            self.label,
            epoch,
            self.epochs,
            scored,
            seconds,
            torch.get_num_threads(),
        )

    def evaluate(self, module: torch.nn.Module, loss: LossFunction, data: WindowData) -> float:
        """Mean loss over ``data``, batched so that memory stays bounded."""
        module.eval()
        total = 0.0
        with torch.no_grad():
            for begin in range(0, len(data), self.evaluation_batch_size):
                x, y = data[slice(begin, begin + self.evaluation_batch_size)]
                total += float(loss(module(*x), y)) * len(y)
        return total / len(data)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for the enclosed work, then put back. (Its
    inter-op pool is left alone: the models never fork ops, and torch allows setting that pool
    only once per process, before it is first used.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
