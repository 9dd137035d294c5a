"""The SimCLR image augmentation (paper section 3 and appendix A), batched on the device.

Every sample, and each of its two views, draws its own parameters; applying one set of
random parameters to a whole batch would be a different, weaker method. The work is tensor
ops over the batch, so it runs where the model runs, CPU or CUDA: crop + flip + resize as two
batched matrix products (or, for large images on the CPU, one fast uint8 resize per sample),
the colour jitter as masked per-sample passes (under torch.compile, one chain of pointwise ops
per sample), the blur as two matrix products (or, under torch.compile, sums of shifted copies).
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


def _chosen(prob: float, b: int, frames: int, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(b,) bool: the rows an op applies to; each clip of `frames` rows (a sample when 1) is
    chosen with probability `prob`, all its rows with it."""
    return _bernoulli(prob, b // frames, gen, device).repeat_interleave(frames)


def _chosen_rows(prob: float, b: int, frames: int, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Indices of the rows `_chosen` picks."""
    return torch.nonzero(_chosen(prob, b, frames, gen, device)).squeeze(1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma; 1-channel input is returned as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]  # channel-wise ops: a strided sum over dim 1 is slower
    return (r * LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2])


def resize_weights(
    start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, out_size, in_size) weights that resize the spans [start, start + length) of an axis of
    in_size pixels (per sample) to out_size pixels as torchvision's resize(antialias=True) of
    the cropped span does: bilinear, with the triangle filter widened by the scale when
    shrinking (PIL's antialiasing), centred at start + (i + 0.5)·scale for output pixel i, taps
    outside the span dropped and the rest renormalized. `flip` (B,) reverses those samples."""
    dev = start.device
    scale = (length / out_size).view(-1, 1, 1)
    i = torch.arange(out_size, device=dev).expand(start.numel(), -1)
    if flip is not None:
        i = torch.where(flip.view(-1, 1), out_size - 1 - i, i)
    centers = start.view(-1, 1, 1) + (i + 0.5).unsqueeze(2) * scale  # (B, out_size, 1)
    pixels = (torch.arange(in_size, device=dev) + 0.5).view(1, 1, -1)
    w = (pixels - centers).abs_().div_(scale.clamp(min=1)).neg_().add_(1).clamp_(min=0)
    w = w * ((pixels > start.view(-1, 1, 1)) & (pixels < (start + length).view(-1, 1, 1)))
    return w.div_(w.sum(2, keepdim=True))


def resample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """out[b, c] = rows[b] @ x[b, c] @ cols[b]ᵀ: a separable per-sample resampling of (B, C, H, W)
    float as two batched matrix products (rows (B, S, H), cols (B, S', W))."""
    b, c, h, w = x.shape
    y = torch.bmm(x.reshape(b, c * h, w), cols.transpose(1, 2)).view(b, c, h, -1)  # (B, C, H, S')
    return torch.matmul(rows.unsqueeze(1), y)  # (B, C, S, S')


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
    first = torch.argmax(fits.int(), dim=1, keepdim=True)  # first fitting attempt (or 0)
    any_fit = fits.any(dim=1)
    w = torch.where(any_fit, w.gather(1, first).squeeze(1), width)
    h = torch.where(any_fit, h.gather(1, first).squeeze(1), height)
    top = (torch.rand(b, generator=gen, device=device) * (height - h + 1)).long().clamp_(max=height - h)
    left = (torch.rand(b, generator=gen, device=device) * (width - w + 1)).long().clamp_(max=width - w)
    return Boxes(top, left, h, w, _bernoulli(flip_prob, b, gen, device))


def crop_resize_each(
    x: torch.Tensor, boxes: Boxes, size: int, frames: int = 1, to_float: bool = True
) -> torch.Tensor:
    """Each box cropped and resized by its own F.interpolate(antialias=True) call (for uint8,
    PyTorch's fixed-point kernel: the fastest resize there is on the CPU, rounding to uint8
    as torchvision does); float in [0, 1] out, or uint8 as it is with `to_float=False`."""
    out = x.new_empty(x.shape[0], x.shape[1], size, size)
    for i, (top, left, h, w, flip) in enumerate(zip(*(t.tolist() for t in boxes), strict=True)):
        clip = slice(i * frames, (i + 1) * frames)
        y = F.interpolate(x[clip, :, top : top + h, left : left + w], size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True)
        out[clip] = y.flip(-1) if flip else y
    if x.dtype != torch.uint8:
        return out.clamp_(0, 1)
    # One conversion of the whole batch: 2x faster than converting each small view.
    return out.float().mul_(1 / 255) if to_float else out


def crop_resize_batched(x: torch.Tensor, boxes: Boxes, size: int, frames: int = 1) -> torch.Tensor:
    """The same crops and resizes for the whole batch as two batched matrix products, in float
    (the flip is reversed column weights, and the uint8 scale is folded into the row weights)."""
    _, _, height, width = x.shape
    rows = resize_weights(boxes.top, boxes.height, height, size)
    cols = resize_weights(boxes.left, boxes.width, width, size, boxes.flip)
    if x.dtype == torch.uint8:
        rows = rows.mul_(1 / 255)
    if frames > 1:
        rows, cols = rows.repeat_interleave(frames, 0), cols.repeat_interleave(frames, 0)
    # Weights ≥ 0 summing to 1 keep the range, within float rounding: the clamp guards that.
    return resample(x.float(), rows, cols).clamp_(0, 1)


# Per-sample resizing costs a call (~40 us) per sample; the batched matrix products cost
# ~2·C·H·W·size flops per sample, dense. On the CPU the loop wins above about 64³ (at 96 px,
# 256 views: 18 ms against 45; at 32 px, 512 views: 23 ms against 8); on a GPU the batched
# form always does.
PER_SAMPLE_ABOVE = 64**3


def random_resized_crop_flip(
    x: torch.Tensor, size: int, scale: tuple[float, float], ratio: tuple[float, float],
    flip_prob: float, gen: torch.Generator | None, attempts: int = 10, frames: int = 1, to_float: bool = True,
) -> torch.Tensor:
    """Crop a random box (`draw_boxes`), flip it horizontally with `flip_prob`, resize it to
    size×size as torchvision does (bilinear, antialiased when shrinking): (B, C, H, W) uint8
    or float in [0, 1] -> (B, C, size, size) float in [0, 1]. With `frames` > 1, each run of
    that many consecutive rows (the frames of one clip) shares a box and a flip. With
    `to_float=False` the per-sample path leaves uint8 as uint8, for a caller whose next pass
    converts."""
    _, _, height, width = x.shape
    boxes = draw_boxes(x.shape[0] // frames, height, width, scale, ratio, flip_prob, gen, x.device, attempts)
    if x.device.type == "cpu" and height * width * size > PER_SAMPLE_ABOVE:
        return crop_resize_each(x, boxes, size, frames, to_float)
    return crop_resize_batched(x, boxes, size, frames)


def _hue_sixths(
    r: torch.Tensor, g: torch.Tensor, b: torch.Tensor, shift: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HSV value v = max, d = max − min and the hue rotated by `shift` turns per sample, in
    sixths of a turn plus 12 (≥ -1: positive for shifts above -11/6 turns), of channel planes
    (B, H, W)."""
    v = torch.maximum(torch.maximum(r, g), b)  # elementwise: faster than a reduction over dim 1
    d = v - torch.minimum(torch.minimum(r, g), b)
    safe = torch.where(d > 0, d, 1.0)  # grey pixels: d = 0, the hue is irrelevant
    h6 = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    return v, d, h6 + (6 * shift.view(-1, 1, 1) + 12)


_HUE_OFFSETS = (5.0, 3.0, 1.0)  # R, G, B: channel n is v - d·trapezoid((n + h6) mod 6)


def _hue_channels(
    r: torch.Tensor, g: torch.Tensor, b: torch.Tensor, shift: torch.Tensor
) -> list[torch.Tensor]:
    """Rotate the hue by `shift` turns per sample, keeping HSV saturation and value: the same
    function as torchvision's RGB→HSV→RGB round trip, in closed form, on the channel planes
    (B, H, W). With v = max, d = max − min and the hue h6 in sixths of a turn, channel n
    (R: 5, G: 3, B: 1) is v − d·clamp(2 − |k − 2|, 0, 1) with k = (n + h6) mod 6. Written as
    plain pointwise ops (no `out=`) so that torch.compile fuses it into one loop; the mod is
    k − 6·floor(k/6) on a positive k (2.5x faster compiled than torch.remainder, the same
    function: the trapezoid is 0 on both sides of the wrap)."""
    v, d, h6 = _hue_sixths(r, g, b, shift)
    channels = []
    for n in _HUE_OFFSETS:
        k = h6 + n
        k = k - 6 * torch.floor(k * (1 / 6))
        channels.append(v - d * torch.clamp(2 - torch.abs(k - 2), 0, 1))
    return channels


def _to_float(x: torch.Tensor) -> torch.Tensor:
    """A uint8 batch (the crop's) as float in [0, 1]; a float one as it is."""
    return x.float().mul_(1 / 255) if x.dtype == torch.uint8 else x


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The hue rotation (`_hue_channels`) of a (B, 3, H, W) batch, clipped to [0, 1]; a single
    channel has no hue, and comes back as it is (as float)."""
    x = _to_float(x)
    if x.shape[1] == 1:
        return x
    # Eager: `_hue_channels`' arithmetic on the three channels at once, in place (the same
    # values; 15-35 % faster than the planes one op at a time and a stack).
    v, d, h6 = _hue_sixths(x[:, 0], x[:, 1], x[:, 2], shift)
    k = h6.unsqueeze(1) + torch.tensor(_HUE_OFFSETS, dtype=h6.dtype, device=h6.device).view(1, 3, 1, 1)
    k.sub_(k.mul(1 / 6).floor_().mul_(6))
    trapezoid = k.sub_(2).abs_().neg_().add_(2).clamp_(0, 1)
    return trapezoid.mul_(d.unsqueeze(1)).neg_().add_(v.unsqueeze(1)).clamp_(0, 1)


def _affine(x: torch.Tensor, a: torch.Tensor, k_gray: torch.Tensor, k_mean: torch.Tensor) -> torch.Tensor:
    """x ← clamp(a·x + k_gray·gray(x) + k_mean·mean(gray(x)), 0, 1) with per-sample (B,)
    coefficients: brightness (a), contrast (k_mean = 1 − a) and saturation (k_gray = 1 − a)."""
    x = _to_float(x)
    gray = grayscale(x)
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    # The single-channel terms first, then one full-size pass: 1.5x faster on the CPU than
    # addcmul with a broadcast (B, 1, 1, 1) input, which takes a slow path.
    y = (k_gray.view(-1, 1, 1, 1) * gray).add_(k_mean.view(-1, 1, 1, 1) * mean)  # (B, 1, H, W)
    return torch.addcmul(y, x, a.view(-1, 1, 1, 1)).clamp_(0, 1)


def _grey_rows_(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """In place: the rows `idx` of an RGB batch become their luma in every channel."""
    if idx.numel():
        x[idx] = grayscale(x.index_select(0, idx)).expand(-1, x.shape[1], -1, -1)
    return x


def _stage(
    x: torch.Tensor, a: torch.Tensor, k_gray: torch.Tensor, k_mean: torch.Tensor,
    hue_rows: torch.Tensor, hued: torch.Tensor, grey: torch.Tensor,
) -> torch.Tensor:
    """One jitter stage: the affine op of `_affine` on every row; then the rows `hue_rows`,
    whose hue it is, take their rotated selves `hued`; then the rows marked in `grey` ((B,)
    bool) become their luma."""
    y = _affine(x, a, k_gray, k_mean)  # the hue's rows get (1, 0, 0): left as they were
    if hue_rows.numel():
        y[hue_rows] = hued
    return _grey_rows_(y, torch.nonzero(grey).squeeze(1))


def _luma(planes: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The luma of channel planes (B, H, W) as pointwise ops torch.compile fuses into its loop
    (`grayscale` writes in place, for eager); a single plane is its own."""
    return planes[0] if len(planes) == 1 else planes[0] * LUMA[0] + planes[1] * LUMA[1] + planes[2] * LUMA[2]


def _affine_planes(
    planes: list[torch.Tensor], a: torch.Tensor, k_gray: torch.Tensor, k_mean: torch.Tensor, mean: torch.Tensor
) -> list[torch.Tensor]:
    """`_affine` on channel planes (B, H, W) given the grey mean (B, 1, 1), as pointwise ops for
    torch.compile. Each channel is written as one weighted sum of the three, (a + k_gray·luma_c)·x_c
    + Σ k_gray·luma_k·x_k + k_mean·mean: the same function in fewer dependent steps (the fused
    chain below waits on each step's latency, not on memory)."""
    t = k_mean.view(-1, 1, 1) * mean
    if len(planes) == 1:
        return [((a + k_gray).view(-1, 1, 1) * planes[0] + t).clamp(0, 1)]
    w = [(k_gray * luma).view(-1, 1, 1) for luma in LUMA]
    out = []
    for c in range(3):
        terms = [w[k] * planes[k] for k in range(3)]
        terms[c] = (w[c] + a.view(-1, 1, 1)) * planes[c]
        out.append(((terms[0] + terms[1]) + (terms[2] + t)).clamp(0, 1))
    return out


def _chain(
    x: torch.Tensor, pre: torch.Tensor, hue_on: torch.Tensor | None, shift: torch.Tensor | None,
    post: torch.Tensor, mean: torch.Tensor,
) -> list[torch.Tensor]:
    """A sample's whole jitter as one chain of pointwise ops: the affine ops before its hue (`pre`,
    (B, 3, n) rows of (a, k_gray, k_mean) per slot), the hue where `hue_on` (None: no hue step),
    the affine ops after it (`post`); slots a sample does not use hold (1, 0, 0). `mean`
    (B, 1, 1) is the grey mean the contrast uses. Returns the channel planes."""
    planes = list(_to_float(x).unbind(1))
    for i in range(pre.shape[2]):
        planes = _affine_planes(planes, pre[:, 0, i], pre[:, 1, i], pre[:, 2, i], mean)
    if hue_on is not None and shift is not None and len(planes) == 3:
        rotated = _hue_channels(planes[0], planes[1], planes[2], shift)
        on = hue_on.view(-1, 1, 1)
        planes = [torch.where(on, h.clamp(0, 1), c) for h, c in zip(rotated, planes, strict=True)]
    for i in range(post.shape[2]):
        planes = _affine_planes(planes, post[:, 0, i], post[:, 1, i], post[:, 2, i], mean)
    return planes


def _chain_mean(
    x: torch.Tensor, pre: torch.Tensor, hue_on: torch.Tensor | None = None, shift: torch.Tensor | None = None,
    post: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, 1, 1): the grey mean of each sample's state where its contrast is due (the slots from
    the contrast on hold (1, 0, 0) and the hue is off if it comes later)."""
    post = pre[:, :, :0] if post is None else post
    planes = _chain(x, pre, hue_on, shift, post, x.new_zeros(x.shape[0], 1, 1, dtype=torch.float32))
    return _luma(planes).mean(dim=(1, 2), keepdim=True)


def _chain_mean_rows(
    x: torch.Tensor, rows: torch.Tensor, pre: torch.Tensor, hue_on: torch.Tensor | None = None,
    shift: torch.Tensor | None = None, post: torch.Tensor | None = None,
) -> torch.Tensor:
    """`_chain_mean` of the rows `rows` of x, the other arguments already those rows'. Compiled,
    the row gather is an indexed load in the kernel rather than a copy of the rows first."""
    return _chain_mean(x.index_select(0, rows), pre, hue_on, shift, post)


def _chain_out(
    x: torch.Tensor, pre: torch.Tensor, hue_on: torch.Tensor | None, shift: torch.Tensor | None,
    post: torch.Tensor, mean: torch.Tensor, grey: torch.Tensor,
) -> torch.Tensor:
    """The jittered batch (B, C, H, W): the chain, then the luma where `grey` ((B,) bool)."""
    planes = _chain(x, pre, hue_on, shift, post, mean)
    if len(planes) == 3:
        luma = _luma(planes)
        planes = [torch.where(grey.view(-1, 1, 1), luma, c) for c in planes]
    return torch.stack(planes, 1)


def _chain_out_rows(
    out: torch.Tensor, rows: torch.Tensor, x: torch.Tensor, pre: torch.Tensor, hue_on: torch.Tensor | None,
    shift: torch.Tensor | None, post: torch.Tensor, mean: torch.Tensor, grey: torch.Tensor,
) -> torch.Tensor:
    """`_chain_out` of the rows `rows` of x written to those rows of `out` (returned), the other
    arguments already those rows'. Compiled, the gather and the scatter are indexed loads and
    stores in the kernel (the whole augmentation 0.97-0.98x the time at 96 px, 1 thread, against
    copying the rows out and back; at 32 px no slower)."""
    return out.index_copy_(0, rows, _chain_out(x.index_select(0, rows), pre, hue_on, shift, post, mean, grey))


class Kernels(NamedTuple):
    """The augmentation's per-pixel work fused by torch.compile (`augment_kernels(True)`): the
    colour jitter as a chain per sample (`_chain_mean_rows` for the contrast's grey means, then
    `_chain_out`, or `_chain_out_rows` by groups of rows), and the blur as a sum of shifted
    copies. EAGER has none: the eager jitter makes one pass over the batch per stage, and the
    blur two matrix products."""

    chain_mean: Callable[..., torch.Tensor] | None = None
    chain_out: Callable[..., torch.Tensor] | None = None
    chain_out_rows: Callable[..., torch.Tensor] | None = None
    blur: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


EAGER = Kernels()
_fused: Kernels | None = None


class Fused:
    """`fn` through torch.compile, or `fn` itself from the first failure on (no C++ compiler,
    say), with a warning. torch.compile's automatic dynamic shapes: the first call compiles for
    its sizes, and a size that changes later (the batch's last step, the blur's row count) is
    made symbolic at one recompile while the image sides stay fixed (5 % faster loops at 96 px
    than all sizes symbolic)."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn
        self.fused: Callable[..., torch.Tensor] | None = torch.compile(fn)

    def __call__(self, *args: torch.Tensor | None) -> torch.Tensor:
        if self.fused is not None:
            try:
                return self.fused(*args)
            except Exception as e:  # any backend failure: the eager function computes the same
                self.fused = None
                log.warning("augmentation: torch.compile failed (%s); using eager kernels", str(e).splitlines()[0])
        return self.fn(*args)


def augment_kernels(compiled: bool) -> Kernels:
    """The kernels: fused ones are compiled once per process, on first use."""
    global _fused
    if not compiled:
        return EAGER
    if _fused is None:
        _fused = Kernels(Fused(_chain_mean_rows), Fused(_chain_out), Fused(_chain_out_rows), Fused(_blur_shifted))
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


def _stage_coefficients(p: JitterParams, n_ops: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 3, 4): each stage's (a, k_gray, k_mean) of `_affine` per sample, in the float type the
    images of `dtype` are jittered in; (1, 0, 0) where the stage does nothing or is the hue
    (op 3), or the sample is not jittered."""
    f = p.factors.to(torch.float32 if dtype == torch.uint8 else dtype)
    op = torch.where(p.apply.view(-1, 1) & (p.order < n_ops), p.order, -1)  # -1: nothing
    a = torch.where((op >= 0) & (op <= 2), f.gather(1, op.clamp(0, 2)), 1.0)
    k_gray = torch.where(op == 2, (1 - f[:, 2]).view(-1, 1), 0.0)
    k_mean = torch.where(op == 1, (1 - f[:, 1]).view(-1, 1), 0.0)
    return torch.stack([a, k_gray, k_mean], 1)


def _jitter_staged(x: torch.Tensor, p: JitterParams, grey: torch.Tensor) -> torch.Tensor:
    """Eager: each of the four stages one pass over the whole batch (`_stage`); the hue on copies
    of the rows whose turn it is, which the stage puts in."""
    n_ops = 4 if x.shape[1] == 3 else 2  # saturation and hue do nothing to a single channel
    coef = _stage_coefficients(p, n_ops, x.dtype)
    shift = p.factors[:, 3].to(coef.dtype)
    no_grey = torch.zeros_like(p.apply)
    for stage in range(4):
        rows = torch.nonzero(p.apply & (p.order[:, stage] == 3) & (n_ops == 4)).squeeze(1)
        hued = _hue(x.index_select(0, rows), shift.index_select(0, rows)) if rows.numel() else x[:0]
        a, k_gray, k_mean = coef[:, :, stage].unbind(1)
        x = _stage(x, a, k_gray, k_mean, rows, hued, grey if stage == 3 else no_grey)
    return x


def _identity(coef: torch.Tensor) -> torch.Tensor:
    """(1, 3, 1): the (a, k_gray, k_mean) of a slot that leaves the sample as it is."""
    return torch.tensor((1.0, 0.0, 0.0), dtype=coef.dtype, device=coef.device).view(1, 3, 1)


def _slots(coef: torch.Tensor, take: torch.Tensor, n: int) -> torch.Tensor:
    """(B, 3, n): the coefficients (B, 3, 4) of the stages `take` ((B, 4) bool) marks, in stage
    order, then identity slots."""
    stages = torch.arange(4, device=take.device)
    first = torch.argsort((~take).long() * 4 + stages, dim=1)[:, :n]  # the marked stages first, in order
    kept = take.gather(1, first).unsqueeze(1)
    return torch.where(kept, coef.gather(2, first.unsqueeze(1).expand(-1, 3, -1)), _identity(coef))


def _first_slots(slots: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """(B, 3, n): the first `count` ((B,) each) of each sample's slots, identity after them."""
    used = torch.arange(slots.shape[2], device=slots.device).view(1, 1, -1) < count.view(-1, 1, 1)
    return torch.where(used, slots, _identity(slots))


# Pixels per image above which the compiled jitter runs its rows in groups of equal split
# (`_jitter_chained`): at 96 px 0.90x the time of the whole augmentation, at 224 px 0.90x, at 64
# px 0.99x; at 32 px, where the extra calls and row copies weigh more, 1.03-1.11x.
GROUPED_ABOVE = 64 * 64


def _rows(rows: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """These rows of each (small, per-sample) tensor."""
    return [t.index_select(0, rows) for t in tensors]


def _jitter_chained(x: torch.Tensor, p: JitterParams, kernels: Kernels, grey: torch.Tensor) -> torch.Tensor:
    """Compiled: every sample's ops as one chain (`_chain`): the affine ops before its hue, the
    hue, the affine ops after it. Its contrast needs the grey mean of the state before it, so
    first the means: for the samples whose contrast precedes the hue, from a short chain of the
    ops before it (no hue), for the rest (about half) from their chain up to it. The kernel is
    compute-bound: each loop step waits on its chain's latency, and fewer steps in the chain
    (the short chain for most means, the affine op as one weighted sum, only the slots a group
    of rows uses) is what makes it fast."""
    assert kernels.chain_mean is not None and kernels.chain_out is not None and kernels.chain_out_rows is not None
    rgb = x.shape[1] == 3
    n_affine = 3 if rgb else 2  # brightness, contrast, saturation (none but the first two on grey)
    coef = _stage_coefficients(p, n_affine, x.dtype)
    stage = torch.arange(4, device=x.device).view(1, 4)
    hue_stage = (p.order == 3).int().argmax(1, keepdim=True) if rgb else torch.full_like(p.order[:, :1], 4)
    affine = p.apply.view(-1, 1) & (p.order < n_affine)
    before, after = affine & (stage < hue_stage), affine & (stage > hue_stage)
    pre, post = _slots(coef, before, n_affine), _slots(coef, after, 3 if rgb else 0)
    hue_on = p.apply & rgb
    shift = p.factors[:, 3].to(coef.dtype)
    # Up to the contrast: the slots before it hold their ops, the rest identity; the contrast is
    # one of the affine ops, so at most n_affine - 1 of them precede it.
    contrast_stage = (p.order == 1).int().argmax(1, keepdim=True)
    pre_c = _first_slots(pre, (before & (stage < contrast_stage)).sum(1))[:, :, : n_affine - 1]
    post_c = _first_slots(post, (after & (stage < contrast_stage)).sum(1))[:, :, : n_affine - 1]
    # Each mean on the rows that need it (the others' contrast coefficient is 0).
    mean = torch.zeros(x.shape[0], 1, 1, dtype=coef.dtype, device=x.device)
    after_hue = contrast_stage.squeeze(1) > hue_stage.squeeze(1)
    early = torch.nonzero(p.apply & ~after_hue).squeeze(1)
    if early.numel():  # contrast before the hue: the ops before it, no hue
        mean[early] = kernels.chain_mean(x, early, *_rows(early, pre_c))
    late = p.apply & after_hue
    if not rgb or x.shape[2] * x.shape[3] <= GROUPED_ABOVE:
        rows = torch.nonzero(late).squeeze(1)
        if rows.numel():  # contrast after the hue: the chain through the hue
            mean[rows] = kernels.chain_mean(x, rows, *_rows(rows, pre_c, hue_on, shift, post_c))
        return kernels.chain_out(x, pre, hue_on, shift, post, mean, grey)
    # Grouped: a jittered sample's three affine ops are split around its hue, k before it and
    # 3 - k after, and the rows of equal k run chains of only the slots they use (three affine
    # slots rather than six: ~0.7x the time), for a few more calls (each gathers and scatters its rows).
    split = before.sum(1)
    for k in range(3):  # contrast after the hue: k slots, the hue, the 2 - k slots up to it
        rows = torch.nonzero(late & (split == k)).squeeze(1)
        if rows.numel():
            firsts = _rows(rows, pre_c[:, :, :k], hue_on, shift, post_c[:, :, : 2 - k])
            mean[rows] = kernels.chain_mean(x, rows, *firsts)
    out = torch.empty(x.shape, dtype=coef.dtype, device=x.device)
    for k in range(4):
        rows = torch.nonzero(p.apply & (split == k)).squeeze(1)
        if rows.numel():
            kernels.chain_out_rows(out, rows, x, *_rows(rows, pre[:, :, :k], hue_on, shift, post[:, :, : 3 - k],
                                                        mean, grey))
    rows = torch.nonzero(~p.apply).squeeze(1)
    if rows.numel():  # not jittered: converted, and the luma where grey (no slots, no hue, no mean)
        none = pre[:1, :, :0]
        kernels.chain_out_rows(out, rows, x, none, None, None, none, mean[:1], *_rows(rows, grey))
    return out


def apply_jitter(
    x: torch.Tensor, p: JitterParams, kernels: Kernels = EAGER, grey: torch.Tensor | None = None
) -> torch.Tensor:
    """Each sample's ops in its own order, each followed by clipping to [0, 1] (as the official
    code does). Brightness, contrast and saturation are all x ← a·x + b·gray(x) + c·mean(gray(x))
    with per-sample (a, b, c); a sample doing nothing at a step gets (1, 0, 0), which leaves it
    exactly as it is. Eager, each of the four stages is one pass over the batch
    (`_jitter_staged`); with the compiled kernels, one chain per sample (`_jitter_chained`). The
    rows marked in `grey` ((B,) bool) end as their luma, in the last pass. x itself is left as
    it is; uint8 x (the crop's) comes back as float in [0, 1]."""
    grey = torch.zeros_like(p.apply) if grey is None else grey
    if kernels.chain_out is None:
        return _jitter_staged(x, p, grey)
    return _jitter_chained(x, p, kernels, grey)


def color_jitter(
    x: torch.Tensor, strength: float, prob: float, gen: torch.Generator | None, frames: int = 1,
    kernels: Kernels = EAGER, grey_prob: float = 0.0,
) -> torch.Tensor:
    """With probability `prob` per sample: brightness, contrast and saturation factors
    U(1 - 0.8s, 1 + 0.8s) and a hue shift U(-0.2s, 0.2s), in a random order per sample, each
    followed by clipping to [0, 1]; then, with probability `grey_prob` per sample, the luma in
    every channel (`random_grayscale_`, the same draws, done in the jitter's last pass). Runs of
    `frames` rows share one draw."""
    p = draw_jitter(x.shape[0] // frames, strength, prob, gen, x.device)
    if frames > 1:
        p = JitterParams(*(t.repeat_interleave(frames, 0) for t in (p.factors, p.apply, p.order)))
    grey = _chosen(grey_prob, x.shape[0], frames, gen, x.device) if grey_prob > 0 and x.shape[1] == 3 else None
    return apply_jitter(x, p, kernels, grey)


def random_grayscale_(x: torch.Tensor, prob: float, gen: torch.Generator | None, frames: int = 1) -> torch.Tensor:
    """In place: with probability `prob` per sample, every channel becomes the luma."""
    if x.shape[1] == 1:
        return x
    return _grey_rows_(x, _chosen_rows(prob, x.shape[0], frames, gen, x.device))


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


def _blur_shifted(padded: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The separable blur as sums of shifted copies: `padded` (m, C, H + 2r, W + 2r) with the
    border already reflected, `kernel` (m, 2r + 1) -> (m, C, H, W) in [0, 1]. For torch.compile:
    fused, each axis is one vectorized loop of 2r + 1 taps per pixel, 2x (96 px) to 3x (224 px)
    faster than the matrix products, which spend the image side per pixel; eager, each tap would
    be a pass over memory."""
    m, _, hp, wp = padded.shape
    span = kernel.shape[1]
    h, w = hp - span + 1, wp - span + 1
    k = kernel.view(m, 1, 1, 1, span)
    rows = k[..., 0] * padded[..., 0:w]
    for t in range(1, span):
        rows = rows + k[..., t] * padded[..., t : t + w]
    out = k[..., 0] * rows[:, :, 0:h]
    for t in range(1, span):
        out = out + k[..., t] * rows[:, :, t : t + h]
    return out.clamp(0, 1)  # the float32 kernel sums to 1 only within rounding


def gaussian_blur_(
    x: torch.Tensor, prob: float, sigma: tuple[float, float], gen: torch.Generator | None, frames: int = 1,
    kernels: Kernels = EAGER,
) -> torch.Tensor:
    """In place: with probability `prob` per sample, a Gaussian blur with sigma ~ U(sigma)
    pixels and a kernel of about 10% of the image side (odd), as in the official code, the
    border reflected. Eager, as a matrix per axis: two batched matrix products (on the CPU
    faster than a grouped convolution with one filter per sample and channel); compiled, as
    sums of shifted copies (`_blur_shifted`)."""
    b, _, height, width = x.shape
    idx = _chosen_rows(prob, b, frames, gen, x.device)
    s = _uniform(sigma[0], sigma[1], (b // frames,), gen, x.device).repeat_interleave(frames)
    if idx.numel() == 0:
        return x
    radius = max(1, height // 20)
    s = s[idx].to(x.dtype)
    chosen = x.index_select(0, idx)  # copies whole rows: on the CPU ~2x faster than x[idx]
    if kernels.blur is not None and radius < min(height, width):  # reflect needs a border that fits
        x[idx] = kernels.blur(F.pad(chosen, (radius,) * 4, mode="reflect"), gaussian_taps(s, radius))
        return x
    rows = blur_weights(s, height, radius)
    cols = rows if width == height else blur_weights(s, width, radius)  # square images: one matrix
    blurred = resample(chosen, rows, cols)
    x[idx] = blurred.clamp_(0, 1)  # the float32 kernel sums to 1 only within rounding
    return x


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
    compiled: bool = False  # the colour jitter's and the blur's per-pixel work fused by torch.compile

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None, frames: int = 1) -> torch.Tensor:
        """(B, C, H, W) uint8 or float in [0, 1] -> (B, C, size, size) float32 in [0, 1]. With
        `frames` > 1 the rows are clips of that many frames in a row, and every frame of a clip
        gets the same crop, flip, colour changes and blur (one draw per clip)."""
        if x.shape[0] % frames:
            raise ValueError(f"{x.shape[0]} rows are not whole clips of {frames} frames")
        jitter = self.color_jitter_prob > 0 and self.color_jitter_strength > 0
        x = random_resized_crop_flip(
            x, self.size, (self.min_scale, self.max_scale), (self.min_ratio, self.max_ratio),
            self.flip_prob, gen, frames=frames,
            to_float=not jitter,  # apply_jitter converts uint8 (compiled, as it reads)
        )
        if jitter:  # the grayscale too, in the jitter's last pass
            x = color_jitter(x, self.color_jitter_strength, self.color_jitter_prob, gen, frames,
                             augment_kernels(self.compiled), self.grayscale_prob)
        elif self.grayscale_prob > 0:
            x = random_grayscale_(x, self.grayscale_prob, gen, frames)
        if self.blur_prob > 0:
            x = gaussian_blur_(x, self.blur_prob, (self.blur_sigma_min, self.blur_sigma_max), gen, frames,
                               augment_kernels(self.compiled))
        return x


def two_views(
    augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor], x: torch.Tensor,
    gen: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent views of every sample: x1 = t(x), x2 = t'(x). Any modality's view
    augmentation (image, series, text) fits."""
    return augment(x, gen), augment(x, gen)
