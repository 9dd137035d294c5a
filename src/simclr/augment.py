"""The SimCLR image augmentation (paper section 3 and appendix A), batched on the device.

Every sample, and each of its two views, draws its own parameters; applying one set of
random parameters to a whole batch would be a different, weaker method. All work is tensor
ops over the batch (one grid_sample for crop+flip+resize, masked per-sample colour ops, a
grouped convolution for blur), so it runs where the model runs, CPU or CUDA.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

log = logging.getLogger("simclr")

# ITU-R 601 luma weights, as in PIL's convert("L") (torchvision rounds red to 0.2989).
LUMA = (0.299, 0.587, 0.114)


def _uniform(
    low: float | torch.Tensor, high: float | torch.Tensor, shape: tuple[int, ...],
    gen: torch.Generator | None, device: torch.device,
) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen, device=device)


def _bernoulli(p: float, n: int, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) < p


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma; 1-channel input is returned as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]  # channel-wise ops: a strided sum over dim 1 is slower
    return (r * LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2])


def random_resized_crop_flip(
    x: torch.Tensor, size: int, scale: tuple[float, float], ratio: tuple[float, float],
    flip_prob: float, gen: torch.Generator | None, attempts: int = 10, frames: int = 1,
) -> torch.Tensor:
    """Crop a random area fraction U(scale) with log-uniform aspect ratio, flip horizontally
    with `flip_prob`, resize to size×size (bilinear), all samples through one grid_sample.

    Like torchvision, up to `attempts` boxes are drawn and the first that fits is used, with
    the whole image as the fallback. Boxes are continuous rather than whole pixels. With
    `frames` > 1, each run of that many consecutive rows (the frames of one clip) shares a box.
    """
    _, _, height, width = x.shape
    b = x.shape[0] // frames
    dev = x.device
    area = _uniform(scale[0], scale[1], (b, attempts), gen, dev)
    log_r = _uniform(math.log(ratio[0]), math.log(ratio[1]), (b, attempts), gen, dev)
    r = torch.exp(log_r)
    # Box sides as fractions of the image sides (area is a fraction of height*width pixels).
    w = torch.sqrt(area * r * height / width)
    h = torch.sqrt(area / r * width / height)
    fits = (w <= 1) & (h <= 1)
    first = torch.argmax(fits.int(), dim=1, keepdim=True)  # first fitting attempt (or 0)
    any_fit = fits.any(dim=1)
    w = torch.where(any_fit, w.gather(1, first).squeeze(1), torch.ones(b, device=dev))
    h = torch.where(any_fit, h.gather(1, first).squeeze(1), torch.ones(b, device=dev))
    left = torch.rand(b, generator=gen, device=dev) * (1 - w)
    top = torch.rand(b, generator=gen, device=dev) * (1 - h)
    flip = _bernoulli(flip_prob, b, gen, dev)

    # affine_grid maps output coords in [-1, 1] to input coords: x_in = a * x_out + t.
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = torch.where(flip, -w, w)
    theta[:, 0, 2] = 2 * left + w - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * top + h - 1
    theta = theta.repeat_interleave(frames, 0)
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by `shift` turns per sample, keeping HSV saturation and value: the same
    function as torchvision's RGB→HSV→RGB round trip, in closed form. With v = max, d = max −
    min and the hue h6 in sixths of a turn, channel n (R: 5, G: 3, B: 1) is
    v − d·clamp(min(k, 4 − k), 0, 1) with k = (n + h6) mod 6. Written as plain pointwise ops
    (no `out=`) so that torch.compile fuses it into one loop."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = torch.maximum(torch.maximum(r, g), b)  # elementwise: faster than a reduction over dim 1
    d = v - torch.minimum(torch.minimum(r, g), b)
    safe = torch.where(d > 0, d, 1.0)  # grey pixels: d = 0, the hue is irrelevant
    h6 = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h6 = h6 + 6 * shift.view(-1, 1, 1)
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6)
        channels.append(v - d * torch.minimum(k, 4 - k).clamp(0, 1))
    return torch.stack(channels, 1)


def _affine(x: torch.Tensor, a: torch.Tensor, k_gray: torch.Tensor, k_mean: torch.Tensor) -> torch.Tensor:
    """x ← clamp(a·x + k_gray·gray(x) + k_mean·mean(gray(x)), 0, 1) with per-sample (B,)
    coefficients: brightness (a), contrast (k_mean = 1 − a) and saturation (k_gray = 1 − a)."""
    gray = grayscale(x)
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    # The single-channel terms first, then one full-size pass: 1.5x faster on the CPU than
    # addcmul with a broadcast (B, 1, 1, 1) input, which takes a slow path.
    y = (k_gray.view(-1, 1, 1, 1) * gray).add_(k_mean.view(-1, 1, 1, 1) * mean)  # (B, 1, H, W)
    return torch.addcmul(y, x, a.view(-1, 1, 1, 1)).clamp_(0, 1)


class JitterKernels(NamedTuple):
    """The colour jitter's pointwise work: eager, or fused by torch.compile."""

    hue: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    affine: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


EAGER = JitterKernels(_hue, _affine)
_fused: JitterKernels | None = None


class Fused:
    """`fn` through torch.compile (dynamic shapes: the hue runs on a different number of samples
    each stage), or `fn` itself from the first failure on (no C++ compiler, say), with a warning."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn
        self.fused: Callable[..., torch.Tensor] | None = torch.compile(fn, dynamic=True)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            try:
                return self.fused(*args)
            except Exception as e:  # any backend failure: the eager function computes the same
                self.fused = None
                log.warning("augmentation: torch.compile failed (%s); using eager kernels", str(e).splitlines()[0])
        return self.fn(*args)


def jitter_kernels(compiled: bool) -> JitterKernels:
    """The kernels: fused ones are compiled once per process, on first use."""
    global _fused
    if not compiled:
        return EAGER
    if _fused is None:
        _fused = JitterKernels(Fused(_hue), Fused(_affine))
    return _fused


@dataclass(frozen=True)
class JitterParams:
    """What one colour jitter draws per sample: factors (b, 4) for brightness, contrast,
    saturation and hue; whether it applies (b,); the order of the four ops (b, 4)."""

    factors: torch.Tensor
    apply: torch.Tensor
    order: torch.Tensor


def draw_jitter(
    b: int, strength: float, prob: float, gen: torch.Generator | None, device: torch.device
) -> JitterParams:
    """Brightness, contrast and saturation factors U(1 - 0.8s, 1 + 0.8s), a hue shift
    U(-0.2s, 0.2s), applied with probability `prob`, in a uniformly random order."""
    lo, hi = max(0.0, 1 - 0.8 * strength), 1 + 0.8 * strength
    factors = torch.stack([
        _uniform(lo, hi, (b,), gen, device),
        _uniform(lo, hi, (b,), gen, device),
        _uniform(lo, hi, (b,), gen, device),
        _uniform(-0.2 * strength, 0.2 * strength, (b,), gen, device),
    ], 1)
    apply = _bernoulli(prob, b, gen, device)
    order = torch.argsort(torch.rand(b, 4, generator=gen, device=device), dim=1)
    return JitterParams(factors, apply, order)


def apply_jitter(x: torch.Tensor, p: JitterParams, kernels: JitterKernels = EAGER) -> torch.Tensor:
    """Each sample's ops in its own order, each followed by clipping to [0, 1] (as the official
    code does). Brightness, contrast and saturation are all x ← a·x + b·gray(x) + c·mean(gray(x))
    with per-sample (a, b, c), so each of the four stages is one pass over the whole batch (the
    samples doing something else at that stage get (1, 0, 0), which leaves them exactly as they
    are); the hue op runs on the samples whose turn it is."""
    f = p.factors.to(x.dtype)
    ones, zeros = torch.ones_like(f[:, 0]), torch.zeros_like(f[:, 0])
    n_ops = 4 if x.shape[1] == 3 else 2  # saturation and hue do nothing to a single channel
    x = x.clone()
    for stage in range(4):
        op = torch.where(p.apply & (p.order[:, stage] < n_ops), p.order[:, stage], -1)  # -1: nothing
        affine = (op >= 0) & (op <= 2)
        if affine.any():
            a = torch.where(affine, f.gather(1, op.clamp(0, 2).view(-1, 1)).squeeze(1), ones)
            k_gray = torch.where(op == 2, 1 - f[:, 2], zeros)
            k_mean = torch.where(op == 1, 1 - f[:, 1], zeros)
            x = kernels.affine(x, a, k_gray, k_mean)
        hue = torch.nonzero(op == 3).squeeze(1)
        if hue.numel():
            x[hue] = kernels.hue(x[hue], f[hue, 3]).clamp_(0, 1)
    return x


def color_jitter(
    x: torch.Tensor, strength: float, prob: float, gen: torch.Generator | None, frames: int = 1,
    kernels: JitterKernels = EAGER,
) -> torch.Tensor:
    """With probability `prob` per sample: brightness, contrast and saturation factors
    U(1 - 0.8s, 1 + 0.8s) and a hue shift U(-0.2s, 0.2s), in a random order per sample, each
    followed by clipping to [0, 1]. Runs of `frames` rows share one draw."""
    p = draw_jitter(x.shape[0] // frames, strength, prob, gen, x.device)
    if frames > 1:
        p = JitterParams(*(t.repeat_interleave(frames, 0) for t in (p.factors, p.apply, p.order)))
    return apply_jitter(x, p, kernels)


def random_grayscale(x: torch.Tensor, prob: float, gen: torch.Generator | None, frames: int = 1) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    apply = _bernoulli(prob, x.shape[0] // frames, gen, x.device).repeat_interleave(frames).view(-1, 1, 1, 1)
    return torch.where(apply, grayscale(x).expand_as(x), x)


def gaussian_blur(
    x: torch.Tensor, prob: float, sigma: tuple[float, float], gen: torch.Generator | None, frames: int = 1
) -> torch.Tensor:
    """With probability `prob` per sample, a Gaussian blur with sigma ~ U(sigma) pixels and a
    kernel of about 10% of the image side (odd), as in the official code."""
    b, c, height, width = x.shape
    dev = x.device
    apply = _bernoulli(prob, b // frames, gen, dev).repeat_interleave(frames)
    s = _uniform(sigma[0], sigma[1], (b // frames,), gen, dev).repeat_interleave(frames)
    idx = torch.nonzero(apply).squeeze(1)
    radius = max(1, height // 20)
    if idx.numel() == 0:
        return x
    k = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
    kernel = torch.exp(-(k**2) / (2 * s[idx].to(x.dtype).view(-1, 1) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (m, 2r+1)
    kernel = kernel.repeat_interleave(c, 0)  # one filter per (sample, channel)
    m = idx.numel()
    y = x[idx].reshape(1, m * c, height, width)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(m * c, 1, 1, -1), groups=m * c)  # horizontal pass
    y = F.conv2d(y, kernel.view(m * c, 1, -1, 1), groups=m * c)  # vertical pass
    out = x.clone()
    out[idx] = y.view(m, c, height, width)
    return out


@dataclass(frozen=True)
class ImageAugment:
    """One random view t(x) of a batch, per the SimCLR recipe. Call it twice for two views.

    Defaults are the paper's ImageNet recipe; the CIFAR variant is color_jitter_strength=0.5,
    blur_prob=0.
    """

    size: int
    min_scale: float = 0.08
    max_scale: float = 1.0
    min_ratio: float = 3 / 4
    max_ratio: float = 4 / 3
    flip_prob: float = 0.5
    color_jitter_strength: float = 1.0
    color_jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    compiled: bool = False  # the colour jitter's pointwise work fused by torch.compile

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None, frames: int = 1) -> torch.Tensor:
        """(B, C, H, W) uint8 or float in [0, 1] -> (B, C, size, size) float32 in [0, 1]. With
        `frames` > 1 the rows are clips of that many frames in a row, and every frame of a clip
        gets the same crop, flip, colour changes and blur (one draw per clip)."""
        if x.shape[0] % frames:
            raise ValueError(f"{x.shape[0]} rows are not whole clips of {frames} frames")
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        x = random_resized_crop_flip(
            x, self.size, (self.min_scale, self.max_scale), (self.min_ratio, self.max_ratio),
            self.flip_prob, gen, frames=frames,
        )
        x = x.clamp_(0, 1)  # bilinear resampling stays in range; this guards rounding
        if self.color_jitter_prob > 0 and self.color_jitter_strength > 0:
            x = color_jitter(x, self.color_jitter_strength, self.color_jitter_prob, gen, frames,
                             jitter_kernels(self.compiled))
        if self.grayscale_prob > 0:
            x = random_grayscale(x, self.grayscale_prob, gen, frames)
        if self.blur_prob > 0:
            x = gaussian_blur(x, self.blur_prob, (self.blur_sigma_min, self.blur_sigma_max), gen, frames)
            x = x.clamp_(0, 1)  # the float32 kernel sums to 1 only within rounding
        return x


def two_views(
    augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor], x: torch.Tensor,
    gen: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent views of every sample: x1 = t(x), x2 = t'(x). Any modality's view
    augmentation (image, series, text) fits."""
    return augment(x, gen), augment(x, gen)
