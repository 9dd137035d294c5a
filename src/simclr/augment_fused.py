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
    grey_rows,
    identity_slot,
    jitter_coefficients,
    resize_taps,
    slots,
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


def _chain_mean(
    x: torch.Tensor, pre: torch.Tensor, hue_on: torch.Tensor | None, shift: torch.Tensor | None, post: torch.Tensor,
) -> torch.Tensor:
    """(B, 1, 1): each sample's grey mean where its contrast is due: its chain cut short there."""
    zero = x.new_zeros(x.shape[0], 1, 1, dtype=torch.float32)
    return _luma(_chain(x, pre, hue_on, shift, post, zero)).mean(dim=(1, 2), keepdim=True)


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


def _first_slots(table: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """(B, 3, n): the first `count` ((B,) each) of each sample's slots, identity after them."""
    used = torch.arange(table.shape[2], device=table.device).view(1, 1, -1) < count.view(-1, 1, 1)
    return torch.where(used, table, identity_slot(table))


def apply_jitter(
    x: torch.Tensor, p: JitterParams, grey: torch.Tensor | None = None, k: Kernels | None = None
) -> torch.Tensor:
    """`augment.apply_jitter`, then the luma of the rows `grey` marks ((B,) bool): every sample's
    ops as one chain (`_chain`), the blends before its hue, the hue, the blends after it. The
    contrast needs the grey mean of the state before it, so the means come first, from each
    sample's chain cut short at its contrast (the slots before it, and the hue if it comes
    first). Every sample runs the same chain (unused slots are exact identities), so the shapes
    and kernels are the same whatever was drawn. x is left as it is; uint8 comes back as float
    in [0, 1]. `k`: the kernels (default: compiled)."""
    k = k or kernels()
    grey = torch.zeros_like(p.apply) if grey is None else grey
    rgb = x.shape[1] == 3
    n_affine = 3 if rgb else 2  # brightness, contrast, saturation (none but the first two on grey)
    coef = jitter_coefficients(p, x.shape[1], x.dtype)
    stage = torch.arange(4, device=x.device).view(1, 4)
    hue_stage = (p.order == HUE).int().argmax(1, keepdim=True) if rgb else torch.full_like(p.order[:, :1], 4)
    affine = p.apply.view(-1, 1) & (p.order < n_affine)
    before, after = affine & (stage < hue_stage), affine & (stage > hue_stage)
    pre, post = slots(coef, before, n_affine), slots(coef, after, 3 if rgb else 0)
    hue_on = p.apply & rgb
    shift = p.factors[:, HUE].to(coef.dtype)
    # Up to the contrast: the slots before it hold their ops, the rest identity; the contrast is
    # one of the blends, so at most n_affine - 1 of them precede it.
    contrast_stage = (p.order == CONTRAST).int().argmax(1, keepdim=True)
    pre_c = _first_slots(pre, (before & (stage < contrast_stage)).sum(1))[:, :, : n_affine - 1]
    post_c = _first_slots(post, (after & (stage < contrast_stage)).sum(1))[:, :, : n_affine - 1]
    hue_first = hue_on & (contrast_stage > hue_stage).squeeze(1)  # the hue is in the chain to the contrast
    mean = k.chain_mean(x, pre_c, hue_first, shift, post_c)
    return k.chain_out(x, pre, hue_on, shift, post, mean, grey)


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
    """The pixel work: the crop (`_resample_band`), the jitter's grey means (`_chain_mean`), its
    whole chain (`_chain_out`) and the blur (`_blur_shifted`); compiled (`kernels()`) or plain
    (`PLAIN`, what a caller compiling a larger graph traces)."""

    crop: Callable[..., torch.Tensor]
    chain_mean: Callable[..., torch.Tensor]
    chain_out: Callable[..., torch.Tensor]
    blur: Callable[..., torch.Tensor]


PLAIN = Kernels(_resample_band, _chain_mean, _chain_out, _blur_shifted)


@functools.cache
def kernels() -> Kernels:
    """The kernels, compiled once per process, on first use."""
    return Kernels(*(Fused(fn) for fn in PLAIN))


class ViewDraws(NamedTuple):
    """Everything random about one view of a batch (`draw_view`)."""

    boxes: Boxes
    jitter: JitterParams | None
    grey: torch.Tensor | None  # (B,) bool
    blur: torch.Tensor | None  # (B,) bool
    sigma: torch.Tensor | None  # (B,)


def draw_view(a: ImageAugment, b: int, channels: int, height: int, width: int, frames: int,
              gen: torch.Generator | None, device: torch.device) -> ViewDraws:
    """The reference's draws for a view of b rows, in its order (crop and flip, jitter,
    grayscale, blur): a fixed number of small kernels, whatever b."""
    boxes = draw_boxes(b // frames, height, width, (a.min_scale, a.max_scale), (a.min_ratio, a.max_ratio),
                       a.flip_prob, gen, device)
    p = draw_jitter(b, a.color_jitter_strength, a.color_jitter_prob, gen, device, frames) if a.jitters else None
    grey = draw_rows(a.grayscale_prob, b, frames, gen, device) if a.grayscale_prob > 0 and channels == 3 else None
    blur, sigma = draw_blur(b, a.blur_prob, (a.blur_sigma_min, a.blur_sigma_max), frames, gen, device) \
        if a.blur_prob > 0 else (None, None)
    return ViewDraws(boxes, p, grey, blur, sigma)


def view_pixels(
    a: ImageAugment, x: torch.Tensor, d: ViewDraws, frames: int = 1, k: Kernels | None = None
) -> torch.Tensor:
    """The view `d` describes of x: the crop, the jitter and grayscale, the blur (a delta kernel
    where a sample is not blurred: exactly itself). No op depends on the draws' values for its
    shape, so this traces into one static graph (`k=PLAIN` inside a larger torch.compile)."""
    k = k or kernels()
    x = crop_resize_banded(x, d.boxes, a.size, frames, k.crop)
    if d.jitter is not None:
        x = apply_jitter(x, d.jitter, d.grey, k)
    elif d.grey is not None:
        x = grey_rows(x, d.grey)
    if d.blur is not None and d.sigma is not None:
        radius = blur_radius(a.size)
        taps = gaussian_taps(d.sigma.to(x.dtype), radius)
        delta = (torch.arange(-radius, radius + 1, device=x.device) == 0).to(x.dtype)
        taps = torch.where(d.blur.view(-1, 1), taps, delta)
        x = k.blur(F.pad(x, (radius,) * 4, mode="reflect"), taps)
    return x


def augment_fused(a: ImageAugment, x: torch.Tensor, gen: torch.Generator | None, frames: int) -> torch.Tensor:
    """`a`'s view of x (`ImageAugment.__call__`): the reference's draws in its order, the pixels
    computed as above."""
    b, channels, height, width = x.shape
    return view_pixels(a, x, draw_view(a, b, channels, height, width, frames, gen, x.device), frames)
