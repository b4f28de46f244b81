"""The Temporal Fusion Transformer's layers (Lim et al., "Temporal Fusion Transformers for
Interpretable Multi-horizon Time Series Forecasting", International Journal of Forecasting 2021).

Section numbers refer to the paper. Tensors are batch-first: (batch, time, ..., hidden).
"""

from __future__ import annotations

import torch
from torch import nn


class GatedLinearUnit(nn.Module):
    """GLU(x) = sigmoid(W4 x + b4) * (W5 x + b5) (eq. 5): can shut a whole block."""

    def __init__(self, input_size: int, output_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(input_size, 2 * output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.glu(self.linear(self.dropout(x)), dim=-1)


class GateAddNorm(nn.Module):
    """LayerNorm(skip + GLU(x)): the gated skip connection used after every block."""

    def __init__(self, input_size: int, hidden_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.gate = GatedLinearUnit(input_size, hidden_size, dropout)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.norm(skip + self.gate(x))


class GatedResidualNetwork(nn.Module):
    """GRN(a, c) = LayerNorm(a + GLU(η₁)), η₁ = W₁η₂ + b₁, η₂ = ELU(W₂a + W₃c + b₂) (eqs. 2-4).

    The optional context ``c`` is a static vector broadcast over time. When input and output sizes
    differ, the skip connection goes through a linear projection.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        dropout: float = 0.0,
        context_size: int | None = None,
    ) -> None:
        super().__init__()
        self.skip = nn.Linear(input_size, output_size) if input_size != output_size else None
        self.dense = nn.Linear(input_size, hidden_size)
        self.context = nn.Linear(context_size, hidden_size, bias=False) if context_size else None
        self.hidden = nn.Linear(hidden_size, hidden_size)
        self.gate_add_norm = GateAddNorm(hidden_size, output_size, dropout)

    def forward(self, a: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        eta2 = self.dense(a)
        if self.context is not None and context is not None:
            eta2 = eta2 + self.context(context)
        eta1 = self.hidden(nn.functional.elu(eta2))
        skip = self.skip(a) if self.skip is not None else a
        return self.gate_add_norm(eta1, skip)


class VariableSelectionNetwork(nn.Module):
    """Instance-wise variable selection (section 4.2, eqs. 6-8).

    Input: (..., variables, hidden), every variable already embedded. A GRN over all of them
    (with the static context) gives softmax selection weights; each variable passes its own GRN;
    the output is their weighted sum. The weights are returned too: they are the model's
    interpretable variable importances.
    """

    def __init__(
        self,
        variables: int,
        hidden_size: int,
        dropout: float = 0.0,
        context_size: int | None = None,
    ) -> None:
        super().__init__()
        self.weights_grn = GatedResidualNetwork(
            variables * hidden_size, hidden_size, variables, dropout, context_size
        )
        self.variable_grns = nn.ModuleList(
            GatedResidualNetwork(hidden_size, hidden_size, hidden_size, dropout)
            for _ in range(variables)
        )

    def forward(
        self, embedded: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        flat = embedded.flatten(start_dim=-2)
        weights = torch.softmax(self.weights_grn(flat, context), dim=-1)
        processed = torch.stack(
            [grn(embedded[..., i, :]) for i, grn in enumerate(self.variable_grns)], dim=-2
        )
        return (weights.unsqueeze(-1) * processed).sum(dim=-2), weights


class InterpretableMultiHeadAttention(nn.Module):
    """Multi-head attention whose heads share one value projection and are averaged (eqs. 13-16),
    so one attention pattern per query explains which past steps the forecast used."""

    def __init__(self, hidden_size: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden_size % heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by {heads} heads")
        self.heads = heads
        self.head_size = hidden_size // heads
        self.queries = nn.Linear(hidden_size, hidden_size)
        self.keys = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, self.head_size)  # W_V, shared by every head
        self.output = nn.Linear(self.head_size, hidden_size)  # W_H
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``mask`` (queries, keys) is True where attending is forbidden; returns the output and
        the head-averaged attention weights (batch, queries, keys)."""
        batch = query.shape[0]
        q = self.queries(query).view(batch, -1, self.heads, self.head_size).transpose(1, 2)
        k = self.keys(key).view(batch, -1, self.heads, self.head_size).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / self.head_size**0.5  # (batch, heads, queries, keys)
        attention = self.dropout(torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1))
        value = self.value(key).unsqueeze(1)  # (batch, 1, keys, head_size)
        averaged = (attention @ value).mean(dim=1)  # H̃ = (1/m_H) Σ_h A_h V W_V
        return self.output(averaged), attention.mean(dim=1)


class TemporalFusionNetwork(nn.Module):
    """The whole network of figure 2, from embedded-ready real inputs to quantile forecasts.

    Inputs: ``static`` (batch, statics), ``past`` (batch, encoder steps, past variables: observed
    and known), ``future`` (batch, horizon, known variables). Output: (batch, horizon, outputs,
    quantiles).
    """

    def __init__(
        self,
        statics: int,
        past_variables: int,
        future_variables: int,
        outputs: int,
        quantiles: int,
        hidden_size: int,
        heads: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.outputs, self.quantiles = outputs, quantiles
        # Real-valued inputs are embedded by one linear map each (section 4.2).
        self.static_embedding = _RealEmbedding(statics, hidden_size)
        self.past_embedding = _RealEmbedding(past_variables, hidden_size)
        self.future_embedding = _RealEmbedding(future_variables, hidden_size)
        self.static_selection = VariableSelectionNetwork(statics, hidden_size, dropout)
        # Static covariate encoders (section 4.3): four context vectors.
        self.static_contexts = nn.ModuleList(
            GatedResidualNetwork(hidden_size, hidden_size, hidden_size, dropout) for _ in range(4)
        )
        self.past_selection = VariableSelectionNetwork(
            past_variables, hidden_size, dropout, context_size=hidden_size
        )
        self.future_selection = VariableSelectionNetwork(
            future_variables, hidden_size, dropout, context_size=hidden_size
        )
        # Sequence-to-sequence layer for local processing (section 4.5.1).
        self.encoder = nn.LSTM(hidden_size, hidden_size, batch_first=True)
        self.decoder = nn.LSTM(hidden_size, hidden_size, batch_first=True)
        self.lstm_gate = GateAddNorm(hidden_size, hidden_size, dropout)
        self.enrichment = GatedResidualNetwork(
            hidden_size, hidden_size, hidden_size, dropout, context_size=hidden_size
        )
        self.attention = InterpretableMultiHeadAttention(hidden_size, heads, dropout)
        self.attention_gate = GateAddNorm(hidden_size, hidden_size, dropout)
        self.feed_forward = GatedResidualNetwork(hidden_size, hidden_size, hidden_size, dropout)
        self.output_gate = GateAddNorm(hidden_size, hidden_size)
        self.head = nn.Linear(hidden_size, outputs * quantiles)

    def forward(
        self, static: torch.Tensor, past: torch.Tensor, future: torch.Tensor
    ) -> torch.Tensor:
        static_vector, _ = self.static_selection(self.static_embedding(static))
        c_selection, c_enrichment, c_hidden, c_cell = (
            grn(static_vector) for grn in self.static_contexts
        )
        encoder_steps, horizon = past.shape[1], future.shape[1]
        past_selected, _ = self.past_selection(self.past_embedding(past), c_selection.unsqueeze(1))
        future_selected, _ = self.future_selection(
            self.future_embedding(future), c_selection.unsqueeze(1)
        )
        state = (c_hidden.unsqueeze(0).contiguous(), c_cell.unsqueeze(0).contiguous())
        encoded, state = self.encoder(past_selected, state)
        decoded, _ = self.decoder(future_selected, state)
        selected = torch.cat([past_selected, future_selected], dim=1)
        temporal = self.lstm_gate(torch.cat([encoded, decoded], dim=1), selected)
        enriched = self.enrichment(temporal, c_enrichment.unsqueeze(1))
        # Only the horizon's positions are queried; each sees the past and earlier future steps.
        queries = enriched[:, encoder_steps:]
        mask = torch.ones(horizon, encoder_steps + horizon, dtype=torch.bool, device=past.device)
        mask = mask.triu(diagonal=encoder_steps + 1)
        attended, _ = self.attention(queries, enriched, mask)
        attended = self.attention_gate(attended, queries)
        fused = self.output_gate(self.feed_forward(attended), temporal[:, encoder_steps:])
        return self.head(fused).view(-1, horizon, self.outputs, self.quantiles)


class _RealEmbedding(nn.Module):
    """One linear map per real variable: (..., variables) → (..., variables, hidden)."""

    def __init__(self, variables: int, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(variables, hidden_size) * 0.1)
        self.bias = nn.Parameter(torch.zeros(variables, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1) * self.weight + self.bias
