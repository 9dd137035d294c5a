"""Two-view augmentation for time series, batched on the device, every sample drawing its own
parameters (as SimCLR's image recipe does; Chen et al. 2020, section 3).

The operations are the standard ones of the time-series augmentation literature (Um et al.
2017, "Data augmentation of wearable sensor data"; Iwana & Uchida 2021, a survey): a random
window cropped and stretched back to length T, time warping, magnitude warping, per-channel
scaling, jitter and masking. Crop and time warp are one resampling of the series (as the
image recipe's crop, flip and resize are one resampling of the image). Noise and masking are relative to
each series' own per-channel statistics, so the defaults work whatever the units of the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

KNOTS = 4  # interior points of the smooth random curves (time and magnitude warps)


def _smooth_curve(
    b: int, rows: int, t: int, std: float, gen: torch.Generator | None, dev: torch.device
) -> torch.Tensor:
    """(b, rows, t) random curves around 1: KNOTS + 2 normal points, linearly interpolated."""
    knots = 1 + std * torch.randn(b * rows, 1, KNOTS + 2, generator=gen, device=dev)
    return F.interpolate(knots, size=t, mode="linear", align_corners=True).view(b, rows, t)


def sample_at(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x (B, C, T) read at fractional positions pos (B, T') in [0, T-1], linear interpolation."""
    b, c, t = x.shape
    pos = pos.clamp(0, t - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=t - 1)
    w = (pos - lo).unsqueeze(1)  # (B, 1, T')
    lo, hi = lo.unsqueeze(1).expand(b, c, -1), hi.unsqueeze(1).expand(b, c, -1)
    return x.gather(2, lo) * (1 - w) + x.gather(2, hi) * w


@dataclass(frozen=True)
class SeriesAugment:
    """One random view t(x) of a batch of series (B, C, T). Call it twice for two views."""

    crop_min: float = 0.5  # window length ~ U(crop_min, 1) × T
    jitter: float = 0.05  # noise std relative to the series' channel std
    scale: float = 0.1  # per-channel factor ~ N(1, scale)
    magnitude_warp: float = 0.1  # std of the smooth multiplicative curve's knots
    time_warp: float = 0.1  # std of the smooth speed curve's knots
    mask_fraction: float = 0.1  # length of the masked span, as a fraction of T
    mask_prob: float = 0.5  # chance that a view has a masked span

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        x = x.float()
        b, c, t = x.shape
        dev = x.device
        mean = x.mean(2, keepdim=True)  # (b, c, 1) statistics of the input, before any change
        std = x.std(2, keepdim=True).nan_to_num(0.0) if t > 1 else torch.zeros_like(mean)

        # Crop + time warp: where output step j reads the input, as a fraction of the series.
        frac = self.crop_min + (1 - self.crop_min) * torch.rand(b, 1, generator=gen, device=dev)  # (b, 1)
        start = (1 - frac) * torch.rand(b, 1, generator=gen, device=dev)
        grid = torch.linspace(0, 1, t, device=dev).expand(b, t)
        if self.time_warp > 0:  # a positive random speed, integrated: a smooth monotone map [0,1] -> [0,1]
            speed = _smooth_curve(b, 1, t, self.time_warp, gen, dev).squeeze(1).clamp_min(0.1)  # (b, t)
            warped = torch.cumsum(speed, 1) - speed[:, :1]
            grid = warped / warped[:, -1:].clamp_min(1e-6)
        x = sample_at(x, (start + frac * grid) * (t - 1))  # (b, c, t)

        if self.magnitude_warp > 0:
            x = x * _smooth_curve(b, c, t, self.magnitude_warp, gen, dev)
        if self.scale > 0:
            x = x * (1 + self.scale * torch.randn(b, c, 1, generator=gen, device=dev))
        if self.jitter > 0:
            x = x + self.jitter * std * torch.randn(b, c, t, generator=gen, device=dev)
        if self.mask_fraction > 0 and self.mask_prob > 0:
            span = max(1, round(self.mask_fraction * t))
            first = torch.randint(0, t - span + 1, (b, 1), generator=gen, device=dev)
            steps = torch.arange(t, device=dev).expand(b, t)
            apply = torch.rand(b, 1, generator=gen, device=dev) < self.mask_prob
            masked = ((steps >= first) & (steps < first + span) & apply).unsqueeze(1)  # (b, 1, t)
            x = torch.where(masked, mean, x)
        return x
