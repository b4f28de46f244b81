"""The Temporal Fusion Transformer: its parts behave as the paper defines them, and the whole
learns, forecasts quantiles in order and reproduces itself from a seed."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from skewless.models.tft import TemporalFusionTransformer
from skewless.models.tft_layers import (
    GatedLinearUnit,
    GatedResidualNetwork,
    InterpretableMultiHeadAttention,
    TemporalFusionNetwork,
    VariableSelectionNetwork,
)
from skewless.preprocessing.windows import cut_windows


def test_gated_linear_unit_can_close_its_gate() -> None:
    glu = GatedLinearUnit(4, 3)
    with torch.no_grad():
        glu.linear.bias[3:] = -1e4  # the sigmoid half: gate shut
    assert torch.allclose(glu(torch.randn(5, 4)), torch.zeros(5, 3), atol=1e-6)


def test_grn_is_a_normalised_residual_and_uses_its_context() -> None:
    torch.manual_seed(0)
    grn = GatedResidualNetwork(8, 16, 8, context_size=4)
    a = torch.randn(2, 10, 8)
    out = grn(a)
    # LayerNorm output: zero mean and unit variance over the features of every position.
    assert torch.allclose(out.mean(-1), torch.zeros(2, 10), atol=1e-5)
    assert torch.allclose(out.var(-1, unbiased=False), torch.ones(2, 10), atol=1e-3)
    assert not torch.allclose(grn(a, torch.randn(2, 1, 4)), out)  # the context changes it
    assert GatedResidualNetwork(8, 16, 3)(a).shape == (2, 10, 3)  # projected skip


def test_variable_selection_weights_are_a_distribution_over_variables() -> None:
    torch.manual_seed(0)
    vsn = VariableSelectionNetwork(variables=5, hidden_size=8, context_size=8)
    embedded = torch.randn(3, 7, 5, 8)
    selected, weights = vsn(embedded, torch.randn(3, 1, 8))
    assert selected.shape == (3, 7, 8) and weights.shape == (3, 7, 5)
    assert torch.all(weights >= 0)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 7))


def test_attention_shares_values_across_heads_and_never_looks_ahead() -> None:
    torch.manual_seed(0)
    attention = InterpretableMultiHeadAttention(hidden_size=8, heads=2)
    assert attention.value.out_features == 4  # one value projection of head size, shared
    keys = torch.randn(1, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool).triu(diagonal=5)  # 4 past + 2 future positions
    _, weights = attention(keys[:, 4:], keys, mask)
    assert torch.allclose(weights.sum(-1), torch.ones(1, 2))
    assert weights[0, 0, 5] == 0  # the first future step cannot see the second
    with pytest.raises(ValueError, match="divisible"):
        InterpretableMultiHeadAttention(hidden_size=10, heads=3)


def test_the_future_cannot_leak_into_earlier_forecast_steps() -> None:
    """Changing the last future input only changes the last step's forecast (causal decoder)."""
    torch.manual_seed(0)
    network = TemporalFusionNetwork(
        2, 3, 1, outputs=1, quantiles=3, hidden_size=8, heads=2, dropout=0.0
    ).eval()
    static, past, future = torch.randn(1, 2), torch.randn(1, 12, 3), torch.randn(1, 4, 1)
    changed = future.clone()
    changed[0, -1, 0] += 5.0
    with torch.no_grad():
        before, after = network(static, past, future), network(static, past, changed)
    assert before.shape == (1, 4, 1, 3)
    assert torch.allclose(before[:, :-1], after[:, :-1], atol=1e-6)
    assert not torch.allclose(before[:, -1], after[:, -1])


def seasonal(rows: int, seed: int = 0) -> np.ndarray:
    """A daily target driven partly by a covariate: something worth learning."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    covariate = np.cos(2 * np.pi * t / 24)
    target = np.sin(2 * np.pi * t / 24) + 0.5 * covariate + 0.1 * rng.normal(size=rows)
    return np.stack([target, covariate], axis=1).astype(np.float32)


@pytest.mark.slow
def test_tft_learns_a_seasonal_series_with_ordered_quantiles() -> None:
    train, val = cut_windows(seasonal(700), 48, 12), cut_windows(seasonal(300, 1), 48, 12)
    model = TemporalFusionTransformer(
        12, hidden_size=16, attention_heads=2, encoder_length=24, epochs=6, batch_size=32
    )
    model.fit(train.inputs, train.targets[..., :1], val.inputs, val.targets[..., :1])
    quantiles = model.predict_quantiles(val.inputs)
    assert quantiles.shape == (len(val), 12, 1, 3)
    point = model.predict(val.inputs)
    np.testing.assert_array_equal(point, quantiles[..., 1])
    error = np.mean((point - val.targets[..., :1]) ** 2)
    naive = np.mean((val.inputs[:, -1:, :1] - val.targets[..., :1]) ** 2)
    assert error < 0.5 * naive
    lower, upper = quantiles[..., 0], quantiles[..., 2]
    assert np.mean(lower <= upper) > 0.95
    covered = np.mean((lower <= val.targets[..., :1]) & (val.targets[..., :1] <= upper))
    assert 0.4 < covered <= 1.0  # a nominal 80 % interval, roughly


@pytest.mark.slow
def test_tft_is_reproducible_from_its_seed_and_survives_pickling() -> None:
    windows = cut_windows(seasonal(200), 24, 4)

    def fitted() -> TemporalFusionTransformer:
        return TemporalFusionTransformer(
            4, hidden_size=8, attention_heads=2, epochs=2, windows_per_epoch=64, seed=3
        ).fit(windows.inputs, windows.targets[..., :1])

    first, second = fitted(), fitted()
    np.testing.assert_array_equal(first.predict(windows.inputs), second.predict(windows.inputs))
    restored = pickle.loads(pickle.dumps(first))
    np.testing.assert_array_equal(restored.predict(windows.inputs), first.predict(windows.inputs))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"hidden_size": 10, "attention_heads": 4}, "divisible"),
        ({"quantiles": (0.1, 0.9)}, "include 0.5"),
        ({"dropout": 1.0}, "dropout"),
        ({"encoder_length": 0}, "encoder_length"),
    ],
)
def test_tft_refuses_parameters_that_cannot_work(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TemporalFusionTransformer(4, **params).validate_params()
