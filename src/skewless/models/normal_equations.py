"""Sufficient statistics of NLinear's regression, so that a fit never touches the windows twice.

NLinear regresses the centred future ``y - last`` on the centred lookback ``x - last`` (plus a
bias), one row per (window, channel). Everything least squares needs is in the normal equations
[X 1]ᵀ[X 1], [X 1]ᵀY and ΣY². Two ways to get them:

- **From stride-1 windows of a series** (training, backtests, one stretch of one entity at a
  time; the equations of all stretches add up): every entry is a sum of lagged
  products of the series, which a recursion over lags yields in O((L+H)² + T(L+H)) per channel
  instead of O(T·L·(L+H)) for the matrix products.
- **From arbitrary windows**: float32 matrix products (BLAS), solved in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NormalEquations:
    """Per group: gram = [X 1]ᵀ[X 1], cross = [X 1]ᵀY, and ΣY²."""

    gram: np.ndarray  # (groups, lookback + 1, lookback + 1)
    cross: np.ndarray  # (groups, lookback + 1, horizon)
    squares: np.ndarray  # (groups,)
    count: int  # responses, summed over groups: rows x horizon

    def __add__(self, other: NormalEquations) -> NormalEquations:
        """The equations of both sets of rows together: least squares is additive."""
        return NormalEquations(
            self.gram + other.gram,
            self.cross + other.cross,
            self.squares + other.squares,
            self.count + other.count,
        )

    def mse(self, weight: np.ndarray, bias: np.ndarray) -> float:
        """Mean squared error of (weight, bias) on the rows these equations came from."""
        solution = np.concatenate([weight, bias[:, None, :]], axis=1)  # (groups, L + 1, H)
        fitted = float(np.sum(solution * self.cross))
        energy = float(np.sum(solution * np.matmul(self.gram, solution)))
        return (float(self.squares.sum()) - 2 * fitted + energy) / self.count


def normal_equations(inputs: np.ndarray, targets: np.ndarray, individual: bool) -> NormalEquations:
    """Normal equations of (windows, lookback, channels) → (windows, horizon, channels)."""
    series = as_series(inputs, targets)
    if series is not None:
        return _from_series(series, inputs.shape[1], targets.shape[1], individual)
    return _from_windows(inputs, targets, individual)


def series_normal_equations(
    series: np.ndarray, lookback: int, horizon: int, individual: bool
) -> NormalEquations:
    """Normal equations of every stride-1 window of ``series`` (rows, channels), in float64."""
    return _from_series(np.asarray(series, dtype=np.float64), lookback, horizon, individual)


def solve_ridge(equations: NormalEquations, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge solution per group; the penalty scales with the Gram diagonal and spares the bias."""
    weights, biases = [], []
    for gram, cross in zip(equations.gram, equations.cross, strict=True):
        penalty = np.eye(len(gram)) * alpha * np.mean(np.diag(gram)[:-1])
        penalty[-1, -1] = 0.0
        try:
            solution = np.linalg.solve(gram + penalty, cross)
        except np.linalg.LinAlgError:  # singular without a penalty: the minimum-norm solution
            solution = np.linalg.lstsq(gram + penalty, cross, rcond=None)[0]
        weights.append(solution[:-1])
        biases.append(solution[-1])
    return np.stack(weights), np.stack(biases)


def ridge_path(
    equations: NormalEquations, alphas: tuple[float, ...]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`solve_ridge`'s solution for every penalty in ``alphas``, from one
    eigendecomposition per group: a search over penalties costs one decomposition and two
    matrix products per penalty instead of a solve each.

    The unpenalised bias is eliminated first: with the Gram's bias column g and row count n,
    (XᵀX - ggᵀ/n + λI) w = Xᵀy - g Σy / n and b = (Σy - gᵀw) / n.
    """
    weights: list[list[np.ndarray]] = [[] for _ in alphas]
    biases: list[list[np.ndarray]] = [[] for _ in alphas]
    for gram, cross in zip(equations.gram, equations.cross, strict=True):
        rows, column = gram[-1, -1], gram[:-1, -1]
        reduced = gram[:-1, :-1] - np.outer(column, column) / rows
        values, vectors = np.linalg.eigh(reduced)
        projected = vectors.T @ (cross[:-1] - np.outer(column, cross[-1]) / rows)
        scale = np.mean(np.diag(gram)[:-1])
        for at, alpha in enumerate(alphas):
            shifted = values + alpha * scale
            # Directions the data do not determine get no weight: the minimum-norm solution.
            inverse = np.divide(
                1.0,
                shifted,
                out=np.zeros_like(shifted),
                where=shifted > 1e-12 * max(values[-1], 1e-300),
            )
            weight = vectors @ (inverse[:, None] * projected)
            weights[at].append(weight)
            biases[at].append((cross[-1] - column @ weight) / rows)
    return [(np.stack(w), np.stack(b)) for w, b in zip(weights, biases, strict=True)]


def as_series(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray | None:
    """The series (rows, channels) whose stride-1 windows these are, if they are."""
    if len(inputs) < 2 or targets.shape[1] == 0:
        return None
    consecutive = (
        np.array_equal(inputs[1:, :-1], inputs[:-1, 1:])
        and np.array_equal(targets[1:, :-1], targets[:-1, 1:])
        and np.array_equal(inputs[1:, -1], targets[:-1, 0])
    )
    if not consecutive:
        return None
    return np.concatenate([inputs[0], targets[0], targets[1:, -1]]).astype(np.float64)


def _from_series(
    series: np.ndarray, lookback: int, horizon: int, individual: bool
) -> NormalEquations:
    """Normal equations from lagged products: z = window - window[lookback - 1], per channel.

    With P[a, b] = Σ_i x[i+a] x[i+b] and s[a] = Σ_i x[i+a] over the n windows,
    Σ_i z[a] z[b] = P[a, b] - P[a, c] - P[c, b] + P[c, c] and Σ_i z[a] = s[a] - s[c], c = L - 1.
    """
    length = lookback + horizon
    rows = len(series) - length + 1
    products, sums = _lagged_products(series, length, rows)  # (channels, K, K), (channels, K)
    c = lookback - 1
    centred = (
        products
        - products[:, :, c : c + 1]
        - products[:, c : c + 1, :]
        + products[:, c : c + 1, c : c + 1]
    )
    centred_sums = sums - sums[:, c : c + 1]
    if not individual:
        centred, centred_sums = (
            centred.sum(axis=0, keepdims=True),
            centred_sums.sum(axis=0, keepdims=True),
        )
    groups = centred.shape[0]
    per_group_rows = rows * (series.shape[1] // groups)
    gram = np.empty((groups, lookback + 1, lookback + 1))
    gram[:, :lookback, :lookback] = centred[:, :lookback, :lookback]
    gram[:, :lookback, lookback] = gram[:, lookback, :lookback] = centred_sums[:, :lookback]
    gram[:, lookback, lookback] = per_group_rows
    cross = np.concatenate(
        [centred[:, :lookback, lookback:], centred_sums[:, None, lookback:]], axis=1
    )
    squares = np.trace(centred[:, lookback:, lookback:], axis1=1, axis2=2)
    return NormalEquations(gram, cross, squares, count=rows * series.shape[1] * horizon)


def _lagged_products(series: np.ndarray, length: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """P[v, a, b] = Σ_{i<rows} x[i+a, v] x[i+b, v] and s[v, a] = Σ_{i<rows} x[i+a, v].

    The first row comes from dot products; every later row from the one above it:
    P[a, b] = P[a-1, b-1] - x[a-1] x[b-1] + x[rows+a-1] x[rows+b-1].
    """
    channels = series.shape[1]
    lags = np.lib.stride_tricks.sliding_window_view(
        series, rows, axis=0
    )  # (length, channels, rows)
    products = np.empty((length, length, channels))
    products[0] = np.matmul(lags[:length].transpose(1, 0, 2), series[:rows].T[:, :, None])[..., 0].T
    for a in range(1, length):
        products[a, a:] = (
            products[a - 1, a - 1 : length - 1]
            - series[a - 1] * series[a - 1 : length - 1]
            + series[rows + a - 1] * series[rows + a - 1 : rows + length - 1]
        )
    upper = np.triu_indices(length, 1)
    products[upper[1], upper[0]] = products[upper]
    cumulative = np.concatenate([np.zeros((1, channels)), np.cumsum(series, axis=0)])
    sums = cumulative[rows : rows + length] - cumulative[:length]
    return np.moveaxis(products, 2, 0), sums.T


def _from_windows(inputs: np.ndarray, targets: np.ndarray, individual: bool) -> NormalEquations:
    last = inputs[:, -1:, :]
    design, response = _centred(inputs, last, individual), _centred(targets, last, individual)
    lookback = design.shape[2]
    groups, rows = design.shape[0], design.shape[1]
    # The bias column of ones enters only through sums: [X 1]ᵀ[X 1] = [[XᵀX, Xᵀ1], [1ᵀX, n]].
    column_sums = design.sum(axis=1, dtype=np.float64)
    gram = np.empty((groups, lookback + 1, lookback + 1))
    gram[:, :lookback, :lookback] = np.matmul(design.transpose(0, 2, 1), design)  # float32 BLAS
    gram[:, :lookback, lookback] = gram[:, lookback, :lookback] = column_sums
    gram[:, lookback, lookback] = rows
    cross = np.concatenate(
        [
            np.matmul(design.transpose(0, 2, 1), response).astype(np.float64),
            response.sum(axis=1, dtype=np.float64)[:, None, :],
        ],
        axis=1,
    )
    squares = np.einsum("gnh,gnh->g", response, response, dtype=np.float64)
    return NormalEquations(gram, cross, squares, count=response.size)


def _centred(windows: np.ndarray, last: np.ndarray, individual: bool) -> np.ndarray:
    """(groups, rows, length) float32, C-contiguous: one regression row per (window, channel).

    Subtracting straight into a contiguous array is one pass over memory, and float32 products
    run twice as fast as float64 with relative errors near 1e-6, far below the data's own
    precision; the sums they produce are solved in float64.
    """
    count, length, channels = windows.shape
    if individual:
        out = np.empty((channels, count, length), dtype=np.float32)
        np.subtract(np.moveaxis(windows, 2, 0), np.moveaxis(last, 2, 0), out=out)
        return out
    out = np.empty((count, channels, length), dtype=np.float32)
    np.subtract(windows.transpose(0, 2, 1), last.transpose(0, 2, 1), out=out)
    return out.reshape(1, count * channels, length)
