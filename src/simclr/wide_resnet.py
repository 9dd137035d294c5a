"""Wide ResNets and selective-kernel (SK) ResNets, as SimCLR and SimCLRv2 scale the encoder.

Width multiplier k multiplies every channel count, the stem's included: SimCLR's ResNet-50
(2×) and (4×) (arXiv:2002.05709, figure 7), SimCLRv2's ResNet-152 (3×) (arXiv:2006.10029).
This is not torchvision's `wide_resnet50_2`, which widens only the bottleneck's inner conv.

SK (SimCLRv2, section 2, after Li et al. 2019, arXiv:1903.06586), as in the official code:
the bottleneck's 3×3 conv computes two 3×3 paths at once, and a softmax over the two paths,
per channel, from a squeeze of their sum, mixes them (sk_ratio 1/16, at least 32 hidden
channels). SK networks also take two ResNet-D tweaks (arXiv:1812.01187): a shortcut that
changes shape average-pools before its 1×1 conv, and the ImageNet stem is three 3×3 convs.
Basic-block depths (18, 34) get only those tweaks in the official code, so no `_sk` names are
registered for them. Layouts follow torchvision (a projection shortcut only where the shape
changes), so width 1 without SK has exactly torchvision's parameter count.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

SK_RATIO = 1 / 16  # hidden channels of the path-mixing squeeze, relative to the block's width
SK_MIN_DIM = 32
# depth -> (blocks per stage, bottleneck blocks?)
DEPTHS: dict[int, tuple[tuple[int, int, int, int], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out)]
    return [*layers, nn.ReLU(inplace=True)] if relu else layers


class SelectiveKernel(nn.Module):
    """SK convolution with two 3×3 paths (SimCLRv2's variant), BatchNorm and ReLU included."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.paths = nn.Sequential(*conv_bn(c_in, 2 * c_out, 3, stride))  # both paths in one conv
        mid = max(int(c_out * SK_RATIO), SK_MIN_DIM)
        self.mix = nn.Sequential(*conv_bn(c_out, mid, 1), nn.Conv2d(mid, 2 * c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.paths(x)  # (B, 2c, H, W)
        b, _, height, width = u.shape
        u = u.view(b, 2, -1, height, width)  # (B, 2, c, H, W): the two halves of the channels
        s = u.sum(1).mean((2, 3), keepdim=True)  # (B, c, 1, 1): global context of both paths
        a = self.mix(s).view(b, 2, -1, 1, 1).softmax(1)  # (B, 2, c, 1, 1): per-channel path weights
        mixed: torch.Tensor = (u * a).sum(1)  # (B, c, H, W)
        return mixed


def shortcut(c_in: int, c_out: int, stride: int, resnet_d: bool) -> nn.Module:
    if c_in == c_out and stride == 1:
        return nn.Identity()
    if resnet_d and stride > 1:  # ResNet-D: pool, then a 1×1 conv that sees every input pixel
        pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
        return nn.Sequential(pool, *conv_bn(c_in, c_out, 1, relu=False))
    return nn.Sequential(*conv_bn(c_in, c_out, 1, stride, relu=False))


class Block(nn.Module):
    """A residual block: basic (two 3×3) or bottleneck (1×1, 3×3 or SK, 1×1 with 4× channels)."""

    def __init__(self, c_in: int, width: int, stride: int, bottleneck: bool, sk: bool) -> None:
        super().__init__()
        c_out = 4 * width if bottleneck else width
        if bottleneck:
            middle = SelectiveKernel(width, width, stride) if sk else nn.Sequential(*conv_bn(width, width, 3, stride))
            layers = [*conv_bn(c_in, width, 1), middle, *conv_bn(width, c_out, 1, relu=False)]
        else:
            layers = [*conv_bn(c_in, width, 3, stride), *conv_bn(width, c_out, 3, relu=False)]
        self.residual = nn.Sequential(*layers)
        # The last BN's scale starts at zero, so each block starts as the identity (SimCLR's code,
        # "init_zero"): deep and wide networks train stably at large learning rates.
        last_bn = layers[-1]
        assert isinstance(last_bn, nn.BatchNorm2d)
        nn.init.zeros_(last_bn.weight)
        self.shortcut = shortcut(c_in, c_out, stride, resnet_d=sk)
        self.out_channels = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


def stem(in_channels: int, c: int, cifar_stem: bool, sk: bool) -> nn.Sequential:
    if cifar_stem:  # 3×3 stride 1, no max-pool: small images keep their resolution
        return nn.Sequential(*conv_bn(in_channels, c, 3))
    if sk:  # ResNet-D's deep stem: three 3×3 convs in place of one 7×7
        layers = [*conv_bn(in_channels, c // 2, 3, 2), *conv_bn(c // 2, c // 2, 3), *conv_bn(c // 2, c, 3)]
    else:
        layers = conv_bn(in_channels, c, 7, 2)
    return nn.Sequential(*layers, nn.MaxPool2d(3, 2, 1))


class WideResNet(nn.Module):
    """ResNet-`depth` with every channel count × `width`, optionally with SK blocks; returns
    h, the globally average-pooled output of the last stage, of size `out_dim`."""

    def __init__(
        self, depth: int, width: int = 1, sk: bool = False, in_channels: int = 3, cifar_stem: bool = False
    ) -> None:
        super().__init__()
        if depth not in DEPTHS or width < 1:
            raise ValueError(f"no ResNet of depth {depth} and width {width} (depths: {sorted(DEPTHS)})")
        blocks, bottleneck = DEPTHS[depth]
        c = 64 * width
        self.stem = stem(in_channels, c, cifar_stem, sk)
        stages: list[nn.Module] = []
        for i, n in enumerate(blocks):
            for j in range(n):
                block = Block(c, 64 * width * 2**i, 2 if i > 0 and j == 0 else 1, bottleneck, sk)
                stages.append(block)
                c = block.out_channels
        self.stages = nn.Sequential(*stages)
        self.out_dim = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # as torchvision's ResNets
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h: torch.Tensor = self.stages(self.stem(x)).mean((2, 3))  # (B, out_dim)
        return h


def _names() -> dict[str, Callable[[int, int, bool], nn.Module]]:
    """resnet{depth}_w{k} for k = 2, 3, 4, and resnet{depth}[_w{k}]_sk for bottleneck depths.
    (Width 1 without SK is torchvision's resnet{depth}, registered in `model`.)"""
    names: dict[str, Callable[[int, int, bool], nn.Module]] = {}
    for depth, (_, bottleneck) in DEPTHS.items():
        for width in (1, 2, 3, 4):
            for sk in (False, True) if bottleneck else (False,):
                if width == 1 and not sk:
                    continue
                name = f"resnet{depth}" + (f"_w{width}" if width > 1 else "") + ("_sk" if sk else "")
                names[name] = partial(_build, depth, width, sk)
    return names


def _build(depth: int, width: int, sk: bool, in_channels: int, image_size: int, cifar_stem: bool) -> nn.Module:
    return WideResNet(depth, width, sk, in_channels, cifar_stem)


WIDE_RESNETS = _names()
