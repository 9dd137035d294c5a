"""The SimCLR image augmentation (paper section 3 and appendix A), batched on the device.

Every sample, and each of its two views, draws its own parameters; applying one set of
random parameters to a whole batch would be a different, weaker method. All work is tensor
ops over the batch (one grid_sample for crop+flip+resize, masked per-sample colour ops, a
grouped convolution for blur), so it runs where the model runs, CPU or CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def random_resized_crop_flip(
    x: torch.Tensor, size: int, scale: tuple[float, float], ratio: tuple[float, float],
    flip_prob: float, gen: torch.Generator | None, attempts: int = 10,
) -> torch.Tensor:
    """Crop a random area fraction U(scale) with log-uniform aspect ratio, flip horizontally
    with `flip_prob`, resize to size×size (bilinear), all samples through one grid_sample.

    Like torchvision, up to `attempts` boxes are drawn and the first that fits is used, with
    the whole image as the fallback. Boxes are continuous rather than whole pixels.
    """
    b, _, height, width = x.shape
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
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sel = [  # (r, g, b) for each of the six hue sectors
        (v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q),
    ]
    out = torch.zeros_like(x)
    for k, (r, g, b) in enumerate(sel):
        m = (i == k).unsqueeze(1)
        out = torch.where(m, torch.stack([r, g, b], 1), out)
    return out


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x * f.view(-1, 1, 1, 1)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = f.view(-1, 1, 1, 1)
    return f * x + (1 - f) * mean


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    return f * x + (1 - f) * grayscale(x)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return _hsv_to_rgb(hsv)


_COLOR_OPS = (_brightness, _contrast, _saturation, _hue)


def color_jitter(
    x: torch.Tensor, strength: float, prob: float, gen: torch.Generator | None
) -> torch.Tensor:
    """With probability `prob` per sample: brightness, contrast and saturation factors
    U(1 - 0.8s, 1 + 0.8s) and a hue shift U(-0.2s, 0.2s), in a random order per sample, each
    followed by clipping to [0, 1] (as the official code does)."""
    b, c = x.shape[:2]
    dev = x.device
    lo, hi = max(0.0, 1 - 0.8 * strength), 1 + 0.8 * strength
    factors = torch.stack([
        _uniform(lo, hi, (b,), gen, dev),
        _uniform(lo, hi, (b,), gen, dev),
        _uniform(lo, hi, (b,), gen, dev),
        _uniform(-0.2 * strength, 0.2 * strength, (b,), gen, dev),
    ], 1).to(x.dtype)  # (b, 4)
    apply = _bernoulli(prob, b, gen, dev)
    order = torch.argsort(torch.rand(b, 4, generator=gen, device=dev), dim=1)  # (b, 4)
    n_ops = 4 if c == 3 else 2  # saturation and hue do nothing to a single channel
    out = x.clone()
    for stage in range(4):
        for op in range(n_ops):
            idx = torch.nonzero(apply & (order[:, stage] == op)).squeeze(1)
            if idx.numel():
                out[idx] = _COLOR_OPS[op](out[idx], factors[idx, op]).clamp_(0, 1)
    return out


def random_grayscale(x: torch.Tensor, prob: float, gen: torch.Generator | None) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    apply = _bernoulli(prob, x.shape[0], gen, x.device).view(-1, 1, 1, 1)
    return torch.where(apply, grayscale(x).expand_as(x), x)


def gaussian_blur(
    x: torch.Tensor, prob: float, sigma: tuple[float, float], gen: torch.Generator | None
) -> torch.Tensor:
    """With probability `prob` per sample, a Gaussian blur with sigma ~ U(sigma) pixels and a
    kernel of about 10% of the image side (odd), as in the official code."""
    b, c, height, width = x.shape
    dev = x.device
    apply = _bernoulli(prob, b, gen, dev)
    s = _uniform(sigma[0], sigma[1], (b,), gen, dev)
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

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, H, W) uint8 or float in [0, 1] -> (B, C, size, size) float32 in [0, 1]."""
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        x = random_resized_crop_flip(
            x, self.size, (self.min_scale, self.max_scale), (self.min_ratio, self.max_ratio),
            self.flip_prob, gen,
        )
        x = x.clamp_(0, 1)  # bilinear resampling stays in range; this guards rounding
        if self.color_jitter_prob > 0 and self.color_jitter_strength > 0:
            x = color_jitter(x, self.color_jitter_strength, self.color_jitter_prob, gen)
        if self.grayscale_prob > 0:
            x = random_grayscale(x, self.grayscale_prob, gen)
        if self.blur_prob > 0:
            x = gaussian_blur(x, self.blur_prob, (self.blur_sigma_min, self.blur_sigma_max), gen)
            x = x.clamp_(0, 1)  # the float32 kernel sums to 1 only within rounding
        return x


def two_views(
    augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor], x: torch.Tensor,
    gen: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent views of every sample: x1 = t(x), x2 = t'(x). Any modality's view
    augmentation (image, series, text) fits."""
    return augment(x, gen), augment(x, gen)
