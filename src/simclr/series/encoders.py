"""Encoders f for series (B, C, T) -> h (B, out_dim): the FCN and ResNet of Wang et al. 2017
("Time series classification from scratch with deep neural networks: a strong baseline"), GRU and
LSTM (the recurrent encoders the original description names), and a small Transformer; the last
three are the sequence encoders of simclr.sequence, shared with text, over the series' steps.

Every encoder starts with `Standardize`: per-channel mean and std of the pretraining data, kept
as buffers, so raw series go in (what `simclr embed` gets) and the statistics travel with the
weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from simclr.sequence import RecurrentEncoder, TransformerEncoder


class Standardize(nn.Module):
    """(x - mean) / std per channel, with the pretraining data's statistics as buffers."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1))
        self.register_buffer("std", torch.ones(1, channels, 1))

    def fit(self, x: torch.Tensor) -> Standardize:
        """Set the statistics from series (N, C, T)."""
        with torch.no_grad():
            self.mean.copy_(x.float().mean((0, 2)).view(1, -1, 1))
            self.std.copy_(x.float().std((0, 2)).clamp_min(1e-6).nan_to_num(1.0).view(1, -1, 1))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_bn(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv1d(c_in, c_out, kernel, padding="same", bias=False), nn.BatchNorm1d(c_out), nn.ReLU(inplace=True)]


class FCN(nn.Module):
    """Three conv blocks (kernels 7, 5, 3; widths w, 2w, w), then average pooling. Wang et al.
    use 8, 5, 3; an odd first kernel keeps the "same" padding symmetric (no padded copy).

    `segments=1` is their global average (h of w). `segments=k` averages the last map over k equal
    spans of time and concatenates them (h of k·w, channel-major): global pooling forgets *when* in
    the series a pattern occurred, which is what tells apart gestures drawn as the same strokes in
    another order (see docs/series.md). Every series is resampled to one length T, so the spans line
    up from one series to the next."""

    def __init__(self, channels: int, width: int = 128, segments: int = 1) -> None:
        super().__init__()
        self.norm = Standardize(channels)
        self.features = nn.Sequential(*_conv_bn(channels, width, 7), *_conv_bn(width, 2 * width, 5),
                                      *_conv_bn(2 * width, width, 3))
        self.pool = nn.AdaptiveAvgPool1d(segments)
        self.out_dim = width * segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(self.norm(x))).flatten(1)  # type: ignore[no-any-return]  # (B, w·k)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        layers = _conv_bn(c_in, c_out, 7) + _conv_bn(c_out, c_out, 5) + _conv_bn(c_out, c_out, 3)
        self.body = nn.Sequential(*layers[:-1])  # the last ReLU comes after the sum
        self.shortcut = nn.Sequential(nn.Conv1d(c_in, c_out, 1, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet1D(nn.Module):
    """Three residual blocks of three convs (kernels 7, 5, 3; widths w/2, w, w), average pooling."""

    def __init__(self, channels: int, width: int = 128) -> None:
        super().__init__()
        self.norm = Standardize(channels)
        self.features = nn.Sequential(_ResBlock(channels, width // 2), _ResBlock(width // 2, width),
                                      _ResBlock(width, width))
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.norm(x)).mean(2)  # type: ignore[no-any-return]  # (B, w)


class Recurrent(nn.Module):
    """Standardized channels, one step per time step, into the shared GRU or LSTM."""

    def __init__(self, channels: int, kind: str = "gru", width: int = 128, layers: int = 2,
                 bidirectional: bool = True) -> None:
        super().__init__()
        self.norm = Standardize(channels)
        self.body = RecurrentEncoder(channels, kind, width, layers, bidirectional)
        self.out_dim = self.body.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(x).transpose(1, 2))  # type: ignore[no-any-return]  # steps (B, T, C)


def sinusoid(t: int, d: int, device: torch.device) -> torch.Tensor:
    """The fixed positional encoding of Vaswani et al. 2017, (t, d); any length works."""
    pos = torch.arange(t, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(t, d, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return pe


class SeriesTransformer(nn.Module):
    """Patches of the series (a strided conv) as tokens, sinusoidal positions, then the shared
    Transformer. Patches of T/32 steps keep attention cheap on long series."""

    def __init__(self, channels: int, length: int, width: int = 128, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.norm = Standardize(channels)
        patch = max(1, length // 32)
        self.embed = nn.Conv1d(channels, width, patch, stride=patch)
        self.body = TransformerEncoder(width, layers, heads, dropout=0.1)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(self.norm(x)).transpose(1, 2)  # (B, T/patch, w)
        tokens = tokens + sinusoid(tokens.shape[1], tokens.shape[2], tokens.device)
        return self.body(tokens)  # type: ignore[no-any-return]


# (channels, length, width, layers, bidirectional) -> encoder
ENCODERS: dict[str, Callable[[int, int, int, int, bool], nn.Module]] = {
    "fcn": lambda c, t, w, n, bi: FCN(c, w),
    "fcn_s4": lambda c, t, w, n, bi: FCN(c, w, segments=4),
    "resnet1d": lambda c, t, w, n, bi: ResNet1D(c, w),
    "gru": lambda c, t, w, n, bi: Recurrent(c, "gru", w, n, bi),
    "lstm": lambda c, t, w, n, bi: Recurrent(c, "lstm", w, n, bi),
    "transformer": lambda c, t, w, n, bi: SeriesTransformer(c, t, w, n),
}


def build_series_encoder(
    name: str, channels: int, length: int, width: int = 128, layers: int = 2, bidirectional: bool = True,
    data: torch.Tensor | None = None,
) -> nn.Module:
    """A registered series encoder; `data` (N, C, T) sets its input standardization."""
    encoder = ENCODERS[name](channels, length, width, layers, bidirectional)
    if data is not None:
        norm = encoder.get_submodule("norm")
        assert isinstance(norm, Standardize)
        norm.fit(data)
    return encoder
