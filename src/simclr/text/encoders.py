"""Encoders f for token ids (B, L) -> h (B, out_dim), with padding masks: a GRU or LSTM over
packed sequences (padding never enters the recurrence) and a small Transformer with a key
padding mask. Both mean-pool over the real tokens only. Dropout in the encoder is what makes
SimCSE's dropout views (Gao et al. 2021): two training-mode passes of one text differ."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from simclr.text.data import PAD


def token_embedding(vocab_size: int, width: int) -> nn.Embedding:
    """Token embeddings initialised small (std 0.02, as BERT), not nn.Embedding's N(0, 1): with
    N(0, 1) a short run moves each vector by a few percent and h stays a random projection of the
    bag of tokens (measured: AG News probes no better than the untrained encoder)."""
    embed = nn.Embedding(vocab_size, width, padding_idx=PAD)
    nn.init.normal_(embed.weight, std=0.02)
    with torch.no_grad():
        embed.weight[PAD].zero_()
    return embed


def masked_mean(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, L, d) over the positions where real (B, L) is True; an empty text gives 0."""
    w = real.unsqueeze(2).to(x.dtype)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


class TextRNN(nn.Module):
    def __init__(self, vocab_size: int, kind: str = "gru", width: int = 256, layers: int = 1,
                 bidirectional: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = token_embedding(vocab_size, width)
        self.dropout = nn.Dropout(dropout)
        rnn = nn.GRU if kind == "gru" else nn.LSTM
        self.rnn = rnn(width, width, layers, batch_first=True, bidirectional=bidirectional,
                       dropout=dropout if layers > 1 else 0.0)
        self.out_dim = width * (2 if bidirectional else 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        real = ids != PAD  # (B, L)
        lengths = real.sum(1).clamp_min(1).cpu()  # an empty text is read as one [PAD]
        x = self.dropout(self.embed(ids))  # (B, L, w)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])  # (B, L, out_dim)
        h: torch.Tensor = self.dropout(masked_mean(out, real))
        return h


class TextTransformer(nn.Module):
    """Token + learned position embeddings, pre-norm Transformer layers, masked mean pooling."""

    def __init__(self, vocab_size: int, max_length: int, width: int = 256, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = token_embedding(vocab_size, width)
        self.position = nn.Embedding(max_length, width)
        nn.init.normal_(self.position.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.final = nn.LayerNorm(width)
        self.out_dim = width

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        real = ids != PAD
        ignore = ~real
        ignore[:, 0] = False  # an empty text still attends to one position (no all-masked row: NaN)
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.dropout(self.embed(ids) + self.position(positions))  # (B, L, w)
        x = self.blocks(x, src_key_padding_mask=ignore)
        return masked_mean(self.final(x), real)


def build_text_encoder(
    name: str, vocab_size: int, max_length: int, width: int = 256, layers: int = 1, bidirectional: bool = True,
    dropout: float = 0.1,
) -> nn.Module:
    if name in ("gru", "lstm"):
        return TextRNN(vocab_size, name, width, layers, bidirectional, dropout)
    if name == "transformer":
        return TextTransformer(vocab_size, max_length, width, layers, dropout=dropout)
    raise ValueError(f"unknown text encoder {name!r}")
