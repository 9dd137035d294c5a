"""Sequence encoders shared by the series and text modalities: (B, T, d) steps, with an optional
padding mask, -> h (B, out_dim). Each modality keeps only its input stage (series: standardized
channels or patches of them; text: token and position embeddings) and hands the steps here.

`real` (B, T), when given, is True at the real steps, which come first in each row (right
padding). Padding never reaches h: the recurrence runs over packed sequences, attention ignores
padded keys, and pooling averages the real steps only.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def masked_mean(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, T, d) over the steps where real (B, T) is True; a row with none gives 0."""
    w = real.unsqueeze(2).to(x.dtype)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


class RecurrentEncoder(nn.Module):
    """GRU or LSTM; h is the mean of the top layer's outputs over the real steps (both directions
    when bidirectional), which uses every step rather than the last alone. `dropout` acts between
    stacked layers only, as nn.GRU/nn.LSTM apply it."""

    def __init__(self, d_in: int, kind: str = "gru", width: int = 128, layers: int = 1,
                 bidirectional: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        rnn = nn.GRU if kind == "gru" else nn.LSTM
        self.rnn = rnn(d_in, width, layers, batch_first=True, bidirectional=bidirectional,
                       dropout=dropout if layers > 1 else 0.0)  # nn.GRU warns about dropout with one layer
        self.out_dim = width * (2 if bidirectional else 1)

    def forward(self, x: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        if real is None:
            out, _ = self.rnn(x)  # (B, T, out_dim)
            return out.mean(1)  # type: ignore[no-any-return]
        lengths = real.sum(1).clamp_min(1).cpu()  # a row with no real step is read as its first step
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (B, T, out_dim)
        return masked_mean(out, real)


class TransformerEncoder(nn.Module):
    """Pre-norm Transformer layers over steps that already carry their positions, a final
    LayerNorm on every step (pre-norm layers leave the residual stream unnormalized), and mean
    pooling over the real steps."""

    def __init__(self, width: int = 128, layers: int = 2, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.final = nn.LayerNorm(width)
        self.out_dim = width

    def forward(self, x: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        if real is None:
            return self.final(self.blocks(x)).mean(1)  # type: ignore[no-any-return]
        ignore = ~real
        ignore[:, 0] = False  # a row with no real step still attends to one (an all-masked row gives NaN)
        return masked_mean(self.final(self.blocks(x, src_key_padding_mask=ignore)), real)
