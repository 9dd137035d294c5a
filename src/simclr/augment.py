"""The SimCLR image augmentation (Chen et al. 2020, section 3 and appendix A), batched.

A view t(x) of an image is, in the paper's order:
1. a random crop, 8-100% of the area with an aspect ratio in [3/4, 4/3], resized to the output
   size, and flipped horizontally with probability 1/2;
2. with probability 0.8, colour jitter of strength s: brightness, contrast and saturation factors
   in [1 - 0.8s, 1 + 0.8s] and a hue shift in [-0.2s, 0.2s] turns, in a random order;
3. with probability 0.2, grayscale;
4. with probability 1/2, a Gaussian blur, sigma in [0.1, 2.0], the kernel about 10% of the side.
`two_views` makes two of them of every image. Every sample, and each of its two views, draws its
own parameters (one draw shared by a batch would be a weaker method), so each op draws (B,)
parameters and applies them as tensor ops over the batch, on whatever device it is on. Every op
runs on every sample, with parameters that make it an exact identity where it was not drawn: the
shapes and the kernels launched are the same whatever the batch size and the draws, so a GPU
never waits for the host to learn how many rows an op got, and torch.compile sees one graph.

This module is the reference, one plain implementation per op. `ImageAugment(compiled=True)`
takes the same draws through `simclr.augment_fused`'s torch.compile kernels: the same views
within float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

# ITU-R 601 luma weights, as in PIL's convert("L") (torchvision rounds red to 0.2989).
LUMA = (0.299, 0.587, 0.114)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # the colour jitter's ops, by index


def _uniform(
    low: float, high: float, shape: tuple[int, ...], gen: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen, device=device)


def draw_rows(prob: float, b: int, frames: int, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(b,) bool: the rows an op applies to. Each clip of `frames` rows (a sample, when 1) is
    chosen with probability `prob`, and all its rows with it."""
    return (torch.rand(b // frames, generator=gen, device=device) < prob).repeat_interleave(frames)


def _to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images as float in [0, 1]; float ones as they are."""
    return x.float().mul_(1 / 255) if x.dtype == torch.uint8 else x


# 1. Random crop, resize and horizontal flip.
class Boxes(NamedTuple):
    """Crop boxes in whole pixels, (B,) int64 each, and whether each sample is flipped."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor


def draw_boxes(
    b: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    flip_prob: float, gen: torch.Generator | None, device: torch.device, attempts: int = 10,
) -> Boxes:
    """torchvision's RandomResizedCrop boxes: area U(scale)·H·W and aspect ratio log-uniform in
    `ratio`, sides rounded to whole pixels, the first of up to `attempts` draws that fits,
    the whole image if none does (as in the official code), a uniform position."""
    area = _uniform(scale[0], scale[1], (b, attempts), gen, device) * (height * width)
    r = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), (b, attempts), gen, device))
    w = torch.sqrt(area * r).round().long()
    h = torch.sqrt(area / r).round().long()
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = torch.argmax(fits.int(), dim=1, keepdim=True)  # the first attempt that fits (or 0)
    any_fit = fits.any(dim=1)
    w = torch.where(any_fit, w.gather(1, first).squeeze(1), width)
    h = torch.where(any_fit, h.gather(1, first).squeeze(1), height)
    top = (torch.rand(b, generator=gen, device=device) * (height - h + 1)).long().clamp_(max=height - h)
    left = (torch.rand(b, generator=gen, device=device) * (width - w + 1)).long().clamp_(max=width - w)
    return Boxes(top, left, h, w, draw_rows(flip_prob, b, 1, gen, device))


def resize_taps(
    start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int, flip: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's resize(antialias=True) of the spans [start, start + length) of an axis of
    in_size pixels (per sample) to out_size pixels: bilinear, the triangle filter widened by the
    scale when shrinking (PIL's antialiasing), centred at start + (i + 0.5)·scale for output pixel
    i, taps outside the span dropped, the rest renormalized; `flip` (B,) reverses those samples.
    Returns each output pixel's first tap (B, out_size) and the weights of `taps` pixels from it
    (B, out_size, taps): a box fits the image, so its scale is at most in_size / out_size, and a
    triangle of half-width h at c weighs only the pixels p within floor(c - h) + [0, 2h]."""
    dev = start.device
    taps = min(in_size, math.ceil(2 * max(1.0, in_size / out_size)) + 1)
    scale = (length / out_size).view(-1, 1, 1)
    half = scale.clamp(min=1)
    i = torch.arange(out_size, device=dev).expand(start.numel(), -1)
    if flip is not None:
        i = torch.where(flip.view(-1, 1), out_size - 1 - i, i)
    centers = start.view(-1, 1, 1) + (i + 0.5).unsqueeze(2) * scale  # (B, out_size, 1)
    first = (centers - half).floor().long().clamp_(0, in_size - taps)
    pixels = first + torch.arange(taps, device=dev) + 0.5  # (B, out_size, taps)
    w = (pixels - centers).abs_().div_(half).neg_().add_(1).clamp_(min=0)
    w = w * ((pixels > start.view(-1, 1, 1)) & (pixels < (start + length).view(-1, 1, 1)))
    return first.squeeze(2), w.div_(w.sum(2, keepdim=True))


def resize_weights(
    start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """`resize_taps` as (B, out_size, in_size) matrices."""
    first, w = resize_taps(start, length, in_size, out_size, flip)
    pixels = first.unsqueeze(2) + torch.arange(w.shape[2], device=w.device)
    return w.new_zeros(*first.shape, in_size).scatter_(2, pixels, w)


def resample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """out[b, c] = rows[b] @ x[b, c] @ cols[b]ᵀ: a separable per-sample linear map of (B, C, H, W)
    float as two batched matrix products (rows (B, S, H), cols (B, S', W))."""
    b, c, h, w = x.shape
    y = torch.bmm(x.reshape(b, c * h, w), cols.transpose(1, 2)).view(b, c, h, -1)  # (B, C, H, S')
    return torch.matmul(rows.unsqueeze(1), y)  # (B, C, S, S')


def crop_resize(x: torch.Tensor, boxes: Boxes, size: int, frames: int = 1) -> torch.Tensor:
    """Every box cropped, resized to size×size and flipped where drawn, the whole batch at once: an
    axis's crop, resize and flip are one matrix per sample (`resize_weights`). (B, C, H, W) uint8
    or float in [0, 1] -> float in [0, 1]; runs of `frames` rows share a box."""
    _, _, height, width = x.shape
    rows = resize_weights(boxes.top, boxes.height, height, size)
    cols = resize_weights(boxes.left, boxes.width, width, size, boxes.flip)
    if x.dtype == torch.uint8:
        rows = rows.mul_(1 / 255)  # the conversion to [0, 1], folded into the weights
    if frames > 1:
        rows, cols = rows.repeat_interleave(frames, 0), cols.repeat_interleave(frames, 0)
    # Weights ≥ 0 summing to 1 keep the range, within float rounding: the clamp guards that.
    return resample(x.float(), rows, cols).clamp_(0, 1)


def random_resized_crop_flip(
    x: torch.Tensor, size: int, scale: tuple[float, float], ratio: tuple[float, float],
    flip_prob: float, gen: torch.Generator | None, attempts: int = 10, frames: int = 1,
) -> torch.Tensor:
    """A random box per sample (`draw_boxes`), resized to size×size as torchvision does and
    flipped horizontally with `flip_prob` (`crop_resize`). With `frames` > 1, each run of that
    many consecutive rows (the frames of one clip) shares a box and a flip."""
    _, _, height, width = x.shape
    boxes = draw_boxes(x.shape[0] // frames, height, width, scale, ratio, flip_prob, gen, x.device, attempts)
    return crop_resize(x, boxes, size, frames)


# 2. Colour jitter.
@dataclass(frozen=True)
class JitterParams:
    """What one colour jitter draws per sample: factors (b, 4) for brightness, contrast,
    saturation and hue; whether it applies (b,); the order of the four ops (b, 4)."""

    factors: torch.Tensor
    apply: torch.Tensor
    order: torch.Tensor


def draw_jitter(
    b: int, strength: float, prob: float, gen: torch.Generator | None, device: torch.device, frames: int = 1
) -> JitterParams:
    """Brightness, contrast and saturation factors U(1 - 0.8s, 1 + 0.8s), a hue shift
    U(-0.2s, 0.2s), applied with probability `prob`, in a uniformly random order; for b rows,
    one draw per clip of `frames` rows."""
    n = b // frames
    lo, hi = max(0.0, 1 - 0.8 * strength), 1 + 0.8 * strength
    bounds = [(lo, hi)] * 3 + [(-0.2 * strength, 0.2 * strength)]  # brightness, contrast, saturation, hue
    factors = torch.stack([_uniform(low, high, (n,), gen, device) for low, high in bounds], 1)
    apply = draw_rows(prob, n, 1, gen, device)
    order = torch.argsort(torch.rand(n, 4, generator=gen, device=device), dim=1)
    return JitterParams(*(t.repeat_interleave(frames, 0) for t in (factors, apply, order)))


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma; 1-channel input is returned as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]  # channel-wise ops: a strided sum over dim 1 is slower
    return (r * LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2])


def jitter_coefficients(p: JitterParams, channels: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 3, 4): per sample and stage, the (a, k_gray, k_mean) of the `blend` that is the
    sample's op of that stage: brightness f is (f, 0, 0), contrast (f, 0, 1 - f), saturation
    (f, 1 - f, 0); (1, 0, 0), which changes nothing, for the hue, for a sample not jittered, and
    for saturation on a single channel. In the float type that images of `dtype` are jittered in."""
    f = p.factors.to(torch.float32 if dtype == torch.uint8 else dtype)
    n_affine = 3 if channels == 3 else 2
    op = torch.where(p.apply.view(-1, 1) & (p.order < n_affine), p.order, -1)  # -1: nothing
    a = torch.where(op >= 0, f.gather(1, op.clamp(min=0)), 1.0)
    k_gray = torch.where(op == SATURATION, (1 - f[:, SATURATION]).view(-1, 1), 0.0)
    k_mean = torch.where(op == CONTRAST, (1 - f[:, CONTRAST]).view(-1, 1), 0.0)
    return torch.stack([a, k_gray, k_mean], 1)


def blend(x: torch.Tensor, a: torch.Tensor, k_gray: torch.Tensor, k_mean: torch.Tensor) -> torch.Tensor:
    """clamp(a·x + k_gray·gray(x) + k_mean·mean(gray(x)), 0, 1) with per-sample (B,) coefficients:
    brightness, contrast and saturation are each such a blend (`jitter_coefficients`), clipped
    as in the official code."""
    gray = grayscale(x)
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    # The single-channel terms first, then one full-size pass (addcmul with a broadcast input is slower).
    y = (k_gray.view(-1, 1, 1, 1) * gray).add_(k_mean.view(-1, 1, 1, 1) * mean)  # (B, 1, H, W)
    return torch.addcmul(y, x, a.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of (B, 3, H, W) in [0, 1] by `shift` (B,) turns, keeping HSV saturation and
    value, as torchvision's RGB→HSV→RGB round trip does, in closed form: with v = max,
    d = max - min and the hue h in sixths of a turn, channel n (R 5, G 3, B 1) is
    v - d·clamp(2 - |k - 2|, 0, 1), k = (n + h) mod 6."""
    r, g, b = x.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    d = v - torch.minimum(torch.minimum(r, g), b)
    safe = torch.where(d > 0, d, 1.0)  # grey pixels (d = 0): every hue gives the same colour
    h = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    n = torch.tensor((5.0, 3.0, 1.0), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder((h + 6 * shift.view(-1, 1, 1)).unsqueeze(1) + n, 6)
    trapezoid = k.sub_(2).abs_().neg_().add_(2).clamp_(0, 1)
    return trapezoid.mul_(d.unsqueeze(1)).neg_().add_(v.unsqueeze(1)).clamp_(0, 1)


def identity_slot(coef: torch.Tensor) -> torch.Tensor:
    """(1, 3, 1): the (a, k_gray, k_mean) of a blend that leaves a sample as it is, exactly
    (0·gray + 0·mean + 1·x)."""
    return torch.tensor((1.0, 0.0, 0.0), dtype=coef.dtype, device=coef.device).view(1, 3, 1)


def slots(coef: torch.Tensor, take: torch.Tensor, n: int) -> torch.Tensor:
    """(B, 3, n): the coefficients (B, 3, 4) of the stages `take` ((B, 4) bool) marks, in stage
    order, then identity slots."""
    stages = torch.arange(4, device=take.device)
    first = torch.argsort((~take).long() * 4 + stages, dim=1)[:, :n]  # the marked stages first, in order
    kept = take.gather(1, first).unsqueeze(1)
    return torch.where(kept, coef.gather(2, first.unsqueeze(1).expand(-1, 3, -1)), identity_slot(coef))


def hue_split(p: JitterParams, coef: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A sample's blends before its hue and after it, as (B, 3, 3) slots each: its brightness,
    contrast and saturation are those three blends in its order, the hue falls among them."""
    stage = torch.arange(4, device=p.order.device).view(1, 4)
    hue_stage = (p.order == HUE).int().argmax(1, keepdim=True)
    return slots(coef, stage < hue_stage, 3), slots(coef, stage > hue_stage, 3)


def apply_jitter(x: torch.Tensor, p: JitterParams) -> torch.Tensor:
    """Each jittered sample's four ops in its own order, each followed by clipping to [0, 1].
    Brightness, contrast and saturation are each a `blend` with per-sample coefficients; on RGB
    a sample's hue falls somewhere among them, so the batch runs three blend slots, the hue, three
    more slots (`hue_split`; a slot a sample does not use is an exact identity, and so is the hue
    where it is not jittered). The same ops whatever was drawn, no rows picked out: static shapes
    and a fixed number of kernels. x is left as it is; uint8 comes back as float in [0, 1]."""
    x = _to_float(x)
    coef = jitter_coefficients(p, x.shape[1], x.dtype)
    if x.shape[1] == 1:  # a single channel has no hue (and no saturation: identity)
        for stage in range(4):
            x = blend(x, *coef[:, :, stage].unbind(1))
        return x
    pre, post = hue_split(p, coef)
    for i in range(3):
        x = blend(x, *pre[:, :, i].unbind(1))
    x = torch.where(p.apply.view(-1, 1, 1, 1), adjust_hue(x, p.factors[:, HUE].to(x.dtype)), x)
    for i in range(3):
        x = blend(x, *post[:, :, i].unbind(1))
    return x


def color_jitter(
    x: torch.Tensor, strength: float, prob: float, gen: torch.Generator | None, frames: int = 1
) -> torch.Tensor:
    """With probability `prob` per sample: brightness, contrast and saturation factors
    U(1 - 0.8s, 1 + 0.8s) and a hue shift U(-0.2s, 0.2s), in a random order per sample, each
    followed by clipping to [0, 1]. Runs of `frames` rows share one draw."""
    return apply_jitter(x, draw_jitter(x.shape[0], strength, prob, gen, x.device, frames))


# 3. Random grayscale.
def grey_rows(x: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """The rows `chosen` ((B,) bool) of an RGB batch as their luma in every channel."""
    return torch.where(chosen.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)


def random_grayscale(x: torch.Tensor, prob: float, gen: torch.Generator | None, frames: int = 1) -> torch.Tensor:
    """With probability `prob` per sample, every channel becomes the luma."""
    return x if x.shape[1] == 1 else grey_rows(x, draw_rows(prob, x.shape[0], frames, gen, x.device))


# 4. Gaussian blur.
def blur_radius(side: int) -> int:
    """The kernel's half-width: 2·radius + 1 taps, about 10% of the image side, as in the official code."""
    return max(1, side // 20)


def gaussian_taps(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(m, 2·radius + 1) normalized 1-D Gaussian kernels, one per sigma (m,)."""
    taps = torch.arange(-radius, radius + 1, device=sigma.device).to(sigma.dtype)
    kernel = torch.exp(-(taps**2) / (2 * sigma.view(-1, 1) ** 2))
    return kernel / kernel.sum(1, keepdim=True)


def blur_weights(sigma: torch.Tensor, size: int, radius: int) -> torch.Tensor:
    """(m, size, size) matrices of a 1-D Gaussian blur along an axis of `size` pixels, one per
    sigma (m,), with 2·radius + 1 taps and the border reflected (torchvision's padding)."""
    kernel = gaussian_taps(sigma, radius)
    taps = torch.arange(-radius, radius + 1, device=sigma.device)
    source = torch.arange(size, device=sigma.device).view(-1, 1) + taps  # (size, 2r+1)
    source = source.abs()  # reflect at 0 (-j -> j) and at the far end (size-1+j -> size-1-j)
    source = torch.where(source >= size, 2 * (size - 1) - source, source)
    w = torch.zeros(sigma.numel(), size, size, device=sigma.device, dtype=sigma.dtype)
    return w.scatter_add_(2, source.expand(sigma.numel(), -1, -1), kernel.unsqueeze(1).expand(-1, size, -1))


def draw_blur(
    b: int, prob: float, sigma: tuple[float, float], frames: int, gen: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which rows to blur ((b,) bool) and every row's sigma, U(sigma) pixels, one draw per clip."""
    chosen = draw_rows(prob, b, frames, gen, device)
    s = _uniform(sigma[0], sigma[1], (b // frames,), gen, device).repeat_interleave(frames)
    return chosen, s


def gaussian_blur(
    x: torch.Tensor, prob: float, sigma: tuple[float, float], gen: torch.Generator | None, frames: int = 1
) -> torch.Tensor:
    """With probability `prob` per sample, a Gaussian blur with sigma ~ U(sigma) pixels, the
    kernel `blur_radius` wide, the border reflected. Separable, so one matrix per axis and sample
    (`blur_weights`), applied as the crop's are (`resample`); a sample not blurred gets the
    identity matrix, so every sample goes through the same ops."""
    _, _, height, width = x.shape
    chosen, s = draw_blur(x.shape[0], prob, sigma, frames, gen, x.device)
    radius = blur_radius(height)
    keep = ~chosen.view(-1, 1, 1)
    along_h = blur_weights(s.to(x.dtype), height, radius)
    along_h = torch.where(keep, torch.eye(height, dtype=x.dtype, device=x.device), along_h)
    along_w = along_h
    if width != height:
        along_w = blur_weights(s.to(x.dtype), width, radius)
        along_w = torch.where(keep, torch.eye(width, dtype=x.dtype, device=x.device), along_w)
    # The float32 kernel sums to 1 only within rounding: the clamp keeps [0, 1].
    return resample(x, along_h, along_w).clamp_(0, 1)


# The whole view.
@dataclass(frozen=True)
class ImageAugment:
    """One random view t(x) of a batch, per the SimCLR recipe; call it twice for two views. The
    defaults are the paper's ImageNet recipe; its CIFAR variant is color_jitter_strength=0.5, blur_prob=0."""

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
    compiled: bool = False  # the same views through `simclr.augment_fused` (torch.compile)

    @property
    def jitters(self) -> bool:
        return self.color_jitter_prob > 0 and self.color_jitter_strength > 0

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None, frames: int = 1) -> torch.Tensor:
        """(B, C, H, W) uint8 or float in [0, 1] -> (B, C, size, size) float32 in [0, 1]. With
        `frames` > 1 the rows are clips of that many frames in a row, and every frame of a clip
        gets the same crop, flip, colour changes and blur (one draw per clip)."""
        if x.shape[0] % frames:
            raise ValueError(f"{x.shape[0]} rows are not whole clips of {frames} frames")
        if self.compiled:
            from simclr.augment_fused import augment_fused

            return augment_fused(self, x, gen, frames)
        x = random_resized_crop_flip(x, self.size, (self.min_scale, self.max_scale),
                                     (self.min_ratio, self.max_ratio), self.flip_prob, gen, frames=frames)
        if self.jitters:
            x = color_jitter(x, self.color_jitter_strength, self.color_jitter_prob, gen, frames)
        if self.grayscale_prob > 0:
            x = random_grayscale(x, self.grayscale_prob, gen, frames)
        if self.blur_prob > 0:
            x = gaussian_blur(x, self.blur_prob, (self.blur_sigma_min, self.blur_sigma_max), gen, frames)
        return x


def two_views(augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor], x: torch.Tensor,
              gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent views of every sample: x1 = t(x), x2 = t'(x). Any modality's view
    augmentation (image, series, text) fits."""
    return augment(x, gen), augment(x, gen)
