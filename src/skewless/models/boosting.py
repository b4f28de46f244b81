"""Boosted trees on a multi-output label, as the XGBoost model and the hybrid's residual trees
fit them: the label compressed to its leading principal components, one tree per component
(``one_output_per_tree``), early stopping on validation, threads from the fit's share of the
cores, and rounds reported and logged as they happen (a batch job's log shows the fit moving).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import xgboost as xgb

from skewless.compute import threads
from skewless.core.progress import report

logger = logging.getLogger(__name__)

# Boosting rounds between two progress lines in the log.
_LOG_EVERY = 50

# Training rows per thread when ``n_jobs`` is not set. Below this a second thread costs more in
# waits than it saves: ILI-shaped data (549 windows) fitted in 3.8 s on one thread and 42 s on
# two of a 2-core host that other work kept busy (benchmarks/xgboost_formulations.py).
_ROWS_PER_THREAD = 20_000


@dataclass(frozen=True)
class LabelBasis:
    """The leading principal directions of the training labels: labels ≈ mean + codes @ axes."""

    mean: np.ndarray
    axes: np.ndarray  # (components, outputs), orthonormal rows

    @classmethod
    def fit(cls, labels: np.ndarray, components: int | None) -> LabelBasis | None:
        """None when there is nothing to compress: no components asked, or as many as outputs."""
        if components is None or components >= labels.shape[1]:
            return None
        labels = labels.astype(np.float64)  # one basis whether labels came batched or whole
        mean = labels.mean(axis=0)
        _, _, right = np.linalg.svd(labels - mean, full_matrices=False)
        return cls(mean, right[:components])

    def encode(self, labels: np.ndarray) -> np.ndarray:
        return (labels - self.mean) @ self.axes.T

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return codes @ self.axes + self.mean


@dataclass(frozen=True)
class BoostedTrees:
    """A trained booster, the label basis it predicts codes of, and the rounds it keeps."""

    booster: xgb.Booster
    basis: LabelBasis | None
    rounds: int

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(rows, outputs): the label each row of features predicts."""
        flat = self.booster.predict(xgb.DMatrix(features), iteration_range=(0, self.rounds))
        flat = flat.reshape(len(features), -1)
        return flat if self.basis is None else self.basis.decode(flat)


def train_trees(
    features: np.ndarray,
    labels: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None,
    params: dict[str, Any],
    rounds: int,
    components: int | None,
    early_stopping_rounds: int,
    n_jobs: int | None,
) -> BoostedTrees:
    """Up to ``rounds`` rounds on (features, labels), stopped early on ``validation`` (features,
    labels) when given; ``params`` are XGBoost's, less the threads."""
    basis = LabelBasis.fit(labels, components)

    def encoded(rows: np.ndarray, values: np.ndarray) -> xgb.DMatrix:
        return xgb.DMatrix(rows, label=values if basis is None else basis.encode(values))

    evals, stopping = [], None
    if validation is not None:
        evals, stopping = [(encoded(*validation), "validation")], early_stopping_rounds
    most = n_jobs or max(1, len(features) // _ROWS_PER_THREAD)
    with threads.sharing_cores():
        booster = xgb.train(
            {"tree_method": "hist", "multi_strategy": "one_output_per_tree"}
            | params
            | {"nthread": min(most, threads.share())},
            encoded(features, labels),
            num_boost_round=rounds,
            evals=evals,
            early_stopping_rounds=stopping,
            verbose_eval=False,
            callbacks=[_Rounds(rounds, lambda: min(most, threads.share()))],
        )
    kept = booster.best_iteration + 1 if stopping else rounds
    if booster.num_boosted_rounds() < rounds:
        logger.info(
            "XGBoost stopped early after round %d/%d, keeping %d rounds",
            booster.num_boosted_rounds(),
            rounds,
            kept,
        )
    return BoostedTrees(booster, basis, kept)


class _Rounds(xgb.callback.TrainingCallback):
    """After each boosting round: report it to whoever listens (the CLI's progress bars), log
    every ``_LOG_EVERY`` rounds, and resize the thread pool to this fit's current share of the
    cores (fits beside it start and end)."""

    def __init__(self, rounds: int, threads: Callable[[], int]) -> None:
        super().__init__()
        self.rounds = rounds
        self.threads = threads
        self.started = time.perf_counter()

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        done = epoch + 1
        report("XGBoost rounds", done, self.rounds)
        if done % _LOG_EVERY == 0 or done == self.rounds:
            logger.info(
                "XGBoost round %d/%d%s (%.1fs)",
                done,
                self.rounds,
                _latest_scores(evals_log),
                time.perf_counter() - self.started,
            )
        model.set_param("nthread", str(self.threads()))
        return False  # never stops training itself


def _latest_scores(evals_log: dict) -> str:
    """The last round's scores, as ", validation rmse 0.1234", if any were kept."""
    return "".join(
        f", {data} {metric} {values[-1]:.4f}"
        for data, metrics in evals_log.items()
        for metric, values in metrics.items()
    )
