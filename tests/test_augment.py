"""The batched SimCLR augmentation: shapes, per-sample randomness, seeds, and each op's math."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from simclr import ImageAugment, two_views
from simclr import augment as aug
from simclr import augment_fused as fused
from simclr.config import AugmentConfig
from simclr.image import build_augment

# Every random step switched off: crop = whole image, no flip, no colour, no blur.
OFF = dict(
    min_scale=1.0, min_ratio=1.0, max_ratio=1.0, flip_prob=0.0,
    color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator(device=torch.device("cpu")).manual_seed(seed)


# The compiled jitter tests share one batch shape: each new shape is another compile (seconds each).
JITTER_BATCH, JITTER_SIDE = 48, 10

# Tolerances from float32's rounding (eps = 2^-23, the spacing of floats just above 1), for values
# in [0, 1], each rounding off by at most eps/2: two computations of one short sum of products
# (the luma, a blur's taps) agree within FEW; of a longer function in another order of
# operations (a resize's sums, reductions, a fused chain of ops) within ROUNDING; torchvision's
# hue, through HSV and back with divisions by the chroma, within HSV_ROUNDING.
EPS = torch.finfo(torch.float32).eps
FEW = 16 * EPS
ROUNDING = 128 * EPS
HSV_ROUNDING = 1024 * EPS


def uint8_images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, w), generator=gen(seed), dtype=torch.uint8)


def smooth_image(c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(1, c, h, w) uint8 with structure at every scale, so crops and flips change it."""
    low = torch.rand(1, c, 4, 4, generator=gen(seed))
    x = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    x = 0.7 * x + 0.3 * torch.rand(1, c, h, w, generator=gen(seed + 1))
    return (x * 255).round().to(torch.uint8)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("h", "w", "size"), [(32, 32, 32), (20, 28, 16), (40, 24, 24)])
def test_shape_dtype_range(channels: int, h: int, w: int, size: int) -> None:
    x = uint8_images(6, channels, h, w)
    out = ImageAugment(size=size, blur_prob=0.0)(x, gen())
    assert out.shape == (6, channels, size, size)
    assert out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert out.std() > 0.05  # not collapsed to a constant


@pytest.mark.parametrize("channels", [1, 3])
def test_output_range_with_blur(channels: int) -> None:
    # The documented contract is [0, 1] exactly: a blur kernel normalized in float32 sums to
    # 1 only up to rounding, so pixels near 1 can come out a few ulp above it unless clipped.
    for seed in range(10):
        out = ImageAugment(size=32, blur_prob=1.0)(uint8_images(16, channels, 32, 32, seed), gen(seed))
        assert out.min() >= 0 and out.max() <= 1, f"seed {seed}: max - 1 = {out.max().item() - 1:.3g}"


def test_float_input_in_unit_range_is_accepted() -> None:
    x = torch.rand(3, 3, 16, 16, generator=gen())
    out = ImageAugment(size=16, **OFF)(x, gen())
    torch.testing.assert_close(out, x, atol=ROUNDING, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_two_views_of_one_image_differ(channels: int) -> None:
    x = smooth_image(channels, 32, 32)
    x1, x2 = two_views(ImageAugment(size=32), x, gen())
    assert x1.shape == x2.shape == (1, channels, 32, 32)
    assert (x1 - x2).abs().mean() > 0.01


@pytest.mark.parametrize("channels", [1, 3])
def test_each_sample_draws_its_own_parameters(channels: int) -> None:
    b = 16
    x = smooth_image(channels, 32, 32).expand(b, -1, -1, -1)
    out = ImageAugment(size=32)(x, gen()).flatten(1)  # (b, c*32*32)
    distance = torch.cdist(out, out)  # (b, b)
    off_diagonal = distance[~torch.eye(b, dtype=torch.bool)]
    assert off_diagonal.min() > 1e-3  # all B outputs are distinct


def test_flip_is_per_sample() -> None:
    # With only the flip random, copies of one image come out in both orientations.
    x = smooth_image(3, 16, 16).expand(64, -1, -1, -1)
    out = ImageAugment(size=16, **{**OFF, "flip_prob": 0.5})(x, gen())
    base = x[0].float() / 255
    plain = ((out - base).abs().amax(dim=(1, 2, 3)) < ROUNDING).sum().item()
    mirrored = ((out - base.flip(-1)).abs().amax(dim=(1, 2, 3)) < ROUNDING).sum().item()
    assert plain + mirrored == 64
    assert 16 <= plain <= 48


def test_same_seed_same_output_different_seed_differs() -> None:
    x = uint8_images(8, 3, 24, 24)
    a = ImageAugment(size=24)
    assert torch.equal(a(x, gen(1)), a(x, gen(1)))
    assert torch.equal(torch.cat(two_views(a, x, gen(1))), torch.cat(two_views(a, x, gen(1))))
    assert not torch.allclose(a(x, gen(1)), a(x, gen(2)))


@pytest.mark.parametrize("channels", [1, 3])
def test_all_randomness_off_is_identity(channels: int) -> None:
    x = uint8_images(4, channels, 20, 20)
    out = ImageAugment(size=20, **OFF)(x, gen())
    torch.testing.assert_close(out, x.float() / 255, atol=ROUNDING, rtol=0)


@pytest.mark.parametrize(("h", "w", "size"), [(16, 16, 24), (12, 20, 16), (30, 18, 8)])
def test_all_randomness_off_is_a_plain_resize(h: int, w: int, size: int) -> None:
    # A non-square image cannot hold a square box of area 1, so the crop falls back to the
    # whole image, which is then resized to size×size: bilinear, antialiased where it shrinks,
    # exactly as torchvision's resize.
    x = uint8_images(3, 3, h, w)
    out = ImageAugment(size=size, **OFF)(x, gen())
    expected = TF.resize(x.float() / 255, [size, size], antialias=True)
    torch.testing.assert_close(out, expected, atol=ROUNDING, rtol=0)


def test_flip_only_equals_torch_flip() -> None:
    x = uint8_images(5, 3, 18, 18)
    out = ImageAugment(size=18, **{**OFF, "flip_prob": 1.0})(x, gen())
    torch.testing.assert_close(out, torch.flip(x.float() / 255, dims=[-1]), atol=ROUNDING, rtol=0)


@pytest.mark.parametrize(("area", "ratio"), [(0.25, 1.0), (0.25, 2.0), (0.5, 0.5)])
def test_crop_area_and_aspect_ratio(area: float, ratio: float) -> None:
    # On ramps (value = column / (W-1), or row / (H-1)), the span of values across the output
    # is the box side in whole pixels, w = round(s * sqrt(area * ratio)), minus one, over W - 1:
    # the box's end pixels are the outermost ones sampled (upsampling clamps to the box).
    s = 32
    ramp = torch.arange(s, dtype=torch.float32) / (s - 1)
    x = torch.stack([ramp.view(1, s).expand(s, s), ramp.view(s, 1).expand(s, s), torch.zeros(s, s)])
    x = x.unsqueeze(0).expand(32, -1, -1, -1)  # (32, 3, s, s), channel 0: columns, 1: rows
    a = ImageAugment(size=s, **{**OFF, "min_scale": area, "max_scale": area, "min_ratio": ratio, "max_ratio": ratio})
    out = a(x, gen())
    span_w = out[:, 0].amax(dim=(1, 2)) - out[:, 0].amin(dim=(1, 2))
    span_h = out[:, 1].amax(dim=(1, 2)) - out[:, 1].amin(dim=(1, 2))
    w, h = round(s * (area * ratio) ** 0.5), round(s * (area / ratio) ** 0.5)
    torch.testing.assert_close(span_w, torch.full_like(span_w, (w - 1) / (s - 1)), atol=ROUNDING, rtol=0)
    torch.testing.assert_close(span_h, torch.full_like(span_h, (h - 1) / (s - 1)), atol=ROUNDING, rtol=0)
    # The box position is random per sample.
    assert out[:, 0].amin(dim=(1, 2)).std() > 0.05


def _random_boxes(b: int, height: int, width: int, seed: int) -> aug.Boxes:
    g = gen(seed)
    h = torch.randint(1, height + 1, (b,), generator=g)
    w = torch.randint(1, width + 1, (b,), generator=g)
    top = (torch.rand(b, generator=g) * (height - h + 1)).long()
    left = (torch.rand(b, generator=g) * (width - w + 1)).long()
    return aug.Boxes(top, left, h, w, torch.rand(b, generator=g) < 0.5)


@pytest.mark.parametrize(("h", "w", "size"), [(32, 32, 32), (96, 80, 48), (20, 28, 40)])
def test_both_crop_resizers_equal_torchvision_resized_crop(h: int, w: int, size: int) -> None:
    # Up- and downsampling boxes of every shape: the reference's dense matrix products and
    # compile=true's banded ones (here eager: the compiled kernel is tested end to end below)
    # both compute torchvision's resized_crop(antialias=True) then horizontal_flip, in float;
    # torchvision's own uint8 kernel rounds to a level after each of its two passes, so from
    # uint8 they are within one level of its result.
    boxes = _random_boxes(24, h, w, seed=3)
    x8 = uint8_images(24, 3, h, w, seed=4)
    xf = x8.float() / 255

    def expected(x: torch.Tensor) -> torch.Tensor:
        views = []
        for i, (top, left, bh, bw, flip) in enumerate(zip(*(t.tolist() for t in boxes), strict=True)):
            v = TF.resized_crop(x[i], top, left, bh, bw, [size, size], antialias=True)
            views.append(TF.horizontal_flip(v) if flip else v)
        return torch.stack(views)

    for x in (xf, x8):
        dense = aug.crop_resize(x, boxes, size)
        torch.testing.assert_close(dense, expected(xf), atol=ROUNDING, rtol=0)
        banded = fused.crop_resize_banded(x, boxes, size, resample=fused._resample_band)
        torch.testing.assert_close(banded, dense, atol=ROUNDING, rtol=0)
        assert (dense * 255 - expected(x8)).abs().max() <= 1 + 255 * ROUNDING


def test_compiled_crop_equals_the_reference_crop() -> None:
    """The compiled banded crop, downsampling (more taps per pixel) and upsampling clips."""
    boxes = _random_boxes(12, 96, 80, seed=5)
    for x in (uint8_images(24, 3, 96, 80, seed=6), torch.rand(24, 3, 96, 80, generator=gen(7))):
        for size in (48, 112):
            expected = aug.crop_resize(x, boxes, size, frames=2)
            torch.testing.assert_close(fused.crop_resize_banded(x, boxes, size, frames=2), expected,
                                       atol=ROUNDING, rtol=0)


def test_draw_boxes_follow_torchvision() -> None:
    # Whole-pixel sides with the drawn area and aspect ratio (within rounding), inside the image,
    # positions spread over every valid offset, and the whole image when nothing fits.
    b = aug.draw_boxes(4000, 40, 60, (0.08, 1.0), (3 / 4, 4 / 3), 0.5, gen(5), torch.device("cpu"))
    assert ((b.top >= 0) & (b.top + b.height <= 40) & (b.left >= 0) & (b.left + b.width <= 60)).all()
    area = (b.height * b.width).float() / (40 * 60)
    ratio = b.width.float() / b.height.float()
    assert area.min() >= 0.06 and area.max() <= 1 and ratio.min() > 0.6 and ratio.max() < 1.5
    assert b.top[b.height == 20].unique().numel() == 21  # every offset of a 20-row box occurs
    assert 0.45 < b.flip.float().mean() < 0.55
    none_fit = aug.draw_boxes(50, 10, 40, (1.0, 1.0), (1.0, 1.0), 0.0, gen(6), torch.device("cpu"))
    assert (none_fit.height == 10).all() and (none_fit.width == 40).all() and (none_fit.top == 0).all()


def test_grayscale_prob_one_gives_equal_channels() -> None:
    x = uint8_images(6, 3, 16, 16)
    out = ImageAugment(size=16, **{**OFF, "grayscale_prob": 1.0})(x, gen())
    assert out.shape == (6, 3, 16, 16)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    torch.testing.assert_close(out[:, :1], aug.grayscale(x.float() / 255), atol=FEW, rtol=0)


def test_grayscale_is_itu_r_601_luma() -> None:
    x = torch.rand(4, 3, 8, 8, generator=gen())
    expected = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(aug.grayscale(x), expected.unsqueeze(1), atol=FEW, rtol=0)
    one = torch.rand(2, 1, 8, 8, generator=gen())
    assert torch.equal(aug.grayscale(one), one)


@pytest.fixture
def torchvision_luma(monkeypatch: pytest.MonkeyPatch) -> None:
    # torchvision (like TF) weights red by 0.2989, this package by ITU-R 601's 0.299. Use
    # torchvision's weights here so the comparisons below test the blending math exactly.
    monkeypatch.setattr(aug, "LUMA", (0.2989, 0.587, 0.114))
    monkeypatch.setattr(fused, "LUMA", (0.2989, 0.587, 0.114))


def _per_sample(fn, x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return torch.cat([fn(x[i : i + 1], float(factors[i])) for i in range(len(x))])


TORCHVISION_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


@pytest.mark.usefixtures("torchvision_luma")
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_equals_torchvision_ops_per_sample_in_each_samples_order(channels: int, compiled: bool) -> None:
    """The batched jitter against an independent reference: torchvision's own ops (which clip),
    applied one sample at a time in that sample's drawn order with its drawn factors; eager, and
    fused by torch.compile (`compile=true`)."""
    b = JITTER_BATCH
    x = uint8_images(b, channels, JITTER_SIDE, JITTER_SIDE, seed=3)  # as the crop gives it
    p = aug.draw_jitter(b, 1.0, 0.8, gen(4), x.device)
    out = fused.apply_jitter(x, p) if compiled else aug.apply_jitter(x, p)
    torch.testing.assert_close(out, torchvision_jitter(x, p), atol=HSV_ROUNDING, rtol=0)
    assert not torch.equal(out, aug._to_float(x))


def torchvision_jitter(x: torch.Tensor, p: aug.JitterParams) -> torch.Tensor:
    """The reference: torchvision's ops, one sample at a time, in its drawn order and factors."""
    n_ops = 4 if x.shape[1] == 3 else 2
    views = []
    for i, sample in enumerate(aug._to_float(x)):
        if p.apply[i]:
            for op in p.order[i].tolist():
                if op < n_ops:
                    sample = TORCHVISION_OPS[op](sample, float(p.factors[i, op]))
        views.append(sample)
    return torch.stack(views)


# With this package's own luma weights: the grey is 0.0001 × red above torchvision's (at most
# 1e-4), and the contrast and saturation blend with that grey (weight |1 - f| <= 0.8, later
# scaled by factors up to 1.8), so the whole jitter may differ by 2 × 0.8 × 1.8 × 1e-4 plus the
# rounding allowed above. Measured: 1.5e-4 to 1.8e-4 (three seeds, 2026-12-06).
OWN_LUMA_GAP = 2 * 0.8 * 1.8 * 1e-4 + HSV_ROUNDING


def test_own_luma_differs_from_torchvisions_by_one_ten_thousandth_of_red() -> None:
    """What README's 'up to 1e-4' rests on: the tests above put torchvision's luma weights in to
    check the blending math to HSV_ROUNDING; with the package's ITU-R 601 weights the grey is off
    by exactly 0.0001 × red, and the jitter by no more than OWN_LUMA_GAP."""
    x = torch.rand(8, 3, 12, 12, generator=gen(3))
    gap = aug.grayscale(x) - TF.rgb_to_grayscale(x)
    torch.testing.assert_close(gap, 1e-4 * x[:, :1], atol=FEW, rtol=0)
    assert gap.max() > 0.9e-4  # a real difference, far beyond float rounding
    x8 = uint8_images(JITTER_BATCH, 3, JITTER_SIDE, JITTER_SIDE, seed=3)
    p = aug.draw_jitter(JITTER_BATCH, 1.0, 0.8, gen(4), x8.device)
    worst = (aug.apply_jitter(x8, p) - torchvision_jitter(x8, p)).abs().max().item()
    assert HSV_ROUNDING < worst <= OWN_LUMA_GAP, worst


@pytest.mark.parametrize("channels", [1, 3])
def test_compiled_jitter_chain_equals_the_staged_jitter_in_every_order(channels: int) -> None:
    """`compile=true` runs each sample's jitter as one chain (the ops before its hue, the hue,
    the ops after it) with the contrast's grey mean computed first, from the chain cut short at
    the contrast (through the hue when it comes first). All 24 orders, jittered or not, uint8
    input as the crop gives it: the same as the reference per sample, and as the stage-by-stage
    jitter the reference was before it took static shapes (`staged_jitter`)."""
    orders = torch.tensor(list(itertools.permutations(range(4))))  # (24, 4)
    b = 2 * len(orders)
    assert b == JITTER_BATCH
    x = uint8_images(b, channels, JITTER_SIDE, JITTER_SIDE, seed=5)
    p = aug.draw_jitter(b, 1.0, 1.0, gen(40), x.device)
    apply = torch.arange(b) % 8 != 7  # a few samples left as they are
    p = aug.JitterParams(p.factors, apply, orders.repeat(2, 1))
    eager = aug.apply_jitter(x, p)
    chained = fused.apply_jitter(x, p)
    torch.testing.assert_close(chained, eager, atol=ROUNDING, rtol=0)
    torch.testing.assert_close(eager, staged_jitter(x, p), atol=ROUNDING, rtol=0)
    assert torch.equal(chained[~apply], aug._to_float(x[~apply]))  # identity slots change nothing
    assert torch.equal(eager[~apply], aug._to_float(x[~apply]))


def test_grayscale_matches_torchvision_weights(torchvision_luma: None) -> None:
    x = torch.rand(8, 3, 12, 12, generator=gen(3), dtype=torch.float32)
    torch.testing.assert_close(aug.grayscale(x), TF.rgb_to_grayscale(x), atol=FEW, rtol=0)


def test_hue_matches_torchvision() -> None:
    x = torch.rand(8, 3, 12, 12, generator=gen(5))
    shift = torch.linspace(-0.5, 0.5, 8)
    expected = _per_sample(TF.adjust_hue, x, shift)
    torch.testing.assert_close(aug.adjust_hue(x, shift), expected, atol=HSV_ROUNDING, rtol=0)


def test_hue_zero_shift_is_identity_and_full_turn_too() -> None:
    x = torch.rand(4, 3, 8, 8, generator=gen(6))
    torch.testing.assert_close(aug.adjust_hue(x, torch.zeros(4)), x, atol=ROUNDING, rtol=0)
    torch.testing.assert_close(aug.adjust_hue(x, torch.ones(4)), x, atol=ROUNDING, rtol=0)


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_color_jitter_brightness_factor_range_and_probability(strength: float) -> None:
    # On a constant 1-channel image only brightness acts (contrast of a constant is a no-op),
    # so out / in is exactly the drawn factor: U(1 - 0.8s, 1 + 0.8s) with probability 0.8.
    b = 4000
    x = torch.full((b, 1, 2, 2), 0.5)
    out = aug.color_jitter(x, strength, prob=0.8, gen=gen(7))
    factor = out[:, 0, 0, 0] / 0.5
    assert torch.equal(out, factor.view(b, 1, 1, 1).expand_as(out) * 0.5)  # one factor per sample
    changed = (factor - 1).abs() > 1e-6
    assert changed.float().mean().item() == pytest.approx(0.8, abs=0.03)
    lo, hi = 1 - 0.8 * strength, 1 + 0.8 * strength
    f = factor[changed]
    assert f.min() >= lo - 1e-6 and f.max() <= hi + 1e-6
    assert f.min() < lo + 0.02 and f.max() > hi - 0.02  # the whole range is used
    assert f.mean().item() == pytest.approx(1.0, abs=0.03)


def test_color_jitter_clips_and_keeps_range() -> None:
    x = torch.rand(64, 3, 8, 8, generator=gen(8))
    out = aug.color_jitter(x, 1.0, prob=1.0, gen=gen(9))
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every sample was changed


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_prob_zero_is_identity(channels: int, compiled: bool) -> None:
    # No sample is jittered: every slot and stage holds (1, 0, 0), and no row takes the hue.
    x = uint8_images(JITTER_BATCH, channels, JITTER_SIDE, JITTER_SIDE, seed=10)
    p = aug.draw_jitter(JITTER_BATCH, 1.0, 0.0, gen(11), x.device)
    out = fused.apply_jitter(x, p) if compiled else aug.apply_jitter(x, p)
    assert torch.equal(out, aug._to_float(x))


@pytest.mark.parametrize("frames", [1, 2])
def test_grayscale_in_the_compiled_jitters_last_pass_equals_the_separate_op(frames: int) -> None:
    """compile=true greys the rows in the jitter chain's last step: the very rows the reference's
    `random_grayscale` greys after `color_jitter` with the same generator, and nothing else (the
    paper's order of ops, jitter then grayscale)."""
    x = uint8_images(JITTER_BATCH, 3, JITTER_SIDE, JITTER_SIDE)
    g = gen(30)
    p = aug.draw_jitter(JITTER_BATCH, 1.0, 0.8, g, x.device, frames)
    out = fused.apply_jitter(x, p, aug.draw_rows(0.3, JITTER_BATCH, frames, g, x.device))
    g = gen(30)
    expected = aug.random_grayscale(aug.color_jitter(x, 1.0, 0.8, g, frames), 0.3, g, frames)
    torch.testing.assert_close(out, expected, atol=ROUNDING, rtol=0)
    grey = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert 0 < grey.sum() < len(grey)
    assert torch.equal(grey.view(-1, frames)[:, 0], grey.view(-1, frames)[:, -1])  # a clip greys together


def test_color_jitter_draws_every_order_and_the_whole_factor_range() -> None:
    b, s = 2400, 0.5
    p = aug.draw_jitter(b, s, 0.8, gen(16), torch.device("cpu"))
    assert p.apply.float().mean().item() == pytest.approx(0.8, abs=0.03)
    assert all(sorted(o) == [0, 1, 2, 3] for o in p.order.tolist())  # each op exactly once
    assert len({tuple(o) for o in p.order.tolist()}) == 24  # all orders occur
    for op in range(4):  # the first op is uniform over the ops
        assert (p.order[:, 0] == op).float().mean().item() == pytest.approx(0.25, abs=0.03)
        f = p.factors[:, op]
        lo, hi = (-0.2 * s, 0.2 * s) if op == 3 else (1 - 0.8 * s, 1 + 0.8 * s)
        assert f.min() >= lo and f.max() <= hi
        assert f.min() < lo + 0.02 * (hi - lo) and f.max() > hi - 0.02 * (hi - lo)
        assert f.std().item() == pytest.approx((hi - lo) / 12**0.5, rel=0.05)  # U(lo, hi)


def test_blur_preserves_constant_and_reduces_noise_variance() -> None:
    const = torch.full((4, 3, 40, 40), 0.37)
    torch.testing.assert_close(aug.gaussian_blur(const.clone(), 1.0, (0.1, 2.0), gen()), const, atol=FEW, rtol=0)
    noise = torch.rand(16, 1, 40, 40, generator=gen(12))
    blurred = aug.gaussian_blur(noise.clone(), 1.0, (1.0, 2.0), gen(13))
    assert blurred.shape == noise.shape
    assert blurred.mean().item() == pytest.approx(noise.mean().item(), abs=0.01)
    assert (blurred.var(dim=(1, 2, 3)) < 0.5 * noise.var(dim=(1, 2, 3))).all()


def test_blur_is_per_sample_with_probability() -> None:
    noise = torch.rand(200, 1, 20, 20, generator=gen(14))
    out = aug.gaussian_blur(noise.clone(), 0.5, (1.0, 2.0), gen(15))
    untouched = (out == noise).flatten(1).all(1).float().mean().item()
    assert untouched == pytest.approx(0.5, abs=0.1)


def test_blur_prob_one_through_augment() -> None:
    x = uint8_images(6, 3, 40, 40)
    plain = ImageAugment(size=40, **OFF)(x, gen())
    blurred = ImageAugment(size=40, **{**OFF, "blur_prob": 1.0, "blur_sigma_min": 1.5})(x, gen())
    assert (blurred.var(dim=(2, 3)) < plain.var(dim=(2, 3))).all()


def test_cifar_recipe_runs_on_a_batch() -> None:
    a = ImageAugment(size=32, color_jitter_strength=0.5, blur_prob=0.0)
    x = uint8_images(16, 3, 32, 32)
    x1, x2 = two_views(a, x, gen())
    assert x1.shape == x2.shape == (16, 3, 32, 32)
    assert x1.min() >= 0 and x1.max() <= 1
    assert not torch.equal(x1, x2)


def test_defaults_are_the_paper_recipe() -> None:
    a = ImageAugment(size=224)
    assert (a.min_scale, a.max_scale) == (0.08, 1.0)
    assert (a.min_ratio, a.max_ratio) == pytest.approx((3 / 4, 4 / 3))
    assert (a.flip_prob, a.color_jitter_strength, a.color_jitter_prob) == (0.5, 1.0, 0.8)
    assert (a.grayscale_prob, a.blur_prob, a.blur_sigma_min, a.blur_sigma_max) == (0.2, 0.5, 0.1, 2.0)


@pytest.mark.parametrize(
    ("size", "strength", "blur", "min_scale"),
    [(8, 0.5, 0.0, 0.2), (32, 0.5, 0.0, 0.2), (64, 0.5, 0.0, 0.2), (65, 1.0, 0.5, 0.08), (224, 1.0, 0.5, 0.08)],
)
def test_build_augment_auto_recipe(size: int, strength: float, blur: float, min_scale: float) -> None:
    a = build_augment(AugmentConfig(), size)
    assert a.size == size
    assert (a.color_jitter_strength, a.blur_prob, a.min_scale) == (strength, blur, min_scale)


def test_build_augment_explicit_recipe_and_overrides() -> None:
    assert build_augment(AugmentConfig(recipe="imagenet"), 32).blur_prob == 0.5
    assert build_augment(AugmentConfig(recipe="imagenet"), 32).color_jitter_strength == 1.0
    assert build_augment(AugmentConfig(recipe="cifar"), 224).blur_prob == 0.0
    assert build_augment(AugmentConfig(recipe="cifar"), 224).color_jitter_strength == 0.5
    cfg = AugmentConfig(
        recipe="cifar", color_jitter_strength=0.3, blur_prob=0.25, min_scale=0.5,
        flip_prob=0.1, color_jitter_prob=0.6, grayscale_prob=0.05,
    )
    a = build_augment(cfg, 32)
    assert (a.color_jitter_strength, a.blur_prob, a.min_scale) == (0.3, 0.25, 0.5)
    assert (a.flip_prob, a.color_jitter_prob, a.grayscale_prob) == (0.1, 0.6, 0.05)


def test_a_failing_compile_falls_back_to_the_eager_kernels(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No C++ compiler, an unsupported platform: one warning, then the same result as eager."""

    def broken(fn: object, **kwargs: object) -> object:
        def fail(*args: object) -> None:
            raise RuntimeError("InductorError: no working C++ compiler found\nmore detail")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    hue = fused.Fused(aug.adjust_hue)
    x, shift = torch.rand(4, 3, 6, 6, generator=gen(1)), torch.linspace(-0.4, 0.4, 4)
    with caplog.at_level(logging.WARNING, logger="simclr"):
        first, second = hue(x, shift), hue(x, shift)
    assert torch.equal(first, aug.adjust_hue(x, shift)) and torch.equal(second, first)
    warnings = [r.getMessage() for r in caplog.records]
    expected = "torch.compile failed (InductorError: no working C++ compiler found); using eager kernels"
    assert len(warnings) == 1 and expected in warnings[0]


@pytest.mark.parametrize("form", ["matrices", "shifted", "shifted_compiled"])
@pytest.mark.parametrize(("h", "w"), [(40, 40), (24, 36)])
def test_blur_equals_torchvision_gaussian_blur_per_sample(h: int, w: int, form: str) -> None:
    """Both forms of the blur (the reference: a matrix per axis; compile=true: sums of shifted
    copies of the reflect-padded image) against torchvision's convolution, one sample at a time."""
    x = torch.rand(3, 3, h, w, generator=gen(16))
    sigma = torch.tensor([0.3, 1.0, 2.0])
    radius = aug.blur_radius(h)
    if form == "matrices":
        out = aug.resample(x, aug.blur_weights(sigma, h, radius), aug.blur_weights(sigma, w, radius))
    else:
        blur = fused.kernels().blur if form == "shifted_compiled" else fused._blur_shifted
        out = blur(F.pad(x, (radius,) * 4, mode="reflect"), aug.gaussian_taps(sigma, radius))
    for i in range(3):
        expected = TF.gaussian_blur(x[i], [2 * radius + 1] * 2, [sigma[i].item()] * 2)
        torch.testing.assert_close(out[i], expected, atol=FEW, rtol=0)


@pytest.mark.parametrize("size", [40, 72])
@pytest.mark.parametrize("frames", [1, 2])
def test_compiled_augmentation_equals_eager(frames: int, size: int) -> None:
    """compile=true changes how the pixels are computed (the crop's banded weights, the jitter as
    a fused chain per sample, the blur as shifted sums), not what is drawn: the same seed gives
    the same views within float rounding."""
    x = uint8_images(8, 3, size, size)
    eager = ImageAugment(size=size, blur_prob=0.75)
    compiled = ImageAugment(size=size, blur_prob=0.75, compiled=True)
    out = compiled(x, gen(21), frames)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, eager(x, gen(21), frames), atol=ROUNDING, rtol=0)


@pytest.mark.parametrize(("size", "compiled"), [(16, False), (16, True), (72, True)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_the_input_batch_is_left_as_it_is(size: int, compiled: bool, dtype: torch.dtype) -> None:
    # Grayscale and blur write into the views in place: never into the caller's images, whichever
    # path made them.
    x = uint8_images(8, 3, size, size)
    x = x if dtype == torch.uint8 else x.float() / 255
    before = x.clone()
    a = ImageAugment(size=size, grayscale_prob=1.0, blur_prob=1.0, color_jitter_prob=1.0, compiled=compiled)
    two_views(a, x, gen())
    assert torch.equal(x, before)


# Static shapes: the reference before it took them (rows picked out with nonzero, ops run on
# those rows only), kept here as the oracle the static ops must equal per sample.

def staged_jitter(x: torch.Tensor, p: aug.JitterParams) -> torch.Tensor:
    """Stage by stage: every sample's op of the stage as one blend, the hue on the rows whose turn it is."""
    x = aug._to_float(x)
    coef = aug.jitter_coefficients(p, x.shape[1], x.dtype)
    for stage in range(4):
        y = aug.blend(x, *coef[:, :, stage].unbind(1))
        if x.shape[1] == 3:
            rows = torch.nonzero(p.apply & (p.order[:, stage] == aug.HUE)).squeeze(1)
            if rows.numel():
                y[rows] = aug.adjust_hue(x.index_select(0, rows), p.factors[rows, aug.HUE].to(x.dtype))
        x = y
    return x


def rows_view(a: ImageAugment, x: torch.Tensor, g: torch.Generator, frames: int = 1) -> torch.Tensor:
    """The whole view as the reference made it with data-dependent rows, from the same draws."""
    b, _, h, w = x.shape
    boxes = aug.draw_boxes(b // frames, h, w, (a.min_scale, a.max_scale), (a.min_ratio, a.max_ratio),
                           a.flip_prob, g, x.device)
    x = aug.crop_resize(x, boxes, a.size, frames)
    x = staged_jitter(x, aug.draw_jitter(b, a.color_jitter_strength, a.color_jitter_prob, g, x.device, frames))
    if x.shape[1] == 3:
        rows = torch.nonzero(aug.draw_rows(a.grayscale_prob, b, frames, g, x.device)).squeeze(1)
        x[rows] = aug.grayscale(x.index_select(0, rows)).expand(-1, 3, -1, -1)
    chosen, sigma = aug.draw_blur(b, a.blur_prob, (a.blur_sigma_min, a.blur_sigma_max), frames, g, x.device)
    rows = torch.nonzero(chosen).squeeze(1)
    radius = aug.blur_radius(a.size)
    weights = aug.blur_weights(sigma[rows], a.size, radius)
    x[rows] = aug.resample(x.index_select(0, rows), weights, weights).clamp_(0, 1)
    return x


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize(("channels", "frames"), [(3, 1), (1, 1), (3, 2)])
def test_static_views_equal_the_data_dependent_reference_per_sample(channels: int, frames: int, compiled: bool) -> None:
    """Every op on every sample, an exact identity where it was not drawn: the same views, sample
    by sample, as picking out the rows each op got."""
    a = ImageAugment(size=24, blur_prob=0.5, compiled=compiled)
    x = uint8_images(16, channels, 30, 30, seed=8)
    out, expected = a(x, gen(9), frames), rows_view(a, x, gen(9), frames)
    torch.testing.assert_close(out, expected, atol=ROUNDING, rtol=0)


class OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the aten ops dispatched inside it: a count by name, and each op with the shapes
    of its outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, int] = {}
        self.shapes: list[tuple[str, tuple[tuple[int, ...], ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        self.ops[str(func)] = self.ops.get(str(func), 0) + 1
        outs = out if isinstance(out, tuple | list) else (out,)
        self.shapes.append((str(func), tuple(tuple(o.shape) for o in outs if isinstance(o, torch.Tensor))))
        return out


def dispatched(fn: object, *args: object) -> OpCounter:
    with OpCounter() as counter:
        fn(*args)  # type: ignore[operator]
    return counter


@pytest.mark.parametrize("channels", [1, 3])
def test_augmentation_dispatches_the_same_ops_for_any_batch_size_and_draw(channels: int) -> None:
    """A view is a fixed list of ops (what a GPU launches and torch.compile traces): the same ops
    at batch 64 and 256, and the same ops with the same shapes for draws that blur, jitter and
    grey every sample or none. The rows reference's shapes change with the draws, so the check
    would catch a data-dependent op."""
    def view(a: ImageAugment, b: int, seed: int, compiled_form: bool) -> OpCounter:
        x = uint8_images(b, channels, 40, 40, seed=seed)
        if not compiled_form:
            return dispatched(a, x, gen(seed))
        d = fused.draw_view(a, b, channels, 40, 40, 1, gen(seed), x.device)
        return dispatched(lambda: fused.view_pixels(a, x, d, k=fused.PLAIN))

    for compiled_form in (False, True):  # the eager reference; the compiled form's ops, run eagerly
        sizes = [view(ImageAugment(size=32), b, seed, compiled_form) for b, seed in ((64, 1), (256, 2))]
        assert sizes[0].ops == sizes[1].ops, compiled_form
        draws = [view(ImageAugment(size=32, blur_prob=p, color_jitter_prob=p, grayscale_prob=p), 64, 4,
                      compiled_form) for p in (1.0, 0.5, 1e-9)]
        assert draws[0].shapes == draws[1].shapes == draws[2].shapes, compiled_form
        assert draws[0].ops == sizes[0].ops
    x = uint8_images(64, channels, 40, 40)
    rows = [dispatched(rows_view, ImageAugment(size=32, blur_prob=p), x, gen(5)) for p in (1.0, 0.5)]
    assert rows[0].shapes != rows[1].shapes  # the data-dependent form is caught
