"""Encoders f for token ids (B, L) -> h (B, out_dim), with padding masks: token embeddings (and
learned positions for the Transformer) into the sequence encoders of simclr.sequence, shared with
series: a GRU or LSTM over packed sequences (padding never enters the recurrence) or a small
Transformer with a key padding mask, both mean-pooling over the real tokens only. Dropout in the
encoder is what makes SimCSE's dropout views (Gao et al. 2021): two training-mode passes of one
text differ."""

from __future__ import annotations

import torch
from torch import nn

from simclr.sequence import RecurrentEncoder, TransformerEncoder
from simclr.text.data import PAD


def token_embedding(vocab_size: int, width: int) -> nn.Embedding:
    """Token embeddings initialised small (std 0.02, as BERT), not nn.Embedding's N(0, 1): with
    N(0, 1) a short run barely moves each vector relative to its size, so h stays close to a random
    projection of the bag of tokens and the probes learn little beyond the untrained encoder."""
    embed = nn.Embedding(vocab_size, width, padding_idx=PAD)
    nn.init.normal_(embed.weight, std=0.02)
    with torch.no_grad():
        embed.weight[PAD].zero_()
    return embed


class TextRNN(nn.Module):
    """Token embeddings into the shared GRU or LSTM; dropout on the embeddings, between stacked
    layers and on h."""

    def __init__(self, vocab_size: int, kind: str = "gru", width: int = 256, layers: int = 1,
                 bidirectional: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = token_embedding(vocab_size, width)
        self.dropout = nn.Dropout(dropout)
        self.body = RecurrentEncoder(width, kind, width, layers, bidirectional, dropout)
        self.out_dim = self.body.out_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.body(self.dropout(self.embed(ids)), ids != PAD)
        return self.dropout(h)  # type: ignore[no-any-return]


class TextTransformer(nn.Module):
    """Token + learned position embeddings into the shared Transformer."""

    def __init__(self, vocab_size: int, max_length: int, width: int = 256, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = token_embedding(vocab_size, width)
        self.position = nn.Embedding(max_length, width)
        nn.init.normal_(self.position.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.body = TransformerEncoder(width, layers, heads, dropout)
        self.out_dim = width

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.dropout(self.embed(ids) + self.position(positions))  # (B, L, w)
        return self.body(x, ids != PAD)  # type: ignore[no-any-return]


def build_text_encoder(
    name: str, vocab_size: int, max_length: int, width: int = 256, layers: int = 1, bidirectional: bool = True,
    dropout: float = 0.1,
) -> nn.Module:
    if name in ("gru", "lstm"):
        return TextRNN(vocab_size, name, width, layers, bidirectional, dropout)
    if name == "transformer":
        return TextTransformer(vocab_size, max_length, width, layers, dropout=dropout)
    raise ValueError(f"unknown text encoder {name!r}")
