"""`ImageAugment(compiled=True)`: the reference augmentation's views (`simclr.augment`), computed
faster.

The draws are the reference's own functions, called in its order, so a generator gives the same
parameters and the same views, within float rounding. What differs is how the pixels are computed:

- the crop: of the reference's resize weights, only the few taps each output pixel has
  (`augment.resize_taps`), which the fused loop reads by index, where the dense matrix products
  spend the whole image side on every output pixel;
- the colour jitter (and the grayscale with it): each sample's four ops as one chain of pointwise
  ops that torch.compile fuses into a single loop over its pixels, instead of four passes over the
  batch;
- the blur: sums of shifted copies, which torch.compile fuses into one loop of 2r + 1 taps per
  pixel and axis, instead of matrix products that spend the whole image side per pixel.

A backend that cannot compile (no C++ compiler, say) falls back to the same functions run eagerly.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from simclr.augment import (
    CONTRAST,
    HUE,
    LUMA,
    Boxes,
    JitterParams,
    _to_float,
    blur_radius,
    draw_blur,
    draw_boxes,
    draw_jitter,
    draw_rows,
    gaussian_taps,
    grey_rows_,
    jitter_coefficients,
    resize_taps,
)

if TYPE_CHECKING:
    from simclr.augment import ImageAugment

log = logging.getLogger("simclr")


# The crop.

def _taps_along(x: torch.Tensor, dim: int, first: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """out[b, c, i] = Σ_t weights[b, i, t]·x[b, c, first[b, i] + t] along `dim` of (B, C, H, W)
    (2: rows, 3: columns)."""
    shape = list(x.shape)
    shape[dim] = first.shape[1]
    view = [x.shape[0], 1, 1, 1]
    view[dim] = first.shape[1]
    out = x.gather(dim, first.view(view).expand(shape)) * weights[:, :, 0].view(view)
    for t in range(1, weights.shape[2]):
        out = out + x.gather(dim, (first + t).view(view).expand(shape)) * weights[:, :, t].view(view)
    return out


def _resample_band(
    x: torch.Tensor, first_rows: torch.Tensor, rows: torch.Tensor, first_cols: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """`augment.resample` of the band of nonzero weights (`augment.resize_taps`), clipped to
    [0, 1]: fused, each output pixel reads its few taps by index (uint8 converted as it is read),
    where the dense products spend the whole image side on it; eager, each tap would be a gather
    pass."""
    return _taps_along(_taps_along(x.float(), 2, first_rows, rows), 3, first_cols, cols).clamp(0, 1)


def crop_resize_banded(
    x: torch.Tensor, boxes: Boxes, size: int, frames: int = 1, resample: Callable[..., torch.Tensor] | None = None
) -> torch.Tensor:
    """`augment.crop_resize` (the same weights, float in [0, 1] out) through the compiled
    `_resample_band`, or `resample` if given."""
    _, _, height, width = x.shape
    first_rows, rows = resize_taps(boxes.top, boxes.height, height, size)
    first_cols, cols = resize_taps(boxes.left, boxes.width, width, size, boxes.flip)
    if x.dtype == torch.uint8:
        rows = rows.mul_(1 / 255)  # the conversion to [0, 1], folded into the weights
    band = [first_rows, rows, first_cols, cols]
    if frames > 1:
        band = [t.repeat_interleave(frames, 0) for t in band]
    return (resample or kernels().crop)(x, *band)


# The colour jitter as one chain of pointwise ops per sample.

def _luma(planes: list[torch.Tensor]) -> torch.Tensor:
    """The luma of channel planes (B, H, W); a single plane is its own."""
    return planes[0] if len(planes) == 1 else planes[0] * LUMA[0] + planes[1] * LUMA[1] + planes[2] * LUMA[2]


def _hue_planes(r: torch.Tensor, g: torch.Tensor, b: torch.Tensor, shift: torch.Tensor) -> list[torch.Tensor]:
    """`augment.adjust_hue` on channel planes (B, H, W), unclipped, as plain pointwise ops for the
    fused loop. The mod is k - 6·floor(k/6), which compiles to simpler code than torch.remainder;
    where the two round differently, at the wrap, the trapezoid is 0 on both sides."""
    v = torch.maximum(torch.maximum(r, g), b)
    d = v - torch.minimum(torch.minimum(r, g), b)
    safe = torch.where(d > 0, d, 1.0)
    h6 = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h6 = h6 + 6 * shift.view(-1, 1, 1)
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = h6 + n
        k = k - 6 * torch.floor(k * (1 / 6))
        channels.append(v - d * torch.clamp(2 - torch.abs(k - 2), 0, 1))
    return channels


def _blend_planes(
    planes: list[torch.Tensor], a: torch.Tensor, k_gray: torch.Tensor, k_mean: torch.Tensor, mean: torch.Tensor
) -> list[torch.Tensor]:
    """`augment.blend` on channel planes (B, H, W), given the grey mean (B, 1, 1). Each channel is
    one weighted sum of the three, (a + k_gray·luma_c)·x_c + Σ k_gray·luma_k·x_k + k_mean·mean:
    the same function in fewer dependent steps, and the fused loop waits on each step's latency,
    not on memory."""
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
    """A sample's whole jitter as one chain of pointwise ops: the blends before its hue (`pre`,
    (B, 3, n): (a, k_gray, k_mean) per slot), the hue where `hue_on` (None: no hue step), the
    blends after it (`post`); slots a sample does not use hold (1, 0, 0). `mean` (B, 1, 1) is the
    grey mean the contrast uses. Returns the channel planes."""
    planes = list(_to_float(x).unbind(1))
    for i in range(pre.shape[2]):
        planes = _blend_planes(planes, pre[:, 0, i], pre[:, 1, i], pre[:, 2, i], mean)
    if hue_on is not None and shift is not None and len(planes) == 3:
        rotated = _hue_planes(planes[0], planes[1], planes[2], shift)
        on = hue_on.view(-1, 1, 1)
        planes = [torch.where(on, h.clamp(0, 1), c) for h, c in zip(rotated, planes, strict=True)]
    for i in range(post.shape[2]):
        planes = _blend_planes(planes, post[:, 0, i], post[:, 1, i], post[:, 2, i], mean)
    return planes


def _chain_mean_rows(
    x: torch.Tensor, rows: torch.Tensor, pre: torch.Tensor, hue_on: torch.Tensor | None = None,
    shift: torch.Tensor | None = None, post: torch.Tensor | None = None,
) -> torch.Tensor:
    """(R, 1, 1): the grey mean of the rows `rows` of x where their contrast is due: the chain cut
    short there (the other arguments already those rows'). Compiled, the row gather is an indexed
    load in the kernel rather than a copy of the rows first."""
    post = pre[:, :, :0] if post is None else post
    zero = x.new_zeros(rows.shape[0], 1, 1, dtype=torch.float32)
    planes = _chain(x.index_select(0, rows), pre, hue_on, shift, post, zero)
    return _luma(planes).mean(dim=(1, 2), keepdim=True)


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
    stores in the kernel."""
    return out.index_copy_(0, rows, _chain_out(x.index_select(0, rows), pre, hue_on, shift, post, mean, grey))


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


def _rows(rows: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """These rows of each (small, per-sample) tensor."""
    return [t.index_select(0, rows) for t in tensors]


# Pixels per image above which the jitter runs its rows in groups of equal split around the hue,
# each group's chain with only the three blend slots it uses instead of six. Grouping adds calls
# and row gathers (a cost per group) to shorten the chain (a cost per pixel), so it pays for large
# images only. The boundary is put at 64 px, where the recipes change from the small-image (CIFAR)
# to the large-image (ImageNet) one.
GROUPED_ABOVE = 64 * 64


def apply_jitter(x: torch.Tensor, p: JitterParams, grey: torch.Tensor | None = None) -> torch.Tensor:
    """`augment.apply_jitter`, then the luma of the rows `grey` marks ((B,) bool): every sample's
    ops as one chain (`_chain`), the blends before its hue, the hue, the blends after it. The
    contrast needs the grey mean of the state before it, so the means come first: for the samples
    whose contrast precedes the hue, from a short chain of the ops before it (no hue); for the
    rest, from their chain up to it. The loop is compute-bound, each step waiting on the one
    before, so fewer steps (the short chain for most means, each blend one weighted sum, only the
    slots a group of rows uses) is what makes it fast. x is left as it is; uint8 comes back as
    float in [0, 1]."""
    k = kernels()
    grey = torch.zeros_like(p.apply) if grey is None else grey
    rgb = x.shape[1] == 3
    n_affine = 3 if rgb else 2  # brightness, contrast, saturation (none but the first two on grey)
    coef = jitter_coefficients(p, x.shape[1], x.dtype)
    stage = torch.arange(4, device=x.device).view(1, 4)
    hue_stage = (p.order == HUE).int().argmax(1, keepdim=True) if rgb else torch.full_like(p.order[:, :1], 4)
    affine = p.apply.view(-1, 1) & (p.order < n_affine)
    before, after = affine & (stage < hue_stage), affine & (stage > hue_stage)
    pre, post = _slots(coef, before, n_affine), _slots(coef, after, 3 if rgb else 0)
    hue_on = p.apply & rgb
    shift = p.factors[:, HUE].to(coef.dtype)
    # Up to the contrast: the slots before it hold their ops, the rest identity; the contrast is
    # one of the blends, so at most n_affine - 1 of them precede it.
    contrast_stage = (p.order == CONTRAST).int().argmax(1, keepdim=True)
    pre_c = _first_slots(pre, (before & (stage < contrast_stage)).sum(1))[:, :, : n_affine - 1]
    post_c = _first_slots(post, (after & (stage < contrast_stage)).sum(1))[:, :, : n_affine - 1]
    # Each mean on the rows that need it (the others' contrast coefficient is 0).
    mean = torch.zeros(x.shape[0], 1, 1, dtype=coef.dtype, device=x.device)
    after_hue = contrast_stage.squeeze(1) > hue_stage.squeeze(1)
    early = torch.nonzero(p.apply & ~after_hue).squeeze(1)
    if early.numel():  # contrast before the hue: the ops before it, no hue
        mean[early] = k.chain_mean(x, early, *_rows(early, pre_c))
    late = p.apply & after_hue
    if not rgb or x.shape[2] * x.shape[3] <= GROUPED_ABOVE:
        rows = torch.nonzero(late).squeeze(1)
        if rows.numel():  # contrast after the hue: the chain through the hue
            mean[rows] = k.chain_mean(x, rows, *_rows(rows, pre_c, hue_on, shift, post_c))
        return k.chain_out(x, pre, hue_on, shift, post, mean, grey)
    # Grouped: a jittered sample's three blends are split around its hue, s before it and 3 - s
    # after, and the rows of equal s run chains of only the slots they use.
    split = before.sum(1)
    for s in range(3):  # contrast after the hue: s slots, the hue, the 2 - s slots up to it
        rows = torch.nonzero(late & (split == s)).squeeze(1)
        if rows.numel():
            mean[rows] = k.chain_mean(x, rows, *_rows(rows, pre_c[:, :, :s], hue_on, shift, post_c[:, :, : 2 - s]))
    out = torch.empty(x.shape, dtype=coef.dtype, device=x.device)
    for s in range(4):
        rows = torch.nonzero(p.apply & (split == s)).squeeze(1)
        if rows.numel():
            k.chain_out_rows(out, rows, x, *_rows(rows, pre[:, :, :s], hue_on, shift, post[:, :, : 3 - s], mean, grey))
    rows = torch.nonzero(~p.apply).squeeze(1)
    if rows.numel():  # not jittered: converted, and the luma where grey (no slots, no hue, no mean)
        none = pre[:1, :, :0]
        k.chain_out_rows(out, rows, x, none, None, None, none, mean[:1], *_rows(rows, grey))
    return out


# The blur.

def _blur_shifted(padded: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The separable blur as sums of shifted copies: `padded` (m, C, H + 2r, W + 2r) with the
    border already reflected, `kernel` (m, 2r + 1) -> (m, C, H, W) in [0, 1]. Fused, each axis is
    one vectorized loop of 2r + 1 taps per pixel; eager, each tap would be a pass over memory."""
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


# The kernels, and the whole view.

class Fused:
    """`fn` through torch.compile, or `fn` itself from the first failure on (no C++ compiler,
    say), with a warning. torch.compile's automatic dynamic shapes: the first call compiles for
    its sizes, and a size that changes later (the batch's last step, the number of rows a kernel
    gets) is made symbolic at one recompile, while the image sides stay fixed."""

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


class Kernels(NamedTuple):
    """The compiled kernels: the crop (`_resample_band`), the jitter's grey means
    (`_chain_mean_rows`), its whole chain for the batch (`_chain_out`) or by groups of rows
    (`_chain_out_rows`), and the blur (`_blur_shifted`)."""

    crop: Callable[..., torch.Tensor]
    chain_mean: Callable[..., torch.Tensor]
    chain_out: Callable[..., torch.Tensor]
    chain_out_rows: Callable[..., torch.Tensor]
    blur: Callable[..., torch.Tensor]


@functools.cache
def kernels() -> Kernels:
    """The kernels, compiled once per process, on first use."""
    fns = (_resample_band, _chain_mean_rows, _chain_out, _chain_out_rows, _blur_shifted)
    return Kernels(*(Fused(fn) for fn in fns))


def augment_fused(a: ImageAugment, x: torch.Tensor, gen: torch.Generator | None, frames: int) -> torch.Tensor:
    """`a`'s view of x (`ImageAugment.__call__`): the reference's draws in its order (crop and
    flip, jitter, grayscale, blur), the pixels computed as above."""
    b, channels, height, width = x.shape
    boxes = draw_boxes(b // frames, height, width, (a.min_scale, a.max_scale), (a.min_ratio, a.max_ratio),
                       a.flip_prob, gen, x.device)
    x = crop_resize_banded(x, boxes, a.size, frames)
    p = draw_jitter(b, a.color_jitter_strength, a.color_jitter_prob, gen, x.device, frames) if a.jitters else None
    grey = draw_rows(a.grayscale_prob, b, frames, gen, x.device) if a.grayscale_prob > 0 and channels == 3 else None
    if p is not None:
        x = apply_jitter(x, p, grey)
    elif grey is not None:
        x = grey_rows_(x, grey)
    if a.blur_prob > 0:
        rows, sigma = draw_blur(b, a.blur_prob, (a.blur_sigma_min, a.blur_sigma_max), frames, gen, x.device)
        if rows.numel():
            radius = blur_radius(a.size)
            padded = F.pad(x.index_select(0, rows), (radius,) * 4, mode="reflect")
            x[rows] = kernels().blur(padded, gaussian_taps(sigma.to(x.dtype), radius))
    return x
